-- 0023 intake's lookups by key are probes of an index: nothing to do on SQLite.
-- On PostgreSQL corral_enqueue_item's dedupe lookup (a cached generic plan that read the
-- whole queue in id order) becomes one probe of the unique index per key. SQLite plans
-- find_dedupe_any per statement and searches corral_queue_dedupe already.
SELECT 1;
