-- Positions instead of counters: `seq` (and `mana_user_seq.last_seq`) become
-- server timestamps in nanoseconds since the Unix epoch, reserved as
-- max(now, last + 1) by the one writer. They still follow commit order, and
-- printed as RFC 3339 they compare as strings in that order, which is what
-- the seed's clients do with cursors.
--
-- Rows written before this migration carry small counters (1, 2, 3...). Each
-- user's rows are renumbered in the same order to the smallest increasing
-- positions at or after their created_at (microseconds here), and the old
-- numbers are kept in mana_legacy_cursors so that cursors handed out as
-- `c1.<n>` still resume at the same place.
-- The position before the last reservation, returned with it: positions are
-- not dense, so a notice says where the push continues from.
ALTER TABLE mana_user_seq ADD COLUMN prev_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE mana_legacy_cursors (
    user_id    TEXT NOT NULL,
    legacy_seq INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (user_id, legacy_seq)
) WITHOUT ROWID;

-- new(i) = i + max over j <= i of (created_at(j) - j): the smallest sequence
-- with new(i) >= created_at(i) and new(i) > new(i - 1).
INSERT INTO mana_legacy_cursors (user_id, legacy_seq, seq)
SELECT user_id, seq, n + MAX(floor_ns - n) OVER (PARTITION BY user_id ORDER BY seq)
FROM (
    SELECT user_id, seq,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq) AS n,
           MAX(created_at * 1000, 1000001) AS floor_ns
    FROM mana_changes
);

UPDATE mana_changes SET seq = (
    SELECT l.seq FROM mana_legacy_cursors l
    WHERE l.user_id = mana_changes.user_id AND l.legacy_seq = mana_changes.seq
);

UPDATE mana_user_seq SET last_seq = (
    SELECT MAX(l.seq) FROM mana_legacy_cursors l WHERE l.user_id = mana_user_seq.user_id
)
WHERE user_id IN (SELECT user_id FROM mana_legacy_cursors);
