-- Idempotent pushes: the changeset ids already stored, per user.
CREATE TABLE mana_changesets (
    user_id      TEXT NOT NULL,
    changeset_id TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, changeset_id)
);

ALTER TABLE mana_changesets ENABLE ROW LEVEL SECURITY;
ALTER TABLE mana_changesets FORCE ROW LEVEL SECURITY;
CREATE POLICY mana_user_isolation ON mana_changesets
    USING (user_id = current_setting('mana.user_id', true))
    WITH CHECK (user_id = current_setting('mana.user_id', true));
