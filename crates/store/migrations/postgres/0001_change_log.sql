-- The change log: every change of every user, in a per-user order that follows
-- commit order (see mana_user_seq).
CREATE TABLE mana_user_seq (
    user_id  TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE mana_changes (
    user_id        TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    event_id       UUID NOT NULL,
    app_id         TEXT NOT NULL,
    table_name     TEXT NOT NULL,
    record_id      TEXT NOT NULL,
    op             TEXT NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    -- JSON kept as text: the server never looks inside, and devices get back
    -- the exact bytes they sent (jsonb would reorder keys and refuse \u0000).
    data           TEXT,
    fields         TEXT,
    deleted_at     TEXT,
    actor          TEXT,
    client_id      TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, seq)
);

CREATE UNIQUE INDEX mana_changes_event_id ON mana_changes (user_id, event_id);
-- Not (user_id, app_id, table_name, seq): with app_id second, a read of every
-- collection of an app can match this index on (user, app) and then scan all
-- of that app's rows for `seq > cursor`; without it, such reads can only use
-- the primary key range, and one collection's reads use this one.
CREATE INDEX mana_changes_collection ON mana_changes (user_id, table_name, seq);

-- Isolation in the database itself: a transaction sees and writes only the rows
-- of the user it declared with set_config('mana.user_id', ..., true). FORCE makes
-- the policy apply to the owning role too; only superusers and BYPASSRLS roles
-- escape it, which is why the server warns when it connects as one.
ALTER TABLE mana_user_seq ENABLE ROW LEVEL SECURITY;
ALTER TABLE mana_user_seq FORCE ROW LEVEL SECURITY;
CREATE POLICY mana_user_isolation ON mana_user_seq
    USING (user_id = current_setting('mana.user_id', true))
    WITH CHECK (user_id = current_setting('mana.user_id', true));

ALTER TABLE mana_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE mana_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY mana_user_isolation ON mana_changes
    USING (user_id = current_setting('mana.user_id', true))
    WITH CHECK (user_id = current_setting('mana.user_id', true));
