-- 0022 pools: the size the autoscaler decided for an agent with a [scale] table, read by
-- every claim (at most least(scale, pool_size) runs of the agent at once; NULL: scale
-- alone, as for `scale = N`), the lease of the scheduler that decides it (one decider per
-- agent across processes), and the decisions with their inputs (history, pruned with
-- historyRetentionDays). A changed pool size wakes every dispatcher, as a changed scale
-- does (0014); a lease renewal does not.
ALTER TABLE corral_agents ADD COLUMN pool_size integer CHECK (pool_size IS NULL OR pool_size >= 0);
ALTER TABLE corral_agents ADD COLUMN pool_owner text;
ALTER TABLE corral_agents ADD COLUMN pool_lease_until timestamptz;

CREATE TABLE corral_pool_decisions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent text NOT NULL,
    decided_at timestamptz NOT NULL,
    scheduler_id text NOT NULL,
    policy text NOT NULL,
    size integer NOT NULL CHECK (size >= 0),
    desired integer NOT NULL CHECK (desired >= 0),
    direction text NOT NULL CHECK (direction IN ('grow', 'shrink', 'hold')),
    reason text NOT NULL,
    inputs jsonb NOT NULL
);
CREATE INDEX corral_pool_decisions_agent ON corral_pool_decisions (agent, id);
CREATE INDEX corral_pool_decisions_time ON corral_pool_decisions (decided_at);

DROP TRIGGER corral_agents_dispatch ON corral_agents;
CREATE TRIGGER corral_agents_dispatch AFTER UPDATE ON corral_agents FOR EACH ROW
    WHEN (OLD.paused IS DISTINCT FROM NEW.paused OR OLD.enabled IS DISTINCT FROM NEW.enabled
          OR OLD.present IS DISTINCT FROM NEW.present OR OLD.scale IS DISTINCT FROM NEW.scale
          OR OLD.pool_size IS DISTINCT FROM NEW.pool_size)
    EXECUTE FUNCTION corral_notify_dispatch();
