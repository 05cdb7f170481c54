-- 0013 lock functions: nothing to do on SQLite.
-- On PostgreSQL this installs rlock, runlock and rlock-heartbeat as server-side functions,
-- one round trip each. SQLite runs the same steps as one body on the store's worker
-- thread (SqliteStore.atomic), where a statement costs no round trip.
SELECT 1;
