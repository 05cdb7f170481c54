-- 0020 lock batches take their keys first: nothing to do on SQLite.
-- On PostgreSQL corral_lock_batch now takes every key's lock, in one order, before any
-- operation, so a batch never holds the wait-for graph's lock while it waits for a key.
-- SQLite runs one writer at a time.
SELECT 1;
