-- State schema version 3: the delivery state machine (models.TRANSITIONS).

-- "delivering" (claimed by the daemon) splits into "queued" (in a lane's memory) and
-- "in_flight" (an attempt under way); a delivery claimed when the daemon stopped waits again.
UPDATE deliveries SET state = 'pending', next_at = coalesce(next_at, updated_at)
WHERE state = 'delivering';

-- Due work is found per webhook: an index seek for each active webhook, never a walk over
-- the waiting rows of disabled ones.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_pending ON deliveries (webhook_id, next_at, id) WHERE state = 'pending';

-- The lowest outbox id still needed (the application prunes below it) is found through
-- deliveries_state, walking only unfinished rows, every half minute: an index of its own
-- would cost every delivery two more index writes.
ALTER TABLE batch_contents ADD COLUMN first_outbox_id INTEGER;
UPDATE batch_contents SET first_outbox_id = json_extract(events, '$[0][0]');

-- 'requeue_rev' is bumped by replays made outside the daemon, so it looks for due work.
INSERT INTO meta (key, value) VALUES ('requeue_rev', 0), ('outbox_needed_from', 0);
