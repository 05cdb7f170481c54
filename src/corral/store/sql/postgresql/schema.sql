-- The schema of a fresh install: every numbered migration folded in.
-- When adding migration NNNN, change this file to match; tests/store/test_migrations.py
-- checks that applying every migration from empty gives this same schema.
-- Tables are created unqualified, in the first schema of the search_path.

CREATE TABLE corral_runs (
    id text PRIMARY KEY,
    agent text NOT NULL,
    trigger_kind text NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail jsonb,
    prompt text,
    state text NOT NULL
        CHECK (state IN ('queued', 'starting', 'running',
                         'succeeded', 'failed', 'timed_out', 'killed', 'lost')),
    parent_run_id text REFERENCES corral_runs (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    ended_at timestamptz,
    exit_code integer,
    error text,
    pid integer,
    host text,
    status_text text,
    item_id bigint,  -- REFERENCES corral_queue (id), added below: the tables refer to each other
    fence bigint,
    attempt integer,
    owner text,
    rerun_requested boolean NOT NULL DEFAULT false,
    kill_requested_at timestamptz,
    secret_hash text,
    status_at timestamptz,
    return_value text,
    exit_requested integer,
    input_tokens bigint,
    output_tokens bigint,
    cache_read_tokens bigint,
    cache_write_tokens bigint,
    cost_usd double precision,
    budget text
);

CREATE INDEX corral_runs_agent_created ON corral_runs (agent, created_at);

CREATE INDEX corral_runs_created ON corral_runs (created_at);

CREATE INDEX corral_runs_live ON corral_runs (state)
    WHERE state IN ('queued', 'starting', 'running');

CREATE INDEX corral_runs_ended ON corral_runs (ended_at)
    WHERE ended_at IS NOT NULL;

CREATE INDEX corral_runs_parent ON corral_runs (parent_run_id)
    WHERE parent_run_id IS NOT NULL;

CREATE INDEX corral_runs_item ON corral_runs (item_id)
    WHERE item_id IS NOT NULL;

CREATE INDEX corral_runs_owner_live ON corral_runs (owner)
    WHERE owner IS NOT NULL AND state IN ('queued', 'starting', 'running');

-- One row (id = 1). Every transaction that changes the queue or its claims locks it
-- first (SELECT … FOR UPDATE), so they run one at a time and counting active claims
-- inside them is race-free. fence_counter is the source of fencing tokens: strictly
-- increasing across the whole store.
CREATE TABLE corral_project (
    id integer PRIMARY KEY CHECK (id = 1),
    paused boolean NOT NULL DEFAULT false,
    scale_cap integer CHECK (scale_cap IS NULL OR scale_cap >= 0),
    max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    max_reruns integer NOT NULL DEFAULT 10 CHECK (max_reruns >= 0),
    fence_counter bigint NOT NULL DEFAULT 0,
    updated_at timestamptz,
    daily_cost_cap double precision
        CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0)
);

INSERT INTO corral_project (id) VALUES (1);

CREATE TABLE corral_agents (
    agent text PRIMARY KEY,
    scale integer NOT NULL CHECK (scale >= 0),
    queue_size integer NOT NULL CHECK (queue_size >= 1),
    paused boolean NOT NULL DEFAULT false,
    enabled boolean NOT NULL DEFAULT true,
    present boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL,
    daily_cost_cap double precision
        CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0)
);

CREATE TABLE corral_queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent text NOT NULL,
    trigger_kind text NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail jsonb,
    prompt text,
    parent_run_id text REFERENCES corral_runs (id) ON DELETE SET NULL,
    rerun_count integer NOT NULL DEFAULT 0 CHECK (rerun_count >= 0),
    dedupe_key text,
    state text NOT NULL
        CHECK (state IN ('queued', 'claimed', 'done', 'dropped', 'rejected', 'failed')),
    reason text,
    enqueued_at timestamptz NOT NULL,
    claimed_at timestamptz,
    finished_at timestamptz,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    lease_owner text,
    lease_expires_at timestamptz,
    fence bigint,
    run_id text REFERENCES corral_runs (id) ON DELETE SET NULL
);

CREATE UNIQUE INDEX corral_queue_dedupe ON corral_queue (dedupe_key)
    WHERE dedupe_key IS NOT NULL;

-- What makes claiming fast: only queued rows, in FIFO order per agent.
CREATE INDEX corral_queue_queued ON corral_queue (agent, id)
    WHERE state = 'queued';

CREATE INDEX corral_queue_claimed ON corral_queue (lease_expires_at)
    WHERE state = 'claimed';

CREATE INDEX corral_queue_agent ON corral_queue (agent, id);

ALTER TABLE corral_runs
    ADD FOREIGN KEY (item_id) REFERENCES corral_queue (id) ON DELETE SET NULL;

CREATE TABLE corral_schedulers (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'draining', 'stopped')),
    gateway_url text
);

-- Resource locks (0003): one row per held key; the primary key serialises takers.
CREATE SEQUENCE corral_lock_tokens AS bigint;

CREATE TABLE corral_locks (
    key text PRIMARY KEY,
    run_id text NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    token bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX corral_locks_run ON corral_locks (run_id);

-- The agent API (0004): run secrets' hashes, calls, lock waits, the audit log.
CREATE UNIQUE INDEX corral_runs_secret ON corral_runs (secret_hash)
    WHERE secret_hash IS NOT NULL;

CREATE TABLE corral_calls (
    id text PRIMARY KEY,
    caller_run_id text NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    caller_agent text NOT NULL,
    target_agent text NOT NULL,
    depth integer NOT NULL CHECK (depth >= 1),
    context text NOT NULL,
    item_id bigint REFERENCES corral_queue (id) ON DELETE SET NULL,
    callee_run_id text REFERENCES corral_runs (id) ON DELETE SET NULL,
    state text NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'error')),
    return_value text,
    error text,
    created_at timestamptz NOT NULL,
    ended_at timestamptz,
    waiting_since timestamptz
);

CREATE INDEX corral_calls_caller ON corral_calls (caller_run_id);

CREATE INDEX corral_calls_item ON corral_calls (item_id) WHERE item_id IS NOT NULL;

CREATE INDEX corral_calls_callee ON corral_calls (callee_run_id)
    WHERE callee_run_id IS NOT NULL;

-- id order is arrival order, the order waiters are served in.
CREATE TABLE corral_lock_waits (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL,
    run_id text NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    since timestamptz NOT NULL,
    deadline timestamptz NOT NULL,
    ttl_seconds double precision NOT NULL CHECK (ttl_seconds > 0),
    UNIQUE (run_id, key)
);

CREATE INDEX corral_lock_waits_key ON corral_lock_waits (key, id);

-- Lock wants (0010): a refused try-lock's run wants the key, for a short time.
CREATE TABLE corral_lock_wants (
    run_id text PRIMARY KEY REFERENCES corral_runs (id) ON DELETE CASCADE,
    key text NOT NULL,
    since timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX corral_lock_wants_key ON corral_lock_wants (key);

CREATE TABLE corral_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    subject text NOT NULL,
    detail jsonb
);

CREATE INDEX corral_audit_at ON corral_audit (at);

-- Webhook receipts (0006): every delivery, its verification, outcome and per-agent results.
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
    duplicate_of text,
    -- 0009: a stranger's receipt: its kind, and the deliveries counted on it
    repeat_key text,
    repeats integer NOT NULL DEFAULT 0,
    last_repeat_at timestamptz
);

CREATE UNIQUE INDEX corral_webhook_receipts_delivery
    ON corral_webhook_receipts (source, delivery_id)
    WHERE delivery_id IS NOT NULL AND replay_of IS NULL AND outcome IN ('accepted', 'ping');

CREATE INDEX corral_webhook_receipts_received ON corral_webhook_receipts (received_at);

CREATE INDEX corral_webhook_receipts_repeats
    ON corral_webhook_receipts (repeat_key, received_at) WHERE repeat_key IS NOT NULL;

-- Counting an agent's queued and claimed items (every enqueue and claim does) reads this
-- index alone, however long the agent's history of done items grows.
CREATE INDEX corral_queue_agent_state ON corral_queue (agent, state, attempts);

-- Operator tokens (0007): only each token's SHA-256 is kept; names are never reused.
CREATE TABLE corral_operator_tokens (
    name text PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- /metrics (0007): runs started and items set aside since the last scrape.
CREATE INDEX corral_runs_started ON corral_runs (started_at)
    WHERE started_at IS NOT NULL;

CREATE INDEX corral_queue_set_aside ON corral_queue (finished_at)
    WHERE state IN ('dropped', 'rejected');

-- Idempotency keys of operator requests (0008): a retry with the same key answers the
-- item the first request queued. Kept a day.
CREATE TABLE corral_request_keys (
    key text PRIMARY KEY,
    fingerprint text NOT NULL,
    agent text NOT NULL,
    item_id bigint NOT NULL,
    dropped jsonb,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX corral_request_keys_expires ON corral_request_keys (expires_at);

-- History (0011): deleting a run nulls corral_queue.run_id / parent_run_id (indexed, so
-- no queue scan per run); retention deletes finished items oldest first; open items
-- newest first read only the open rows.
CREATE INDEX corral_queue_run ON corral_queue (run_id)
    WHERE run_id IS NOT NULL;

CREATE INDEX corral_queue_parent ON corral_queue (parent_run_id)
    WHERE parent_run_id IS NOT NULL;

CREATE INDEX corral_queue_finished ON corral_queue (finished_at)
    WHERE state IN ('done', 'dropped', 'rejected', 'failed');

CREATE INDEX corral_queue_open ON corral_queue (id)
    WHERE state IN ('queued', 'claimed');
