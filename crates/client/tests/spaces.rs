//! Shared spaces through the real `mana-sync` server, on SQLite and
//! Postgres: two users share a list and both edit it; a member's device
//! follows the owner's edits live and drops the list when removed; a
//! viewer's refused push is set aside while their personal changes still
//! sync; a removed member's device drops the list and, on re-joining, gets
//! it back whole (its own earlier changes included), each record once.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{DEADLINE, Device, app_id, quick_options, server_changes, server_on};
use futures::StreamExt;
use mana_sync_client::{ClientError, Query, Role, SyncClient, SyncStatus};
use serde_json::{Value, json};

/// Runs a scenario on SQLite and on Postgres (skipped with a message when
/// Postgres is unreachable outside CI).
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(None).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(database) = mana_sync_testkit::pg::TestDatabase::create().await else {
                    return;
                };
                super::$name(Some(database.url())).await;
            }
        }
    };
}

fn fields(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

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
    tokio::time::timeout(DEADLINE, async {
        loop {
            let list = todos.next().await.unwrap().unwrap();
            let mut titles: Vec<&str> = list
                .iter()
                .filter(|r| r.space_id.as_deref() == Some(space))
                .map(|r| r.get("title").and_then(Value::as_str).unwrap())
                .collect();
            titles.sort_unstable();
            if titles == want {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: never saw {want:?}"));
}

/// Every change of `tasks` a third device of the token's user that follows
/// spaces pulls from the start.
async fn followed_changes(
    server: &mana_sync_testkit::server::TestServer,
    token: &str,
    app: &str,
) -> Vec<Value> {
    let http = mana_sync_testkit::http_client();
    let mut since = "1970-01-01T00:00:00.000Z".to_owned();
    let mut all = Vec::new();
    loop {
        let mut url = reqwest::Url::parse(&server.at(&format!("/sync/{app}/pull"))).unwrap();
        url.query_pairs_mut()
            .append_pair("collection", "tasks")
            .append_pair("since", &since);
        let reply: Value = http
            .get(url)
            .bearer_auth(token)
            .header("x-client-id", "observer")
            .header("x-sync-features", "spaces")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.extend(reply["serverChanges"].as_array().unwrap().clone());
        since = reply["syncedUntil"].as_str().unwrap().to_owned();
        if !reply["hasMore"].as_bool().unwrap() {
            return all;
        }
    }
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
    let list = ann_sync.create_space("Groceries").await.unwrap();
    assert_eq!(list.role, "owner");
    ann_sync
        .set_member(&list.id, "bob", Role::Editor)
        .await
        .unwrap();
    let milk = ann
        .store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Milk" }))
        .unwrap();
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
    bob.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Eggs" }))
        .unwrap();
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
    let followed = followed_changes(&server, &server.token("bob"), &app).await;
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
    ann.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Bins" }))
        .unwrap();
    ann_sync.sync().await.unwrap();

    let mut todos = bob.store.subscribe(Query::new("tasks"));
    let mut statuses = bob.store.watch_status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let live = tokio::spawn({
        let client = bob_sync.clone();
        async move {
            client
                .run_live(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    tokio::time::timeout(DEADLINE, statuses.wait_for(|s| *s == SyncStatus::Synced))
        .await
        .expect("bob's device is live")
        .unwrap();

    // Shared while Bob's device is connected: it downloads the list at once.
    ann_sync
        .set_member(&list.id, "bob", Role::Editor)
        .await
        .unwrap();
    wait_for(&mut todos, &list.id, &["Bins"], "joining").await;

    // Ann's edits reach Bob's device live; his reach hers.
    ann.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Dishes" }))
        .unwrap();
    ann_sync.sync().await.unwrap();
    wait_for(&mut todos, &list.id, &["Bins", "Dishes"], "Ann's edit").await;
    let started = std::time::Instant::now();
    ann.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Laundry" }))
        .unwrap();
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
    bob.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Plants" }))
        .unwrap();
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

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, live)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
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
    let list = ann_sync.create_space("Backlog").await.unwrap();
    ann_sync
        .set_member(&list.id, "bob", Role::Editor)
        .await
        .unwrap();
    let task = ann
        .store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Ship it" }))
        .unwrap();
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
    ann_sync
        .set_member(&list.id, "bob", Role::Viewer)
        .await
        .unwrap();

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
    ann_sync
        .set_member(&list.id, "bob", Role::Editor)
        .await
        .unwrap();
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
    let list = ann_sync.create_space("Trip").await.unwrap();
    ann_sync
        .set_member(&list.id, "bob", Role::Editor)
        .await
        .unwrap();
    ann.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Tickets" }))
        .unwrap();
    ann_sync.sync().await.unwrap();
    bob_sync.sync().await.unwrap();
    // Bob's own contribution, pushed from this device.
    bob.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Passports" }))
        .unwrap();
    bob.store
        .insert("tasks", json!({ "title": "Bob's own" }))
        .unwrap();
    bob_sync.sync().await.unwrap();
    // And an edit he never gets to push.
    bob.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Unsent" }))
        .unwrap();

    // Removed: his next sync drops the list, its unsent change included;
    // his own todos stay.
    ann_sync.remove_member(&list.id, "bob").await.unwrap();
    ann.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Hotel" }))
        .unwrap();
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
    ann.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Sunscreen" }))
        .unwrap();
    ann_sync.sync().await.unwrap();
    ann_sync
        .set_member(&list.id, "bob", Role::Editor)
        .await
        .unwrap();
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
    bob.store
        .insert_in(Some(&list.id), "tasks", json!({ "title": "Maps" }))
        .unwrap();
    bob_sync.sync().await.unwrap();
    let report = ann_sync.sync().await.unwrap();
    assert_eq!(report.received, 1);
    assert_eq!(titles_in(&ann, Some(&list.id)).len(), 5);
}
on_both_databases!(a_removed_member_drops_the_list_and_gets_it_back_whole_on_rejoining);
