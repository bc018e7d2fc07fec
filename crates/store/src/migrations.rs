//! Schema migrations, one ordered list per database.
//!
//! Each migration runs once, recorded in `mana_schema_migrations`; all pending
//! ones run in a single transaction at start-up, so a crash mid-way leaves the
//! schema as it was. On Postgres the transaction first takes an advisory lock,
//! so instances starting together migrate one after the other instead of racing.
//! Migrations never lose a change: they add, or reshape what holds the same
//! rows (indexes, a CHECK rewritten into an equivalent one), so a database
//! written by an older build is upgraded in place and keeps every change.

/// A schema step.
pub(crate) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "change log",
        sql: include_str!("../migrations/postgres/0001_change_log.sql"),
    },
    Migration {
        version: 2,
        name: "changesets",
        sql: include_str!("../migrations/postgres/0002_changesets.sql"),
    },
    Migration {
        version: 3,
        name: "server settings",
        sql: include_str!("../migrations/postgres/0003_server_settings.sql"),
    },
    Migration {
        version: 4,
        name: "positions",
        sql: include_str!("../migrations/postgres/0004_positions.sql"),
    },
    Migration {
        version: 5,
        name: "compaction",
        sql: include_str!("../migrations/postgres/0005_compaction.sql"),
    },
    Migration {
        version: 6,
        name: "spaces",
        sql: include_str!("../migrations/postgres/0006_spaces.sql"),
    },
    Migration {
        version: 7,
        name: "push groups",
        sql: include_str!("../migrations/postgres/0007_push_groups.sql"),
    },
];

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "change log",
        sql: include_str!("../migrations/sqlite/0001_change_log.sql"),
    },
    Migration {
        version: 2,
        name: "changesets",
        sql: include_str!("../migrations/sqlite/0002_changesets.sql"),
    },
    Migration {
        version: 3,
        name: "server settings",
        sql: include_str!("../migrations/sqlite/0003_server_settings.sql"),
    },
    Migration {
        version: 4,
        name: "positions",
        sql: include_str!("../migrations/sqlite/0004_positions.sql"),
    },
    Migration {
        version: 5,
        name: "compaction",
        sql: include_str!("../migrations/sqlite/0005_compaction.sql"),
    },
    Migration {
        version: 6,
        name: "spaces",
        sql: include_str!("../migrations/sqlite/0006_spaces.sql"),
    },
    Migration {
        version: 7,
        name: "event index",
        sql: include_str!("../migrations/sqlite/0007_event_index.sql"),
    },
    Migration {
        version: 8,
        name: "changeset key",
        sql: include_str!("../migrations/sqlite/0008_changeset_key.sql"),
    },
    Migration {
        version: 9,
        name: "one user index",
        sql: include_str!("../migrations/sqlite/0009_one_user_index.sql"),
    },
    Migration {
        version: 10,
        name: "op check without a temporary b-tree",
        sql: include_str!("../migrations/sqlite/0010_op_check_without_temp_btree.sql"),
    },
];
