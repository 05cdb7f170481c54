-- 0027 fleet autoscale: the lease of the one scheduler that sizes the runner fleet
-- ([fleet.autoscale]), and the runners it started through its provider (their state,
-- the provider's handle on them, why they ended). Its decisions go to
-- corral_pool_decisions (0022) under the name ':fleet'.
CREATE TABLE corral_fleet_scaler (
    id TEXT PRIMARY KEY CHECK (id = 'fleet'),
    owner TEXT,
    lease_until TEXT
);

CREATE TABLE corral_fleet_members (
    name TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    host TEXT NOT NULL,
    handle TEXT,
    token_id TEXT,
    runner_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('starting', 'active', 'draining', 'stopped', 'failed')),
    started_at TEXT NOT NULL,
    ended_at TEXT,
    detail TEXT
);
CREATE INDEX corral_fleet_members_state ON corral_fleet_members (state);
