-- Positions instead of counters: `seq` (and `mana_user_seq.last_seq`) become
-- server timestamps in nanoseconds since the Unix epoch, reserved under the
-- user's counter row lock as max(now, last + 1). They still follow commit
-- order, and printed as RFC 3339 they compare as strings in that order, which
-- is what the seed's clients do with cursors.
--
-- Rows written before this migration carry small counters (1, 2, 3...). Each
-- user's rows are renumbered in the same order to the smallest increasing
-- positions at or after their created_at, and the old numbers are kept in
-- mana_legacy_cursors so that cursors handed out as `c1.<n>` still resume at
-- the same place.
-- The position before the last reservation, returned with it: positions are
-- not dense, so a notice says where the push continues from.
ALTER TABLE mana_user_seq ADD COLUMN prev_seq BIGINT NOT NULL DEFAULT 0;

CREATE TABLE mana_legacy_cursors (
    user_id    TEXT NOT NULL,
    legacy_seq BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    PRIMARY KEY (user_id, legacy_seq)
);

-- The owner renumbers every user's rows at once, so row-level security is
-- lifted for the length of this transaction only.
ALTER TABLE mana_changes NO FORCE ROW LEVEL SECURITY;
ALTER TABLE mana_user_seq NO FORCE ROW LEVEL SECURITY;

-- new(i) = i + max over j <= i of (created_at(j) - j): the smallest sequence
-- with new(i) >= created_at(i) and new(i) > new(i - 1).
INSERT INTO mana_legacy_cursors (user_id, legacy_seq, seq)
SELECT user_id, seq, n + MAX(floor_ns - n) OVER (PARTITION BY user_id ORDER BY seq)
FROM (
    SELECT user_id, seq,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq) AS n,
           GREATEST((EXTRACT(EPOCH FROM created_at) * 1000000000)::BIGINT, 1000001) AS floor_ns
    FROM mana_changes
) numbered;

UPDATE mana_changes c SET seq = l.seq
FROM mana_legacy_cursors l
WHERE l.user_id = c.user_id AND l.legacy_seq = c.seq;

UPDATE mana_user_seq u SET last_seq = newest.seq
FROM (SELECT user_id, MAX(seq) AS seq FROM mana_legacy_cursors GROUP BY user_id) newest
WHERE newest.user_id = u.user_id;

ALTER TABLE mana_changes FORCE ROW LEVEL SECURITY;
ALTER TABLE mana_user_seq FORCE ROW LEVEL SECURITY;

ALTER TABLE mana_legacy_cursors ENABLE ROW LEVEL SECURITY;
ALTER TABLE mana_legacy_cursors FORCE ROW LEVEL SECURITY;
CREATE POLICY mana_user_isolation ON mana_legacy_cursors
    USING (user_id = current_setting('mana.user_id', true))
    WITH CHECK (user_id = current_setting('mana.user_id', true));
