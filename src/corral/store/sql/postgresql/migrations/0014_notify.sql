-- 0014 notify: change notices for waiters in other processes (LISTEN/NOTIFY).
-- Each trigger sends small notices (a topic) on the store's channel, 'corral_' || md5 of
-- its schema: the dispatcher's 'queue', 'lock:<key>', 'call:<id>' (store/_notify.py).
-- Statement-level with transition tables: one call per statement, whatever its row count;
-- PostgreSQL folds identical notices of one transaction into one and delivers them at
-- commit. '*' (a key too long for a notice) wakes every waiter.
CREATE FUNCTION corral_notify_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF EXISTS (SELECT 1 FROM corral_new_rows WHERE state = 'queued') THEN
            PERFORM pg_notify('corral_' || md5(TG_TABLE_SCHEMA), 'queue');
        END IF;
    -- No join of the two transition tables (they have no index: a join of a 100k-row
    -- update is quadratic). An item (re)queued, or a claimed one ended, may free work or
    -- a slot; a claim (queued -> claimed) or a lease renewal (claimed -> claimed) sends
    -- nothing. A queued item updated in place (a reservation) sends a spare notice, which
    -- costs one empty claim.
    ELSIF EXISTS (SELECT 1 FROM corral_new_rows WHERE state = 'queued')
       OR (EXISTS (SELECT 1 FROM corral_old_rows WHERE state = 'claimed')
           AND EXISTS (SELECT 1 FROM corral_new_rows WHERE state <> 'claimed')) THEN
        PERFORM pg_notify('corral_' || md5(TG_TABLE_SCHEMA), 'queue');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER corral_queue_inserted AFTER INSERT ON corral_queue
    REFERENCING NEW TABLE AS corral_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION corral_notify_queue();

CREATE TRIGGER corral_queue_updated AFTER UPDATE ON corral_queue
    REFERENCING OLD TABLE AS corral_old_rows NEW TABLE AS corral_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION corral_notify_queue();

CREATE FUNCTION corral_notify_locks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    channel text := 'corral_' || md5(TG_TABLE_SCHEMA);
BEGIN
    -- Only keys someone waits for (rlock --wait): a plain try-lock or release with nobody
    -- waiting sends nothing, so the hot lock path pays one index probe, not a notice.
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify(channel, CASE WHEN octet_length(o.key) < 7000 THEN 'lock:' || o.key
                                        ELSE '*' END)
        FROM corral_old_rows o
        WHERE EXISTS (SELECT 1 FROM corral_lock_waits w WHERE w.key = o.key);
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify(channel, CASE WHEN octet_length(n.key) < 7000 THEN 'lock:' || n.key
                                        ELSE '*' END)
        FROM corral_new_rows n
        WHERE EXISTS (SELECT 1 FROM corral_lock_waits w WHERE w.key = n.key);
    ELSE
        PERFORM pg_notify(channel, CASE WHEN octet_length(n.key) < 7000 THEN 'lock:' || n.key
                                        ELSE '*' END)
        FROM corral_new_rows n JOIN corral_old_rows o ON o.key = n.key
        WHERE n.run_id <> o.run_id
          AND EXISTS (SELECT 1 FROM corral_lock_waits w WHERE w.key = n.key);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER corral_locks_deleted AFTER DELETE ON corral_locks
    REFERENCING OLD TABLE AS corral_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION corral_notify_locks();

CREATE TRIGGER corral_locks_inserted AFTER INSERT ON corral_locks
    REFERENCING NEW TABLE AS corral_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION corral_notify_locks();

CREATE TRIGGER corral_locks_updated AFTER UPDATE ON corral_locks
    REFERENCING OLD TABLE AS corral_old_rows NEW TABLE AS corral_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION corral_notify_locks();

CREATE FUNCTION corral_notify_calls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Calls that are ended after this statement and had not ended before it (an
    -- anti-join by hash on the id, never a nested loop over two unindexed tables).
    PERFORM pg_notify('corral_' || md5(TG_TABLE_SCHEMA), 'call:' || id)
    FROM (SELECT id FROM corral_new_rows WHERE state IN ('completed', 'error')
          EXCEPT
          SELECT id FROM corral_old_rows WHERE state IN ('completed', 'error')) AS ended;
    RETURN NULL;
END
$$;

CREATE TRIGGER corral_calls_updated AFTER UPDATE ON corral_calls
    REFERENCING OLD TABLE AS corral_old_rows NEW TABLE AS corral_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION corral_notify_calls();

-- Dispatch may have become possible without any item changing: an agent or the project
-- resumed, enabled, or given more slots. Row-level with WHEN: the tables are small, and
-- the hot updates (claim counters, the fence counter) fail the WHEN and cost no call.
CREATE FUNCTION corral_notify_dispatch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('corral_' || md5(TG_TABLE_SCHEMA), 'queue');
    RETURN NULL;
END
$$;

CREATE TRIGGER corral_agents_dispatch AFTER UPDATE ON corral_agents FOR EACH ROW
    WHEN (OLD.paused IS DISTINCT FROM NEW.paused OR OLD.enabled IS DISTINCT FROM NEW.enabled
          OR OLD.present IS DISTINCT FROM NEW.present OR OLD.scale IS DISTINCT FROM NEW.scale)
    EXECUTE FUNCTION corral_notify_dispatch();

CREATE TRIGGER corral_project_dispatch AFTER UPDATE ON corral_project FOR EACH ROW
    WHEN (OLD.paused IS DISTINCT FROM NEW.paused OR OLD.scale_cap IS DISTINCT FROM NEW.scale_cap)
    EXECUTE FUNCTION corral_notify_dispatch();
