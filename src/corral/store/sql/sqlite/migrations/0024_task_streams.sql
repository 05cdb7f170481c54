-- 0024 task streams: the [[tasks]] trigger asks, of each run it started that has ended,
-- whether the run finished a task (done or failed); corral_tasks_run covers only claims
-- still held. The finished tasks of a run are found by this index.
CREATE INDEX corral_tasks_finished_run ON corral_tasks (run_id)
    WHERE run_id IS NOT NULL AND status IN ('done', 'failed');
