-- 0003 locks: resource locks (rlock). One row per held key; the primary key is what
-- makes a key held by at most one run. token is the fencing token of the grant, drawn
-- from corral_project.fence_counter (writers are serialised by BEGIN IMMEDIATE).
-- A released lock is deleted; an expired one stays until it is taken or released.

CREATE TABLE corral_locks (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    token INTEGER NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE INDEX corral_locks_run ON corral_locks (run_id);
