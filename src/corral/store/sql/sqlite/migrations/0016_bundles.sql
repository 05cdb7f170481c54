-- 0016 bundles: the project as content-addressed bundles (`corral push`), and the bundle
-- each run ran. corral_bundles keeps each pushed bundle once, by the SHA-256 of its bytes
-- ('sha256:<hex>'), with each agent's own bundle hash (manifest); corral_bundle_head is the
-- project's current bundle (one row), which every control plane on the store converges on
-- (SQLite has no notices: they see a change at their next poll).

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

ALTER TABLE corral_runs ADD COLUMN bundle TEXT;
