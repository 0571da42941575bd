-- The application's outbox, exactly as the outbox contract states. Idempotent.
-- The application only inserts: INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE DEFAULT ('evt_' || lower(hex(randomblob(12)))),
    type TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    data TEXT NOT NULL,
    created INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER))
);
