//! The client against a real `mana-sync` whose log was compacted (with
//! `mana-sync compact`, run against the server's database): devices that
//! synced before catch up through folded changes, by pull and by stream; and
//! devices whose cursor expired (a deleted record was dropped) download
//! everything again, remove what was dropped, and keep and push their unsent
//! edits, through a push, a pull, the stream, and a crash in the middle.
//! Each scenario runs on SQLite and on Postgres.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    DEADLINE, Device, Proxy, app_id, compact, metric, quick_options, server_changes, server_on,
};
use futures::StreamExt;
use mana_sync_client::{
    LocalStore, Query, Record, StoreOptions, SyncClient, SyncOptions, SyncStatus,
};
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

fn titles(device: &Device) -> Vec<String> {
    let mut titles: Vec<String> = device
        .store
        .list("tasks")
        .unwrap()
        .iter()
        .map(|r| r.get("title").and_then(Value::as_str).unwrap().to_owned())
        .collect();
    titles.sort();
    titles
}

/// A device that has never synced, synced now from scratch: exactly what the
/// server holds.
async fn fresh_copy(app: &str, url: &str, token: &str) -> Device {
    let fresh = Device::new(app);
    fresh.client(url, token).sync().await.unwrap();
    fresh
}

/// Runs `client.run_live` until the returned sender is used.
fn live(
    client: &SyncClient,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<mana_sync_client::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = client.clone();
    let task = tokio::spawn(async move {
        client
            .run_live(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

async fn stop_live(
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<mana_sync_client::Result<()>>,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the live loop stops")
        .unwrap()
        .unwrap();
}

/// Waits until `done` holds, looking again whenever the device's records or
/// its status change; panics after the deadline.
async fn wait_until(device: &Device, what: &str, done: impl Fn(&LocalStore) -> bool) {
    let mut records = device.store.subscribe(Query::new("tasks"));
    let mut statuses = device.store.watch_status();
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            statuses.borrow_and_update();
            if done(&device.store) {
                return;
            }
            tokio::select! {
                _ = records.next() => {}
                _ = statuses.changed() => {}
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "never: {what}");
}

/// One record's visible state (fields and actors).
fn record(device: &Device, id: &str) -> Option<Record> {
    device.store.get("tasks", id).unwrap()
}

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
    let server = server_on(database_url).await;
    let token = server.token("alice");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let phone = Device::new(&app);
    let assistant = Device::with_options({
        let mut options = StoreOptions::new(app.as_str(), &["tasks"]);
        options.actor = Some(json!({ "kind": "ai" }));
        options
    });
    let (laptop, tablet) = (Device::new(&app), Device::new(&app));
    let phone_sync = phone.client(&server.url, &token);
    let assistant_sync = assistant.client(&server.url, &token);
    let laptop_sync = laptop.client(&server.url, &token);
    let tablet_live = tablet.client_with(&proxy.url, &token, quick_options());

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
    let (stop_tablet, tablet_task) = live(&tablet_live);
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
    let compacted = compact(&server, "alice", 90).await;
    assert!(compacted.folded >= 10, "{compacted:?}");
    assert_eq!(compacted.dropped, 0);
    let log = server_changes(&server, &token, &app, "tasks").await;
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
    stop_live(stop_tablet, tablet_task).await;
    assert_eq!(
        fresh_copy(&app, &server.url, &token)
            .await
            .store
            .dump()
            .unwrap(),
        full_history
    );
}

/// The shared beginning of the expired-cursor scenarios: two records of the
/// phone's own (one it edits later, one it never touches again: only a
/// re-download that asks for the device's own changes brings it back), one
/// the laptop keeps and edits, and one the laptop deletes.
struct Records {
    own: String,
    kept: String,
    doomed: String,
}

async fn shared_records(phone: &SyncClient, laptop: &SyncClient) -> Records {
    let own = phone
        .store()
        .insert("tasks", json!({ "title": "Phone's own", "done": false }))
        .unwrap();
    phone
        .store()
        .insert("tasks", json!({ "title": "Phone's quiet one" }))
        .unwrap();
    let kept = laptop
        .store()
        .insert("tasks", json!({ "title": "Kept", "done": false }))
        .unwrap();
    let doomed = laptop
        .store()
        .insert("tasks", json!({ "title": "Doomed" }))
        .unwrap();
    laptop.sync().await.unwrap();
    phone.sync().await.unwrap();
    laptop.sync().await.unwrap();
    Records { own, kept, doomed }
}

/// The laptop deletes `doomed` and edits `kept`; compaction with no
/// tombstone retention drops the deleted record from the log.
async fn delete_and_drop(
    server: &mana_sync_testkit::server::TestServer,
    laptop: &SyncClient,
    records: &Records,
) {
    laptop.store().delete("tasks", &records.doomed).unwrap();
    laptop
        .store()
        .update("tasks", &records.kept, fields(json!({ "done": true })))
        .unwrap();
    laptop.sync().await.unwrap();
    let compacted = compact(server, "alice", 0).await;
    assert!(
        compacted.dropped >= 2,
        "insert and delete dropped: {compacted:?}"
    );
}

on_both_databases!(an_offline_device_keeps_its_edits_through_an_expired_cursor);

/// The phone is offline with unsent edits while the laptop deletes a record
/// and compaction drops it. The phone's next push is stored but answered
/// `cursor_expired`: it downloads everything again (its own record comes
/// back), removes the dropped record, keeps its edits and resends them under
/// the same changeset id. A tablet without local edits hits the same on its
/// pull. Every device ends where a new device would.
async fn an_offline_device_keeps_its_edits_through_an_expired_cursor(database_url: Option<String>) {
    let server = server_on(database_url).await;
    let token = server.token("alice");
    let app = app_id("todo");
    let (phone, laptop, tablet) = (Device::new(&app), Device::new(&app), Device::new(&app));
    let phone_sync = phone.client(&server.url, &token);
    let laptop_sync = laptop.client(&server.url, &token);
    let tablet_sync = tablet.client(&server.url, &token);
    let records = shared_records(&phone_sync, &laptop_sync).await;
    tablet_sync.sync().await.unwrap();
    assert_eq!(
        titles(&phone),
        ["Doomed", "Kept", "Phone's own", "Phone's quiet one"]
    );
    assert_eq!(
        titles(&tablet),
        ["Doomed", "Kept", "Phone's own", "Phone's quiet one"]
    );

    // Offline edits on the phone.
    phone
        .store
        .update(
            "tasks",
            &records.kept,
            fields(json!({ "title": "Kept, renamed offline" })),
        )
        .unwrap();
    phone
        .store
        .update("tasks", &records.own, fields(json!({ "done": true })))
        .unwrap();
    phone
        .store
        .insert("tasks", json!({ "title": "Written offline" }))
        .unwrap();
    delete_and_drop(&server, &laptop_sync, &records).await;
    assert!(
        !server_changes(&server, &token, &app, "tasks")
            .await
            .iter()
            .any(|change| change["id"] == records.doomed.as_str())
    );
    let duplicates = metric(&server, "mana_sync_duplicate_changesets_total").await;

    let report = phone_sync.sync().await.unwrap();
    assert_eq!(report.pushed, 3);
    assert_eq!(phone.store.status(), SyncStatus::Synced);
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    assert!(
        phone
            .store
            .record_state("tasks", &records.doomed)
            .unwrap()
            .is_none(),
        "the dropped record is removed"
    );
    assert_eq!(
        titles(&phone),
        [
            "Kept, renamed offline",
            "Phone's own",
            "Phone's quiet one",
            "Written offline"
        ]
    );
    assert_eq!(
        record(&phone, &records.kept).unwrap().get("done"),
        Some(&json!(true))
    );
    assert_eq!(
        record(&phone, &records.own).unwrap().get("done"),
        Some(&json!(true))
    );
    // The changeset was stored with the 410; the resend was recognised.
    assert_eq!(
        metric(&server, "mana_sync_duplicate_changesets_total").await,
        duplicates + 1.0
    );

    // The tablet has nothing to push: its pull is answered cursor_expired.
    tablet_sync.sync().await.unwrap();
    assert!(
        tablet
            .store
            .record_state("tasks", &records.doomed)
            .unwrap()
            .is_none()
    );

    laptop_sync.sync().await.unwrap();
    let fresh = fresh_copy(&app, &server.url, &token).await;
    assert_eq!(phone.store.dump().unwrap(), fresh.store.dump().unwrap());
    assert_eq!(tablet.store.dump().unwrap(), fresh.store.dump().unwrap());
    // The laptop deleted the record itself: it keeps the tombstone, and shows
    // the same.
    assert_eq!(
        laptop.store.list("tasks").unwrap(),
        phone.store.list("tasks").unwrap()
    );
}

on_both_databases!(the_stream_says_cursor_expired_and_the_device_downloads_again);

/// The phone is live: it has pulled, and is held just before opening its
/// stream while the laptop deletes a record and compaction drops it. The
/// stream answers `cursor-expired` (the phone has nothing to push, so only
/// the stream can tell it); the phone downloads again at once (its backoff is
/// far longer than the deadline: no reconnection after a failure could do it
/// in time), removes the dropped record, follows the stream again and
/// pushes what it writes next.
async fn the_stream_says_cursor_expired_and_the_device_downloads_again(
    database_url: Option<String>,
) {
    let server = server_on(database_url).await;
    let token = server.token("alice");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let (phone, laptop) = (Device::new(&app), Device::new(&app));
    let slow_retries = SyncOptions {
        min_backoff: Duration::from_secs(600),
        max_backoff: Duration::from_secs(600),
        ..quick_options()
    };
    let phone_live = phone.client_with(&proxy.url, &token, slow_retries);
    let laptop_sync = laptop.client(&server.url, &token);
    let records = shared_records(&phone_live, &laptop_sync).await;

    proxy.hold_streams();
    let (stop, task) = live(&phone_live);
    proxy.wait_for_held_stream().await;
    assert_eq!(phone.store.status(), SyncStatus::Syncing);
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    delete_and_drop(&server, &laptop_sync, &records).await;
    let pulls = proxy.pulls();
    proxy.release_streams();

    wait_until(&phone, "the phone downloaded again", |store| {
        store
            .record_state("tasks", &records.doomed)
            .unwrap()
            .is_none()
    })
    .await;
    assert!(proxy.pulls() > pulls, "the re-download pulled");
    assert_eq!(
        record(&phone, &records.kept).unwrap().get("done"),
        Some(&json!(true))
    );
    phone
        .store
        .update(
            "tasks",
            &records.kept,
            fields(json!({ "title": "Kept, renamed" })),
        )
        .unwrap();
    wait_until(&phone, "the phone pushed its edit", |store| {
        store.pending_count().unwrap() == 0 && store.status() == SyncStatus::Synced
    })
    .await;
    stop_live(stop, task).await;

    laptop_sync.sync().await.unwrap();
    assert_eq!(
        titles(&laptop),
        ["Kept, renamed", "Phone's own", "Phone's quiet one"]
    );
    let fresh = fresh_copy(&app, &server.url, &token).await;
    assert_eq!(phone.store.dump().unwrap(), fresh.store.dump().unwrap());
}

on_both_databases!(a_redownload_interrupted_by_a_crash_resumes_at_the_next_start);

/// The re-download fails after its first collection and the app "crashes"
/// (the store is reopened). The next sync finishes the re-download before it
/// pushes anything: the dropped record is removed, the edit is pushed.
async fn a_redownload_interrupted_by_a_crash_resumes_at_the_next_start(
    database_url: Option<String>,
) {
    let server = server_on(database_url).await;
    let token = server.token("alice");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let two_collections = || StoreOptions::new(app.as_str(), &["tasks", "notes"]);
    let mut phone = Device::with_options(two_collections());
    let laptop = Device::with_options(two_collections());
    let phone_sync = phone.client_with(&proxy.url, &token, quick_options());
    let laptop_sync = laptop.client(&server.url, &token);
    let records = shared_records(&phone_sync, &laptop_sync).await;
    laptop
        .store
        .insert("notes", json!({ "title": "A note" }))
        .unwrap();
    laptop_sync.sync().await.unwrap();
    phone_sync.sync().await.unwrap();
    phone
        .store
        .update(
            "tasks",
            &records.own,
            fields(json!({ "title": "Own, renamed" })),
        )
        .unwrap();
    delete_and_drop(&server, &laptop_sync, &records).await;

    // The push is answered cursor_expired; the re-download pulls `tasks`,
    // then fails on `notes`.
    proxy.set(|faults| faults.pulls_before_failure = Some(1));
    let error = phone_sync.sync().await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(phone.store.pending_count().unwrap(), 1);
    assert!(
        phone
            .store
            .record_state("tasks", &records.doomed)
            .unwrap()
            .is_some()
    );

    // A crash: everything in memory is gone; the store is reopened.
    drop(phone_sync);
    let path = phone.store.path().to_owned();
    phone.store = LocalStore::open(&path, two_collections()).unwrap();
    proxy.set(|faults| faults.pulls_before_failure = None);
    let phone_sync = phone.client_with(&proxy.url, &token, quick_options());
    phone_sync.sync().await.unwrap();

    assert!(
        phone
            .store
            .record_state("tasks", &records.doomed)
            .unwrap()
            .is_none(),
        "the resumed re-download removed the dropped record"
    );
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    assert_eq!(
        titles(&phone),
        ["Kept", "Own, renamed", "Phone's quiet one"]
    );
    assert_eq!(phone.store.list("notes").unwrap().len(), 1);
    let fresh = Device::with_options(two_collections());
    fresh.client(&server.url, &token).sync().await.unwrap();
    assert_eq!(phone.store.dump().unwrap(), fresh.store.dump().unwrap());
}

/// A download that begins after a drop pages through a log whose dropped
/// position lies beyond its first page: its page cursors (which carry the
/// expiry they were handed out with) are not taken for a stale device's, and
/// the client passes them back untouched. Small pages make the log short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_pages_through_a_log_with_a_dropped_record() {
    let server = server_on(None).await;
    let token = server.token("alice");
    let app = app_id("todo");
    let laptop = Device::new(&app);
    let laptop_sync = laptop.client(&server.url, &token);
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
    assert!(compact(&server, "alice", 0).await.dropped >= 2);

    let fresh = Device::new(&app);
    let small_pages = SyncOptions {
        page_size: 2,
        ..quick_options()
    };
    fresh
        .client_with(&server.url, &token, small_pages)
        .sync()
        .await
        .unwrap();
    assert_eq!(fresh.store.list("tasks").unwrap().len(), 4);
}

/// A record whose only change the server refused never reached the log, so
/// it does not come back; the re-download keeps it (its change waits aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redownload_keeps_a_record_whose_change_was_refused() {
    let server = server_on(None).await;
    let token = server.token("alice");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let (phone, laptop) = (Device::new(&app), Device::new(&app));
    let phone_sync = phone.client_with(&proxy.url, &token, quick_options());
    let laptop_sync = laptop.client(&server.url, &token);
    let records = shared_records(&phone_sync, &laptop_sync).await;
    proxy.set(|faults| {
        faults.refuse_pushes_containing = Some(("Refused".into(), "invalid_change".into()));
    });
    let refused = phone
        .store
        .insert("tasks", json!({ "title": "Refused" }))
        .unwrap();
    assert_eq!(phone_sync.sync().await.unwrap().rejected, 1);
    delete_and_drop(&server, &laptop_sync, &records).await;

    phone_sync.sync().await.unwrap();
    assert!(
        phone
            .store
            .record_state("tasks", &records.doomed)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        record(&phone, &refused).unwrap().get("title"),
        Some(&json!("Refused"))
    );
}
