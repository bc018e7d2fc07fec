-- Compaction (see crates/store/src/compaction.rs).
--
-- superseded: changes pushed since the user's last compaction that may
-- supersede an earlier one (updates and deletes); the background compactor
-- picks users by it. expired_through: the last position of history dropped
-- for good (tombstones past their retention); a cursor before it can no
-- longer be served and is answered `cursor_expired`.
ALTER TABLE mana_user_seq ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mana_user_seq ADD COLUMN expired_through INTEGER NOT NULL DEFAULT 0;

-- One record's history, for folding it.
CREATE INDEX mana_changes_record ON mana_changes (user_id, app_id, table_name, record_id, seq);

UPDATE mana_user_seq SET superseded = (
    SELECT count(*) FROM mana_changes c WHERE c.user_id = mana_user_seq.user_id AND c.op <> 'insert'
);
