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

ALTER TABLE corral_runs ADD COLUMN runner_id TEXT;
