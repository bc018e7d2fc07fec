-- Shared spaces (see crates/store/src/spaces.rs). A space's changes live in
-- the same log table as a user's, under the log id `~<spaceId>` (user ids
-- never start with `~`), with a counter row of their own in mana_user_seq.
CREATE TABLE mana_spaces (
    space_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL -- microseconds since the Unix epoch, UTC
) WITHOUT ROWID;

CREATE TABLE mana_space_members (
    space_id TEXT NOT NULL REFERENCES mana_spaces (space_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    role     TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    added_at INTEGER NOT NULL,
    PRIMARY KEY (space_id, user_id)
) WITHOUT ROWID;
CREATE INDEX mana_space_members_user ON mana_space_members (user_id);

-- Who pushed a change into a space's log (NULL in a user's own log).
ALTER TABLE mana_changes ADD COLUMN author_id TEXT;
