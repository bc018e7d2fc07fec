-- The change log's rule on `op`, `op IN ('insert', 'update', 'delete')`,
-- made SQLite build a temporary B-tree of the three names and probe it at
-- every insert: an ephemeral table opened and closed for every change
-- stored. The same rule as three comparisons needs none.
--
-- SQLite's documented way to change a CHECK constraint without rebuilding
-- the table (https://www.sqlite.org/lang_altertable.html#otheralter): edit
-- the table's definition in sqlite_schema, then move schema_version so that
-- every connection reads it again. The migration runner does the second
-- step for a migration that leaves writable_schema on (sqlite::migrate).
-- Every stored row already obeys the new rule: it is the old one.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql,
                     'CHECK (op IN (''insert'', ''update'', ''delete''))',
                     'CHECK (op = ''insert'' OR op = ''update'' OR op = ''delete'')')
 WHERE type = 'table' AND name = 'mana_changes';
