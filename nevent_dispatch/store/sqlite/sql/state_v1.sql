-- State schema version 1: the daemon's own tables.

-- Counters and the outbox cursor: 'cursor' = last outbox id turned into deliveries,
-- 'webhooks_rev' = bumped by every change to webhooks so the daemon reloads them.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('cursor', 0), ('webhooks_rev', 0);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,                 -- wh_<hex>
    organization_id TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,                -- JSON list of patterns
    filter TEXT,                         -- JSON filter document, NULL = none
    batch INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 1,
    rate_limit INTEGER,                  -- events/min, NULL = rate_limit.events_per_minute
    active INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (organization_id);
CREATE TRIGGER webhooks_rev_insert AFTER INSERT ON webhooks
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'webhooks_rev'; END;
CREATE TRIGGER webhooks_rev_update AFTER UPDATE ON webhooks
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'webhooks_rev'; END;
CREATE TRIGGER webhooks_rev_delete AFTER DELETE ON webhooks
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'webhooks_rev'; END;

-- One row per request body to send: an event for a webhook, a batch, or a test.
-- webhook_id has no foreign key: the history outlives a deleted webhook.
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,           -- X-Nevent-Delivery, the same on every retry
    webhook_id TEXT,                     -- NULL for an event rejected before matching
    kind TEXT NOT NULL,                  -- event | batch | test
    event_type TEXT NOT NULL,            -- X-Nevent-Event
    event_id TEXT,
    outbox_id INTEGER,
    event_count INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_base INTEGER NOT NULL DEFAULT 0,
    next_at REAL,                        -- due time while pending; NULL while claimed or final
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    body BLOB                            -- only for kind = test (not in the outbox)
);
CREATE UNIQUE INDEX deliveries_event_once ON deliveries (outbox_id, webhook_id) WHERE kind = 'event';
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX deliveries_webhook ON deliveries (webhook_id, id);
CREATE INDEX deliveries_state ON deliveries (state, id);

-- Events waiting for, or carried by, a batch of a batch-mode webhook.
CREATE TABLE batch_items (
    id INTEGER PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    outbox_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    delivery_id INTEGER                  -- NULL until grouped into a batch delivery
);
CREATE UNIQUE INDEX batch_items_once ON batch_items (outbox_id, webhook_id);
CREATE INDEX batch_items_unbatched ON batch_items (webhook_id, id) WHERE delivery_id IS NULL;
CREATE INDEX batch_items_delivery ON batch_items (delivery_id);

-- Every attempt at every delivery.
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    latency_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    response TEXT                        -- bounded snippet of the response body
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, number);
