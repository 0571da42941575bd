-- State schema version 2: batch mode stored per batch and per page, not per event.

-- The events a batch delivery carries, in order: JSON [[outbox_id, event_id, type], …].
CREATE TABLE batch_contents (
    delivery_id INTEGER PRIMARY KEY,
    events TEXT NOT NULL
);

-- Events of a batch-mode webhook waiting for a batch: one row per webhook and outbox page,
-- JSON [[outbox_id, event_id, type], …] in outbox order. Events at or below the webhook's
-- batch mark are already in a batch; a row is deleted once all of its events are.
CREATE TABLE batch_waiting (
    id INTEGER PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    last_outbox_id INTEGER NOT NULL,
    events TEXT NOT NULL
);
CREATE INDEX batch_waiting_webhook ON batch_waiting (webhook_id, last_outbox_id);

-- Per batch-mode webhook: the last outbox id put into one of its batches.
CREATE TABLE batch_marks (
    webhook_id TEXT PRIMARY KEY,
    outbox_id INTEGER NOT NULL
) WITHOUT ROWID;

-- Version 1 kept one batch_items row per event: batches keep their events in order,
-- events still waiting keep their order, one row each.
INSERT INTO batch_contents (delivery_id, events)
SELECT d.id, (SELECT json_group_array(json_array(i.outbox_id, i.event_id, i.event_type))
              FROM (SELECT * FROM batch_items WHERE delivery_id = d.id ORDER BY id) AS i)
FROM deliveries d WHERE d.kind = 'batch' AND EXISTS (SELECT 1 FROM batch_items WHERE delivery_id = d.id);

INSERT INTO batch_waiting (webhook_id, last_outbox_id, events)
SELECT webhook_id, outbox_id, json_array(json_array(outbox_id, event_id, event_type))
FROM batch_items WHERE delivery_id IS NULL ORDER BY id;

DROP TABLE batch_items;
