//! A database written by an older build (fewer migrations) is upgraded in
//! place and keeps every change.

use mana_sync_protocol::{Cursor, Since, UserId, WireChange};
use mana_sync_testkit::pg::TestDatabase;

use crate::migrations::{POSTGRES, SQLITE};
use crate::postgres::PostgresStore;
use crate::sqlite::SqliteStore;
use crate::{ChangeQuery, NewChangeset, PushOutcome, Store, StoreOptions};

fn alice() -> UserId {
    UserId::new("alice").expect("valid")
}

async fn push_one(store: &dyn Store, id: &str, changeset_id: Option<&str>) -> PushOutcome {
    let change: WireChange = serde_json::from_str(&format!(
        r#"{{"table":"tasks","id":"{id}","op":"insert","data":{{}}}}"#
    ))
    .expect("parses");
    let changes = [change.validate(1).expect("valid")];
    store
        .push(
            &alice(),
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

async fn ids(store: &dyn Store) -> Vec<String> {
    let query = ChangeQuery {
        app_id: "todo",
        collection: None,
        since: Since::Cursor(Cursor::START),
        exclude_client: None,
        limit: 1000,
    };
    let page = store.changes_after(&alice(), &query).await.expect("read");
    page.changes.into_iter().map(|c| c.record_id).collect()
}

async fn check_upgraded(new: &dyn Store) {
    assert_eq!(ids(new).await, ["written-by-old-build"]);
    // What the newer migrations added works on the upgraded database.
    assert!(matches!(
        push_one(new, "new", Some("cs")).await,
        PushOutcome::Stored { .. }
    ));
    assert_eq!(
        push_one(new, "new", Some("cs")).await,
        PushOutcome::Duplicate
    );
    assert_eq!(ids(new).await, ["written-by-old-build", "new"]);
}

#[tokio::test]
async fn sqlite_upgrades_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    let old = SqliteStore::open_blocking(&path, 1, &SQLITE[..1]).expect("opens at v1");
    push_one(&old, "written-by-old-build", None).await;
    let new = SqliteStore::open(&path.display().to_string(), &StoreOptions::default())
        .await
        .expect("upgrades");
    check_upgraded(&new).await;
}

#[tokio::test]
async fn postgres_upgrades_in_place() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let old = PostgresStore::open_with(&db.url(), &StoreOptions::default(), &POSTGRES[..1])
        .await
        .expect("opens at v1");
    push_one(&old, "written-by-old-build", None).await;
    let new = PostgresStore::open(&db.url(), &StoreOptions::default())
        .await
        .expect("upgrades");
    check_upgraded(&new).await;
}
