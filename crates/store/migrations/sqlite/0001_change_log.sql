-- The change log: every change of every user, in a per-user order that follows
-- commit order (SQLite has one writer, so commit order is write order).
CREATE TABLE mana_user_seq (
    user_id  TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE mana_changes (
    user_id        TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    event_id       TEXT NOT NULL,
    app_id         TEXT NOT NULL,
    table_name     TEXT NOT NULL,
    record_id      TEXT NOT NULL,
    op             TEXT NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    data           TEXT,
    fields         TEXT,
    deleted_at     TEXT,
    actor          TEXT,
    client_id      TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    created_at     INTEGER NOT NULL -- microseconds since the Unix epoch, UTC
);

CREATE UNIQUE INDEX mana_changes_user_seq ON mana_changes (user_id, seq);
CREATE UNIQUE INDEX mana_changes_event_id ON mana_changes (user_id, event_id);
-- Not (user_id, app_id, table_name, seq): with app_id second, a read of every
-- collection of an app can match this index on (user, app) and then scan all
-- of that app's rows for `seq > cursor`; without it, such reads can only use
-- the primary key range, and one collection's reads use this one.
CREATE INDEX mana_changes_collection ON mana_changes (user_id, table_name, seq);
