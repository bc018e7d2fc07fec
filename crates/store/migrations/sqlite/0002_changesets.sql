-- Idempotent pushes: the changeset ids already stored, per user.
CREATE TABLE mana_changesets (
    user_id      TEXT NOT NULL,
    changeset_id TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, changeset_id)
) WITHOUT ROWID;
