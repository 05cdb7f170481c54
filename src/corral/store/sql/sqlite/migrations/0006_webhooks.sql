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
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    event TEXT,
    delivery_id TEXT,
    received_at TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    body_size INTEGER NOT NULL CHECK (body_size >= 0),
    body_truncated INTEGER NOT NULL CHECK (body_truncated IN (0, 1)),
    verified INTEGER NOT NULL CHECK (verified IN (0, 1)),
    verification TEXT,
    outcome TEXT NOT NULL
        CHECK (outcome IN ('accepted', 'duplicate', 'refused', 'invalid', 'ping')),
    error TEXT,
    results TEXT NOT NULL,
    replay_of TEXT,
    duplicate_of TEXT
);

CREATE UNIQUE INDEX corral_webhook_receipts_delivery
    ON corral_webhook_receipts (source, delivery_id)
    WHERE delivery_id IS NOT NULL AND replay_of IS NULL AND outcome IN ('accepted', 'ping');

CREATE INDEX corral_webhook_receipts_received ON corral_webhook_receipts (received_at);

-- Counting an agent's queued and claimed items (every enqueue and claim does) reads this
-- index alone, however long the agent's history of done items grows.
CREATE INDEX corral_queue_agent_state ON corral_queue (agent, state, attempts);
