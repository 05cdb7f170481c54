-- 0026 provider rate limits: one token bucket per (provider, key) that every scheduler
-- and runner shares (request permits, and tokens charged after each answer), throttled
-- for everyone by a 429 / Retry-After; the runs waiting for a permit (fair turns between
-- agents) and when each agent was last served.
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
