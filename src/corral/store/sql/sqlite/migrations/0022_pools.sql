-- 0022 pools: the size the autoscaler decided for an agent with a [scale] table, read by
-- every claim (at most min(scale, pool_size) runs of the agent at once; NULL: scale
-- alone, as for `scale = N`), the lease of the scheduler that decides it (one decider per
-- agent across processes), and the decisions with their inputs (history, pruned with
-- historyRetentionDays).
ALTER TABLE corral_agents ADD COLUMN pool_size INTEGER CHECK (pool_size IS NULL OR pool_size >= 0);
ALTER TABLE corral_agents ADD COLUMN pool_owner TEXT;
ALTER TABLE corral_agents ADD COLUMN pool_lease_until TEXT;

CREATE TABLE corral_pool_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    scheduler_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    desired INTEGER NOT NULL CHECK (desired >= 0),
    direction TEXT NOT NULL CHECK (direction IN ('grow', 'shrink', 'hold')),
    reason TEXT NOT NULL,
    inputs TEXT NOT NULL
);
CREATE INDEX corral_pool_decisions_agent ON corral_pool_decisions (agent, id);
CREATE INDEX corral_pool_decisions_time ON corral_pool_decisions (decided_at);
