-- Compaction (see crates/store/src/compaction.rs).
--
-- superseded: changes pushed since the user's last compaction that may
-- supersede an earlier one (updates and deletes); the background compactor
-- picks users by it. expired_through: the last position of history dropped
-- for good (tombstones past their retention); a cursor before it can no
-- longer be served and is answered `cursor_expired`.
ALTER TABLE mana_user_seq ADD COLUMN superseded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE mana_user_seq ADD COLUMN expired_through BIGINT NOT NULL DEFAULT 0;

-- One record's history, for folding it.
CREATE INDEX mana_changes_record ON mana_changes (user_id, app_id, table_name, record_id, seq);

ALTER TABLE mana_user_seq NO FORCE ROW LEVEL SECURITY;
UPDATE mana_user_seq u SET superseded = (
    SELECT count(*) FROM mana_changes c WHERE c.user_id = u.user_id AND c.op <> 'insert'
);
ALTER TABLE mana_user_seq FORCE ROW LEVEL SECURITY;

-- The compactor looks for users with enough superseded changes across all
-- users: a transaction that declares mana.scan_users may read (not write)
-- every counter row. Counters hold no user data; the change log stays
-- visible only to its user.
CREATE POLICY mana_compaction_scan ON mana_user_seq FOR SELECT
    USING (current_setting('mana.scan_users', true) = 'on');
