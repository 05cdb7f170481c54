-- 0018 lock batch: nothing to do on SQLite.
-- On PostgreSQL this installs corral_lock_batch, which runs concurrent try-locks,
-- releases and heartbeats in one call and one commit. SQLite already runs the bodies that
-- arrive while its worker thread is busy as one batch, committed once (D10).
SELECT 1;
