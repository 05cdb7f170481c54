-- 0020 lock batches take their keys first: corral_lock_batch takes the advisory lock of
-- every key of its batch, in one order (by the lock's number), before it runs any
-- operation. Before, it took each key as its operation came, so a batch holding the
-- wait-for graph's lock (taken for one key's want) could wait for a later key held by a
-- lone call (key, then graph) or another process's batch that waited for the graph:
-- PostgreSQL's deadlock detector rolled one back after deadlock_timeout (1 s), and it was
-- sent again (D81). Now every transaction takes its key locks before the graph's lock,
-- batches in the same order, so that cycle cannot form.
-- The operations themselves are unchanged: each is the call of corral_rlock,
-- corral_runlock or corral_rlock_heartbeat it would have been alone, in the order given.
CREATE OR REPLACE FUNCTION corral_lock_batch(
    p_ops text[], p_keys text[], p_run_ids text[], p_nows timestamptz[],
    p_ttls double precision[], p_wants double precision[]
)
RETURNS TABLE (n integer, outcome text, holder text, token bigint, acquired_at timestamptz,
               expires_at timestamptz, state text, edges jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    v_lock integer;
    v_expires_at timestamptz;
BEGIN
    FOR v_lock IN
        SELECT DISTINCT hashtext(current_schema() || ':' || k) AS lock_id
        FROM unnest(p_keys) AS k ORDER BY lock_id
    LOOP
        PERFORM pg_advisory_xact_lock(hashtext('corral_locks'), v_lock);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_ops, 1), 0) LOOP
        IF p_ops[i] = 'rlock' THEN
            RETURN QUERY SELECT i, f.* FROM corral_rlock(
                p_keys[i], p_run_ids[i], p_nows[i], p_ttls[i], p_wants[i]) AS f;
        ELSIF p_ops[i] = 'runlock' THEN
            RETURN QUERY SELECT i, CASE WHEN corral_runlock(p_keys[i], p_run_ids[i], p_nows[i])
                                        THEN 'released' ELSE 'not_held' END,
                                NULL::text, NULL::bigint, NULL::timestamptz,
                                NULL::timestamptz, NULL::text, NULL::jsonb;
        ELSIF p_ops[i] = 'heartbeat' THEN
            v_expires_at := corral_rlock_heartbeat(p_keys[i], p_run_ids[i], p_nows[i],
                                                   p_ttls[i]);
            RETURN QUERY SELECT i, CASE WHEN v_expires_at IS NULL THEN 'lost'
                                        ELSE 'extended' END,
                                NULL::text, NULL::bigint, NULL::timestamptz, v_expires_at,
                                NULL::text, NULL::jsonb;
        ELSE
            RAISE EXCEPTION 'corral_lock_batch: unknown operation % (rlock, runlock, heartbeat)',
                p_ops[i];
        END IF;
    END LOOP;
END
$$;
