-- 0003 locks: resource locks (rlock). One row per held key; the primary key is what
-- makes a key held by at most one run. token is the fencing token of the grant, drawn
-- from the sequence corral_lock_tokens (not the project's fence counter: lock traffic
-- must not contend with the project lock). A released lock is deleted; an expired one
-- stays until it is taken or released.

CREATE SEQUENCE corral_lock_tokens AS bigint;

CREATE TABLE corral_locks (
    key text PRIMARY KEY,
    run_id text NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    token bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX corral_locks_run ON corral_locks (run_id);
