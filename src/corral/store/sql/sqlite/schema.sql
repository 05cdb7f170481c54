-- The schema of a fresh install: every numbered migration folded in.
-- When adding migration NNNN, change this file to match; tests/store/test_migrations.py
-- checks that applying every migration from empty gives this same schema.
-- Timestamps are ISO-8601 TEXT in UTC with microseconds ("2024-05-01T12:00:00.000000+00:00"):
-- fixed width, so text order is time order. JSON columns hold json.dumps() text.

CREATE TABLE corral_runs (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    trigger_kind TEXT NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail TEXT,
    prompt TEXT,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'starting', 'running',
                         'succeeded', 'failed', 'timed_out', 'killed', 'lost')),
    parent_run_id TEXT REFERENCES corral_runs (id) ON DELETE SET NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER,
    error TEXT,
    pid INTEGER,
    host TEXT,
    status_text TEXT,
    item_id INTEGER REFERENCES corral_queue (id) ON DELETE SET NULL,
    fence INTEGER,
    attempt INTEGER,
    owner TEXT,
    rerun_requested INTEGER NOT NULL DEFAULT 0 CHECK (rerun_requested IN (0, 1)),
    kill_requested_at TEXT,
    secret_hash TEXT,
    status_at TEXT,
    return_value TEXT,
    exit_requested INTEGER,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_write_tokens INTEGER,
    cost_usd REAL,
    budget TEXT,
    runner_id TEXT,
    bundle TEXT
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

-- One row (id = 1). Every transaction that changes the queue or its claims reads it
-- first; on SQLite BEGIN IMMEDIATE already serialises writers. fence_counter is the
-- source of fencing tokens: strictly increasing across the whole store.
CREATE TABLE corral_project (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    scale_cap INTEGER CHECK (scale_cap IS NULL OR scale_cap >= 0),
    max_attempts INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    max_reruns INTEGER NOT NULL DEFAULT 10 CHECK (max_reruns >= 0),
    fence_counter INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT,
    daily_cost_cap REAL
        CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0)
);

INSERT INTO corral_project (id) VALUES (1);

CREATE TABLE corral_agents (
    agent TEXT PRIMARY KEY,
    scale INTEGER NOT NULL CHECK (scale >= 0),
    queue_size INTEGER NOT NULL CHECK (queue_size >= 1),
    paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    present INTEGER NOT NULL DEFAULT 1 CHECK (present IN (0, 1)),
    updated_at TEXT NOT NULL,
    daily_cost_cap REAL
        CHECK (daily_cost_cap IS NULL OR daily_cost_cap >= 0),
    -- 0012: kept by triggers on corral_queue (below)
    queued INTEGER NOT NULL DEFAULT 0,
    requeued INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0,
    -- 0022: the pool the autoscaler sized (NULL: scale alone) and its decider's lease
    pool_size INTEGER CHECK (pool_size IS NULL OR pool_size >= 0),
    pool_owner TEXT,
    pool_lease_until TEXT
);

-- AUTOINCREMENT: ids are never reused, so id order is arrival (FIFO) order for good.
CREATE TABLE corral_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    trigger_kind TEXT NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail TEXT,
    prompt TEXT,
    parent_run_id TEXT REFERENCES corral_runs (id) ON DELETE SET NULL,
    rerun_count INTEGER NOT NULL DEFAULT 0 CHECK (rerun_count >= 0),
    dedupe_key TEXT,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'claimed', 'done', 'dropped', 'rejected', 'failed')),
    reason TEXT,
    enqueued_at TEXT NOT NULL,
    claimed_at TEXT,
    finished_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    lease_owner TEXT,
    lease_expires_at TEXT,
    fence INTEGER,
    run_id TEXT REFERENCES corral_runs (id) ON DELETE SET NULL
);

CREATE UNIQUE INDEX corral_queue_dedupe ON corral_queue (dedupe_key)
    WHERE dedupe_key IS NOT NULL;

CREATE INDEX corral_queue_queued ON corral_queue (agent, id)
    WHERE state = 'queued';

CREATE INDEX corral_queue_claimed ON corral_queue (lease_expires_at)
    WHERE state = 'claimed';

CREATE INDEX corral_queue_agent ON corral_queue (agent, id);

CREATE TABLE corral_schedulers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'draining', 'stopped')),
    gateway_url TEXT
);

-- Resource locks (0003): one row per held key; the primary key serialises takers.
CREATE TABLE corral_locks (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    token INTEGER NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE INDEX corral_locks_run ON corral_locks (run_id);

-- The agent API (0004): run secrets' hashes, calls, lock waits, the audit log.
CREATE UNIQUE INDEX corral_runs_secret ON corral_runs (secret_hash)
    WHERE secret_hash IS NOT NULL;

CREATE TABLE corral_calls (
    id TEXT PRIMARY KEY,
    caller_run_id TEXT NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    caller_agent TEXT NOT NULL,
    target_agent TEXT NOT NULL,
    depth INTEGER NOT NULL CHECK (depth >= 1),
    context TEXT NOT NULL,
    item_id INTEGER REFERENCES corral_queue (id) ON DELETE SET NULL,
    callee_run_id TEXT REFERENCES corral_runs (id) ON DELETE SET NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'error')),
    return_value TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    ended_at TEXT,
    waiting_since TEXT
);

CREATE INDEX corral_calls_caller ON corral_calls (caller_run_id);

CREATE INDEX corral_calls_item ON corral_calls (item_id) WHERE item_id IS NOT NULL;

CREATE INDEX corral_calls_callee ON corral_calls (callee_run_id)
    WHERE callee_run_id IS NOT NULL;

-- AUTOINCREMENT: id order is arrival order, the order waiters are served in.
CREATE TABLE corral_lock_waits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    since TEXT NOT NULL,
    deadline TEXT NOT NULL,
    ttl_seconds REAL NOT NULL CHECK (ttl_seconds > 0),
    UNIQUE (run_id, key)
);

CREATE INDEX corral_lock_waits_key ON corral_lock_waits (key, id);

-- Lock wants (0010): a refused try-lock's run wants the key, for a short time.
CREATE TABLE corral_lock_wants (
    run_id TEXT PRIMARY KEY REFERENCES corral_runs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    since TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE INDEX corral_lock_wants_key ON corral_lock_wants (key);

CREATE TABLE corral_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT
);

CREATE INDEX corral_audit_at ON corral_audit (at);

-- Webhook receipts (0006): every delivery, its verification, outcome and per-agent results.
CREATE TABLE corral_webhook_receipts (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    event TEXT,
    delivery_id TEXT,
    received_at TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    body_size INTEGER NOT NULL CHECK (body_size >= 0),
    body_truncated INTEGER NOT NULL CHECK (body_truncated IN (0, 1)),
    verified INTEGER NOT NULL CHECK (verified IN (0, 1)),
    verification TEXT,
    outcome TEXT NOT NULL
        CHECK (outcome IN ('accepted', 'duplicate', 'refused', 'invalid', 'ping')),
    error TEXT,
    results TEXT NOT NULL,
    replay_of TEXT,
    duplicate_of TEXT,
    -- 0009: a stranger's receipt: its kind, and the deliveries counted on it
    repeat_key TEXT,
    repeats INTEGER NOT NULL DEFAULT 0,
    last_repeat_at TEXT
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
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
);

-- /metrics (0007): runs started and items set aside since the last scrape.
CREATE INDEX corral_runs_started ON corral_runs (started_at)
    WHERE started_at IS NOT NULL;

CREATE INDEX corral_queue_set_aside ON corral_queue (finished_at)
    WHERE state IN ('dropped', 'rejected');

-- Idempotency keys of operator requests (0008): a retry with the same key answers the
-- item the first request queued. Kept a day.
CREATE TABLE corral_request_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    agent TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    dropped TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
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
CREATE TRIGGER corral_queue_count_insert AFTER INSERT ON corral_queue
WHEN NEW.state IN ('queued', 'claimed')
BEGIN
    UPDATE corral_agents
    SET queued = queued + (NEW.state = 'queued' AND NEW.attempts = 0),
        requeued = requeued + (NEW.state = 'queued' AND NEW.attempts > 0),
        running = running + (NEW.state = 'claimed')
    WHERE agent = NEW.agent;
END;

CREATE TRIGGER corral_queue_count_update AFTER UPDATE OF state, attempts, agent ON corral_queue
WHEN OLD.state IS NOT NEW.state OR OLD.attempts IS NOT NEW.attempts
     OR OLD.agent IS NOT NEW.agent
BEGIN
    UPDATE corral_agents
    SET queued = queued - (OLD.state = 'queued' AND OLD.attempts = 0),
        requeued = requeued - (OLD.state = 'queued' AND OLD.attempts > 0),
        running = running - (OLD.state = 'claimed')
    WHERE agent = OLD.agent AND OLD.state IN ('queued', 'claimed');
    UPDATE corral_agents
    SET queued = queued + (NEW.state = 'queued' AND NEW.attempts = 0),
        requeued = requeued + (NEW.state = 'queued' AND NEW.attempts > 0),
        running = running + (NEW.state = 'claimed')
    WHERE agent = NEW.agent AND NEW.state IN ('queued', 'claimed');
END;

CREATE TRIGGER corral_queue_count_delete AFTER DELETE ON corral_queue
WHEN OLD.state IN ('queued', 'claimed')
BEGIN
    UPDATE corral_agents
    SET queued = queued - (OLD.state = 'queued' AND OLD.attempts = 0),
        requeued = requeued - (OLD.state = 'queued' AND OLD.attempts > 0),
        running = running - (OLD.state = 'claimed')
    WHERE agent = OLD.agent;
END;

-- Fleet membership (0015): activation tokens, runners, anomalies, and the runner a run ran on.
-- Tokens and runner credentials are kept by their SHA-256 only (store/_fleet.py).
CREATE TABLE corral_fleet_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL DEFAULT '[]',
    note TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    redeemed_at TEXT,
    redeemed_by TEXT,
    revoked_at TEXT
);

CREATE TABLE corral_runners (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hostname TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL DEFAULT '[]',
    slots INTEGER NOT NULL CHECK (slots >= 1),
    version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'cordoned', 'draining', 'revoked')),
    joined_at TEXT NOT NULL,
    last_heartbeat_at TEXT NOT NULL,
    offline_since TEXT,
    revoked_at TEXT,
    address TEXT,
    token_id TEXT REFERENCES corral_fleet_tokens (id) ON DELETE SET NULL
);

CREATE INDEX corral_runners_heartbeat ON corral_runners (last_heartbeat_at)
    WHERE state <> 'revoked';

CREATE TABLE corral_anomalies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL
        CHECK (kind IN ('runner_offline', 'token_reused', 'crash_loop', 'lock_expired',
                        'hook_failed', 'budget_overrun', 'run_stuck')),
    subject TEXT NOT NULL,
    at TEXT NOT NULL,
    evidence TEXT,
    resolved_at TEXT,
    resolved_by TEXT,
    resolution TEXT
);

CREATE INDEX corral_anomalies_open ON corral_anomalies (kind, at) WHERE resolved_at IS NULL;

-- Anomaly episodes (0019): one open anomaly of a kind and subject, for the kinds recorded
-- once per episode.
CREATE UNIQUE INDEX corral_anomalies_episode ON corral_anomalies (kind, subject)
    WHERE resolved_at IS NULL
        AND kind IN ('crash_loop', 'lock_expired', 'hook_failed', 'budget_overrun', 'run_stuck');

-- Bundles (0016): pushed projects by hash, and the current one.
CREATE TABLE corral_bundles (
    hash TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    size INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    note TEXT
);

CREATE TABLE corral_bundle_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    hash TEXT NOT NULL REFERENCES corral_bundles (hash),
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL
);


-- The task board (0021): tasks keyed (project, id), dependency edges, labels, history.
CREATE TABLE corral_tasks (
    project TEXT NOT NULL,
    id TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
    requires TEXT NOT NULL DEFAULT '[]',
    labels TEXT NOT NULL DEFAULT '[]',
    acceptance TEXT NOT NULL DEFAULT '[]',
    extra TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'claimed', 'done', 'failed', 'cancelled')),
    assignee TEXT,
    run_id TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    claimed_at TEXT,
    heartbeat_at TEXT,
    expires_at TEXT,
    result TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
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
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    requires TEXT NOT NULL,
    PRIMARY KEY (project, task_id, requires),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE,
    FOREIGN KEY (project, requires) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_edges_requires ON corral_task_edges (project, requires, task_id);

CREATE TABLE corral_task_labels (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (project, task_id, label),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_labels_label ON corral_task_labels (label, project, task_id);

CREATE TABLE corral_task_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    token INTEGER,
    detail TEXT,
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_events_task ON corral_task_events (project, task_id, seq);

-- 0022: the autoscaler's decisions, with their inputs (history)
CREATE TABLE corral_pool_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    scheduler_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    desired INTEGER NOT NULL CHECK (desired >= 0),
    direction TEXT NOT NULL CHECK (direction IN ('grow', 'shrink', 'hold')),
    reason TEXT NOT NULL,
    inputs TEXT NOT NULL
);
CREATE INDEX corral_pool_decisions_agent ON corral_pool_decisions (agent, id);
CREATE INDEX corral_pool_decisions_time ON corral_pool_decisions (decided_at);

-- 0027: the fleet autoscaler's lease and the runners it started
CREATE TABLE corral_fleet_scaler (
    id TEXT PRIMARY KEY CHECK (id = 'fleet'),
    owner TEXT,
    lease_until TEXT
);

CREATE TABLE corral_fleet_members (
    name TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    host TEXT NOT NULL,
    handle TEXT,
    token_id TEXT,
    runner_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('starting', 'active', 'draining', 'stopped', 'failed')),
    started_at TEXT NOT NULL,
    ended_at TEXT,
    detail TEXT
);
CREATE INDEX corral_fleet_members_state ON corral_fleet_members (state);

-- Rollouts (0028): a canary bundle run by a share of its agents' runs.
CREATE TABLE corral_rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    baseline TEXT NOT NULL REFERENCES corral_bundles (hash),
    candidate TEXT NOT NULL REFERENCES corral_bundles (hash),
    agents TEXT NOT NULL,
    share REAL NOT NULL CHECK (share > 0 AND share <= 1),
    rule TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('running', 'promoted', 'rolled_back', 'halted')),
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    ended_at TEXT,
    ended_by TEXT,
    reason TEXT
);

CREATE UNIQUE INDEX corral_rollouts_one_running ON corral_rollouts (state)
    WHERE state = 'running';

CREATE TABLE corral_fleet_rollouts (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    channel TEXT NOT NULL,
    canary INTEGER NOT NULL CHECK (canary >= 0),
    batch_share REAL NOT NULL CHECK (batch_share > 0 AND batch_share <= 1),
    watch_seconds REAL NOT NULL CHECK (watch_seconds >= 0),
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    revision INTEGER NOT NULL,
    detail TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX corral_fleet_rollouts_created ON corral_fleet_rollouts (created_at);
-- One rollout runs at a time: a second one started meanwhile is refused.
CREATE UNIQUE INDEX corral_fleet_rollouts_one_running ON corral_fleet_rollouts (state)
    WHERE state = 'running';

-- 0026: provider rate limits (see migrations/0026_provider_buckets.sql)
CREATE TABLE corral_provider_buckets (
    bucket TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    requests REAL NOT NULL,
    tokens REAL NOT NULL,
    refilled_at TEXT NOT NULL,
    throttled_until TEXT,
    last_throttle_at TEXT,
    available_since TEXT,
    factor REAL NOT NULL DEFAULT 1.0 CHECK (factor > 0 AND factor <= 1),
    granted INTEGER NOT NULL DEFAULT 0,
    throttles INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE corral_provider_waiters (
    bucket TEXT NOT NULL,
    waiter TEXT NOT NULL,
    agent TEXT NOT NULL,
    since TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (bucket, waiter)
);

CREATE TABLE corral_provider_shares (
    bucket TEXT NOT NULL,
    agent TEXT NOT NULL,
    last_granted_at TEXT NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, agent)
);
