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

ALTER TABLE corral_runs ADD COLUMN runner_id text;
