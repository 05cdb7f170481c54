-- 0016 bundles: the project as content-addressed bundles (`corral push`), and the bundle
-- each run ran. corral_bundles keeps each pushed bundle once, by the SHA-256 of its bytes
-- ('sha256:<hex>'), with each agent's own bundle hash (manifest); corral_bundle_head is the
-- project's current bundle (one row), which every control plane on the store converges on.
-- A change of the head sends the notice 'bundle' on the store's channel (0014).

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

ALTER TABLE corral_runs ADD COLUMN bundle text;

CREATE FUNCTION corral_notify_bundle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('corral_' || md5(TG_TABLE_SCHEMA), 'bundle');
    RETURN NULL;
END
$$;

CREATE TRIGGER corral_bundle_head_changed AFTER INSERT OR UPDATE ON corral_bundle_head
    FOR EACH ROW EXECUTE FUNCTION corral_notify_bundle();
