-- 0017 enqueue functions: nothing to do on SQLite.
-- On PostgreSQL this installs intake (one item or a batch of them) and create_call as
-- server-side functions, one round trip each. SQLite runs the same steps as one body on
-- the store's worker thread (SqliteStore.atomic), where a statement costs no round trip.
SELECT 1;
