-- 0007 operator tokens (and two indexes for /metrics, at the end).
-- corral_operator_tokens holds the tokens that authenticate the control API, the
-- dashboard and /metrics (`corral token create NAME`). Only the SHA-256 of a token is kept
-- (hex); the token itself is shown once, when it is made. A name is never reused, even
-- after its token is revoked, so "token:<name>" names one token for good in the audit log.

CREATE TABLE corral_operator_tokens (
    name text PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- /metrics counts the runs that started and the items set aside since its last scrape;
-- these keep each scrape an index range, however long the history.
CREATE INDEX corral_runs_started ON corral_runs (started_at)
    WHERE started_at IS NOT NULL;

CREATE INDEX corral_queue_set_aside ON corral_queue (finished_at)
    WHERE state IN ('dropped', 'rejected');
