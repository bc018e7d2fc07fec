//! The local store on its own: writes, reads, the outbox, the clock across
//! restarts, reactive queries, guest mode and seeds. No server involved.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use common::{DEADLINE, Device, titles_of};
use futures::StreamExt;
use mana_sync_client::clock::PhysicalClock;
use mana_sync_client::{ClientError, LocalStore, Query, SeedRecord, StoreOptions, SyncStatus};
use mana_sync_protocol::merge::is_canonical;
use mana_sync_protocol::{Op, SyncChange, Timestamp};
use serde_json::{Value, json};

/// A wall clock the test moves by hand.
#[derive(Default)]
struct ManualClock(AtomicI64);

impl PhysicalClock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const NOW: i64 = 1_795_600_800_000; // 2026-11-25T10:00:00Z

fn options_with_clock(clock: Arc<ManualClock>) -> StoreOptions {
    let mut options = StoreOptions::new("todo", &["tasks"]);
    options.clock = clock;
    options
}

fn fields(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn remote_update(id: &str, field: &str, value: Value, at: &str) -> SyncChange {
    serde_json::from_value(json!({
        "table": "tasks", "id": id, "op": "update",
        "fields": { field: { "value": value, "at": at } },
        "eventId": "00000000-0000-0000-0000-000000000000", "schemaVersion": 2
    }))
    .unwrap()
}

#[test]
fn writes_are_read_back_at_once_and_queued_in_the_outbox() {
    let device = Device::new("todo");
    let store = &device.store;
    assert_eq!(store.status(), SyncStatus::LocalOnly);
    let id = store
        .insert("tasks", json!({ "title": "Milk", "done": false }))
        .unwrap();
    let record = store.get("tasks", &id).unwrap().expect("written");
    assert_eq!(record.get("title"), Some(&json!("Milk")));
    assert_eq!(record.get("id"), Some(&json!(id)));
    store
        .update("tasks", &id, fields(json!({ "done": true })))
        .unwrap();
    assert_eq!(
        store.get("tasks", &id).unwrap().unwrap().get("done"),
        Some(&json!(true))
    );
    assert_eq!(store.pending_count().unwrap(), 2);
    store.delete("tasks", &id).unwrap();
    assert_eq!(store.get("tasks", &id).unwrap(), None);
    assert!(store.list("tasks").unwrap().is_empty());
    assert_eq!(store.pending_count().unwrap(), 3);
    // The tombstone stays: its id cannot be reused, and edits are refused.
    assert!(matches!(
        store.insert("tasks", json!({ "id": id, "title": "again" })),
        Err(ClientError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.update("tasks", &id, fields(json!({ "done": false }))),
        Err(ClientError::NotFound { .. })
    ));
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let device = Device::new("todo");
    let store = &device.store;
    assert!(matches!(
        store.insert("tasks", json!([1, 2])),
        Err(ClientError::InvalidInput(_))
    ));
    assert!(matches!(
        store.insert("", json!({})),
        Err(ClientError::InvalidInput(_))
    ));
    assert!(matches!(
        store.insert("tasks", json!({ "__lastActor": 1 })),
        Err(ClientError::InvalidInput(_))
    ));
    assert!(matches!(
        store.insert("tasks", json!({ "id": 7 })),
        Err(ClientError::InvalidInput(_))
    ));
    assert_eq!(store.pending_count().unwrap(), 0);
}

#[test]
fn field_timestamps_come_from_the_hybrid_clock_and_survive_a_restart_with_a_clock_set_back() {
    let clock = Arc::new(ManualClock(AtomicI64::new(NOW)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = LocalStore::open(&path, options_with_clock(clock.clone())).unwrap();
    let id = store.insert("tasks", json!({ "title": "a" })).unwrap();
    let first = store.record_state("tasks", &id).unwrap().unwrap().fields["title"]
        .at
        .clone();
    assert_eq!(first.as_str(), "2026-11-25T10:00:00.000000000Z");
    // Same millisecond: the counter moves.
    store
        .update("tasks", &id, fields(json!({ "title": "b" })))
        .unwrap();
    let second = store.record_state("tasks", &id).unwrap().unwrap().fields["title"]
        .at
        .clone();
    assert_eq!(second.as_str(), "2026-11-25T10:00:00.000000001Z");
    drop(store);
    // The wall clock jumps an hour back; the reopened store keeps going forward.
    clock.0.store(NOW - 3_600_000, Ordering::SeqCst);
    let store = LocalStore::open(&path, options_with_clock(clock)).unwrap();
    let other = store.insert("tasks", json!({ "title": "c" })).unwrap();
    let third = store.record_state("tasks", &other).unwrap().unwrap().fields["title"]
        .at
        .clone();
    assert!(is_canonical(third.as_str()));
    assert!(third.as_str() > second.as_str(), "{third} after {second}");
}

#[test]
fn an_incoming_change_never_overwrites_a_newer_local_write_but_takes_other_fields() {
    let clock = Arc::new(ManualClock(AtomicI64::new(NOW)));
    let device = Device::with_options(options_with_clock(clock));
    let store = &device.store;
    let id = store
        .insert("tasks", json!({ "title": "local", "done": false }))
        .unwrap();
    store
        .apply_remote(&[
            remote_update(
                &id,
                "title",
                json!("older remote"),
                "2026-11-25T09:59:59.000000000Z",
            ),
            remote_update(&id, "done", json!(true), "2026-11-25T10:00:00.500000000Z"),
        ])
        .unwrap();
    let record = store.get("tasks", &id).unwrap().unwrap();
    assert_eq!(record.get("title"), Some(&json!("local")));
    assert_eq!(record.get("done"), Some(&json!(true)));
}

#[test]
fn a_local_edit_wins_over_a_remote_write_from_a_clock_far_ahead() {
    let clock = Arc::new(ManualClock(AtomicI64::new(NOW)));
    let device = Device::with_options(options_with_clock(clock));
    let store = &device.store;
    let id = store.insert("tasks", json!({ "title": "a" })).unwrap();
    // A device whose clock is a year ahead writes the title.
    let future = "2027-11-25T10:00:00.000000000Z";
    store
        .apply_remote(&[remote_update(
            &id,
            "title",
            json!("from the future"),
            future,
        )])
        .unwrap();
    assert_eq!(
        store.get("tasks", &id).unwrap().unwrap().get("title"),
        Some(&json!("from the future"))
    );
    // Our clock did not follow it (beyond the drift bound)...
    let other = store.insert("tasks", json!({ "title": "b" })).unwrap();
    let stamp = store.record_state("tasks", &other).unwrap().unwrap().fields["title"]
        .at
        .clone();
    assert!(stamp.as_str().starts_with("2026-11-25T10:00:00"), "{stamp}");
    // ...yet editing the field on this device still wins.
    store
        .update("tasks", &id, fields(json!({ "title": "mine" })))
        .unwrap();
    let state = store.record_state("tasks", &id).unwrap().unwrap();
    assert_eq!(state.fields["title"].value.get(), r#""mine""#);
    assert!(state.fields["title"].at.as_str() > future);
}

#[test]
fn a_remote_clock_within_the_drift_bound_moves_the_local_clock_forward() {
    let clock = Arc::new(ManualClock(AtomicI64::new(NOW)));
    let device = Device::with_options(options_with_clock(clock));
    let store = &device.store;
    let id = store.insert("tasks", json!({ "title": "a" })).unwrap();
    let ahead = "2026-11-25T10:01:00.000000007Z"; // one minute ahead
    store
        .apply_remote(&[remote_update(&id, "done", json!(true), ahead)])
        .unwrap();
    let other = store.insert("tasks", json!({ "title": "b" })).unwrap();
    let stamp = store.record_state("tasks", &other).unwrap().unwrap().fields["title"]
        .at
        .clone();
    assert_eq!(stamp.as_str(), "2026-11-25T10:01:00.000000008Z");
}

#[test]
fn incoming_actors_are_kept_per_record_and_per_field() {
    let device = Device::new("todo");
    let store = &device.store;
    let mut change = remote_update(
        "t1",
        "title",
        json!("by ai"),
        "2026-11-25T10:00:00.000000001Z",
    );
    change.actor = serde_json::value::RawValue::from_string(r#"{"kind":"ai"}"#.into()).ok();
    store.apply_remote(&[change]).unwrap();
    let record = store.get("tasks", "t1").unwrap().unwrap();
    assert_eq!(record.last_actor, Some(json!({ "kind": "ai" })));
    assert_eq!(record.field_actors["title"], json!({ "kind": "ai" }));
    let view = record.to_json();
    assert_eq!(view["__lastActor"], json!({ "kind": "ai" }));
    assert_eq!(view["__fieldActors"]["title"], json!({ "kind": "ai" }));
}

#[test]
fn applying_remote_changes_writes_nothing_to_the_outbox() {
    let device = Device::new("todo");
    let store = &device.store;
    let insert: SyncChange = serde_json::from_value(json!({
        "table": "tasks", "id": "r1", "op": "insert", "data": { "id": "r1", "title": "remote" },
        "eventId": "00000000-0000-0000-0000-000000000000", "schemaVersion": 1
    }))
    .unwrap();
    assert_eq!(insert.op, Op::Insert);
    assert_eq!(
        store.apply_remote(std::slice::from_ref(&insert)).unwrap(),
        1
    );
    assert_eq!(
        store.apply_remote(&[insert]).unwrap(),
        0,
        "a replay changes nothing"
    );
    assert_eq!(store.pending_count().unwrap(), 0);
    assert_eq!(store.list("tasks").unwrap().len(), 1);
}

#[test]
fn seeds_are_written_once_with_the_lowest_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let options = || {
        let mut options = StoreOptions::new("todo", &["tasks"]);
        options.seed = vec![SeedRecord {
            collection: "tasks".into(),
            id: "welcome".into(),
            data: fields(json!({ "title": "Welcome", "done": false })),
        }];
        options
    };
    let store = LocalStore::open(&path, options()).unwrap();
    let state = store.record_state("tasks", "welcome").unwrap().unwrap();
    assert_eq!(
        state.fields["title"].at.as_str(),
        mana_sync_protocol::merge::LOWEST_TIMESTAMP
    );
    assert_eq!(
        store.pending_count().unwrap(),
        1,
        "seeds are pushed at sign-in"
    );
    store.delete("tasks", "welcome").unwrap();
    drop(store);
    let store = LocalStore::open(&path, options()).unwrap();
    assert!(store.list("tasks").unwrap().is_empty(), "not seeded again");
}

#[test]
fn a_store_belongs_to_one_app_and_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = LocalStore::open(&path, StoreOptions::new("todo", &["tasks"])).unwrap();
    let token = |user: &str| {
        use base64::Engine;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"sub":"{user}"}}"#));
        format!("e30.{claims}.sig")
    };
    let account = store
        .sign_in("http://localhost:3050/", &token("alice"))
        .unwrap();
    assert_eq!(account.user, "alice");
    assert_eq!(account.server, "http://localhost:3050");
    assert!(matches!(
        store.sign_in("http://localhost:3050", &token("bob")),
        Err(ClientError::AccountMismatch { .. })
    ));
    let client_id = store.client_id().to_owned();
    drop(store);
    assert!(matches!(
        LocalStore::open(&path, StoreOptions::new("notes", &["notes"])),
        Err(ClientError::Open { .. })
    ));
    let store = LocalStore::open(&path, StoreOptions::new("todo", &["tasks"])).unwrap();
    assert_eq!(store.client_id(), client_id, "the client id is stable");
    assert_eq!(store.account().unwrap().unwrap().user, "alice");
    assert_ne!(store.status(), SyncStatus::LocalOnly);
}

#[tokio::test]
async fn a_subscription_yields_a_new_result_after_each_change_that_affects_it() {
    let device = Device::new("todo");
    let store = device.store.clone();
    let mut open = store.subscribe(
        Query::new("tasks")
            .where_eq("done", json!(false))
            .order_by("title"),
    );
    assert!(next(&mut open).await.is_empty());
    let b = store
        .insert("tasks", json!({ "title": "b", "done": false }))
        .unwrap();
    assert_eq!(titles_of(&next(&mut open).await), ["b"]);
    store
        .insert("tasks", json!({ "title": "a", "done": false }))
        .unwrap();
    assert_eq!(titles_of(&next(&mut open).await), ["a", "b"]);
    // A change that leaves the result alone yields nothing; the next one that
    // matters does.
    store
        .insert("notes", json!({ "title": "elsewhere" }))
        .unwrap();
    store
        .insert("tasks", json!({ "title": "c", "done": true }))
        .unwrap();
    store
        .update("tasks", &b, fields(json!({ "done": true })))
        .unwrap();
    assert_eq!(titles_of(&next(&mut open).await), ["a"]);
    // Changes applied by sync count too.
    store
        .apply_remote(&[remote_update(
            "r",
            "title",
            json!("remote"),
            "2026-11-25T10:00:00Z",
        )])
        .unwrap();
    store
        .apply_remote(&[remote_update(
            "r",
            "done",
            json!(false),
            "2026-11-25T10:00:00Z",
        )])
        .unwrap();
    assert_eq!(titles_of(&next(&mut open).await), ["a", "remote"]);
}

async fn next(sub: &mut mana_sync_client::Subscription) -> Vec<mana_sync_client::Record> {
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("a result before the deadline")
        .expect("the subscription goes on")
        .expect("the query runs")
}

#[test]
fn writes_by_another_process_are_noticed() {
    let device = Device::new("todo");
    let other =
        LocalStore::open(device.store.path(), StoreOptions::new("todo", &["tasks"])).unwrap();
    assert!(
        !device.store.check_external_changes().unwrap(),
        "first look"
    );
    device
        .store
        .insert("tasks", json!({ "title": "own" }))
        .unwrap();
    assert!(
        !device.store.check_external_changes().unwrap(),
        "own writes do not count"
    );
    other.insert("tasks", json!({ "title": "theirs" })).unwrap();
    assert!(device.store.check_external_changes().unwrap());
    assert_eq!(device.store.list("tasks").unwrap().len(), 2);
    // Two connections on one file share the clock: no timestamp is handed out twice.
    let mut stamps: Vec<Timestamp> = device
        .store
        .dump()
        .unwrap()
        .values()
        .map(|state| state.fields["title"].at.clone())
        .collect();
    stamps.dedup();
    assert_eq!(stamps.len(), 2);
}

/// A store written by the version before shared spaces (layout 1) opens
/// upgraded in place: its records and outbox are kept, in the personal
/// space, and records can now go into spaces.
#[test]
fn a_store_of_layout_1_is_upgraded_in_place_to_shared_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            r#"
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE records (collection TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL,
                deleted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (collection, id)) WITHOUT ROWID;
            CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, change TEXT NOT NULL, changeset_id TEXT);
            CREATE TABLE rejected (seq INTEGER PRIMARY KEY, change TEXT NOT NULL, reason TEXT NOT NULL,
                rejected_at TEXT NOT NULL);
            CREATE TABLE redownload_seen (collection TEXT NOT NULL, id TEXT NOT NULL,
                PRIMARY KEY (collection, id)) WITHOUT ROWID;
            CREATE TABLE cursors (collection TEXT PRIMARY KEY, cursor TEXT NOT NULL) WITHOUT ROWID;
            INSERT INTO meta VALUES ('client_id', 'old-device'), ('app_id', 'todo');
            INSERT INTO records VALUES ('tasks', 't1',
                '{"fields":{"id":{"value":"t1","at":"2026-11-25T10:00:00.000000000Z"},"title":{"value":"Old","at":"2026-11-25T10:00:00.000000000Z"}}}', 0);
            INSERT INTO outbox (change) VALUES ('{"table":"tasks","id":"t1","op":"insert","data":{"id":"t1","title":"Old"},"schemaVersion":2}');
            PRAGMA user_version = 1;
            "#,
        )
        .unwrap();
    }
    let store = LocalStore::open(&path, StoreOptions::new("todo", &["tasks"])).unwrap();
    let old = store
        .get("tasks", "t1")
        .unwrap()
        .expect("the old record is kept");
    assert_eq!(old.get("title"), Some(&json!("Old")));
    assert_eq!(old.space_id, None);
    assert_eq!(store.pending_count().unwrap(), 1);
    assert_eq!(store.client_id(), "old-device");
    let shared = store
        .insert_in(Some("house"), "tasks", json!({ "title": "Shared" }))
        .unwrap();
    assert_eq!(
        store
            .get("tasks", &shared)
            .unwrap()
            .unwrap()
            .space_id
            .as_deref(),
        Some("house")
    );
    drop(store);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

#[test]
fn a_space_id_field_is_refused_because_the_server_reads_it_as_the_space() {
    let device = Device::new("todo");
    let error = device
        .store
        .insert("tasks", json!({ "title": "x", "spaceId": "elsewhere" }))
        .unwrap_err();
    assert!(error.to_string().contains("spaceId"), "{error}");
}

/// A record's space is fixed where it was created: local edits keep it, and
/// a change from another space's log with the same id never touches it.
#[test]
fn a_record_never_moves_between_spaces() {
    let device = Device::new("todo");
    let store = &device.store;
    let mine = store.insert("tasks", json!({ "title": "Mine" })).unwrap();
    let shared = store
        .insert_in(Some("house"), "tasks", json!({ "title": "Shared" }))
        .unwrap();
    store
        .update(
            "tasks",
            &shared,
            json!({ "title": "Shared, edited" })
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
    let in_space = |id: &str, space: Option<&str>, title: &str| -> SyncChange {
        let mut change = json!({
            "table": "tasks", "id": id, "op": "update",
            "fields": { "title": { "value": title, "at": "2030-01-01T00:00:00.000000000Z" } },
            "eventId": "00000000-0000-0000-0000-000000000000", "schemaVersion": 2
        });
        if let Some(space) = space {
            change["spaceId"] = json!(space);
        }
        serde_json::from_value(change).unwrap()
    };
    // Other logs' records with the same ids: skipped.
    assert_eq!(
        store
            .apply_remote(&[
                in_space(&mine, Some("house"), "hijacked"),
                in_space(&shared, None, "hijacked"),
                in_space(&shared, Some("elsewhere"), "hijacked"),
            ])
            .unwrap(),
        0
    );
    // The record's own space: merged.
    assert_eq!(
        store
            .apply_remote(&[in_space(&shared, Some("house"), "From a member")])
            .unwrap(),
        1
    );
    let shared = store.get("tasks", &shared).unwrap().unwrap();
    assert_eq!(shared.space_id.as_deref(), Some("house"));
    assert_eq!(shared.get("title"), Some(&json!("From a member")));
    let mine = store.get("tasks", &mine).unwrap().unwrap();
    assert_eq!(
        (mine.space_id.as_deref(), mine.get("title")),
        (None, Some(&json!("Mine")))
    );
}
