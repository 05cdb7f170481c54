-- 0005 accounting: what the built-in harness spends, and the daily cost caps.
-- corral_runs gains the run's token counts and cost in US dollars (NULL: not known, e.g.
-- a command agent) and the budget that stopped it, if one did; corral_agents and
-- corral_project gain their daily cost caps (NULL: no cap).

ALTER TABLE corral_runs ADD COLUMN input_tokens INTEGER;
ALTER TABLE corral_runs ADD COLUMN output_tokens INTEGER;
ALTER TABLE corral_runs ADD COLUMN cache_read_tokens INTEGER;
ALTER TABLE corral_runs ADD COLUMN cache_write_tokens INTEGER;
ALTER TABLE corral_runs ADD COLUMN cost_usd REAL;
ALTER TABLE corral_runs ADD COLUMN budget TEXT;

CREATE INDEX corral_runs_created ON corral_runs (created_at);

ALTER TABLE corral_agents ADD COLUMN daily_cost_cap REAL
    CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0);
ALTER TABLE corral_project ADD COLUMN daily_cost_cap REAL
    CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0);
