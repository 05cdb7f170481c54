-- 0026 provider rate limits: one token bucket per (provider, key) that every scheduler
-- and runner shares (request permits, and tokens charged after each answer), throttled
-- for everyone by a 429 / Retry-After; the runs waiting for a permit (fair turns between
-- agents) and when each agent was last served.
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
