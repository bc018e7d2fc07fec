-- Shared spaces (see crates/store/src/spaces.rs). A space's changes live in
-- the same log table as a user's, under the log id `~<spaceId>` (user ids
-- never start with `~`), with a counter row of their own in mana_user_seq;
-- every path that works on a log (push, reads, compaction, notices) works on
-- both kinds.
CREATE TABLE mana_spaces (
    space_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE mana_space_members (
    space_id TEXT NOT NULL REFERENCES mana_spaces (space_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    role     TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (space_id, user_id)
);
CREATE INDEX mana_space_members_user ON mana_space_members (user_id);

-- Who pushed a change into a space's log (NULL in a user's own log).
ALTER TABLE mana_changes ADD COLUMN author_id TEXT;

-- The logs of the spaces the transaction's user (mana.user_id) belongs to,
-- and of those they may write to, and whether a space has members yet.
-- SECURITY DEFINER: policies call them, and they must read
-- mana_space_members without going through that table's own policy (which
-- calls them too). They run as the migrating role, which owns the tables.
DO $$
BEGIN
    EXECUTE format(
        'CREATE FUNCTION mana_readable_space_logs() RETURNS SETOF TEXT
         LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp AS
         $f$ SELECT ''~'' || space_id FROM mana_space_members
             WHERE user_id = current_setting(''mana.user_id'', true) $f$',
        current_schema());
    EXECUTE format(
        'CREATE FUNCTION mana_writable_space_logs() RETURNS SETOF TEXT
         LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp AS
         $f$ SELECT ''~'' || space_id FROM mana_space_members
             WHERE user_id = current_setting(''mana.user_id'', true)
               AND role IN (''owner'', ''editor'') $f$',
        current_schema());
    EXECUTE format(
        'CREATE FUNCTION mana_space_role(space TEXT) RETURNS TEXT
         LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp AS
         $f$ SELECT role FROM mana_space_members
             WHERE space_id = space AND user_id = current_setting(''mana.user_id'', true) $f$',
        current_schema());
    EXECUTE format(
        'CREATE FUNCTION mana_space_is_empty(space TEXT) RETURNS BOOLEAN
         LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp AS
         $f$ SELECT NOT EXISTS (SELECT 1 FROM mana_space_members WHERE space_id = space) $f$',
        current_schema());
END $$;

-- A log is its user's, and its space's members'. Members read; owners and
-- editors write. (A transaction acting for a space's log itself, such as its
-- compaction, declares the log id as mana.user_id.) The member lists are
-- evaluated once per statement, not per row.
DROP POLICY mana_user_isolation ON mana_changes;
CREATE POLICY mana_log_isolation ON mana_changes
    USING (user_id = current_setting('mana.user_id', true)
           OR user_id IN (SELECT mana_readable_space_logs()))
    WITH CHECK (user_id = current_setting('mana.user_id', true)
                OR user_id IN (SELECT mana_writable_space_logs()));
DROP POLICY mana_user_isolation ON mana_user_seq;
CREATE POLICY mana_log_isolation ON mana_user_seq
    USING (user_id = current_setting('mana.user_id', true)
           OR user_id IN (SELECT mana_readable_space_logs()))
    WITH CHECK (user_id = current_setting('mana.user_id', true)
                OR user_id IN (SELECT mana_writable_space_logs()));

-- Members are visible to the members of the same space (and to the server
-- acting as the space's log, to deliver its changes); owners change them;
-- anyone may remove themselves (leave); the creator of an empty space makes
-- themselves its owner. Not FORCEd: the functions above read this table as its
-- owner. A server connecting as the owner therefore relies on its queries
-- here; run it as a separate role (README, "Running on Postgres") and these
-- policies apply to it too.
ALTER TABLE mana_space_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY mana_space_members_read ON mana_space_members FOR SELECT
    USING (mana_space_role(space_id) IS NOT NULL
           OR current_setting('mana.user_id', true) = '~' || space_id);
CREATE POLICY mana_space_members_add ON mana_space_members FOR INSERT
    WITH CHECK (
        mana_space_role(space_id) = 'owner'
        OR (user_id = current_setting('mana.user_id', true) AND role = 'owner'
            AND mana_space_is_empty(space_id))
    );
CREATE POLICY mana_space_members_change ON mana_space_members FOR UPDATE
    USING (mana_space_role(space_id) = 'owner')
    WITH CHECK (mana_space_role(space_id) = 'owner');
CREATE POLICY mana_space_members_remove ON mana_space_members FOR DELETE
    USING (mana_space_role(space_id) = 'owner'
           OR user_id = current_setting('mana.user_id', true));

ALTER TABLE mana_spaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE mana_spaces FORCE ROW LEVEL SECURITY;
CREATE POLICY mana_spaces_read ON mana_spaces FOR SELECT
    USING (mana_space_role(space_id) IS NOT NULL
           OR created_by = current_setting('mana.user_id', true));
CREATE POLICY mana_spaces_create ON mana_spaces FOR INSERT
    WITH CHECK (created_by = current_setting('mana.user_id', true));
CREATE POLICY mana_spaces_rename ON mana_spaces FOR UPDATE
    USING (mana_space_role(space_id) = 'owner')
    WITH CHECK (mana_space_role(space_id) = 'owner');
