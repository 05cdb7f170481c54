-- 0010 lock wants: the try-lock half of the wait-for graph.
-- A plain `rlock` that is refused records that its run wants the key (agents written for
-- Action Llama retry a refused rlock in a loop): one row per run, its latest refusal,
-- until expires_at (a short time, renewed by each refusal), or until the run takes or
-- releases a lock, or ends. A want that would close a cycle is answered "possible
-- deadlock detected" instead of being recorded.

CREATE TABLE corral_lock_wants (
    run_id TEXT PRIMARY KEY REFERENCES corral_runs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    since TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE INDEX corral_lock_wants_key ON corral_lock_wants (key);
