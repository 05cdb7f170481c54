-- 0019 anomaly episodes: at most one open anomaly of a kind and subject for the kinds
-- recorded once per episode (crash_loop, lock_expired, hook_failed, budget_overrun,
-- run_stuck): a new occurrence updates the open one. Several control plane processes may
-- see one occurrence at once; the insert that loses (ON CONFLICT DO NOTHING) updates the
-- winner's row instead. runner_offline (once per outage, by offline_since) and
-- token_reused (one row per attempt) are left out.
CREATE UNIQUE INDEX corral_anomalies_episode ON corral_anomalies (kind, subject)
    WHERE resolved_at IS NULL
        AND kind IN ('crash_loop', 'lock_expired', 'hook_failed', 'budget_overrun', 'run_stuck');
