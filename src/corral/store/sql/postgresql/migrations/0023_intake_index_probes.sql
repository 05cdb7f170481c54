-- 0023 intake's lookups by key are probes of an index, whatever the plan cache chose.
-- corral_enqueue_item looked an item's dedupe keys up with "dedupe_key = ANY(keys) ORDER BY
-- id LIMIT 1". PL/pgSQL runs its statements on a cached plan, generic after five calls;
-- the generic plan, not knowing the keys, guesses ten matches and reads corral_queue in id
-- order through its primary key until the first: nearly always none, so every delivery
-- read every item ever queued (measured: 2,295 of 2,300 lookups in a benchmark window,
-- 0.61 ms each at 3,000 items, growing with the queue). The lookup is now
-- corral_dedupe_holder: one equality probe of the unique index per key.
-- Nothing else changes: same rows, same locks, same order of statements.

-- The item holding any of p_keys (a dedupe key and its aliases), the oldest if several:
-- one probe of the unique index per key. Not "dedupe_key = ANY(keys) ORDER BY id LIMIT 1":
-- PL/pgSQL caches a generic plan, which guesses ten items per array of keys and so walks
-- the primary key in id order, filtering every item ever queued (nearly always to find
-- none); an equality on the unique index is planned as one probe whatever the key.
CREATE FUNCTION corral_dedupe_holder(p_keys text[]) RETURNS corral_queue
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_key text;
    found_item corral_queue;
    oldest corral_queue;
BEGIN
    FOREACH v_key IN ARRAY p_keys LOOP
        SELECT * INTO found_item FROM corral_queue WHERE corral_queue.dedupe_key = v_key;
        IF FOUND AND (oldest.id IS NULL OR found_item.id < oldest.id) THEN
            oldest := found_item;
        END IF;
    END LOOP;
    RETURN oldest;
END
$$;

CREATE OR REPLACE FUNCTION corral_enqueue_item(
    p_item jsonb, p_overflow text, p_now timestamptz, p_max_attempts integer,
    p_project_capped boolean
)
RETURNS TABLE (outcome text, id bigint, agent text, trigger_kind text, trigger_detail jsonb,
               prompt text, parent_run_id text, rerun_count integer, dedupe_key text,
               state text, reason text, enqueued_at timestamptz, claimed_at timestamptz,
               finished_at timestamptz, attempts integer, max_attempts integer,
               lease_owner text, lease_expires_at timestamptz, fence bigint, run_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    a corral_agents;
    q corral_queue;
    v_agent text := p_item->>'agent';
    v_key text := p_item->>'dedupe_key';
    v_keys text[];
    v_reason text;
BEGIN
    -- The agent's row first, as every intake and claim of the agent takes it.
    SELECT * INTO a FROM corral_agents WHERE corral_agents.agent = v_agent FOR UPDATE;
    IF v_key IS NOT NULL THEN
        v_keys := ARRAY[v_key] || coalesce(
            ARRAY(SELECT jsonb_array_elements_text(p_item->'dedupe_aliases')), '{}');
        q := corral_dedupe_holder(v_keys);
        IF q.id IS NOT NULL THEN
            RETURN QUERY SELECT 'duplicate', q.id, q.agent, q.trigger_kind, q.trigger_detail,
                q.prompt, q.parent_run_id, q.rerun_count, q.dedupe_key, q.state, q.reason,
                q.enqueued_at, q.claimed_at, q.finished_at, q.attempts, q.max_attempts,
                q.lease_owner, q.lease_expires_at, q.fence, q.run_id;
            RETURN;
        END IF;
    END IF;
    IF a.agent IS NULL OR NOT a.present OR NOT a.enabled OR a.scale = 0
       OR a.daily_cost_cap IS NOT NULL OR p_project_capped THEN
        RETURN QUERY SELECT 'fallback', NULL::bigint, NULL, NULL, NULL::jsonb, NULL, NULL,
            NULL::integer, NULL, NULL, NULL, NULL::timestamptz, NULL::timestamptz,
            NULL::timestamptz, NULL::integer, NULL::integer, NULL, NULL::timestamptz,
            NULL::bigint, NULL;
        RETURN;
    END IF;
    -- a.queued: the never-tried queued items (items given back after a lost lease are
    -- outside the bound), exact under the row's lock.
    IF a.queued >= a.queue_size THEN
        IF p_overflow = 'refuse' THEN
            v_reason := 'queue full';
        ELSE
            v_reason := format('queue full (%s items): dropped for a newer item', a.queue_size);
            RETURN QUERY
            WITH dropped AS (
                UPDATE corral_queue
                SET state = 'dropped', reason = v_reason, finished_at = p_now
                WHERE corral_queue.id IN (
                    SELECT o.id FROM corral_queue o
                    WHERE o.agent = v_agent AND o.state = 'queued' AND o.attempts = 0
                    ORDER BY o.id LIMIT a.queued - a.queue_size + 1)
                RETURNING *
            ), failed AS (
                UPDATE corral_calls
                SET state = 'error', error = 'the call was dropped: ' || v_reason,
                    ended_at = p_now, waiting_since = NULL
                WHERE corral_calls.item_id IN (
                    SELECT d.id FROM dropped d WHERE d.trigger_kind = 'call')
                  AND corral_calls.state IN ('pending', 'running')
            )
            SELECT 'dropped', d.id, d.agent, d.trigger_kind, d.trigger_detail, d.prompt,
                d.parent_run_id, d.rerun_count, d.dedupe_key, d.state, d.reason,
                d.enqueued_at, d.claimed_at, d.finished_at, d.attempts, d.max_attempts,
                d.lease_owner, d.lease_expires_at, d.fence, d.run_id
            FROM dropped d ORDER BY d.id;
            v_reason := NULL;
        END IF;
    END IF;
    INSERT INTO corral_queue AS n (agent, trigger_kind, trigger_detail, prompt, parent_run_id,
                                   rerun_count, dedupe_key, state, reason, enqueued_at,
                                   finished_at, max_attempts)
    VALUES (v_agent, p_item->>'trigger_kind', p_item->'trigger_detail', p_item->>'prompt',
            p_item->>'parent_run_id', coalesce((p_item->>'rerun_count')::integer, 0),
            -- A rejected item holds no dedupe key: a retry once the cause is fixed is new.
            CASE WHEN v_reason IS NULL THEN v_key END,
            CASE WHEN v_reason IS NULL THEN 'queued' ELSE 'rejected' END, v_reason, p_now,
            CASE WHEN v_reason IS NULL THEN NULL ELSE p_now END, p_max_attempts)
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING * INTO q;
    IF q.id IS NULL THEN
        -- Another transaction committed the same key meanwhile (only possible across
        -- agents): its item is the duplicate.
        q := corral_dedupe_holder(v_keys);
        outcome := 'duplicate';
    ELSE
        outcome := CASE WHEN v_reason IS NULL THEN 'queued' ELSE 'rejected' END;
    END IF;
    RETURN QUERY SELECT outcome, q.id, q.agent, q.trigger_kind, q.trigger_detail, q.prompt,
        q.parent_run_id, q.rerun_count, q.dedupe_key, q.state, q.reason, q.enqueued_at,
        q.claimed_at, q.finished_at, q.attempts, q.max_attempts, q.lease_owner,
        q.lease_expires_at, q.fence, q.run_id;
END
$$;

-- Lock notices, row by row. 0014's triggers on corral_locks were statement-level with
-- transition tables: every statement of a lock function (a take, a release, a heartbeat,
-- even one changing no row) filled a tuplestore and ran a join over it in a PL/pgSQL call,
-- a fifth of the server's CPU per acquire + release pair. The same notices now come from
-- row-level triggers (one probe of corral_lock_waits per changed row); a heartbeat or a
-- refresh, which keeps the holder, calls nothing.
CREATE OR REPLACE FUNCTION corral_notify_locks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_key text := CASE WHEN TG_OP = 'DELETE' THEN OLD.key ELSE NEW.key END;
BEGIN
    -- Only keys someone waits for (rlock --wait): a plain try-lock or release with nobody
    -- waiting sends nothing, so the hot lock path pays one index probe, not a notice.
    IF EXISTS (SELECT 1 FROM corral_lock_waits w WHERE w.key = v_key) THEN
        PERFORM pg_notify('corral_' || md5(TG_TABLE_SCHEMA),
                          CASE WHEN octet_length(v_key) < 7000 THEN 'lock:' || v_key
                               ELSE '*' END);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER corral_locks_deleted ON corral_locks;
DROP TRIGGER corral_locks_inserted ON corral_locks;
DROP TRIGGER corral_locks_updated ON corral_locks;

-- Row-level (0023): a lock statement touches one row or a run's few, and a statement that
-- changes none (a release of a key not held, a refused take-over) costs no call; an
-- update that keeps the holder (a heartbeat, a refresh) fails the WHEN and costs none.
CREATE TRIGGER corral_locks_deleted AFTER DELETE ON corral_locks
    FOR EACH ROW EXECUTE FUNCTION corral_notify_locks();

CREATE TRIGGER corral_locks_inserted AFTER INSERT ON corral_locks
    FOR EACH ROW EXECUTE FUNCTION corral_notify_locks();

CREATE TRIGGER corral_locks_updated AFTER UPDATE ON corral_locks
    FOR EACH ROW WHEN (OLD.run_id IS DISTINCT FROM NEW.run_id OR OLD.key IS DISTINCT FROM NEW.key)
    EXECUTE FUNCTION corral_notify_locks();
