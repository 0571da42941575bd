-- Every statement nevent-dispatch runs, as named blocks.
-- A block starts with "-- name: NAME" followed by "-- " lines that describe it.

-- name: outbox_page
-- The next page of outbox rows after the cursor, in id order.
SELECT id, event_id, type, organization_id, data, created
FROM outbox WHERE id > ? ORDER BY id LIMIT ?;

-- name: outbox_max_id
-- The newest outbox id (for the backlog figure in logs and status).
SELECT coalesce(max(id), 0) FROM outbox;

-- name: get_meta
-- A counter: the outbox cursor or the webhooks revision.
SELECT value FROM meta WHERE key = ?;

-- name: set_cursor
-- Advance the outbox cursor; only ever forward.
UPDATE meta SET value = max(value, ?) WHERE key = 'cursor';

-- name: insert_webhook
-- Register a webhook (created inactive by the caller).
INSERT INTO webhooks (id, organization_id, name, url, secret, events, filter, batch, retries,
                      rate_limit, active, created_at, updated_at)
VALUES (:id, :organization_id, :name, :url, :secret, :events, :filter, :batch, :retries,
        :rate_limit, :active, :created_at, :updated_at);

-- name: update_webhook
-- Rewrite every field of a webhook but its id, organization and creation time.
UPDATE webhooks SET name = :name, url = :url, secret = :secret, events = :events, filter = :filter,
    batch = :batch, retries = :retries, rate_limit = :rate_limit, active = :active,
    updated_at = :updated_at
WHERE id = :id;

-- name: delete_webhook
-- Remove a webhook; its history stays.
DELETE FROM webhooks WHERE id = ?;

-- name: get_webhook
-- One webhook by id.
SELECT * FROM webhooks WHERE id = ?;

-- name: list_webhooks
-- All webhooks, oldest first.
SELECT * FROM webhooks ORDER BY created_at, id;

-- name: list_webhooks_of_org
-- The webhooks of one organization, oldest first.
SELECT * FROM webhooks WHERE organization_id = ? ORDER BY created_at, id;

-- name: max_delivery_id
-- The highest delivery id; ids of a new page are assigned after it under the write lock.
SELECT coalesce(max(id), 0) FROM deliveries;

-- name: insert_delivery
-- A new delivery (event, batch, test or rejected record).
INSERT INTO deliveries (id, uuid, webhook_id, kind, event_type, event_id, outbox_id, event_count,
                        state, attempts, retry_base, next_at, created_at, updated_at,
                        last_status, last_error, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, NULL, ?, ?);

-- name: insert_batch_waiting
-- The events of one page waiting for a batch of one batch-mode webhook.
INSERT INTO batch_waiting (webhook_id, last_outbox_id, events) VALUES (?, ?, ?);

-- name: insert_batch_contents
-- The events a new batch delivery carries.
INSERT INTO batch_contents (delivery_id, events) VALUES (?, ?);

-- name: set_batch_mark
-- A webhook's events up to this outbox id are in batches.
INSERT INTO batch_marks (webhook_id, outbox_id) VALUES (?, ?)
ON CONFLICT (webhook_id) DO UPDATE SET outbox_id = max(outbox_id, excluded.outbox_id);

-- name: drop_batched_waiting
-- Waiting rows whose events are all in batches now.
DELETE FROM batch_waiting WHERE webhook_id = ? AND last_outbox_id <= ?;

-- name: waiting_webhooks
-- Webhooks that may have events waiting for a batch (after a restart).
SELECT DISTINCT webhook_id FROM batch_waiting;

-- name: batch_mark
-- The last outbox id in a batch of one webhook (NULL: none yet).
SELECT outbox_id FROM batch_marks WHERE webhook_id = ?;

-- name: waiting_rows
-- Waiting rows of one webhook holding events after an outbox id, oldest first.
SELECT events FROM batch_waiting WHERE webhook_id = ? AND last_outbox_id > ?
ORDER BY last_outbox_id LIMIT ?;

-- name: batch_contents_of
-- The events a batch carries, in order.
SELECT events FROM batch_contents WHERE delivery_id = ?;

-- name: forget_waiting
-- A deleted webhook's events waiting for a batch are dropped with it.
DELETE FROM batch_waiting WHERE webhook_id = ?;

-- name: insert_attempt
-- Record one attempt.
INSERT INTO attempts (delivery_id, number, started_at, latency_ms, outcome, status, error, response)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: finish_attempt
-- The delivery's state after an attempt: delivered, failed, or pending until next_at.
UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, updated_at = ?, last_status = ?,
    last_error = ?
WHERE id = ?;

-- name: recover_claimed
-- After a stop or crash, what was claimed is due again (same uuid, so receivers can dedupe).
UPDATE deliveries SET state = 'pending', next_at = ?, updated_at = ? WHERE state = 'delivering';

-- name: due_deliveries
-- Pending deliveries of active webhooks whose time has come, earliest first.
SELECT d.* FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.next_at IS NOT NULL AND d.next_at <= ? AND w.active = 1
ORDER BY d.next_at, d.id LIMIT ?;

-- name: pending_count
-- Deliveries still to be attempted for active webhooks (until-idle runs wait for them).
SELECT count(*) FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.state IN ('pending', 'delivering') AND w.active = 1;

-- name: spilled_deliveries
-- Event deliveries created for a lane that was full, oldest first, after the lane's mark.
SELECT * FROM deliveries
WHERE webhook_id = ? AND kind = 'event' AND state = 'delivering' AND id > ?
ORDER BY id LIMIT ?;

-- name: fail_orphans
-- A deleted webhook's unfinished deliveries end as failed.
UPDATE deliveries SET state = 'failed', next_at = NULL, updated_at = ?, last_error = 'webhook deleted'
WHERE webhook_id = ? AND state IN ('pending', 'delivering');

-- name: release_claimed
-- Give claimed deliveries back to the scheduler (a lane retired by a webhook change).
UPDATE deliveries SET state = 'pending', next_at = ?, updated_at = ? WHERE id = ? AND state = 'delivering';

-- name: claim_delivery
-- Take a due delivery into the running daemon.
UPDATE deliveries SET state = 'delivering', next_at = NULL, updated_at = ? WHERE id = ?;

-- name: next_due_at
-- When the earliest pending delivery of an active webhook is due, for the scheduler's sleep.
SELECT min(d.next_at) FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.next_at IS NOT NULL AND w.active = 1;

-- name: outbox_rows_by_id
-- Outbox rows needed by retries (the ids are inlined as bound parameters).
SELECT id, event_id, type, organization_id, data, created FROM outbox WHERE id IN ({ids});

-- name: get_delivery
-- One delivery by id.
SELECT * FROM deliveries WHERE id = ?;

-- name: get_delivery_by_uuid
-- One delivery by its X-Nevent-Delivery uuid.
SELECT * FROM deliveries WHERE uuid = ?;

-- name: list_deliveries
-- Deliveries, newest first, narrowed by optional webhook, state and time.
SELECT * FROM deliveries
WHERE (:webhook_id IS NULL OR webhook_id = :webhook_id)
  AND (:state IS NULL OR state = :state)
  AND (:since IS NULL OR created_at >= :since)
ORDER BY id DESC LIMIT :limit;

-- name: attempts_of
-- Every attempt at one delivery, in order.
SELECT * FROM attempts WHERE delivery_id = ? ORDER BY number, id;

-- name: replay_delivery
-- Requeue a failed delivery now: a fresh round of retries, same uuid.
UPDATE deliveries SET state = 'pending', next_at = ?, retry_base = attempts, updated_at = ?
WHERE id = ? AND state = 'failed';

-- name: replay_webhook
-- Requeue in bulk the deliveries of one webhook in a state, created since a time.
UPDATE deliveries SET state = 'pending', next_at = ?, retry_base = attempts, updated_at = ?
WHERE webhook_id = ? AND state = ? AND created_at >= ? AND kind != 'test';

-- name: count_by_state
-- How many deliveries are in each state.
SELECT state, count(*) FROM deliveries GROUP BY state;

-- name: delivery_body
-- The stored body of a test delivery (other kinds are rebuilt from the outbox).
SELECT body FROM deliveries WHERE id = ?;

-- name: release_spilled
-- A retired lane's spilled event deliveries go back to the scheduler.
UPDATE deliveries SET state = 'pending', next_at = ?, updated_at = ?
WHERE webhook_id = ? AND kind = 'event' AND state = 'delivering' AND id > ?;
