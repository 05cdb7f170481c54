-- 0004 agent API: what the gateway's agent API needs from the store.
-- corral_runs gains the hash of the run's secret (the secret itself is never stored),
-- the value the run returned with al-return, when its status text was last set, and the
-- exit code it asked for with al-exit.
-- corral_calls holds agent-to-agent calls; corral_lock_waits the runs blocked in
-- `rlock --wait` (the lock half of the wait-for graph); corral_audit operators' actions.

ALTER TABLE corral_runs ADD COLUMN secret_hash text;
ALTER TABLE corral_runs ADD COLUMN status_at timestamptz;
ALTER TABLE corral_runs ADD COLUMN return_value text;
ALTER TABLE corral_runs ADD COLUMN exit_requested integer;

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

CREATE TABLE corral_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    subject text NOT NULL,
    detail jsonb
);

CREATE INDEX corral_audit_at ON corral_audit (at);
