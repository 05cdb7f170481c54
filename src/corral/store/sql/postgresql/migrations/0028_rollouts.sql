-- 0028 rollouts: a pushed bundle run by a share of its agents' runs (`corral push
-- --canary`) before it becomes current. One rollout runs at a time (the partial unique
-- index); it ends promoted (the candidate made current), rolled_back or halted. The
-- runs record the bundle they ran (corral_runs.bundle): the canary's or the baseline's.

CREATE TABLE corral_rollouts (
    id bigserial PRIMARY KEY,
    baseline text NOT NULL REFERENCES corral_bundles (hash),
    candidate text NOT NULL REFERENCES corral_bundles (hash),
    agents jsonb NOT NULL,
    share double precision NOT NULL CHECK (share > 0 AND share <= 1),
    rule jsonb NOT NULL,
    state text NOT NULL
        CHECK (state IN ('running', 'promoted', 'rolled_back', 'halted')),
    created_at timestamptz NOT NULL,
    created_by text NOT NULL,
    ended_at timestamptz,
    ended_by text,
    reason text
);

CREATE UNIQUE INDEX corral_rollouts_one_running ON corral_rollouts (state)
    WHERE state = 'running';
