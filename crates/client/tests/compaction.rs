//! The client against a real `mana-sync` whose log was compacted (with
//! `mana-sync compact`, run against the server's database): devices that
//! synced before catch up through folded changes, by pull and by stream, on
//! SQLite and on Postgres; and a new device pages through a log from which a
//! deleted record was dropped. Devices whose cursor expired are in
//! `expired_cursor.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{
    Account, Device, Live, Proxy, compact, fields, on_both_databases, quick_options, record,
    server_changes, titles, wait_until,
};
use mana_sync_client::{StoreOptions, SyncOptions};
use serde_json::{Value, json};

on_both_databases!(devices_that_synced_before_compaction_catch_up_through_folded_changes);

/// A laptop (pull) and a tablet (stream) synced when the records were
/// created; then a phone (the user) and an assistant (an AI actor) edit them
/// many times, the assistant deletes one, and the log is compacted. Both
/// devices then receive one folded change per record, carrying each field's
/// own actor (and `null` for the user's fields under the assistant's change),
/// and end exactly where a device that saw the whole history is.
async fn devices_that_synced_before_compaction_catch_up_through_folded_changes(
    database_url: Option<String>,
) {
    let alice = Account::on(database_url).await;
    let (server, token, app) = (&alice.server, &alice.token, &alice.app);
    let proxy = Proxy::start(&server.url).await;
    let phone = alice.device();
    let assistant = Device::with_options({
        let mut options = StoreOptions::new(app.as_str(), &["tasks"]);
        options.actor = Some(json!({ "kind": "ai" }));
        options
    });
    let (laptop, tablet) = (alice.device(), alice.device());
    let phone_sync = alice.client(&phone);
    let assistant_sync = alice.client(&assistant);
    let laptop_sync = alice.client(&laptop);
    let tablet_live = tablet.client_with(&proxy.url, token, quick_options());

    let milk = phone
        .store
        .insert("tasks", json!({ "title": "Milk", "done": false }))
        .unwrap();
    let bread = phone
        .store
        .insert("tasks", json!({ "title": "Bread", "done": false }))
        .unwrap();
    let eggs = phone
        .store
        .insert("tasks", json!({ "title": "Eggs", "done": false }))
        .unwrap();
    phone_sync.sync().await.unwrap();
    assistant_sync.sync().await.unwrap();
    laptop_sync.sync().await.unwrap();
    // The tablet pulls now and is held just before opening its stream.
    proxy.hold_streams();
    let tablet_loop = Live::start(&tablet_live);
    proxy.wait_for_held_stream().await;
    assert_eq!(titles(&tablet), ["Bread", "Eggs", "Milk"]);

    // A long history: every field superseded several times, by both actors.
    for round in 0..5 {
        phone
            .store
            .update(
                "tasks",
                &milk,
                fields(json!({ "title": format!("Milk {round}") })),
            )
            .unwrap();
        phone_sync.sync().await.unwrap();
    }
    assistant_sync.sync().await.unwrap();
    assistant
        .store
        .update("tasks", &milk, fields(json!({ "note": "oat?" })))
        .unwrap();
    assistant
        .store
        .update(
            "tasks",
            &eggs,
            fields(json!({ "title": "Free-range eggs" })),
        )
        .unwrap();
    assistant_sync.sync().await.unwrap();
    phone_sync.sync().await.unwrap();
    phone
        .store
        .update("tasks", &milk, fields(json!({ "done": true })))
        .unwrap();
    phone
        .store
        .update("tasks", &bread, fields(json!({ "done": true })))
        .unwrap();
    phone_sync.sync().await.unwrap();
    assistant_sync.sync().await.unwrap();
    assistant
        .store
        .update("tasks", &bread, fields(json!({ "title": "Rye bread" })))
        .unwrap();
    assistant.store.delete("tasks", &eggs).unwrap();
    assistant_sync.sync().await.unwrap();
    phone_sync.sync().await.unwrap();
    assert_eq!(phone.store.dump().unwrap(), assistant.store.dump().unwrap());
    let full_history = phone.store.dump().unwrap();

    // Compaction keeps deleted records (90 days): it folds, drops nothing.
    let compacted = compact(server, "alice", 90).await;
    assert!(compacted.folded >= 10, "{compacted:?}");
    assert_eq!(compacted.dropped, 0);
    let log = server_changes(server, token, app, "tasks").await;
    assert_eq!(log.len(), 3, "one change per record: {log:#?}");
    let folded = |id: &str| log.iter().find(|c| c["id"] == id).unwrap().clone();
    // The folded changes carry what plain changes never do.
    assert_eq!(
        folded(&milk)["fields"]["note"]["actor"],
        json!({ "kind": "ai" })
    );
    assert_eq!(folded(&bread)["actor"], json!({ "kind": "ai" }));
    assert_eq!(folded(&bread)["fields"]["done"]["actor"], Value::Null);
    assert!(folded(&bread)["fields"]["done"].get("actor").is_some());
    assert_eq!(folded(&eggs)["op"], "delete");
    assert!(folded(&eggs)["fields"]["title"].is_object());

    // The laptop pulls after compaction.
    laptop_sync.sync().await.unwrap();
    assert_eq!(laptop.store.dump().unwrap(), full_history);
    let milk_record = record(&laptop, &milk).unwrap();
    assert_eq!(milk_record.get("title"), Some(&json!("Milk 4")));
    assert_eq!(milk_record.field_actors["note"], json!({ "kind": "ai" }));
    assert!(!milk_record.field_actors.contains_key("done"));
    assert_eq!(
        record(&laptop, &bread).unwrap().last_actor,
        Some(json!({ "kind": "ai" }))
    );
    assert!(record(&laptop, &eggs).is_none());

    // The tablet's stream opens from its pre-compaction cursor.
    proxy.release_streams();
    wait_until(&tablet, "the tablet has the folded changes", |store| {
        store.dump().unwrap() == full_history
    })
    .await;
    tablet_loop.stop().await;
    assert_eq!(alice.fresh_copy().await.store.dump().unwrap(), full_history);
}

/// A download that begins after a drop pages through a log whose dropped
/// position lies beyond its first page: its page cursors (which carry the
/// expiry they were handed out with) are not taken for a stale device's, and
/// the client passes them back untouched. Small pages make the log short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_pages_through_a_log_with_a_dropped_record() {
    let alice = Account::on(None).await;
    let laptop = alice.device();
    let laptop_sync = alice.client(&laptop);
    for n in 0..4 {
        laptop
            .store
            .insert("tasks", json!({ "title": format!("Task {n}") }))
            .unwrap();
    }
    let doomed = laptop
        .store
        .insert("tasks", json!({ "title": "Doomed" }))
        .unwrap();
    laptop_sync.sync().await.unwrap();
    laptop.store.delete("tasks", &doomed).unwrap();
    laptop_sync.sync().await.unwrap();
    assert!(compact(&alice.server, "alice", 0).await.dropped >= 2);

    let fresh = alice.device();
    let small_pages = SyncOptions {
        page_size: 2,
        ..quick_options()
    };
    fresh
        .client_with(&alice.server.url, &alice.token, small_pages)
        .sync()
        .await
        .unwrap();
    assert_eq!(fresh.store.list("tasks").unwrap().len(), 4);
}
