-- State schema version 4: the management API.

-- Deliveries carry their organization: the history is listed per organization through
-- one index, and a deleted webhook's history still belongs to its organization. Rows of
-- webhooks deleted before this version keep NULL (they are then listed by no organization).
ALTER TABLE deliveries ADD COLUMN organization_id TEXT;
UPDATE deliveries SET organization_id =
    (SELECT w.organization_id FROM webhooks w WHERE w.id = deliveries.webhook_id);
CREATE INDEX deliveries_org ON deliveries (organization_id, id);

-- Every change of a webhook, by the webhooks revision it made: the daemon applies only the
-- webhooks changed since it last looked, in work proportional to them.
CREATE TABLE webhook_changes (
    rev INTEGER PRIMARY KEY,
    webhook_id TEXT NOT NULL
);
DROP TRIGGER webhooks_rev_insert;
DROP TRIGGER webhooks_rev_update;
DROP TRIGGER webhooks_rev_delete;
CREATE TRIGGER webhooks_rev_insert AFTER INSERT ON webhooks BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'webhooks_rev';
    INSERT INTO webhook_changes (rev, webhook_id)
        SELECT value, NEW.id FROM meta WHERE key = 'webhooks_rev';
END;
CREATE TRIGGER webhooks_rev_update AFTER UPDATE ON webhooks BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'webhooks_rev';
    INSERT INTO webhook_changes (rev, webhook_id)
        SELECT value, NEW.id FROM meta WHERE key = 'webhooks_rev';
END;
CREATE TRIGGER webhooks_rev_delete AFTER DELETE ON webhooks BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'webhooks_rev';
    INSERT INTO webhook_changes (rev, webhook_id)
        SELECT value, OLD.id FROM meta WHERE key = 'webhooks_rev';
END;

-- Idempotency keys of the API's webhook creation: the first response, replayed for 24 h.
CREATE TABLE idempotency_keys (
    organization_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (organization_id, key)
) WITHOUT ROWID;
