-- 0006 webhooks: one receipt per webhook delivery, whatever became of it.
-- A receipt keeps the request's headers (Authorization and Cookie dropped), its body up to
-- a cap (body_size is the whole size, body_truncated says whether the stored body is all
-- of it), whether its signature verified and what the check said, the outcome, and for
-- every agent whether it matched, why, and the queue item made for it (or why none was).
-- A delivery id is taken once per source by a delivery that verified (accepted or ping):
-- a redelivery is recorded as a duplicate of the first and queues nothing. A replay
-- (replay_of: the receipt replayed) takes none. replay_of and duplicate_of are plain ids,
-- not foreign keys: pruning an old receipt leaves the newer ones that name it alone.

CREATE TABLE corral_webhook_receipts (
    id text PRIMARY KEY,
    source text NOT NULL,
    event text,
    delivery_id text,
    received_at timestamptz NOT NULL,
    headers jsonb NOT NULL,
    body bytea NOT NULL,
    body_size bigint NOT NULL CHECK (body_size >= 0),
    body_truncated boolean NOT NULL,
    verified boolean NOT NULL,
    verification text,
    outcome text NOT NULL
        CHECK (outcome IN ('accepted', 'duplicate', 'refused', 'invalid', 'ping')),
    error text,
    results jsonb NOT NULL,
    replay_of text,
    duplicate_of text
);

CREATE UNIQUE INDEX corral_webhook_receipts_delivery
    ON corral_webhook_receipts (source, delivery_id)
    WHERE delivery_id IS NOT NULL AND replay_of IS NULL AND outcome IN ('accepted', 'ping');

CREATE INDEX corral_webhook_receipts_received ON corral_webhook_receipts (received_at);

-- Counting an agent's queued and claimed items (every enqueue and claim does) reads this
-- index alone, however long the agent's history of done items grows.
CREATE INDEX corral_queue_agent_state ON corral_queue (agent, state, attempts);
