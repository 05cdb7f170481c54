-- 0013 lock functions: rlock, runlock and rlock-heartbeat in one round trip each.
-- Each is one call of a function below, run in autocommit (Store.statement): the
-- function's statements are the transaction, in the order the Python code used to send
-- them one round trip at a time. PL/pgSQL rather than one statement with data-modifying
-- CTEs: every statement in a function takes a fresh snapshot, so what is read after the
-- key's advisory lock includes the previous holder's committed release, and the token is
-- drawn after that lock (in grant order); the sub-statements of a single statement share
-- one snapshot taken before the lock, which would give neither.
-- Time: p_now is the store's clock when a test installed one; NULL means the real clock,
-- read here once the key's lock is held (clock_timestamp()), as the Python steps read it
-- inside their transaction: a grant's acquired_at is then never before the previous
-- holder's release, however long the call waited for the key or a pooled connection.

-- The first live waiter (rlock --wait) for a free or expired key gets it, unless that is
-- p_except (who takes it itself): the new lock row, or NULL if nobody was served.
-- The caller holds the key's advisory lock.
CREATE FUNCTION corral_lock_serve(p_key text, p_now timestamptz, p_except text)
RETURNS corral_locks
LANGUAGE plpgsql AS $$
DECLARE
    head corral_lock_waits;
    got corral_locks;
BEGIN
    -- FOR SHARE OF r: a run that is ending (its finalise holds the row) is waited for and
    -- then re-read, ended, and passed over; a lock is never handed to a run whose end
    -- could not see it (the ended run would hold it until its TTL ran out).
    SELECT w.* INTO head FROM corral_lock_waits w JOIN corral_runs r ON r.id = w.run_id
    WHERE w.key = p_key AND w.deadline > p_now AND r.state IN ('starting', 'running')
    ORDER BY w.id
    LIMIT 1
    FOR SHARE OF r;
    IF NOT FOUND OR head.run_id = p_except THEN
        RETURN NULL;
    END IF;
    INSERT INTO corral_locks AS l (key, run_id, token, acquired_at, expires_at)
    VALUES (p_key, head.run_id, nextval('corral_lock_tokens'), p_now,
            p_now + make_interval(secs => head.ttl_seconds))
    ON CONFLICT (key) DO UPDATE
    SET run_id = excluded.run_id, token = excluded.token,
        acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
    RETURNING l.* INTO got;
    DELETE FROM corral_lock_waits w WHERE w.key = p_key AND w.run_id = head.run_id;
    DELETE FROM corral_lock_wants w WHERE w.run_id = head.run_id;
    RETURN got;
END
$$;

-- A try-lock (rlock): outcome 'granted' or 'refreshed' (token, acquired_at, expires_at of
-- the lock), 'held' (holder, acquired_at = held since; p_run_id now wants the key for
-- p_want seconds), 'deadlock' (that want would close a cycle: p_run_id wants nothing, and
-- edges is the wait-for graph, [[waiter, via, holder], ...], for the caller to name the
-- cycle), 'no_run' or 'ended' (state: the run's).
CREATE FUNCTION corral_rlock(
    p_key text, p_run_id text, p_now timestamptz, p_ttl double precision,
    p_want double precision
)
RETURNS TABLE (outcome text, holder text, token bigint, acquired_at timestamptz,
               expires_at timestamptz, state text, edges jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz;
    v_state text;
    cur corral_locks;
    got corral_locks;
    v_token bigint;
    v_edges jsonb;
BEGIN
    -- Serialise the takers of the key (the query lock_key takes the same lock).
    PERFORM pg_advisory_xact_lock(hashtext('corral_locks'),
                                  hashtext(current_schema() || ':' || p_key));
    v_now := coalesce(p_now, clock_timestamp());
    -- FOR SHARE: a transaction ending the run (which releases its locks) waits for this
    -- one, or this one sees the run ended.
    SELECT r.state INTO v_state FROM corral_runs r WHERE r.id = p_run_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_run', NULL::text, NULL::bigint, NULL::timestamptz,
                            NULL::timestamptz, NULL::text, NULL::jsonb;
        RETURN;
    END IF;
    IF v_state NOT IN ('starting', 'running') THEN
        RETURN QUERY SELECT 'ended', NULL::text, NULL::bigint, NULL::timestamptz,
                            NULL::timestamptz, v_state, NULL::jsonb;
        RETURN;
    END IF;
    -- Twice at most: the holder's row can vanish between the two statements only when its
    -- run ended meanwhile (that release does not serialise on the key).
    FOR attempt IN 1..2 LOOP
        got := NULL;
        SELECT l.* INTO cur FROM corral_locks l WHERE l.key = p_key;
        IF FOUND AND cur.run_id <> p_run_id THEN
            IF cur.expires_at > v_now THEN
                got := cur;
            ELSE
                -- Expired, and runs wait for it: the first of them gets it.
                got := corral_lock_serve(p_key, v_now, p_run_id);
            END IF;
        END IF;
        IF got.key IS NOT NULL THEN
            -- Held by another run: p_run_id wants the key, unless that closes a cycle.
            -- Cycle checks are serialised (the query lock_wait_graph takes the same lock).
            PERFORM pg_advisory_xact_lock(hashtext('corral_wait_graph'),
                                          hashtext(current_schema()));
            SELECT coalesce(jsonb_agg(jsonb_build_array(e.waiter, e.via, e.holder)), '[]')
            INTO v_edges
            FROM (
                SELECT w.run_id AS waiter, w.key AS via, l.run_id AS holder
                FROM corral_lock_waits w
                JOIN corral_locks l ON l.key = w.key
                JOIN corral_runs r ON r.id = w.run_id
                WHERE w.deadline > v_now AND r.state IN ('starting', 'running')
                  AND l.run_id <> w.run_id AND l.expires_at > v_now
                UNION ALL
                SELECT w.run_id, w.key, l.run_id
                FROM corral_lock_wants w
                JOIN corral_locks l ON l.key = w.key
                JOIN corral_runs r ON r.id = w.run_id
                WHERE w.expires_at > v_now AND r.state IN ('starting', 'running')
                  AND l.run_id <> w.run_id AND l.expires_at > v_now
                UNION ALL
                SELECT c.caller_run_id, 'call://' || c.id, c.callee_run_id
                FROM corral_calls c
                WHERE c.waiting_since IS NOT NULL AND c.state IN ('pending', 'running')
                  AND c.callee_run_id IS NOT NULL
            ) e;
            IF EXISTS (
                WITH RECURSIVE reach (node) AS (
                    SELECT got.run_id
                    UNION
                    SELECT e.edge ->> 2 FROM jsonb_array_elements(v_edges) AS e (edge)
                    JOIN reach ON e.edge ->> 0 = reach.node
                )
                SELECT 1 FROM reach WHERE node = p_run_id
            ) THEN
                DELETE FROM corral_lock_wants w WHERE w.run_id = p_run_id;
                RETURN QUERY SELECT 'deadlock', got.run_id, NULL::bigint, got.acquired_at,
                                    NULL::timestamptz, NULL::text, v_edges;
                RETURN;
            END IF;
            -- One want per run (its latest refusal); a refusal for the same key keeps its
            -- since.
            INSERT INTO corral_lock_wants AS w (run_id, key, since, expires_at)
            VALUES (p_run_id, p_key, v_now, v_now + make_interval(secs => greatest(p_want, 0)))
            ON CONFLICT (run_id) DO UPDATE
            SET since = CASE WHEN w.key = excluded.key AND w.expires_at > excluded.since
                             THEN w.since ELSE excluded.since END,
                key = excluded.key,
                expires_at = excluded.expires_at;
            RETURN QUERY SELECT 'held', got.run_id, NULL::bigint, got.acquired_at,
                                NULL::timestamptz, NULL::text, NULL::jsonb;
            RETURN;
        END IF;
        -- Free or expired -> inserted or taken over with a new token; held by p_run_id ->
        -- refreshed (its token and acquired_at kept); held unexpired by another run (it
        -- took the key since the read above) -> no row, and the loop reads again.
        v_token := nextval('corral_lock_tokens');
        INSERT INTO corral_locks AS l (key, run_id, token, acquired_at, expires_at)
        VALUES (p_key, p_run_id, v_token, v_now, v_now + make_interval(secs => p_ttl))
        ON CONFLICT (key) DO UPDATE
        SET token = CASE WHEN l.run_id = excluded.run_id THEN l.token ELSE excluded.token END,
            acquired_at = CASE WHEN l.run_id = excluded.run_id
                               THEN l.acquired_at ELSE excluded.acquired_at END,
            run_id = excluded.run_id,
            expires_at = excluded.expires_at
        WHERE l.expires_at <= excluded.acquired_at OR l.run_id = excluded.run_id
        RETURNING l.* INTO got;
        IF got.key IS NOT NULL THEN
            DELETE FROM corral_lock_waits w WHERE w.key = p_key AND w.run_id = p_run_id;
            DELETE FROM corral_lock_wants w WHERE w.run_id = p_run_id;
            RETURN QUERY SELECT CASE WHEN got.token = v_token THEN 'granted' ELSE 'refreshed' END,
                                got.run_id, got.token, got.acquired_at, got.expires_at,
                                NULL::text, NULL::jsonb;
            RETURN;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'cannot lock %: the key kept changing hands', p_key;
END
$$;

-- Release (runlock): true if p_run_id held the key (expired or not). Its want, if any, is
-- dropped, and the first run waiting for the key gets it.
CREATE FUNCTION corral_runlock(p_key text, p_run_id text, p_now timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('corral_locks'),
                                  hashtext(current_schema() || ':' || p_key));
    DELETE FROM corral_locks l WHERE l.key = p_key AND l.run_id = p_run_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM corral_lock_wants w WHERE w.run_id = p_run_id;
    PERFORM corral_lock_serve(p_key, coalesce(p_now, clock_timestamp()), '');
    RETURN true;
END
$$;

-- rlock-heartbeat: the key now expires p_ttl seconds from now if p_run_id holds it (even if it
-- expired and nobody took it): that expiry, else NULL. An expired lock that runs wait for
-- goes to the first of them instead (NULL).
CREATE FUNCTION corral_rlock_heartbeat(
    p_key text, p_run_id text, p_now timestamptz, p_ttl double precision
)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_expires_at timestamptz;
    cur corral_locks;
    served corral_locks;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('corral_locks'),
                                  hashtext(current_schema() || ':' || p_key));
    v_now := coalesce(p_now, clock_timestamp());
    v_expires_at := v_now + make_interval(secs => p_ttl);
    SELECT l.* INTO cur FROM corral_locks l WHERE l.key = p_key;
    IF NOT FOUND OR cur.run_id <> p_run_id THEN
        RETURN NULL;
    END IF;
    IF cur.expires_at <= v_now THEN
        served := corral_lock_serve(p_key, v_now, p_run_id);
        IF served.key IS NOT NULL THEN
            RETURN NULL;
        END IF;
    END IF;
    UPDATE corral_locks l SET expires_at = v_expires_at
    WHERE l.key = p_key AND l.run_id = p_run_id;
    RETURN v_expires_at;
END
$$;
