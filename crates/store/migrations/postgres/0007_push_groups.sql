-- Group commit (crates/store/src/postgres/push_group.rs): one transaction
-- stores the waiting pushes of several users at once, and declares every one
-- of them, as a list, with set_config('mana.user_ids', $users::text, true).
-- Such a transaction sees and writes the rows of the users it declared, and
-- no other; a transaction that declares one user (mana.user_id) is
-- unchanged. The list is read once per statement, into a hashed set (a
-- subquery written out rather than a function: a SQL function's body is
-- planned again in every statement that calls it).

DROP POLICY mana_user_isolation ON mana_changesets;
CREATE POLICY mana_user_isolation ON mana_changesets
    USING (user_id = current_setting('mana.user_id', true)
           OR user_id IN (SELECT unnest(NULLIF(current_setting('mana.user_ids', true), '')::TEXT[])))
    WITH CHECK (user_id = current_setting('mana.user_id', true)
                OR user_id IN (SELECT unnest(NULLIF(current_setting('mana.user_ids', true), '')::TEXT[])));

DROP POLICY mana_log_isolation ON mana_changes;
CREATE POLICY mana_log_isolation ON mana_changes
    USING (user_id = current_setting('mana.user_id', true)
           OR user_id IN (SELECT unnest(NULLIF(current_setting('mana.user_ids', true), '')::TEXT[]))
           OR user_id IN (SELECT mana_readable_space_logs()))
    WITH CHECK (user_id = current_setting('mana.user_id', true)
                OR user_id IN (SELECT unnest(NULLIF(current_setting('mana.user_ids', true), '')::TEXT[]))
                OR user_id IN (SELECT mana_writable_space_logs()));

DROP POLICY mana_log_isolation ON mana_user_seq;
CREATE POLICY mana_log_isolation ON mana_user_seq
    USING (user_id = current_setting('mana.user_id', true)
           OR user_id IN (SELECT unnest(NULLIF(current_setting('mana.user_ids', true), '')::TEXT[]))
           OR user_id IN (SELECT mana_readable_space_logs()))
    WITH CHECK (user_id = current_setting('mana.user_id', true)
                OR user_id IN (SELECT unnest(NULLIF(current_setting('mana.user_ids', true), '')::TEXT[]))
                OR user_id IN (SELECT mana_writable_space_logs()));
