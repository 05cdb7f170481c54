-- 0028 rollouts: a pushed bundle run by a share of its agents' runs (`corral push
-- --canary`) before it becomes current. One rollout runs at a time (the partial unique
-- index); it ends promoted (the candidate made current), rolled_back or halted. The
-- runs record the bundle they ran (corral_runs.bundle): the canary's or the baseline's.

CREATE TABLE corral_rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    baseline TEXT NOT NULL REFERENCES corral_bundles (hash),
    candidate TEXT NOT NULL REFERENCES corral_bundles (hash),
    agents TEXT NOT NULL,
    share REAL NOT NULL CHECK (share > 0 AND share <= 1),
    rule TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('running', 'promoted', 'rolled_back', 'halted')),
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    ended_at TEXT,
    ended_by TEXT,
    reason TEXT
);

CREATE UNIQUE INDEX corral_rollouts_one_running ON corral_rollouts (state)
    WHERE state = 'running';
