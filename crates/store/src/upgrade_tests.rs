//! A database written by an older build (fewer migrations) is upgraded in
//! place and keeps every change; cursors that build handed out keep working.

use mana_sync_protocol::backup::ImportedChange;
use mana_sync_protocol::{Change, Cursor, Since, UserId, WireChange};
use mana_sync_testkit::pg::TestDatabase;
use time::OffsetDateTime;

use crate::migrations::{POSTGRES, SQLITE};
use crate::postgres::PostgresStore;
use crate::sqlite::SqliteStore;
use crate::{ChangeQuery, NewChangeset, PushOutcome, Store, StoreOptions};

/// The last migration of the build that numbered changes 1, 2, 3… and
/// handed out `c1.<n>` cursors.
const COUNTER_BUILD: usize = 3;

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid")
}

/// What the counter build wrote: (user, seq, record id, created_at offset in
/// seconds from `T0`). Alice's third change committed late with an earlier
/// timestamp, and her seq 4 is a gap (an import that skipped a duplicate).
const OLD_ROWS: &[(&str, i64, &str, i64)] = &[
    ("alice", 1, "a1", 0),
    ("alice", 2, "a2", 0),
    ("alice", 3, "a3", -10),
    ("alice", 5, "a5", 1),
    ("bob", 1, "b1", 0),
];
const OLD_COUNTERS: &[(&str, i64)] = &[("alice", 5), ("bob", 1)];

/// An hour ago, in whole seconds (what the SQL below writes).
fn t0() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    OffsetDateTime::from_unix_timestamp(now - 3600).expect("in range")
}

fn old_build_sql(t0: OffsetDateTime, postgres: bool) -> String {
    let timestamp = |at: OffsetDateTime| {
        if postgres {
            format!("to_timestamp({})", at.unix_timestamp())
        } else {
            (at.unix_timestamp() * 1_000_000).to_string()
        }
    };
    let mut sql = String::new();
    for (user, seq, id, offset) in OLD_ROWS {
        let created = timestamp(t0 + time::Duration::seconds(*offset));
        sql.push_str(&format!(
            "INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id, op,
                 data, client_id, schema_version, created_at)
             VALUES ('{user}', {seq}, '{}', 'todo', 'tasks', '{id}', 'insert', '{{}}', 'old', 1,
                 {created});\n",
            old_event_id(user, *seq)
        ));
    }
    // A changeset alice's device pushed then, which it may send again.
    sql.push_str(&format!(
        "INSERT INTO mana_changesets (user_id, changeset_id, created_at)
         VALUES ('alice', 'old-changeset', {});\n",
        timestamp(t0)
    ));
    for (user, last) in OLD_COUNTERS {
        sql.push_str(&format!(
            "INSERT INTO mana_user_seq (user_id, last_seq) VALUES ('{user}', {last});\n"
        ));
    }
    sql
}

/// The event id the counter build gave `user`'s change `seq`.
fn old_event_id(user: &str, seq: i64) -> uuid::Uuid {
    uuid::Uuid::from_u128((u128::from(user == "bob") << 64) | u128::from(seq.unsigned_abs()))
}

fn insert_change(id: &str) -> Change {
    let change: WireChange = serde_json::from_str(&format!(
        r#"{{"table":"tasks","id":"{id}","op":"insert","data":{{}}}}"#
    ))
    .expect("parses");
    change.validate(1).expect("valid")
}

async fn push_one(
    store: &dyn Store,
    name: &str,
    id: &str,
    changeset_id: Option<&str>,
) -> PushOutcome {
    let changes = [insert_change(id)];
    store
        .push(
            &user(name),
            NewChangeset {
                app_id: "todo",
                client_id: "d",
                changeset_id,
                changes: &changes,
            },
        )
        .await
        .expect("push")
}

async fn read(store: &dyn Store, name: &str, since: &str) -> (Vec<String>, Vec<u64>) {
    let query = ChangeQuery {
        space: None,
        app_id: "todo",
        collection: None,
        since: Since::parse(since).expect("a valid since"),
        exclude_client: None,
        limit: 1000,
        expired: crate::ExpiredCursor::Refuse { known: 0 },
    };
    let page = store
        .changes_after(&user(name), &query)
        .await
        .expect("read");
    page.changes
        .into_iter()
        .map(|c| (c.record_id, c.seq))
        .unzip()
}

async fn check_upgraded(new: &dyn Store, t0: OffsetDateTime) {
    let start = "1970-01-01T00:00:00.000Z";
    let (ids, positions) = read(new, "alice", start).await;
    assert_eq!(ids, ["a1", "a2", "a3", "a5"], "same changes, same order");
    // Renumbered to increasing positions at or after each created_at.
    let at = |offset: i64| Cursor::from_instant(t0 + time::Duration::seconds(offset)).position();
    assert_eq!(positions, [at(0), at(0) + 1, at(0) + 2, at(1)]);

    // Cursors of the counter build resume where they did.
    for (cursor, expected) in [
        ("c1.0", &["a1", "a2", "a3", "a5"][..]),
        ("c1.2", &["a3", "a5"][..]),
        ("c1.4", &["a5"][..]),
        ("c1.5", &[][..]),
        ("c1.77", &[][..]),
    ] {
        assert_eq!(
            read(new, "alice", cursor).await.0,
            expected,
            "since {cursor}"
        );
    }
    assert_eq!(read(new, "bob", "c1.0").await.0, ["b1"]);
    assert!(read(new, "bob", "c1.1").await.0.is_empty());

    // New pushes come after everything, and an old cursor still finds them.
    assert!(matches!(
        push_one(new, "alice", "new", Some("cs")).await,
        PushOutcome::Stored { last, .. } if last.position() > at(1)
    ));
    assert_eq!(
        push_one(new, "alice", "new", Some("cs")).await,
        PushOutcome::Duplicate
    );
    assert_eq!(
        push_one(new, "alice", "resent", Some("old-changeset")).await,
        PushOutcome::Duplicate,
        "a changeset stored before the upgrade is still known"
    );
    assert!(matches!(
        push_one(new, "bob", "his", Some("old-changeset")).await,
        PushOutcome::Stored { .. }
    ));
    assert_eq!(read(new, "alice", "c1.5").await.0, ["new"]);
    assert_eq!(read(new, "bob", "c1.1").await.0, ["his"]);

    // A backup holding a change the old build stored restores it once: the
    // upgraded event-id index still knows it, for its user only.
    let restored = |event_id| {
        Ok(ImportedChange {
            event_id,
            app_id: "todo".into(),
            client_id: "old".into(),
            created_at: t0,
            change: insert_change("a2"),
        })
    };
    let outcome = new
        .import(
            &user("alice"),
            Box::pin(futures::stream::iter([
                restored(old_event_id("alice", 2)),
                restored(old_event_id("alice", 6)),
            ])),
        )
        .await
        .expect("imports");
    assert_eq!((outcome.imported, outcome.skipped), (1, 1));
    let outcome = new
        .import(
            &user("bob"),
            Box::pin(futures::stream::iter([restored(old_event_id("alice", 2))])),
        )
        .await
        .expect("imports");
    assert_eq!((outcome.imported, outcome.skipped), (1, 0));
}

#[tokio::test]
async fn sqlite_upgrades_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    drop(SqliteStore::open_blocking(&path, 1, &SQLITE[..COUNTER_BUILD]).expect("opens at v3"));
    let t0 = t0();
    rusqlite::Connection::open(&path)
        .expect("opens")
        .execute_batch(&old_build_sql(t0, false))
        .expect("old rows");
    let new = SqliteStore::open(&path.display().to_string(), &StoreOptions::default())
        .await
        .expect("upgrades");
    check_upgraded(&new, t0).await;
    // Migration 10 edited the log's definition in place: the file is whole
    // and every connection reads the new rule on `op`.
    let conn = rusqlite::Connection::open(&path).expect("opens");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("checks");
    assert_eq!(check, "ok");
    let refused = conn
        .execute(
            "UPDATE mana_changes SET op = 'rename' WHERE rowid = (SELECT min(rowid) FROM mana_changes)",
            [],
        )
        .expect_err("an unknown op is refused");
    assert!(
        refused
            .to_string()
            .contains("op = 'insert' OR op = 'update'"),
        "{refused}"
    );
}

#[tokio::test]
async fn postgres_upgrades_in_place() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    drop(
        PostgresStore::open_with(
            &db.url(),
            &StoreOptions::default(),
            &POSTGRES[..COUNTER_BUILD],
        )
        .await
        .expect("opens at v3"),
    );
    let t0 = t0();
    db.admin()
        .await
        .batch_execute(&old_build_sql(t0, true))
        .await
        .expect("old rows");
    // The server's own role (not a superuser) runs the migration.
    let new = PostgresStore::open(&db.url(), &StoreOptions::default())
        .await
        .expect("upgrades");
    check_upgraded(&new, t0).await;
}
