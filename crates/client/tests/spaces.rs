//! Shared spaces through the real `mana-sync` server, on SQLite and
//! Postgres: two users share a list and both edit it; a member's device
//! follows the owner's edits live and drops the list when removed; a
//! viewer's refused push is set aside while their personal changes still
//! sync; a removed member's device drops the list and, on re-joining, gets
//! it back whole (its own earlier changes included), each record once.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{
    DEADLINE, Device, Live, app_id, fields, followed_changes, on_both_databases, quick_options,
    server_changes, server_on, wait_for_titles, wait_until_synced,
};
use mana_sync_client::{ClientError, Query, Role, SpaceView, SyncClient, SyncStatus};
use serde_json::{Value, json};

/// The titles of a device's todos in `space` (`None`: personal), sorted.
fn titles_in(device: &Device, space: Option<&str>) -> Vec<String> {
    let mut titles: Vec<String> = device
        .store
        .list("tasks")
        .unwrap()
        .iter()
        .filter(|r| r.space_id.as_deref() == space)
        .map(|r| r.get("title").and_then(Value::as_str).unwrap().to_owned())
        .collect();
    titles.sort();
    titles
}

/// Waits until the subscription's todos of `space` have exactly `want`.
async fn wait_for(
    todos: &mut mana_sync_client::Subscription,
    space: &str,
    want: &[&str],
    what: &str,
) {
    wait_for_titles(todos, want, what, |r| r.space_id.as_deref() == Some(space)).await;
}

/// Adds a todo titled `title` to the shared list on `device`.
fn add(device: &Device, list: &SpaceView, title: &str) -> String {
    device
        .store
        .insert_in(Some(&list.id), "tasks", json!({ "title": title }))
        .unwrap()
}

/// Ann (the list's owner) gives Bob `role` in the list.
async fn make_bob(ann_sync: &SyncClient, list: &SpaceView, role: Role) {
    ann_sync.set_member(&list.id, "bob", role).await.unwrap();
}

/// Ann creates the list `name` and makes Bob an editor of it.
async fn list_shared_with_bob(ann_sync: &SyncClient, name: &str) -> SpaceView {
    let list = ann_sync.create_space(name).await.unwrap();
    make_bob(ann_sync, &list, Role::Editor).await;
    list
}

struct Pair {
    ann: Device,
    ann_sync: SyncClient,
    bob: Device,
    bob_sync: SyncClient,
    app: String,
}

fn pair(server: &mana_sync_testkit::server::TestServer, ann: &str, bob: &str) -> Pair {
    let app = app_id("todo");
    let (ann_device, bob_device) = (Device::new(&app), Device::new(&app));
    let ann_sync = ann_device.client(&server.url, &server.token(ann));
    let bob_sync = bob_device.client_with(&server.url, &server.token(bob), quick_options());
    Pair {
        ann: ann_device,
        ann_sync,
        bob: bob_device,
        bob_sync,
        app,
    }
}

async fn members_share_a_list_and_both_edit_it(database: Option<String>) {
    let server = server_on(database).await;
    let Pair {
        ann,
        ann_sync,
        bob,
        bob_sync,
        app,
    } = pair(&server, "ann", "bob");
    let list = list_shared_with_bob(&ann_sync, "Groceries").await;
    assert_eq!(list.role, "owner", "as created");
    let milk = add(&ann, &list, "Milk");
    ann.store
        .insert("tasks", json!({ "title": "Ann's own" }))
        .unwrap();
    ann_sync.sync().await.unwrap();

    // Bob's device downloads the list (and nothing of Ann's own todos), and
    // knows his role in it.
    bob_sync.sync().await.unwrap();
    assert_eq!(titles_in(&bob, Some(&list.id)), ["Milk"]);
    assert!(
        titles_in(&bob, None).is_empty(),
        "Ann's own todos stay hers"
    );
    let known = bob
        .store
        .space(&list.id)
        .unwrap()
        .expect("bob's device knows the list");
    assert_eq!(
        (known.name.as_str(), known.role.as_str()),
        ("Groceries", "editor")
    );

    // Both edit it; each sees the other's edits, field by field.
    bob.store
        .update("tasks", &milk, fields(json!({ "done": true })))
        .unwrap();
    add(&bob, &list, "Eggs");
    ann.store
        .update("tasks", &milk, fields(json!({ "title": "Oat milk" })))
        .unwrap();
    bob_sync.sync().await.unwrap();
    ann_sync.sync().await.unwrap();
    bob_sync.sync().await.unwrap();
    assert_eq!(titles_in(&ann, Some(&list.id)), ["Eggs", "Oat milk"]);
    assert_eq!(titles_in(&bob, Some(&list.id)), ["Eggs", "Oat milk"]);
    let on_bob = bob.store.get("tasks", &milk).unwrap().unwrap();
    assert_eq!(on_bob.get("done"), Some(&json!(true)));
    assert_eq!(on_bob.space_id.as_deref(), Some(list.id.as_str()));
    assert_eq!(
        ann.store.record_state("tasks", &milk).unwrap(),
        bob.store.record_state("tasks", &milk).unwrap()
    );

    // Every change of the list carries its space on the wire; Bob's own
    // log holds none of them.
    let followed = followed_changes(&server, &server.token("bob"), &app, "tasks").await;
    assert_eq!(followed.len(), 4, "{followed:?}");
    assert!(
        followed.iter().all(|c| c["spaceId"] == json!(list.id)),
        "{followed:?}"
    );
    assert!(
        server_changes(&server, &server.token("bob"), &app, "tasks")
            .await
            .is_empty(),
        "a client without spaces sees Bob's personal log only"
    );
    assert_eq!(ann.store.status(), SyncStatus::Synced);
    assert_eq!(bob.store.status(), SyncStatus::Synced);
}
on_both_databases!(members_share_a_list_and_both_edit_it);

async fn a_members_device_follows_the_list_live_and_drops_it_when_removed(
    database: Option<String>,
) {
    let label = if database.is_some() {
        "Postgres"
    } else {
        "SQLite"
    };
    let server = server_on(database).await;
    let Pair {
        ann,
        ann_sync,
        bob,
        bob_sync,
        ..
    } = pair(&server, "ann", "bob");
    let list = ann_sync.create_space("Household").await.unwrap();
    add(&ann, &list, "Bins");
    ann_sync.sync().await.unwrap();

    let mut todos = bob.store.subscribe(Query::new("tasks"));
    let mut statuses = bob.store.watch_status();
    let live = Live::start(&bob_sync);
    wait_until_synced(&mut statuses, "bob's device is live").await;

    // Shared while Bob's device is connected: it downloads the list at once.
    make_bob(&ann_sync, &list, Role::Editor).await;
    wait_for(&mut todos, &list.id, &["Bins"], "joining").await;

    // Ann's edits reach Bob's device live; his reach hers.
    add(&ann, &list, "Dishes");
    ann_sync.sync().await.unwrap();
    wait_for(&mut todos, &list.id, &["Bins", "Dishes"], "Ann's edit").await;
    let started = std::time::Instant::now();
    add(&ann, &list, "Laundry");
    ann_sync.push().await.unwrap();
    wait_for(
        &mut todos,
        &list.id,
        &["Bins", "Dishes", "Laundry"],
        "Ann's second edit",
    )
    .await;
    // From the owner's local write to the member's query result: the push,
    // the stream, the merge and the re-query.
    eprintln!(
        "{label}: a shared-space push reached the other member's device in {:?}",
        started.elapsed()
    );
    add(&bob, &list, "Plants");
    tokio::time::timeout(DEADLINE, async {
        while bob.store.pending_count().unwrap() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the live loop pushes Bob's edit");
    ann_sync.sync().await.unwrap();
    assert_eq!(
        titles_in(&ann, Some(&list.id)),
        ["Bins", "Dishes", "Laundry", "Plants"]
    );

    // Removed: Bob's device drops the list's records, live.
    ann_sync.remove_member(&list.id, "bob").await.unwrap();
    wait_for(&mut todos, &list.id, &[], "removal").await;
    assert!(bob.store.space(&list.id).unwrap().is_none());

    live.stop().await;
}
on_both_databases!(a_members_device_follows_the_list_live_and_drops_it_when_removed);

async fn a_viewers_refused_push_is_set_aside_and_personal_changes_still_sync(
    database: Option<String>,
) {
    let server = server_on(database).await;
    let Pair {
        ann,
        ann_sync,
        bob,
        bob_sync,
        app,
    } = pair(&server, "ann", "bob");
    let list = list_shared_with_bob(&ann_sync, "Backlog").await;
    let task = add(&ann, &list, "Ship it");
    ann_sync.sync().await.unwrap();
    bob_sync.sync().await.unwrap();

    // Offline, Bob edits the list (still an editor, as far as his device
    // knows) and his own todos; meanwhile Ann makes him a viewer.
    bob.store
        .update("tasks", &task, fields(json!({ "title": "Ship it now" })))
        .unwrap();
    bob.store
        .insert("tasks", json!({ "title": "Bob's own" }))
        .unwrap();
    make_bob(&ann_sync, &list, Role::Viewer).await;

    // The list's change is refused and set aside; his own goes through.
    let report = bob_sync.sync().await.unwrap();
    assert_eq!((report.pushed, report.rejected), (1, 1), "{report:?}");
    assert_eq!(bob.store.pending_count().unwrap(), 0);
    let rejected = bob.store.rejected().unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].space_id.as_deref(), Some(list.id.as_str()));
    assert!(
        rejected[0].reason.starts_with("space_forbidden"),
        "{}",
        rejected[0].reason
    );
    match bob.store.status() {
        SyncStatus::Error { reason } => assert!(reason.contains("space_forbidden"), "{reason}"),
        other => panic!("expected an error status, got {other}"),
    }
    let own: Vec<String> = server_changes(&server, &server.token("bob"), &app, "tasks")
        .await
        .iter()
        .map(|c| c["data"]["title"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(own, ["Bob's own"], "Bob's personal change was stored");
    ann_sync.sync().await.unwrap();
    assert_eq!(
        titles_in(&ann, Some(&list.id)),
        ["Ship it"],
        "nothing of the refused change"
    );

    // Now his device knows he is a viewer: further edits are refused
    // locally, with a clear error, and nothing is queued.
    assert_eq!(bob.store.space(&list.id).unwrap().unwrap().role, "viewer");
    let refused = bob
        .store
        .update("tasks", &task, fields(json!({ "done": true })))
        .unwrap_err();
    assert!(
        matches!(refused, ClientError::ReadOnlySpace { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("viewer"), "{refused}");
    let refused = bob
        .store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Sneaky" }))
        .unwrap_err();
    assert!(
        matches!(refused, ClientError::ReadOnlySpace { .. }),
        "{refused}"
    );
    assert_eq!(bob.store.pending_count().unwrap(), 0);

    // Made an editor again, Bob may retry what was set aside.
    make_bob(&ann_sync, &list, Role::Editor).await;
    assert_eq!(bob.store.retry_rejected().unwrap(), 1);
    bob_sync.sync().await.unwrap();
    assert_eq!(bob.store.status(), SyncStatus::Synced);
    ann_sync.sync().await.unwrap();
    assert_eq!(titles_in(&ann, Some(&list.id)), ["Ship it now"]);
}
on_both_databases!(a_viewers_refused_push_is_set_aside_and_personal_changes_still_sync);

async fn a_removed_member_drops_the_list_and_gets_it_back_whole_on_rejoining(
    database: Option<String>,
) {
    let server = server_on(database).await;
    let Pair {
        ann,
        ann_sync,
        bob,
        bob_sync,
        ..
    } = pair(&server, "ann", "bob");
    let list = list_shared_with_bob(&ann_sync, "Trip").await;
    add(&ann, &list, "Tickets");
    ann_sync.sync().await.unwrap();
    bob_sync.sync().await.unwrap();
    // Bob's own contribution, pushed from this device.
    add(&bob, &list, "Passports");
    bob.store
        .insert("tasks", json!({ "title": "Bob's own" }))
        .unwrap();
    bob_sync.sync().await.unwrap();
    // And an edit he never gets to push.
    add(&bob, &list, "Unsent");

    // Removed: his next sync drops the list, its unsent change included;
    // his own todos stay.
    ann_sync.remove_member(&list.id, "bob").await.unwrap();
    add(&ann, &list, "Hotel");
    ann_sync.sync().await.unwrap();
    bob_sync.sync().await.unwrap();
    assert!(titles_in(&bob, Some(&list.id)).is_empty());
    assert_eq!(titles_in(&bob, None), ["Bob's own"]);
    assert_eq!(
        bob.store.pending_count().unwrap(),
        0,
        "the unsent change was dropped"
    );
    assert!(bob.store.rejected().unwrap().is_empty());
    assert!(bob.store.space(&list.id).unwrap().is_none());
    assert_eq!(bob.store.status(), SyncStatus::Synced);

    // Re-joined: the list comes back whole, Bob's own earlier change
    // included, each record once and equal to Ann's.
    add(&ann, &list, "Sunscreen");
    ann_sync.sync().await.unwrap();
    make_bob(&ann_sync, &list, Role::Editor).await;
    bob_sync.sync().await.unwrap();
    ann_sync.sync().await.unwrap();
    let want = ["Hotel", "Passports", "Sunscreen", "Tickets"];
    assert_eq!(titles_in(&bob, Some(&list.id)), want);
    assert_eq!(titles_in(&ann, Some(&list.id)), want);
    let shared = |device: &Device| {
        device
            .store
            .list("tasks")
            .unwrap()
            .into_iter()
            .filter(|r| r.space_id.is_some())
            .map(|r| {
                (
                    r.id.clone(),
                    device.store.record_state("tasks", &r.id).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shared(&bob), shared(&ann));

    // Back to normal: a second round changes nothing, and the next edit of
    // either arrives once.
    assert_eq!(bob_sync.sync().await.unwrap().received, 0);
    add(&bob, &list, "Maps");
    bob_sync.sync().await.unwrap();
    let report = ann_sync.sync().await.unwrap();
    assert_eq!(report.received, 1);
    assert_eq!(titles_in(&ann, Some(&list.id)).len(), 5);
}
on_both_databases!(a_removed_member_drops_the_list_and_gets_it_back_whole_on_rejoining);
