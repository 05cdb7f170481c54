-- 0029 fleet rollouts: `corral fleet upgrade` records the rollout of a corral version
-- across the runners (target, channel, canary count, batch share, watch window, where
-- the runners get it) and its progress (state, the steps and each runner's report, as
-- JSON). revision guards every change (compare and set: several control plane
-- processes advance the same rollout).
CREATE TABLE corral_fleet_rollouts (
    id text PRIMARY KEY,
    target text NOT NULL,
    channel text NOT NULL,
    canary integer NOT NULL CHECK (canary >= 0),
    batch_share double precision NOT NULL CHECK (batch_share > 0 AND batch_share <= 1),
    watch_seconds double precision NOT NULL CHECK (watch_seconds >= 0),
    source text NOT NULL,
    state text NOT NULL,
    revision integer NOT NULL,
    detail text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX corral_fleet_rollouts_created ON corral_fleet_rollouts (created_at);
-- One rollout runs at a time: a second one started meanwhile is refused.
CREATE UNIQUE INDEX corral_fleet_rollouts_one_running ON corral_fleet_rollouts (state)
    WHERE state = 'running';
