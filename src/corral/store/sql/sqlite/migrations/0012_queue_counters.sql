-- 0012 queue counters: claims and intake read per-agent counts, never count the queue.
-- queued: never-tried queued items (the queue bound's count); requeued: queued items
-- given back after a lost or released run (attempts > 0); running: claimed items.
-- Kept exact at every commit by triggers on corral_queue, so every path that moves an
-- item (claim, finalise, recover, release, drop, retention) keeps them with no code.
ALTER TABLE corral_agents ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
ALTER TABLE corral_agents ADD COLUMN requeued INTEGER NOT NULL DEFAULT 0;
ALTER TABLE corral_agents ADD COLUMN running INTEGER NOT NULL DEFAULT 0;

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

UPDATE corral_agents
SET queued = (SELECT count(*) FROM corral_queue q
              WHERE q.agent = corral_agents.agent AND q.state = 'queued' AND q.attempts = 0),
    requeued = (SELECT count(*) FROM corral_queue q
                WHERE q.agent = corral_agents.agent AND q.state = 'queued' AND q.attempts > 0),
    running = (SELECT count(*) FROM corral_queue q
               WHERE q.agent = corral_agents.agent AND q.state = 'claimed');
