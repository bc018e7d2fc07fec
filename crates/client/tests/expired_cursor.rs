//! The client against a real `mana-sync` whose compaction dropped a deleted
//! record (no tombstone retention), so that older cursors expired: devices
//! download everything again, remove what was dropped, and keep and push
//! their unsent edits, whether they hear of it through a push, a pull or the
//! stream, and through a crash in the middle of the re-download. Each
//! scenario but the last runs on SQLite and on Postgres.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    Account, Device, Live, Proxy, compact, fields, holds, metric, on_both_databases, quick_options,
    record, titles, wait_until,
};
use mana_sync_client::{LocalStore, StoreOptions, SyncClient, SyncOptions, SyncStatus};
use serde_json::json;

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
    let alice = Account::on(database_url).await;
    let (phone, laptop, tablet) = (alice.device(), alice.device(), alice.device());
    let phone_sync = alice.client(&phone);
    let laptop_sync = alice.client(&laptop);
    let tablet_sync = alice.client(&tablet);
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
    delete_and_drop(&alice.server, &laptop_sync, &records).await;
    assert!(
        !alice
            .server_changes()
            .await
            .iter()
            .any(|change| change["id"] == records.doomed.as_str())
    );
    let duplicates = metric(&alice.server, "mana_sync_duplicate_changesets_total").await;

    let report = phone_sync.sync().await.unwrap();
    assert_eq!(report.pushed, 3);
    assert_eq!(phone.store.status(), SyncStatus::Synced);
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    assert!(
        !holds(&phone, &records.doomed),
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
        metric(&alice.server, "mana_sync_duplicate_changesets_total").await,
        duplicates + 1.0
    );

    // The tablet has nothing to push: its pull is answered cursor_expired.
    tablet_sync.sync().await.unwrap();
    assert!(!holds(&tablet, &records.doomed));

    laptop_sync.sync().await.unwrap();
    let fresh = alice.fresh_copy().await;
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
    let alice = Account::on(database_url).await;
    let proxy = Proxy::start(&alice.server.url).await;
    let (phone, laptop) = (alice.device(), alice.device());
    let slow_retries = SyncOptions {
        min_backoff: Duration::from_secs(600),
        max_backoff: Duration::from_secs(600),
        ..quick_options()
    };
    let phone_live = phone.client_with(&proxy.url, &alice.token, slow_retries);
    let laptop_sync = alice.client(&laptop);
    let records = shared_records(&phone_live, &laptop_sync).await;

    proxy.hold_streams();
    let phone_loop = Live::start(&phone_live);
    proxy.wait_for_held_stream().await;
    assert_eq!(phone.store.status(), SyncStatus::Syncing);
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    delete_and_drop(&alice.server, &laptop_sync, &records).await;
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
    phone_loop.stop().await;

    laptop_sync.sync().await.unwrap();
    assert_eq!(
        titles(&laptop),
        ["Kept, renamed", "Phone's own", "Phone's quiet one"]
    );
    let fresh = alice.fresh_copy().await;
    assert_eq!(phone.store.dump().unwrap(), fresh.store.dump().unwrap());
}

on_both_databases!(a_redownload_interrupted_by_a_crash_resumes_at_the_next_start);

/// The re-download fails after its first collection and the app "crashes"
/// (the store is reopened). The next sync finishes the re-download before it
/// pushes anything: the dropped record is removed, the edit is pushed.
async fn a_redownload_interrupted_by_a_crash_resumes_at_the_next_start(
    database_url: Option<String>,
) {
    let alice = Account::on(database_url).await;
    let (server, token) = (&alice.server, &alice.token);
    let proxy = Proxy::start(&server.url).await;
    let two_collections = || StoreOptions::new(alice.app.as_str(), &["tasks", "notes"]);
    let mut phone = Device::with_options(two_collections());
    let laptop = Device::with_options(two_collections());
    let phone_sync = phone.client_with(&proxy.url, token, quick_options());
    let laptop_sync = alice.client(&laptop);
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
    delete_and_drop(server, &laptop_sync, &records).await;

    // The push is answered cursor_expired; the re-download pulls `tasks`,
    // then fails on `notes`.
    proxy.set(|faults| faults.pulls_before_failure = Some(1));
    let error = phone_sync.sync().await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(phone.store.pending_count().unwrap(), 1);
    assert!(holds(&phone, &records.doomed));

    // A crash: everything in memory is gone; the store is reopened.
    drop(phone_sync);
    let path = phone.store.path().to_owned();
    phone.store = LocalStore::open(&path, two_collections()).unwrap();
    proxy.set(|faults| faults.pulls_before_failure = None);
    let phone_sync = phone.client_with(&proxy.url, token, quick_options());
    phone_sync.sync().await.unwrap();

    assert!(
        !holds(&phone, &records.doomed),
        "the resumed re-download removed the dropped record"
    );
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    assert_eq!(
        titles(&phone),
        ["Kept", "Own, renamed", "Phone's quiet one"]
    );
    assert_eq!(phone.store.list("notes").unwrap().len(), 1);
    let fresh = Device::with_options(two_collections());
    alice.client(&fresh).sync().await.unwrap();
    assert_eq!(phone.store.dump().unwrap(), fresh.store.dump().unwrap());
}

/// A record whose only change the server refused never reached the log, so
/// it does not come back; the re-download keeps it (its change waits aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redownload_keeps_a_record_whose_change_was_refused() {
    let alice = Account::on(None).await;
    let proxy = Proxy::start(&alice.server.url).await;
    let (phone, laptop) = (alice.device(), alice.device());
    let phone_sync = phone.client_with(&proxy.url, &alice.token, quick_options());
    let laptop_sync = alice.client(&laptop);
    let records = shared_records(&phone_sync, &laptop_sync).await;
    proxy.set(|faults| {
        faults.refuse_pushes_containing = Some(("Refused".into(), "invalid_change".into()));
    });
    let refused = phone
        .store
        .insert("tasks", json!({ "title": "Refused" }))
        .unwrap();
    assert_eq!(phone_sync.sync().await.unwrap().rejected, 1);
    delete_and_drop(&alice.server, &laptop_sync, &records).await;

    phone_sync.sync().await.unwrap();
    assert!(!holds(&phone, &records.doomed));
    assert_eq!(
        record(&phone, &refused).unwrap().get("title"),
        Some(&json!("Refused"))
    );
}
