-- 0002 queue: the durable per-agent queue with leases and fencing tokens, agent and
-- project control state, and the registry of scheduler processes.

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
    updated_at timestamptz
);

INSERT INTO corral_project (id) VALUES (1);

CREATE TABLE corral_agents (
    agent text PRIMARY KEY,
    scale integer NOT NULL CHECK (scale >= 0),
    queue_size integer NOT NULL CHECK (queue_size >= 1),
    paused boolean NOT NULL DEFAULT false,
    enabled boolean NOT NULL DEFAULT true,
    present boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL
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
    ADD COLUMN item_id bigint REFERENCES corral_queue (id) ON DELETE SET NULL,
    ADD COLUMN fence bigint,
    ADD COLUMN attempt integer,
    ADD COLUMN owner text,
    ADD COLUMN rerun_requested boolean NOT NULL DEFAULT false,
    ADD COLUMN kill_requested_at timestamptz;

CREATE INDEX corral_runs_item ON corral_runs (item_id)
    WHERE item_id IS NOT NULL;

CREATE INDEX corral_runs_owner_live ON corral_runs (owner)
    WHERE owner IS NOT NULL AND state IN ('queued', 'starting', 'running');

CREATE TABLE corral_schedulers (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'draining', 'stopped')),
    gateway_url text
);
