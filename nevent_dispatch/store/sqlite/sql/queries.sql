-- Every statement nevent-dispatch runs, as named blocks.
-- A block starts with "-- name: NAME" followed by "-- " lines that describe it.

-- name: outbox_sizes
-- Ids and data sizes of the next outbox rows after the cursor, so a page is bounded in bytes
-- (the data itself is not handed over).
SELECT id, length(CAST(data AS BLOB)) FROM outbox WHERE id > ? ORDER BY id LIMIT ?;

-- name: outbox_page
-- The outbox rows of one page: after the cursor, up to an id, in id order.
SELECT id, event_id, type, organization_id, data, created
FROM outbox WHERE id > ? AND id <= ? ORDER BY id;

-- name: outbox_max_id
-- The newest outbox id (for the backlog figure in logs and status).
SELECT coalesce(max(id), 0) FROM outbox;

-- name: outbox_event_ids
-- The event ids of a range of outbox rows (what `emit` inserted), in id order.
SELECT event_id FROM outbox WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?;

-- name: has_meta
-- Whether the state schema exists (a database never initialised has no tables).
SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta';

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

-- name: webhook_changes_since
-- The webhooks revision, and every change recorded after a revision: (NULL, revision) for the
-- first, (webhook id, its revision) for each change. One statement, so both come from the
-- same snapshot: the changes are complete when there are as many as revisions since.
SELECT NULL, value FROM meta WHERE key = 'webhooks_rev'
UNION ALL
SELECT webhook_id, rev FROM webhook_changes WHERE rev > ?;

-- name: webhooks_by_id
-- The webhooks among some ids (the ids are inlined as bound parameters); a missing one was
-- deleted.
SELECT * FROM webhooks WHERE id IN ({ids});

-- name: prune_webhook_changes
-- Changes up to a revision, once the daemon has applied them (see Store.prune_webhook_changes).
DELETE FROM webhook_changes WHERE rev <= ?;

-- name: max_delivery_id
-- The highest delivery id; ids of a new page are assigned after it under the write lock.
SELECT coalesce(max(id), 0) FROM deliveries;

-- name: insert_delivery
-- A new delivery (event, batch, test or rejected record).
-- Its organization, when not given, is its webhook's.
INSERT INTO deliveries (id, uuid, webhook_id, kind, event_type, event_id, outbox_id, event_count,
                        state, attempts, retry_base, next_at, created_at, updated_at,
                        last_status, last_error, body, organization_id)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, 0, ?10, ?11, ?12, NULL, ?13, ?14,
        coalesce(?15, (SELECT w.organization_id FROM webhooks w WHERE w.id = ?3)));

-- name: insert_batch_waiting
-- The events of one page waiting for a batch of one batch-mode webhook.
INSERT INTO batch_waiting (webhook_id, last_outbox_id, events) VALUES (?, ?, ?);

-- name: insert_batch_contents
-- The events a new batch delivery carries.
INSERT INTO batch_contents (delivery_id, events, first_outbox_id) VALUES (?, ?, ?);

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

-- name: outbox_rows_by_id
-- Outbox rows needed by retries (the ids are inlined as bound parameters).
SELECT id, event_id, type, organization_id, data, created FROM outbox WHERE id IN ({ids});

-- name: get_delivery
-- One delivery by id.
SELECT * FROM deliveries WHERE id = ?;

-- name: get_delivery_by_uuid
-- One delivery by its X-Nevent-Delivery uuid.
SELECT * FROM deliveries WHERE uuid = ?;

-- name: deliveries_newest
-- Deliveries of every organization (the CLI), newest first, before a cursor id, narrowed by
-- optional webhook, state, type and creation time (walks the primary key backwards).
SELECT * FROM deliveries
WHERE id < :before
  AND (:webhook_id IS NULL OR webhook_id = :webhook_id)
  AND (:state IS NULL OR state = :state)
  AND (:event_type IS NULL OR event_type = :event_type)
  AND (:event_id IS NULL OR event_id = :event_id)
  AND (:since IS NULL OR created_at >= :since)
  AND (:until IS NULL OR created_at < :until)
ORDER BY id DESC LIMIT :limit;

-- name: deliveries_of_org
-- The same for one organization, through deliveries_org.
SELECT * FROM deliveries INDEXED BY deliveries_org
WHERE organization_id = :org AND id < :before
  AND (:webhook_id IS NULL OR webhook_id = :webhook_id)
  AND (:state IS NULL OR state = :state)
  AND (:event_type IS NULL OR event_type = :event_type)
  AND (:event_id IS NULL OR event_id = :event_id)
  AND (:since IS NULL OR created_at >= :since)
  AND (:until IS NULL OR created_at < :until)
ORDER BY id DESC LIMIT :limit;

-- name: deliveries_of_webhook
-- The same for one webhook (of one organization, or of any when :org is NULL), through
-- deliveries_webhook.
SELECT * FROM deliveries INDEXED BY deliveries_webhook
WHERE webhook_id = :webhook_id AND id < :before
  AND (:org IS NULL OR organization_id = :org)
  AND (:state IS NULL OR state = :state)
  AND (:event_type IS NULL OR event_type = :event_type)
  AND (:event_id IS NULL OR event_id = :event_id)
  AND (:since IS NULL OR created_at >= :since)
  AND (:until IS NULL OR created_at < :until)
ORDER BY id DESC LIMIT :limit;

-- name: created_at_of
-- When one delivery was created (a probe of the search for the first id since a time).
SELECT created_at FROM deliveries WHERE id >= ? ORDER BY id LIMIT 1;

-- name: webhook_state_counts
-- A webhook's deliveries per state, from an id on.
SELECT state, count(*) FROM deliveries INDEXED BY deliveries_webhook
WHERE webhook_id = ? AND id >= ? GROUP BY state;

-- name: webhook_outcome_counts
-- A webhook's attempts per outcome, of its deliveries from an id on.
SELECT a.outcome, count(*) FROM deliveries d INDEXED BY deliveries_webhook
JOIN attempts a ON a.delivery_id = d.id
WHERE d.webhook_id = ? AND d.id >= ? GROUP BY a.outcome;

-- name: webhook_recent_latencies
-- The latencies of a webhook's most recent attempts that got an answer, from an id on.
SELECT a.latency_ms FROM deliveries d INDEXED BY deliveries_webhook
JOIN attempts a ON a.delivery_id = d.id
WHERE d.webhook_id = ? AND d.id >= ? AND a.status IS NOT NULL
ORDER BY d.id DESC LIMIT ?;

-- name: get_idempotency
-- The first response given to an idempotency key of an organization.
SELECT request_hash, status, response, created_at FROM idempotency_keys
WHERE organization_id = ? AND key = ?;

-- name: put_idempotency
-- Remember the response given to an idempotency key (the first one wins).
INSERT INTO idempotency_keys (organization_id, key, request_hash, status, response, created_at)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING;

-- name: prune_idempotency
-- Forget idempotency keys older than their lifetime.
DELETE FROM idempotency_keys WHERE created_at < ?;

-- name: attempts_of
-- Every attempt at one delivery, in order.
SELECT * FROM attempts WHERE delivery_id = ? ORDER BY number, id;

-- name: count_by_state
-- How many deliveries are in each state.
SELECT state, count(*) FROM deliveries GROUP BY state;

-- name: retries_by_webhook
-- Per webhook, its deliveries waiting for a later attempt (pending and due after a time: a
-- retry, or a pause asked for by Retry-After) and the earliest of them. The webhooks are the
-- outer loop, each a range of deliveries_pending: the pending backlog due now is not walked.
SELECT w.id, count(*), min(d.next_at)
FROM webhooks w CROSS JOIN deliveries d INDEXED BY deliveries_pending
WHERE d.webhook_id = w.id AND d.state = 'pending' AND d.next_at > ?
GROUP BY w.id;

-- name: failing_webhooks
-- The webhooks with a delivery waiting for a later attempt (failing, or asked to wait): one
-- seek of deliveries_pending each, however many retries wait.
SELECT w.id FROM webhooks w
WHERE EXISTS (SELECT 1 FROM deliveries d
              WHERE d.webhook_id = w.id AND d.state = 'pending' AND d.next_at > ?);

-- name: oldest_due
-- When the oldest work still to be done fell due, if it has by a time: the earliest pending
-- delivery of each active webhook (one seek of deliveries_pending each; a disabled webhook's
-- work is not due), and the queued and in-flight deliveries with the lowest ids (a seek of
-- deliveries_state each), since they were taken.
SELECT min(t) FROM (
    SELECT (SELECT min(d.next_at) FROM deliveries d
            WHERE d.webhook_id = w.id AND d.state = 'pending') AS t
    FROM webhooks w WHERE w.active = 1
    UNION ALL
    SELECT * FROM (SELECT updated_at FROM deliveries WHERE state = 'queued' ORDER BY id LIMIT 1)
    UNION ALL
    SELECT * FROM (SELECT updated_at FROM deliveries WHERE state = 'in_flight' ORDER BY id LIMIT 1)
) WHERE t <= ?;

-- name: webhook_counts
-- Webhooks by status: active; inactive and unchanged since created (waiting for their first
-- enable); inactive and changed since (disabled, or edited before a first enable).
SELECT CASE WHEN active THEN 'active' WHEN updated_at = created_at THEN 'inactive'
            ELSE 'disabled' END, count(*)
FROM webhooks GROUP BY 1;

-- name: delivery_body
-- The stored body of a test delivery (other kinds are rebuilt from the outbox).
SELECT body FROM deliveries WHERE id = ?;

-- The delivery state machine. Every statement that changes a state says which moves it
-- makes ("moves: A, B -> C", checked against models.TRANSITIONS by the tests) and is
-- guarded by its source states, so it can never move a delivery along another edge.

-- name: start_attempt
-- An attempt at a queued delivery has started.
-- moves: queued -> in_flight
UPDATE deliveries SET state = 'in_flight', updated_at = ? WHERE id = ? AND state = 'queued';

-- name: finish_attempt
-- The delivery's state after an attempt: delivered, failed, or pending until next_at. From
-- queued when the attempt began and ended between two writes (its in-flight step unseen).
-- moves: queued, in_flight -> delivered, pending, failed
UPDATE deliveries SET state = ?, attempts = ?, retry_base = ?, next_at = ?, updated_at = ?,
    last_status = ?, last_error = ?
WHERE id = ? AND state IN ('queued', 'in_flight');

-- name: recover_claimed
-- After a stop or crash, what the daemon held is due again (same uuid, so receivers can dedupe).
-- moves: queued, in_flight -> pending
UPDATE deliveries SET state = 'pending', next_at = ?, updated_at = ?
WHERE state IN ('queued', 'in_flight') AND kind != 'test';

-- name: recover_tests
-- A test send interrupted by a crash is not sent again: tests are never retried.
-- moves: queued, in_flight -> failed
UPDATE deliveries SET state = 'failed', next_at = NULL, updated_at = ?, last_error = 'interrupted'
WHERE state IN ('queued', 'in_flight') AND kind = 'test';

-- name: due_of_webhook
-- The due pending deliveries of one webhook, in the order they are to be sent.
SELECT * FROM deliveries
WHERE webhook_id = ? AND state = 'pending' AND next_at <= ?
ORDER BY next_at, id LIMIT ?;

-- name: claim_delivery
-- A lane takes a due delivery into memory.
-- moves: pending -> queued
UPDATE deliveries SET state = 'queued', next_at = NULL, updated_at = ? WHERE id = ? AND state = 'pending';

-- name: release_queued
-- Give a queued delivery back to the database (its lane was retired, or memory is reclaimed).
-- moves: queued -> pending
UPDATE deliveries SET state = 'pending', next_at = ?, updated_at = ? WHERE id = ? AND state = 'queued';

-- name: fail_queued
-- A queued delivery of a deleted webhook ends as failed.
-- moves: queued -> failed
UPDATE deliveries SET state = 'failed', next_at = NULL, updated_at = ?, last_error = 'webhook deleted'
WHERE id = ? AND state = 'queued';

-- name: fail_orphans
-- A deleted webhook's waiting deliveries end as failed (the daemon fails what it holds).
-- moves: pending -> failed
UPDATE deliveries SET state = 'failed', next_at = NULL, updated_at = ?, last_error = 'webhook deleted'
WHERE webhook_id = ? AND state = 'pending';

-- name: next_due_of_webhook
-- When the earliest pending delivery of one webhook is due (an index seek).
SELECT min(next_at) FROM deliveries WHERE webhook_id = ? AND state = 'pending';

-- name: next_due_active
-- Per active webhook, when its earliest pending delivery is due: one seek per active webhook,
-- never a walk over the pending rows of disabled ones.
SELECT w.id, (SELECT min(d.next_at) FROM deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending')
FROM webhooks w WHERE w.active = 1;

-- name: replay_delivery
-- Requeue a failed delivery now: a fresh round of retries, same uuid (a test is never sent
-- again: it was one probe, not an event).
-- moves: failed -> pending
UPDATE deliveries SET state = 'pending', next_at = ?, retry_base = attempts, updated_at = ?
WHERE id = ? AND state = 'failed' AND kind != 'test';

-- name: replay_webhook
-- Requeue in bulk the failed deliveries of one webhook created since a time.
-- moves: failed -> pending
UPDATE deliveries SET state = 'pending', next_at = ?, retry_base = attempts, updated_at = ?
WHERE webhook_id = ? AND state = 'failed' AND created_at >= ? AND created_at < ?
  AND kind != 'test';

-- name: bump_requeue_rev
-- Tell a running daemon that deliveries were requeued from outside it.
UPDATE meta SET value = value + 1 WHERE key = 'requeue_rev';

-- name: set_meta
-- Set a counter (the lowest outbox id still needed).
INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: outbox_needed_from
-- The lowest outbox id the daemon may still read: the first row not yet taken in, the event
-- of an unfinished delivery, an event in an unfinished batch or waiting for one. The
-- application may delete outbox rows below it.
SELECT min(n) FROM (
    SELECT value + 1 AS n FROM meta WHERE key = 'cursor'
    UNION ALL
    SELECT min(outbox_id) FROM deliveries
    WHERE kind = 'event' AND state IN ('pending', 'queued', 'in_flight')
    UNION ALL
    SELECT min(c.first_outbox_id) FROM deliveries d JOIN batch_contents c ON c.delivery_id = d.id
    WHERE d.kind = 'batch' AND d.state IN ('pending', 'queued', 'in_flight')
    UNION ALL
    SELECT min(json_extract(events, '$[0][0]')) FROM batch_waiting
);

-- name: open_count_active
-- Active webhooks with deliveries still waiting in the database (until-idle runs wait for them).
SELECT count(*) FROM webhooks w
WHERE w.active = 1 AND EXISTS (SELECT 1 FROM deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending');

-- Retention (ops/retention.py): finished deliveries and handled outbox rows, pruned in small
-- batches along an index. None of these statements changes a delivery's state: they delete
-- only finished ones (delivered, failed, rejected), guarded again at the delete.

-- name: prunable_deliveries
-- The next deliveries of one (finished) state after an id and below another, along
-- deliveries_state (unfinished rows are never walked): the ids of those last changed before a
-- time (a JSON list), the last id looked at, and how many were looked at.
SELECT json_group_array(id) FILTER (WHERE updated_at < :cutoff), max(id), count(*)
FROM (SELECT id, updated_at FROM deliveries INDEXED BY deliveries_state
      WHERE state = :state AND id > :after AND id < :below ORDER BY id LIMIT :limit);

-- name: delivery_rows_count
-- How many attempts and batch contents rows belong to some deliveries (a JSON list of ids):
-- what pruning them removes with them (prune --dry-run).
SELECT (SELECT count(*) FROM attempts WHERE delivery_id IN (SELECT value FROM json_each(:ids))),
       (SELECT count(*) FROM batch_contents
        WHERE delivery_id IN (SELECT value FROM json_each(:ids)));

-- name: prune_attempts
-- The attempts of the deliveries among some ids (a JSON list) that are finished and were last
-- changed before a time (CROSS JOIN: the ids lead, one primary-key probe each).
DELETE FROM attempts WHERE delivery_id IN (
    SELECT d.id FROM json_each(:ids) AS j CROSS JOIN deliveries d ON d.id = j.value
    WHERE d.state IN ('delivered', 'failed', 'rejected') AND d.updated_at < :cutoff);

-- name: prune_batch_contents
-- The events carried by the same deliveries, when they are batches.
DELETE FROM batch_contents WHERE delivery_id IN (
    SELECT d.id FROM json_each(:ids) AS j CROSS JOIN deliveries d ON d.id = j.value
    WHERE d.state IN ('delivered', 'failed', 'rejected') AND d.updated_at < :cutoff);

-- name: prune_deliveries
-- The deliveries themselves (after their attempts and batch contents, in one transaction).
DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(:ids))
  AND state IN ('delivered', 'failed', 'rejected') AND updated_at < :cutoff;

-- name: prunable_outbox
-- The next outbox rows after an id and below the lowest one still needed, in id order, each
-- with whether it was created before a time (retention stops at the first that was not).
SELECT id, created < :cutoff FROM outbox WHERE id > :after AND id < :below ORDER BY id
LIMIT :limit;

-- name: prune_outbox
-- Outbox rows of an id range (after, up to) below the lowest id still needed and created
-- before a time: one range of the primary key.
DELETE FROM outbox WHERE id > :after AND id <= :last AND id < :below AND created < :cutoff;

-- name: page_counts
-- The state file's free pages, page size and pages (free ones included).
SELECT f.freelist_count, s.page_size, c.page_count
FROM pragma_freelist_count() AS f, pragma_page_size() AS s, pragma_page_count() AS c;

-- name: auto_vacuum
-- The file's vacuum mode: 0 none, 1 full, 2 incremental.
PRAGMA auto_vacuum;

-- name: set_incremental_vacuum
-- Ask for incremental vacuum: taken by a new file before its first table, or by the next VACUUM.
PRAGMA auto_vacuum = INCREMENTAL;

-- name: vacuum
-- Rewrite the whole file (once, at the migration to version 5, to take the vacuum mode).
VACUUM;

-- name: release_pages
-- Give up to this many free pages back to the file system (the file shrinks at the next
-- checkpoint); pages is inlined as an integer (pragmas take no bound parameters).
PRAGMA incremental_vacuum({pages});
