-- 0011 history: work that grows with history stays flat.
-- Deleting a run sets corral_queue.run_id / parent_run_id to NULL (ON DELETE SET NULL):
-- without an index on each, every deleted run scanned the whole queue table.
CREATE INDEX corral_queue_run ON corral_queue (run_id)
    WHERE run_id IS NOT NULL;

CREATE INDEX corral_queue_parent ON corral_queue (parent_run_id)
    WHERE parent_run_id IS NOT NULL;

-- Retention deletes finished items in batches, oldest first.
CREATE INDEX corral_queue_finished ON corral_queue (finished_at)
    WHERE state IN ('done', 'dropped', 'rejected', 'failed');

-- The open items (queued or claimed) newest first (`list_items` for the dashboard):
-- a walk of the few open rows, not of every item ever queued.
CREATE INDEX corral_queue_open ON corral_queue (id)
    WHERE state IN ('queued', 'claimed');
