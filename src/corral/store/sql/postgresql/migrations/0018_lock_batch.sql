-- 0018 lock batch: concurrent try-locks, releases and heartbeats in one round trip and
-- one commit. A gateway collects the lock requests that arrive while its previous batch
-- is in flight and sends them as one call of corral_lock_batch (store/_locks.py): each
-- operation is the call of corral_rlock, corral_runlock or corral_rlock_heartbeat it
-- would have been alone, in the order given, inside one transaction. Every statement of
-- those functions takes a fresh snapshot, so an operation sees the ones before it in the
-- batch as it would have seen them committed; the key's advisory lock is taken again by
-- the same transaction (it is reentrant), so tokens are still drawn in grant order. Each
-- caller is answered only after the batch committed.
-- Row n of the answer is operation n (1-based): rlock's columns; runlock: outcome
-- 'released' or 'not_held'; heartbeat: outcome 'extended' (expires_at) or 'lost'.
CREATE FUNCTION corral_lock_batch(
    p_ops text[], p_keys text[], p_run_ids text[], p_nows timestamptz[],
    p_ttls double precision[], p_wants double precision[]
)
RETURNS TABLE (n integer, outcome text, holder text, token bigint, acquired_at timestamptz,
               expires_at timestamptz, state text, edges jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    v_expires_at timestamptz;
BEGIN
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
