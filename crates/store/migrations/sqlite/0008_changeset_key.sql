-- The changeset ids keyed by id first, for the reason of 0007: our clients
-- make changeset ids as UUIDv7, which sort by the time they were made, so
-- a group's pushes add their ids at the end of the table, on pages they
-- share, instead of each dirtying a page of its own user's part. (Ids that
-- do not sort by time, or a device whose clock is off, land on a page of
-- their own, as every push did before.) Still one row per user and id.
CREATE TABLE mana_changesets_by_id (
    changeset_id TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (changeset_id, user_id)
) WITHOUT ROWID;
INSERT INTO mana_changesets_by_id (changeset_id, user_id, created_at)
SELECT changeset_id, user_id, created_at FROM mana_changesets;
DROP TABLE mana_changesets;
ALTER TABLE mana_changesets_by_id RENAME TO mana_changesets;
