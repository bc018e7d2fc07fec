//! What the store suites share: a store on either database, and small
//! helpers to push and read.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // each suite uses a subset

use std::sync::Arc;
use std::time::Duration;

use mana_sync_protocol::{Change, Cursor, LogId, Since, SpaceId, UserId, WireChange};
use mana_sync_store::{
    ChangeQuery, CompactOptions, CompactOutcome, ExpiredCursor, MemberChange, NewChangeset,
    PushOutcome, Role, Store, StoreOptions, StoredChange,
};
use mana_sync_testkit::pg::TestDatabase;

/// A store under test and a way to reach its database from outside.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
}

pub enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Postgres(TestDatabase),
}

impl Fixture {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sync.db");
        let store = mana_sync_store::open(
            &format!("sqlite://{}", path.display()),
            &StoreOptions::default(),
        )
        .await
        .expect("opens");
        Fixture {
            store,
            backend: Backend::Sqlite { _dir: dir, path },
        }
    }

    pub async fn postgres() -> Option<Self> {
        let db = TestDatabase::create().await?;
        let store = mana_sync_store::open(&db.url(), &StoreOptions::default())
            .await
            .expect("opens");
        Some(Fixture {
            store,
            backend: Backend::Postgres(db),
        })
    }

    pub fn url(&self) -> String {
        match &self.backend {
            Backend::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Backend::Postgres(db) => db.url(),
        }
    }

    /// Runs SQL with full rights, bypassing the store.
    pub async fn admin_sql(&self, sqlite: &str, postgres: &str) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("opens");
                conn.execute_batch(sqlite).expect("admin SQL");
            }
            Backend::Postgres(db) => db
                .admin()
                .await
                .batch_execute(postgres)
                .await
                .expect("admin SQL"),
        }
    }

    /// Makes the database itself refuse every change whose record id is
    /// `LIKE pattern` (a trigger), after the rows before it in the same
    /// transaction were written.
    pub async fn refuse_records_like(&self, pattern: &str) {
        self.admin_sql(
            &format!(
                "CREATE TRIGGER poison BEFORE INSERT ON mana_changes WHEN NEW.record_id LIKE '{pattern}'
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END;"
            ),
            &format!(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$;
                 CREATE TRIGGER poison BEFORE INSERT ON mana_changes FOR EACH ROW
                   WHEN (NEW.record_id LIKE '{pattern}') EXECUTE FUNCTION poison();"
            ),
        )
        .await;
    }
}

impl Fixture {
    /// Pushes `changes` into the app `todo` as `user`, from the device
    /// `client`.
    pub async fn push_todo(&self, user: &UserId, client: &str, changes: &[Change]) -> PushOutcome {
        push(&*self.store, user, "todo", client, changes).await
    }

    /// Reads `user`'s app `todo` (every collection) from `since` to the end,
    /// page by page: the record ids and the final cursor.
    pub async fn read_todo(&self, user: &UserId, since: Since) -> (Vec<String>, Cursor) {
        read_all(&*self.store, user, query("todo", None, since)).await
    }

    /// A new space `name` owned by `owner`.
    pub async fn create_space(&self, owner: &UserId, name: &str) -> SpaceId {
        self.store
            .create_space(owner, name)
            .await
            .expect("creates the space")
            .space_id
    }

    /// `by` (an owner) gives `who` `role` in `space`.
    pub async fn set_member(&self, by: &UserId, space: &SpaceId, who: &str, role: Role) {
        self.store
            .change_membership(
                by,
                space,
                &MemberChange::Set {
                    user: user(who),
                    role,
                },
            )
            .await
            .expect("the membership changes");
    }
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user")
}

pub fn change(json: &str) -> Change {
    serde_json::from_str::<WireChange>(json)
        .expect("parses")
        .validate(1)
        .expect("valid")
}

pub fn insert(table: &str, id: &str) -> Change {
    change(&format!(
        r#"{{"table":"{table}","id":"{id}","op":"insert","data":{{"id":"{id}","title":"t {id}"}}}}"#
    ))
}

pub async fn push(
    store: &dyn Store,
    user: &UserId,
    app: &str,
    client: &str,
    changes: &[Change],
) -> PushOutcome {
    store
        .push(
            user,
            NewChangeset {
                app_id: app,
                client_id: client,
                changeset_id: None,
                changes,
            },
        )
        .await
        .expect("push")
}

/// The cursor just after a stored push.
pub fn end_of(outcome: PushOutcome) -> Cursor {
    match outcome {
        PushOutcome::Stored { last, .. } => last,
        PushOutcome::Duplicate => panic!("the push was a duplicate"),
    }
}

pub fn query<'a>(app: &'a str, collection: Option<&'a str>, since: Since) -> ChangeQuery<'a> {
    ChangeQuery {
        space: None,
        app_id: app,
        collection,
        since,
        exclude_client: None,
        limit: 1000,
        expired: ExpiredCursor::Refuse { known: 0 },
    }
}

/// Reads to the end, following the cursor page by page.
pub async fn read_all(
    store: &dyn Store,
    user: &UserId,
    mut q: ChangeQuery<'_>,
) -> (Vec<String>, Cursor) {
    let mut ids = Vec::new();
    loop {
        let page = store.changes_after(user, &q).await.expect("read");
        ids.extend(page.changes.iter().map(|c| c.record_id.clone()));
        q.since = Since::Cursor(page.next);
        if !page.has_more {
            return (ids, page.next);
        }
    }
}

/// A change of `tasks/id` that sets one field (`value` is JSON) at `at`.
pub fn update(id: &str, field: &str, value: &str, at: &str) -> Change {
    change(&format!(
        r#"{{"table":"tasks","id":"{id}","op":"update","fields":{{"{field}":{{"value":{value},"at":"{at}"}}}}}}"#
    ))
}

/// An insert of `tasks/id` whose fields were written at `at`.
pub fn insert_at(id: &str, at: &str) -> Change {
    change(&format!(
        r#"{{"table":"tasks","id":"{id}","op":"insert","data":{{"id":"{id}","title":"new"}},
            "fields":{{"id":{{"value":"{id}","at":"{at}"}},"title":{{"value":"new","at":"{at}"}}}}}}"#
    ))
}

/// A delete of `tasks/id` at `at`.
pub fn delete(id: &str, at: &str) -> Change {
    change(&format!(
        r#"{{"table":"tasks","id":"{id}","op":"delete","deletedAt":"{at}"}}"#
    ))
}

/// Every change of the user's `todo` log, read from the start.
pub async fn rows(store: &dyn Store, who: &UserId) -> Vec<StoredChange> {
    let mut q = query("todo", None, Since::START);
    q.limit = 1000;
    let mut all = Vec::new();
    loop {
        let page = store.changes_after(who, &q).await.expect("read");
        all.extend(page.changes);
        q.since = Since::Cursor(page.next);
        if !page.has_more {
            return all;
        }
    }
}

/// Compacts the user's log with `options`.
pub async fn compact(store: &dyn Store, who: &UserId, options: &CompactOptions) -> CompactOutcome {
    store
        .compact(&LogId::of_user(who), options, &|_: &CompactOutcome| {})
        .await
        .expect("compacts")
}

/// Field timestamps, one nanosecond apart.
pub const T: [&str; 6] = [
    "2026-11-25T10:00:00.000000001Z",
    "2026-11-25T10:00:00.000000002Z",
    "2026-11-25T10:00:00.000000003Z",
    "2026-11-25T10:00:00.000000004Z",
    "2026-11-25T10:00:00.000000005Z",
    "2026-11-25T10:00:00.000000006Z",
];

/// Generates `mod sqlite` and `mod postgres`, each running every listed
/// `async fn(Fixture)` against a fresh store on that database.
#[macro_export]
macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::common::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(fixture) = $crate::common::Fixture::postgres().await else { return };
                    super::$test(fixture).await;
                }
            )*
        }
    };
}

/// Waits until `sql` (a count) answers `expected` on `admin`, for at most
/// 20 s.
pub async fn until_count(admin: &tokio_postgres::Client, sql: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let count: i64 = admin.query_one(sql, &[]).await.expect("counts").get(0);
        if count == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: {count}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds `user`'s counter row (`mana_user_seq`) in a transaction of
/// another connection, which it returns: the lock goes with its `COMMIT`.
pub async fn hold_counter_row(db: &TestDatabase, user: &str) -> tokio_postgres::Client {
    let holder = db.admin().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM mana_user_seq WHERE user_id = '{user}' FOR UPDATE"
        ))
        .await
        .expect("locks");
    holder
}

/// Waits until `count` statements of `db` wait on a lock, watching from
/// `observer`.
pub async fn until_waiting_on_locks(
    db: &TestDatabase,
    observer: &tokio_postgres::Client,
    count: i64,
) {
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.name()
    );
    until_count(observer, &waiting, count).await;
}
