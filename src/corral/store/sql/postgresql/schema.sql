-- The schema of a fresh install: every numbered migration folded in.
-- When adding migration NNNN, change this file to match; tests/store/test_migrations.py
-- checks that applying every migration from empty gives this same schema.
-- Tables are created unqualified, in the first schema of the search_path.

CREATE TABLE corral_runs (
    id text PRIMARY KEY,
    agent text NOT NULL,
    trigger_kind text NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail jsonb,
    prompt text,
    state text NOT NULL
        CHECK (state IN ('queued', 'starting', 'running',
                         'succeeded', 'failed', 'timed_out', 'killed', 'lost')),
    parent_run_id text REFERENCES corral_runs (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    ended_at timestamptz,
    exit_code integer,
    error text,
    pid integer,
    host text,
    status_text text,
    item_id bigint,  -- REFERENCES corral_queue (id), added below: the tables refer to each other
    fence bigint,
    attempt integer,
    owner text,
    rerun_requested boolean NOT NULL DEFAULT false,
    kill_requested_at timestamptz,
    secret_hash text,
    status_at timestamptz,
    return_value text,
    exit_requested integer,
    input_tokens bigint,
    output_tokens bigint,
    cache_read_tokens bigint,
    cache_write_tokens bigint,
    cost_usd double precision,
    budget text,
    runner_id text,
    bundle text
);

CREATE INDEX corral_runs_agent_created ON corral_runs (agent, created_at);

CREATE INDEX corral_runs_created ON corral_runs (created_at);

CREATE INDEX corral_runs_live ON corral_runs (state)
    WHERE state IN ('queued', 'starting', 'running');

CREATE INDEX corral_runs_ended ON corral_runs (ended_at)
    WHERE ended_at IS NOT NULL;

CREATE INDEX corral_runs_parent ON corral_runs (parent_run_id)
    WHERE parent_run_id IS NOT NULL;

CREATE INDEX corral_runs_item ON corral_runs (item_id)
    WHERE item_id IS NOT NULL;

CREATE INDEX corral_runs_owner_live ON corral_runs (owner)
    WHERE owner IS NOT NULL AND state IN ('queued', 'starting', 'running');

-- One row (id = 1). Every transaction that changes the queue or its claims locks it
-- first (SELECT … FOR UPDATE), so they run one at a time and counting active claims
-- inside them is race-free. fence_counter is the source of fencing tokens: strictly
-- increasing across the whole store.
CREATE TABLE corral_project (
    id integer PRIMARY KEY CHECK (id = 1),
    paused boolean NOT NULL DEFAULT false,
    scale_cap integer CHECK (scale_cap IS NULL OR scale_cap >= 0),
    max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    max_reruns integer NOT NULL DEFAULT 10 CHECK (max_reruns >= 0),
    fence_counter bigint NOT NULL DEFAULT 0,
    updated_at timestamptz,
    daily_cost_cap double precision
        CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0)
);

INSERT INTO corral_project (id) VALUES (1);

CREATE TABLE corral_agents (
    agent text PRIMARY KEY,
    scale integer NOT NULL CHECK (scale >= 0),
    queue_size integer NOT NULL CHECK (queue_size >= 1),
    paused boolean NOT NULL DEFAULT false,
    enabled boolean NOT NULL DEFAULT true,
    present boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL,
    daily_cost_cap double precision
        CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0),
    -- 0012: kept by triggers on corral_queue (below)
    queued integer NOT NULL DEFAULT 0,
    requeued integer NOT NULL DEFAULT 0,
    running integer NOT NULL DEFAULT 0,
    -- 0022: the pool the autoscaler sized (NULL: scale alone) and its decider's lease
    pool_size integer CHECK (pool_size IS NULL OR pool_size >= 0),
    pool_owner text,
    pool_lease_until timestamptz
);

CREATE TABLE corral_queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent text NOT NULL,
    trigger_kind text NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail jsonb,
    prompt text,
    parent_run_id text REFERENCES corral_runs (id) ON DELETE SET NULL,
    rerun_count integer NOT NULL DEFAULT 0 CHECK (rerun_count >= 0),
    dedupe_key text,
    state text NOT NULL
        CHECK (state IN ('queued', 'claimed', 'done', 'dropped', 'rejected', 'failed')),
    reason text,
    enqueued_at timestamptz NOT NULL,
    claimed_at timestamptz,
    finished_at timestamptz,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    lease_owner text,
    lease_expires_at timestamptz,
    fence bigint,
    run_id text REFERENCES corral_runs (id) ON DELETE SET NULL
);

CREATE UNIQUE INDEX corral_queue_dedupe ON corral_queue (dedupe_key)
    WHERE dedupe_key IS NOT NULL;

-- What makes claiming fast: only queued rows, in FIFO order per agent.
CREATE INDEX corral_queue_queued ON corral_queue (agent, id)
    WHERE state = 'queued';

CREATE INDEX corral_queue_claimed ON corral_queue (lease_expires_at)
    WHERE state = 'claimed';

CREATE INDEX corral_queue_agent ON corral_queue (agent, id);

ALTER TABLE corral_runs
    ADD FOREIGN KEY (item_id) REFERENCES corral_queue (id) ON DELETE SET NULL;

CREATE TABLE corral_schedulers (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'draining', 'stopped')),
    gateway_url text
);

-- Resource locks (0003): one row per held key; the primary key serialises takers.
CREATE SEQUENCE corral_lock_tokens AS bigint;

CREATE TABLE corral_locks (
    key text PRIMARY KEY,
    run_id text NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    token bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX corral_locks_run ON corral_locks (run_id);

-- The agent API (0004): run secrets' hashes, calls, lock waits, the audit log.
CREATE UNIQUE INDEX corral_runs_secret ON corral_runs (secret_hash)
    WHERE secret_hash IS NOT NULL;

CREATE TABLE corral_calls (
    id text PRIMARY KEY,
    caller_run_id text NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    caller_agent text NOT NULL,
    target_agent text NOT NULL,
    depth integer NOT NULL CHECK (depth >= 1),
    context text NOT NULL,
    item_id bigint REFERENCES corral_queue (id) ON DELETE SET NULL,
    callee_run_id text REFERENCES corral_runs (id) ON DELETE SET NULL,
    state text NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'error')),
    return_value text,
    error text,
    created_at timestamptz NOT NULL,
    ended_at timestamptz,
    waiting_since timestamptz
);

CREATE INDEX corral_calls_caller ON corral_calls (caller_run_id);

CREATE INDEX corral_calls_item ON corral_calls (item_id) WHERE item_id IS NOT NULL;

CREATE INDEX corral_calls_callee ON corral_calls (callee_run_id)
    WHERE callee_run_id IS NOT NULL;

-- id order is arrival order, the order waiters are served in.
CREATE TABLE corral_lock_waits (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL,
    run_id text NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    since timestamptz NOT NULL,
    deadline timestamptz NOT NULL,
    ttl_seconds double precision NOT NULL CHECK (ttl_seconds > 0),
    UNIQUE (run_id, key)
);

CREATE INDEX corral_lock_waits_key ON corral_lock_waits (key, id);

-- Lock wants (0010): a refused try-lock's run wants the key, for a short time.
CREATE TABLE corral_lock_wants (
    run_id text PRIMARY KEY REFERENCES corral_runs (id) ON DELETE CASCADE,
    key text NOT NULL,
    since timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX corral_lock_wants_key ON corral_lock_wants (key);

CREATE TABLE corral_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    subject text NOT NULL,
    detail jsonb
);

CREATE INDEX corral_audit_at ON corral_audit (at);

-- Webhook receipts (0006): every delivery, its verification, outcome and per-agent results.
CREATE TABLE corral_webhook_receipts (
    id text PRIMARY KEY,
    source text NOT NULL,
    event text,
    delivery_id text,
    received_at timestamptz NOT NULL,
    headers jsonb NOT NULL,
    body bytea NOT NULL,
    body_size bigint NOT NULL CHECK (body_size >= 0),
    body_truncated boolean NOT NULL,
    verified boolean NOT NULL,
    verification text,
    outcome text NOT NULL
        CHECK (outcome IN ('accepted', 'duplicate', 'refused', 'invalid', 'ping')),
    error text,
    results jsonb NOT NULL,
    replay_of text,
    duplicate_of text,
    -- 0009: a stranger's receipt: its kind, and the deliveries counted on it
    repeat_key text,
    repeats integer NOT NULL DEFAULT 0,
    last_repeat_at timestamptz
);

CREATE UNIQUE INDEX corral_webhook_receipts_delivery
    ON corral_webhook_receipts (source, delivery_id)
    WHERE delivery_id IS NOT NULL AND replay_of IS NULL AND outcome IN ('accepted', 'ping');

CREATE INDEX corral_webhook_receipts_received ON corral_webhook_receipts (received_at);

CREATE INDEX corral_webhook_receipts_repeats
    ON corral_webhook_receipts (repeat_key, received_at) WHERE repeat_key IS NOT NULL;

-- Counting an agent's queued and claimed items (every enqueue and claim does) reads this
-- index alone, however long the agent's history of done items grows.
CREATE INDEX corral_queue_agent_state ON corral_queue (agent, state, attempts);

-- Operator tokens (0007): only each token's SHA-256 is kept; names are never reused.
CREATE TABLE corral_operator_tokens (
    name text PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- /metrics (0007): runs started and items set aside since the last scrape.
CREATE INDEX corral_runs_started ON corral_runs (started_at)
    WHERE started_at IS NOT NULL;

CREATE INDEX corral_queue_set_aside ON corral_queue (finished_at)
    WHERE state IN ('dropped', 'rejected');

-- Idempotency keys of operator requests (0008): a retry with the same key answers the
-- item the first request queued. Kept a day.
CREATE TABLE corral_request_keys (
    key text PRIMARY KEY,
    fingerprint text NOT NULL,
    agent text NOT NULL,
    item_id bigint NOT NULL,
    dropped jsonb,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX corral_request_keys_expires ON corral_request_keys (expires_at);

-- History (0011): deleting a run nulls corral_queue.run_id / parent_run_id (indexed, so
-- no queue scan per run); retention deletes finished items oldest first; open items
-- newest first read only the open rows.
CREATE INDEX corral_queue_run ON corral_queue (run_id)
    WHERE run_id IS NOT NULL;

CREATE INDEX corral_queue_parent ON corral_queue (parent_run_id)
    WHERE parent_run_id IS NOT NULL;

CREATE INDEX corral_queue_finished ON corral_queue (finished_at)
    WHERE state IN ('done', 'dropped', 'rejected', 'failed');

CREATE INDEX corral_queue_open ON corral_queue (id)
    WHERE state IN ('queued', 'claimed');

-- Queue counters (0012): corral_agents.queued / requeued / running, kept by triggers.
CREATE FUNCTION corral_queue_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state IN ('queued', 'claimed') THEN
        UPDATE corral_agents
        SET queued = queued - (OLD.state = 'queued' AND OLD.attempts = 0)::integer,
            requeued = requeued - (OLD.state = 'queued' AND OLD.attempts > 0)::integer,
            running = running - (OLD.state = 'claimed')::integer
        WHERE agent = OLD.agent;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.state IN ('queued', 'claimed') THEN
        UPDATE corral_agents
        SET queued = queued + (NEW.state = 'queued' AND NEW.attempts = 0)::integer,
            requeued = requeued + (NEW.state = 'queued' AND NEW.attempts > 0)::integer,
            running = running + (NEW.state = 'claimed')::integer
        WHERE agent = NEW.agent;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER corral_queue_count_insert AFTER INSERT ON corral_queue
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'claimed'))
    EXECUTE FUNCTION corral_queue_count();

CREATE TRIGGER corral_queue_count_update AFTER UPDATE OF state, attempts, agent ON corral_queue
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
                       OR OLD.attempts IS DISTINCT FROM NEW.attempts
                       OR OLD.agent IS DISTINCT FROM NEW.agent)
    EXECUTE FUNCTION corral_queue_count();

CREATE TRIGGER corral_queue_count_delete AFTER DELETE ON corral_queue
    FOR EACH ROW WHEN (OLD.state IN ('queued', 'claimed'))
    EXECUTE FUNCTION corral_queue_count();

-- Fencing tokens of claims come from a sequence: increasing without locking a row (the
-- project row's fence_counter was a lock every claim of every scheduler queued on). A
-- token drawn after an item's earlier claim committed is greater than that claim's.
CREATE SEQUENCE corral_fences AS bigint;

-- Lock functions (0013): rlock, runlock and rlock-heartbeat, one round trip each (see
-- migrations/0013_lock_functions.sql for why they are PL/pgSQL).
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
          OR OLD.present IS DISTINCT FROM NEW.present OR OLD.scale IS DISTINCT FROM NEW.scale
          OR OLD.pool_size IS DISTINCT FROM NEW.pool_size)
    EXECUTE FUNCTION corral_notify_dispatch();

CREATE TRIGGER corral_project_dispatch AFTER UPDATE ON corral_project FOR EACH ROW
    WHEN (OLD.paused IS DISTINCT FROM NEW.paused OR OLD.scale_cap IS DISTINCT FROM NEW.scale_cap)
    EXECUTE FUNCTION corral_notify_dispatch();

-- Fleet membership (0015): activation tokens, runners, anomalies, and the runner a run ran on.
-- Tokens and runner credentials are kept by their SHA-256 only (store/_fleet.py).
CREATE TABLE corral_fleet_tokens (
    id text PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    labels text NOT NULL DEFAULT '[]',
    note text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    redeemed_at timestamptz,
    redeemed_by text,
    revoked_at timestamptz
);

CREATE TABLE corral_runners (
    id text PRIMARY KEY,
    name text NOT NULL,
    hostname text NOT NULL,
    credential_hash text NOT NULL UNIQUE,
    labels text NOT NULL DEFAULT '[]',
    slots integer NOT NULL CHECK (slots >= 1),
    version text NOT NULL,
    state text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'cordoned', 'draining', 'revoked')),
    joined_at timestamptz NOT NULL,
    last_heartbeat_at timestamptz NOT NULL,
    offline_since timestamptz,
    revoked_at timestamptz,
    address text,
    token_id text REFERENCES corral_fleet_tokens (id) ON DELETE SET NULL
);

CREATE INDEX corral_runners_heartbeat ON corral_runners (last_heartbeat_at)
    WHERE state <> 'revoked';

CREATE TABLE corral_anomalies (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL
        CHECK (kind IN ('runner_offline', 'token_reused', 'crash_loop', 'lock_expired',
                        'hook_failed', 'budget_overrun', 'run_stuck')),
    subject text NOT NULL,
    at timestamptz NOT NULL,
    evidence jsonb,
    resolved_at timestamptz,
    resolved_by text,
    resolution text
);

CREATE INDEX corral_anomalies_open ON corral_anomalies (kind, at) WHERE resolved_at IS NULL;

-- Anomaly episodes (0019): one open anomaly of a kind and subject, for the kinds recorded
-- once per episode.
CREATE UNIQUE INDEX corral_anomalies_episode ON corral_anomalies (kind, subject)
    WHERE resolved_at IS NULL
        AND kind IN ('crash_loop', 'lock_expired', 'hook_failed', 'budget_overrun', 'run_stuck');

-- Bundles (0016): pushed projects by hash, and the current one.
CREATE TABLE corral_bundles (
    hash text PRIMARY KEY,
    data bytea NOT NULL,
    size bigint NOT NULL,
    manifest jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    created_by text NOT NULL,
    note text
);

CREATE TABLE corral_bundle_head (
    id integer PRIMARY KEY CHECK (id = 1),
    hash text NOT NULL REFERENCES corral_bundles (hash),
    set_at timestamptz NOT NULL,
    set_by text NOT NULL
);

CREATE FUNCTION corral_notify_bundle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('corral_' || md5(TG_TABLE_SCHEMA), 'bundle');
    RETURN NULL;
END
$$;

CREATE TRIGGER corral_bundle_head_changed AFTER INSERT OR UPDATE ON corral_bundle_head
    FOR EACH ROW EXECUTE FUNCTION corral_notify_bundle();
-- Enqueue functions (0017): intake and create_call, one round trip each (see
-- migrations/0017_enqueue_functions.sql for what they leave to Python).
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
-- 0020: every key's lock is taken first, in one order (the lock's number), before any
-- operation runs, so a batch never holds the wait-for graph's lock while it waits for a
-- key (a lone call takes its key, then the graph): no deadlock with lone calls or with
-- another process's batch.
CREATE FUNCTION corral_lock_batch(
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

-- The task board (0021): tasks keyed (project, id), dependency edges, labels, history.
CREATE TABLE corral_tasks (
    project text NOT NULL,
    id text NOT NULL,
    title text NOT NULL,
    description text NOT NULL DEFAULT '',
    priority integer NOT NULL CHECK (priority BETWEEN 1 AND 10),
    requires jsonb NOT NULL DEFAULT '[]',
    labels jsonb NOT NULL DEFAULT '[]',
    acceptance jsonb NOT NULL DEFAULT '[]',
    extra jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'claimed', 'done', 'failed', 'cancelled')),
    assignee text,
    run_id text,
    token bigint NOT NULL DEFAULT 0,
    claimed_at timestamptz,
    heartbeat_at timestamptz,
    expires_at timestamptz,
    result text,
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (project, id)
);

CREATE INDEX corral_tasks_open ON corral_tasks (priority DESC, created_at, id, project)
    WHERE status = 'open';
CREATE INDEX corral_tasks_project_open ON corral_tasks (project, priority DESC, created_at, id)
    WHERE status = 'open';
CREATE INDEX corral_tasks_claimed ON corral_tasks (expires_at) WHERE status = 'claimed';
CREATE INDEX corral_tasks_run ON corral_tasks (run_id) WHERE status = 'claimed';
CREATE INDEX corral_tasks_finished_run ON corral_tasks (run_id)
    WHERE run_id IS NOT NULL AND status IN ('done', 'failed');
CREATE INDEX corral_tasks_status ON corral_tasks (status, project, id);
CREATE INDEX corral_tasks_id ON corral_tasks (id);

CREATE TABLE corral_task_edges (
    project text NOT NULL,
    task_id text NOT NULL,
    requires text NOT NULL,
    PRIMARY KEY (project, task_id, requires),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE,
    FOREIGN KEY (project, requires) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_edges_requires ON corral_task_edges (project, requires, task_id);

CREATE TABLE corral_task_labels (
    project text NOT NULL,
    task_id text NOT NULL,
    label text NOT NULL,
    PRIMARY KEY (project, task_id, label),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_labels_label ON corral_task_labels (label, project, task_id);

CREATE TABLE corral_task_events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project text NOT NULL,
    task_id text NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    actor text,
    token bigint,
    detail text,
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_events_task ON corral_task_events (project, task_id, seq);

-- 0022: the autoscaler's decisions, with their inputs (history)
CREATE TABLE corral_pool_decisions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent text NOT NULL,
    decided_at timestamptz NOT NULL,
    scheduler_id text NOT NULL,
    policy text NOT NULL,
    size integer NOT NULL CHECK (size >= 0),
    desired integer NOT NULL CHECK (desired >= 0),
    direction text NOT NULL CHECK (direction IN ('grow', 'shrink', 'hold')),
    reason text NOT NULL,
    inputs jsonb NOT NULL
);
CREATE INDEX corral_pool_decisions_agent ON corral_pool_decisions (agent, id);
CREATE INDEX corral_pool_decisions_time ON corral_pool_decisions (decided_at);

-- 0027: the fleet autoscaler's lease and the runners it started
CREATE TABLE corral_fleet_scaler (
    id text PRIMARY KEY CHECK (id = 'fleet'),
    owner text,
    lease_until timestamptz
);

CREATE TABLE corral_fleet_members (
    name text PRIMARY KEY,
    provider text NOT NULL,
    host text NOT NULL,
    handle text,
    token_id text,
    runner_id text,
    state text NOT NULL CHECK (state IN ('starting', 'active', 'draining', 'stopped', 'failed')),
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    detail text
);
CREATE INDEX corral_fleet_members_state ON corral_fleet_members (state);

-- Rollouts (0028): a canary bundle run by a share of its agents' runs.
CREATE TABLE corral_rollouts (
    id bigserial PRIMARY KEY,
    baseline text NOT NULL REFERENCES corral_bundles (hash),
    candidate text NOT NULL REFERENCES corral_bundles (hash),
    agents jsonb NOT NULL,
    share double precision NOT NULL CHECK (share > 0 AND share <= 1),
    rule jsonb NOT NULL,
    state text NOT NULL
        CHECK (state IN ('running', 'promoted', 'rolled_back', 'halted')),
    created_at timestamptz NOT NULL,
    created_by text NOT NULL,
    ended_at timestamptz,
    ended_by text,
    reason text
);

CREATE UNIQUE INDEX corral_rollouts_one_running ON corral_rollouts (state)
    WHERE state = 'running';

CREATE TABLE corral_fleet_rollouts (
    id text PRIMARY KEY,
    target text NOT NULL,
    channel text NOT NULL,
    canary integer NOT NULL CHECK (canary >= 0),
    batch_share double precision NOT NULL CHECK (batch_share > 0 AND batch_share <= 1),
    watch_seconds double precision NOT NULL CHECK (watch_seconds >= 0),
    source text NOT NULL,
    state text NOT NULL,
    revision integer NOT NULL,
    detail text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX corral_fleet_rollouts_created ON corral_fleet_rollouts (created_at);
-- One rollout runs at a time: a second one started meanwhile is refused.
CREATE UNIQUE INDEX corral_fleet_rollouts_one_running ON corral_fleet_rollouts (state)
    WHERE state = 'running';

-- 0026: provider rate limits (see migrations/0026_provider_buckets.sql)
CREATE TABLE corral_provider_buckets (
    bucket text PRIMARY KEY,
    provider text NOT NULL,
    requests double precision NOT NULL,
    tokens double precision NOT NULL,
    refilled_at timestamptz NOT NULL,
    throttled_until timestamptz,
    last_throttle_at timestamptz,
    available_since timestamptz,
    factor double precision NOT NULL DEFAULT 1.0 CHECK (factor > 0 AND factor <= 1),
    granted bigint NOT NULL DEFAULT 0,
    throttles bigint NOT NULL DEFAULT 0
);

CREATE TABLE corral_provider_waiters (
    bucket text NOT NULL,
    waiter text NOT NULL,
    agent text NOT NULL,
    since timestamptz NOT NULL,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (bucket, waiter)
);

CREATE TABLE corral_provider_shares (
    bucket text NOT NULL,
    agent text NOT NULL,
    last_granted_at timestamptz NOT NULL,
    granted bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, agent)
);
