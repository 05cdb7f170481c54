-- 0027 fleet autoscale: the lease of the one scheduler that sizes the runner fleet
-- ([fleet.autoscale]), and the runners it started through its provider (their state,
-- the provider's handle on them, why they ended). Its decisions go to
-- corral_pool_decisions (0022) under the name ':fleet'.
CREATE TABLE corral_fleet_scaler (
    id text PRIMARY KEY CHECK (id = 'fleet'),
    owner text,
    lease_until timestamptz
);

CREATE TABLE corral_fleet_members (
    name text PRIMARY KEY,
    provider text NOT NULL,
    host text NOT NULL,
    handle text,
    token_id text,
    runner_id text,
    state text NOT NULL CHECK (state IN ('starting', 'active', 'draining', 'stopped', 'failed')),
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    detail text
);
CREATE INDEX corral_fleet_members_state ON corral_fleet_members (state);
