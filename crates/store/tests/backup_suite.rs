//! Export and import of a user's log, run against SQLite and against
//! Postgres.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Fixture, insert, push, query, read_all, user};
use mana_sync_protocol::{Change, Cursor, Since, UserId};
use mana_sync_store::Store;

fn imported(n: usize, app: &str) -> mana_sync_protocol::backup::ImportedChange {
    mana_sync_protocol::backup::ImportedChange {
        event_id: uuid::Uuid::from_u128(n as u128 + 1),
        app_id: app.to_owned(),
        client_id: "restored-device".to_owned(),
        created_at: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(n as i64),
        change: insert("tasks", &format!("r{n:05}")),
    }
}

fn source(
    items: Vec<Result<mana_sync_protocol::backup::ImportedChange, mana_sync_store::SourceError>>,
) -> mana_sync_store::ImportSource {
    Box::pin(futures::stream::iter(items))
}

async fn exported_ids(store: &dyn Store, user: &UserId) -> Vec<(String, String)> {
    use futures::StreamExt as _;
    let mut batches = store.export(user).await.expect("export starts");
    let mut ids = Vec::new();
    while let Some(batch) = batches.next().await {
        for change in batch.expect("batch") {
            ids.push((change.app_id, change.record_id));
        }
    }
    ids
}

async fn export_streams_every_change_of_the_user_oldest_first(f: Fixture) {
    let alice = user("alice");
    for chunk in 0..3 {
        let changes: Vec<Change> = (0..700)
            .map(|i| insert("tasks", &format!("{:04}", chunk * 700 + i)))
            .collect();
        push(
            &*f.store,
            &alice,
            if chunk == 1 { "notes" } else { "todo" },
            "d1",
            &changes,
        )
        .await;
    }
    f.push_todo(&user("bob"), "d1", &[insert("tasks", "bobs")])
        .await;
    let ids = exported_ids(&*f.store, &alice).await;
    assert_eq!(ids.len(), 2100);
    let expected: Vec<String> = (0..2100).map(|i| format!("{i:04}")).collect();
    assert_eq!(
        ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(ids[700].0, "notes");
    assert!(exported_ids(&*f.store, &user("carol")).await.is_empty());
}

async fn import_is_all_or_nothing_and_skips_known_event_ids(f: Fixture) {
    let alice = user("alice");
    // A source that fails after more than two batches were written.
    let mut failing: Vec<_> = (0..2500).map(|n| Ok(imported(n, "todo"))).collect();
    failing.push(Err("line 2501: broken".into()));
    let error = f
        .store
        .import(&alice, source(failing))
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("line 2501"), "{error}");
    assert!(
        exported_ids(&*f.store, &alice).await.is_empty(),
        "nothing of it is stored"
    );
    let (_, end) = f.read_todo(&alice, Since::Cursor(Cursor::START)).await;
    assert_eq!(end, Cursor::START, "the counter did not move");

    let outcome = f
        .store
        .import(
            &alice,
            source((0..2500).map(|n| Ok(imported(n, "todo"))).collect()),
        )
        .await
        .expect("imports");
    assert_eq!((outcome.imported, outcome.skipped), (2500, 0));
    let mut again: Vec<_> = (2000..3000).map(|n| Ok(imported(n, "todo"))).collect();
    again.push(Ok(imported(2999, "todo")));
    let outcome = f
        .store
        .import(&alice, source(again))
        .await
        .expect("imports");
    assert_eq!(
        (outcome.imported, outcome.skipped),
        (500, 501),
        "known and repeated event ids are skipped"
    );
    let (ids, _) = read_all(
        &*f.store,
        &alice,
        query("todo", Some("tasks"), Since::Cursor(Cursor::START)),
    )
    .await;
    assert_eq!(
        ids,
        (0..3000).map(|n| format!("r{n:05}")).collect::<Vec<_>>()
    );
    // Another user importing the same events gets their own copies.
    let outcome = f
        .store
        .import(
            &user("bob"),
            source((0..10).map(|n| Ok(imported(n, "todo"))).collect()),
        )
        .await
        .expect("imports");
    assert_eq!(outcome.imported, 10);
}

store_suite!(
    export_streams_every_change_of_the_user_oldest_first,
    import_is_all_or_nothing_and_skips_known_event_ids,
);
