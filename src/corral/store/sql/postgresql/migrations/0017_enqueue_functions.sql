-- 0017 enqueue functions: intake in one round trip on PostgreSQL.
-- corral_enqueue takes a list of items (one, or every item of a batch of webhook
-- deliveries) and enqueues them in order, each as QueueOps._enqueue_locked does: the
-- agent's row locked, the dedupe key (and its aliases) looked up, the queue bound applied
-- (drop the oldest never-tried items, or refuse with "queue full"), the item inserted
-- ON CONFLICT DO NOTHING. The queue counters are kept by the triggers of 0012, as for any
-- statement. corral_create_call is create_call's transaction: the project lock, the
-- caller's checks, the enqueue (refusing when full) and the call row.
-- What they leave to Python, which words the refusals and owns the cost rules: an agent
-- that takes no triggers (unknown, absent, disabled, scale 0) and an agent or project
-- with a daily cost cap. Such an item comes back as 'fallback' having changed nothing, and
-- corral_enqueue stops there: the caller enqueues that item the old way, in the same
-- transaction, and calls again for the rest, so the order of the items is kept.
-- PL/pgSQL, not one statement: each item must see the rows the one before it changed (a
-- second item of the same agent counts the first against the bound), which the
-- sub-statements of one statement, sharing one snapshot, would not.

-- One item. Rows: the items dropped for it ('dropped'), then the item itself ('queued',
-- 'rejected' for a full queue under 'refuse', 'duplicate': the item already holding its
-- dedupe key); or one row 'fallback' (all columns NULL) having changed nothing.
CREATE FUNCTION corral_enqueue_item(
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
        SELECT * INTO q FROM corral_queue WHERE corral_queue.dedupe_key = ANY(v_keys)
        ORDER BY corral_queue.id LIMIT 1;
        IF FOUND THEN
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
        SELECT * INTO q FROM corral_queue WHERE corral_queue.dedupe_key = ANY(v_keys)
        ORDER BY corral_queue.id LIMIT 1;
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

-- Items in order (p_items: a JSON array of objects with NewItem's fields), each as
-- corral_enqueue_item; ord is the item's position (0-based). Stops after a 'fallback'.
-- The project row is read, not locked (intake needs only the agent's row).
CREATE FUNCTION corral_enqueue(p_items jsonb, p_overflow text, p_now timestamptz)
RETURNS TABLE (ord integer, outcome text, id bigint, agent text, trigger_kind text,
               trigger_detail jsonb, prompt text, parent_run_id text, rerun_count integer,
               dedupe_key text, state text, reason text, enqueued_at timestamptz,
               claimed_at timestamptz, finished_at timestamptz, attempts integer,
               max_attempts integer, lease_owner text, lease_expires_at timestamptz,
               fence bigint, run_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    p corral_project;
    i integer := 0;
    v_item jsonb;
    v_fallback boolean;
BEGIN
    SELECT * INTO p FROM corral_project WHERE corral_project.id = 1;
    FOR v_item IN SELECT e FROM jsonb_array_elements(p_items) AS e LOOP
        v_fallback := false;
        FOR outcome, id, agent, trigger_kind, trigger_detail, prompt, parent_run_id,
            rerun_count, dedupe_key, state, reason, enqueued_at, claimed_at, finished_at,
            attempts, max_attempts, lease_owner, lease_expires_at, fence, run_id IN
            SELECT * FROM corral_enqueue_item(v_item, p_overflow, p_now, p.max_attempts,
                                              p.daily_cost_cap IS NOT NULL)
        LOOP
            ord := i;
            v_fallback := v_fallback OR outcome = 'fallback';
            RETURN NEXT;
        END LOOP;
        EXIT WHEN v_fallback;
        i := i + 1;
    END LOOP;
END
$$;

-- create_call's transaction as one call. outcome: 'no_run' / 'ended' (caller_state) /
-- 'self' / 'too_deep' (depth: the call's) with nothing changed; 'fallback' (the callee
-- takes no triggers or has a cost cap: nothing changed, Python runs the transaction);
-- 'rejected' (reason; the item was recorded rejected: a full queue never evicts work for
-- a call); 'called' with the call's columns.
CREATE FUNCTION corral_create_call(
    p_run_id text, p_target text, p_context text, p_max_depth integer, p_call_id text,
    p_now timestamptz
)
RETURNS TABLE (outcome text, caller_state text, reason text, id text, caller_run_id text,
               caller_agent text, target_agent text, depth integer, context text,
               item_id bigint, callee_run_id text, state text, return_value text,
               error text, created_at timestamptz, ended_at timestamptz,
               waiting_since timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    p corral_project;
    r corral_runs;
    v_depth integer;
    e record;
    c corral_calls;
BEGIN
    -- The project lock first, as lock_project_for_call takes it.
    SELECT * INTO p FROM corral_project WHERE corral_project.id = 1 FOR UPDATE;
    SELECT * INTO r FROM corral_runs WHERE corral_runs.id = p_run_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_run', NULL, NULL, NULL, NULL, NULL, NULL, NULL::integer,
            NULL, NULL::bigint, NULL, NULL, NULL, NULL, NULL::timestamptz,
            NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT coalesce(max(k.depth), 0) + 1 INTO v_depth
    FROM (SELECT k.depth FROM corral_calls k WHERE k.callee_run_id = r.id LIMIT 1) k;
    IF r.state NOT IN ('starting', 'running') THEN
        outcome := 'ended';
    ELSIF r.agent = p_target THEN
        outcome := 'self';
    ELSIF v_depth > p_max_depth THEN
        outcome := 'too_deep';
    END IF;
    IF outcome IS NOT NULL THEN
        RETURN QUERY SELECT outcome, r.state, NULL, NULL, NULL, r.agent, NULL, v_depth,
            NULL, NULL::bigint, NULL, NULL, NULL, NULL, NULL::timestamptz,
            NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT * INTO e FROM corral_enqueue_item(
        jsonb_build_object('agent', p_target, 'trigger_kind', 'call',
                           'trigger_detail', jsonb_build_object('caller', r.agent,
                                                                'context', p_context),
                           'parent_run_id', p_run_id),
        'refuse', p_now, p.max_attempts, p.daily_cost_cap IS NOT NULL);
    IF e.outcome <> 'queued' THEN
        RETURN QUERY SELECT e.outcome, r.state, e.reason, NULL, NULL, r.agent, NULL,
            v_depth, NULL, e.id, NULL, NULL, NULL, NULL, NULL::timestamptz,
            NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    INSERT INTO corral_calls (id, caller_run_id, caller_agent, target_agent, depth, context,
                              item_id, state, created_at)
    VALUES (p_call_id, p_run_id, r.agent, p_target, v_depth, p_context, e.id, 'pending',
            p_now)
    RETURNING * INTO c;
    RETURN QUERY SELECT 'called', r.state, NULL, c.id, c.caller_run_id, c.caller_agent,
        c.target_agent, c.depth, c.context, c.item_id, c.callee_run_id, c.state,
        c.return_value, c.error, c.created_at, c.ended_at, c.waiting_since;
END
$$;

-- An operator's request (enqueue_request: POST /control/runs, `corral run`) as one call:
-- the project lock (waiting p_lock_wait at most), the item as corral_enqueue_item, its
-- idempotency key and its audit entry. A key already recorded (a replay, or reused for
-- another request) comes back as 'fallback' with nothing queued: Python answers it (the
-- expired keys pruned meanwhile stay pruned, as its own transaction would prune them).
CREATE FUNCTION corral_enqueue_request(
    p_item jsonb, p_overflow text, p_now timestamptz, p_key text, p_fingerprint text,
    p_expires_at timestamptz, p_actor text, p_action text, p_lock_wait text
)
RETURNS TABLE (outcome text, id bigint, agent text, trigger_kind text, trigger_detail jsonb,
               prompt text, parent_run_id text, rerun_count integer, dedupe_key text,
               state text, reason text, enqueued_at timestamptz, claimed_at timestamptz,
               finished_at timestamptz, attempts integer, max_attempts integer,
               lease_owner text, lease_expires_at timestamptz, fence bigint, run_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    p corral_project;
    v_dropped bigint[] := '{}';
    v_detail jsonb;
    v_id bigint;
    v_agent text;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_wait, true);
    SELECT * INTO p FROM corral_project WHERE corral_project.id = 1 FOR UPDATE;
    IF p_key IS NOT NULL THEN
        DELETE FROM corral_request_keys k WHERE k.expires_at < p_now;
        PERFORM 1 FROM corral_request_keys k WHERE k.key = p_key;
        IF FOUND THEN
            outcome := 'fallback';
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    FOR outcome, id, agent, trigger_kind, trigger_detail, prompt, parent_run_id,
        rerun_count, dedupe_key, state, reason, enqueued_at, claimed_at, finished_at,
        attempts, max_attempts, lease_owner, lease_expires_at, fence, run_id IN
        SELECT * FROM corral_enqueue_item(p_item, p_overflow, p_now, p.max_attempts,
                                          p.daily_cost_cap IS NOT NULL)
    LOOP
        v_id := id;
        v_agent := agent;
        IF outcome = 'dropped' THEN
            v_dropped := v_dropped || v_id;
        ELSIF outcome = 'fallback' THEN
            RETURN NEXT;
            RETURN;
        ELSE
            -- The item's row (the last): its key and audit entry, worded as in Python.
            v_detail := jsonb_build_object('item', v_id, 'state', state);
            IF reason IS NOT NULL THEN
                v_detail := v_detail || jsonb_build_object('reason', reason);
            END IF;
            IF cardinality(v_dropped) > 0 THEN
                v_detail := v_detail || jsonb_build_object('dropped', to_jsonb(v_dropped));
            END IF;
            IF p_key IS NOT NULL THEN
                v_detail := v_detail || jsonb_build_object('key', p_key);
                INSERT INTO corral_request_keys AS k
                    (key, fingerprint, agent, item_id, dropped, created_at, expires_at)
                VALUES (p_key, p_fingerprint, v_agent, v_id,
                        jsonb_build_object('ids', to_jsonb(v_dropped)), p_now, p_expires_at);
            END IF;
            INSERT INTO corral_audit AS a (at, actor, action, subject, detail)
            VALUES (p_now, p_actor, p_action, p_item->>'agent', v_detail);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
