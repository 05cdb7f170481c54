-- 0008 idempotency keys of operator requests.
-- A client that may send a request twice (a retry after a timeout or a 503) names it with
-- a key (`Idempotency-Key` on POST /control/runs); the key is recorded in the transaction
-- that queues the item, so a retry finds the original item instead of queueing another.
-- One key per project; each is kept until expires_at (a day) and then pruned.
-- fingerprint: SHA-256 (hex) of what was asked, to refuse the key with another request.

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
