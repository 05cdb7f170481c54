-- 0012 queue counters: claims and intake read per-agent counts, never count the queue.
-- queued: never-tried queued items (the queue bound's count); requeued: queued items
-- given back after a lost or released run (attempts > 0); running: claimed items.
-- Kept exact at every commit by a trigger on corral_queue, so every path that moves an
-- item (claim, finalise, recover, release, drop, retention) keeps them with no code.
ALTER TABLE corral_agents ADD COLUMN queued integer NOT NULL DEFAULT 0;
ALTER TABLE corral_agents ADD COLUMN requeued integer NOT NULL DEFAULT 0;
ALTER TABLE corral_agents ADD COLUMN running integer NOT NULL DEFAULT 0;

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

UPDATE corral_agents a
SET queued = (SELECT count(*) FROM corral_queue q
              WHERE q.agent = a.agent AND q.state = 'queued' AND q.attempts = 0),
    requeued = (SELECT count(*) FROM corral_queue q
                WHERE q.agent = a.agent AND q.state = 'queued' AND q.attempts > 0),
    running = (SELECT count(*) FROM corral_queue q
               WHERE q.agent = a.agent AND q.state = 'claimed');

-- Fencing tokens of claims come from a sequence: increasing without locking a row (the
-- project row's fence_counter was a lock every claim of every scheduler queued on). A
-- token drawn after an item's earlier claim committed is greater than that claim's.
CREATE SEQUENCE corral_fences AS bigint;
SELECT setval('corral_fences',
              greatest((SELECT fence_counter FROM corral_project WHERE id = 1),
                       (SELECT coalesce(max(fence), 0) FROM corral_queue),
                       (SELECT coalesce(max(fence), 0) FROM corral_runs), 0) + 1,
              false);
