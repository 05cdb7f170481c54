-- 0020 lock batches in flight together: nothing to do on SQLite.
-- On PostgreSQL corral_lock_batch now takes every key's lock first, in one order, so that
-- the several batches a gateway sends at once cannot deadlock. SQLite runs one writer at
-- a time.
SELECT 1;
