//! Compaction against the real binary, on SQLite and Postgres: devices that
//! synced before it lose nothing after it (pull and stream), `mana-sync
//! compact` and the background compactor, expired cursors, backups, metrics.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::collections::BTreeMap;

use common::{Db, Harness, PROMPTLY, START, encode, export, fresh, import};
use mana_sync_protocol::WireChange;
use mana_sync_protocol::merge::RecordState;
use mana_sync_testkit::server::ServerOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};

const FEATURES: (&str, &str) = ("x-sync-features", "cursor-expired");

fn at(n: u32) -> String {
    format!("2026-11-25T10:00:{:02}.{:09}Z", n / 1000 % 60, n % 1000)
}

fn rename(id: &str, title: &str, n: u32) -> Value {
    json!({"table": "tasks", "id": id, "op": "update",
           "fields": {"title": {"value": title, "at": at(n)}}})
}

fn create(id: &str, n: u32) -> Value {
    json!({"table": "tasks", "id": id, "op": "insert", "data": {"id": id, "title": "new", "done": false},
           "fields": {"id": {"value": id, "at": at(n)}, "title": {"value": "new", "at": at(n)},
                      "done": {"value": false, "at": at(n)}}})
}

fn remove(id: &str, n: u32) -> Value {
    json!({"table": "tasks", "id": id, "op": "delete", "deletedAt": at(n)})
}

/// Records merged from changes as the server sends them.
#[derive(Debug, Default, PartialEq)]
struct Replica(BTreeMap<String, RecordState>);

impl Replica {
    fn apply_all(&mut self, changes: &[Value]) {
        for change in changes {
            let change: WireChange =
                serde_json::from_str(&change.to_string()).expect("a change as sent");
            self.0
                .entry(change.id.clone())
                .or_default()
                .apply((&change).into())
                .expect("merges");
        }
    }
}

/// `mana-sync compact` against the server's database.
async fn compact_cli(h: &Harness, args: &[&str], retention_days: &str) -> String {
    let output = tokio::process::Command::new(common::BINARY)
        .arg("compact")
        .args(args)
        .env("DATABASE_URL", &h.server.database_url)
        .env("TOMBSTONE_RETENTION_DAYS", retention_days)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Three devices rename ten tasks thirty times (310 changes). The laptop
/// syncs half way; returns the full state, and the laptop's state and cursor
/// at that point.
async fn long_history(h: &Harness) -> (Replica, Replica, String) {
    let devices = ["phone", "laptop", "tablet"].map(|d| h.device("alice", d));
    let mut full = Replica::default();
    let mut laptop = Replica::default();
    let mut laptop_cursor = START.to_owned();
    let creates: Vec<Value> = (0..10).map(|i| create(&format!("t{i}"), 1)).collect();
    full.apply_all(&creates);
    devices[0].push("todo", START, json!(creates)).await;
    for round in 0..30_u32 {
        let renames: Vec<Value> = (0..10)
            .map(|i| {
                rename(
                    &format!("t{i}"),
                    &format!("title {round}"),
                    10 + round * 10 + i,
                )
            })
            .collect();
        full.apply_all(&renames);
        if round % 3 == 1 {
            laptop.apply_all(&renames);
        }
        let (status, _) = devices[(round % 3) as usize]
            .push("todo", START, json!(renames))
            .await;
        assert_eq!(status, StatusCode::OK);
        if round == 14 {
            let (pulled, cursor) = devices[1].pull_all("todo", "tasks", START).await;
            laptop.apply_all(&pulled);
            laptop_cursor = cursor;
        }
    }
    (full, laptop, laptop_cursor)
}

async fn a_device_that_synced_before_compaction_pulls_what_it_missed(h: Harness) {
    let (full, mut laptop, cursor) = long_history(&h).await;
    let report = compact_cli(&h, &["--user", "alice"], "90").await;
    assert!(
        report.contains("logs 1, changes folded 300 (records 10), changes dropped 0"),
        "{report}"
    );
    let (after, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "tasks", &cursor)
        .await;
    laptop.apply_all(&after);
    assert_eq!(
        laptop, full,
        "the laptop from its cursor of before compaction"
    );
    let (everything, _) = h
        .device("alice", "new")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(everything.len(), 10, "one change per record");
    let mut fresh = Replica::default();
    fresh.apply_all(&everything);
    assert_eq!(fresh, full, "a new device");
    // Without --user: every user; nothing is left to fold.
    let report = compact_cli(&h, &[], "90").await;
    assert!(report.contains("logs 1, changes folded 0"), "{report}");
}

/// A counter from `/metrics` (0 until it is exported).
async fn metric(h: &Harness, name: &str) -> u64 {
    h.server.metric(name).await.unwrap_or(0)
}

async fn the_background_compactor_runs_and_a_stream_from_an_old_cursor_catches_up(h: Harness) {
    let (full, mut laptop, cursor) = long_history(&h).await;
    // It may already have run while the history was written (old cursors
    // are safe whenever it runs); wait until everything is folded.
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while metric(&h, "mana_sync_compaction_folded_changes_total").await < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "compaction did not finish"
        );
        tokio::task::yield_now().await;
    }
    assert!(metric(&h, "mana_sync_compaction_runs_total").await >= 1);
    let mut stream = h
        .device("alice", "laptop")
        .stream("todo", "tasks", &cursor)
        .await;
    let pages = stream.backlog(1).await;
    for page in &pages {
        laptop.apply_all(page["changes"].as_array().expect("changes"));
    }
    assert_eq!(laptop, full);
    // And live changes still arrive.
    h.device("alice", "phone")
        .push("todo", START, json!([rename("t3", "live", 999)]))
        .await;
    let live = stream.next_changes().await;
    assert_eq!(live["changes"][0]["fields"]["title"]["value"], "live");
}

/// A laptop synced; then a task was deleted and compaction dropped it for
/// good. The laptop's cursor is from before the drop.
async fn expired_setup(h: &Harness) -> String {
    let phone = h.device("alice", "phone");
    phone
        .push("todo", START, json!([create("gone", 1), create("kept", 1)]))
        .await;
    let (_, cursor) = h
        .device("alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    phone.push("todo", START, json!([remove("gone", 2)])).await;
    let report = compact_cli(h, &["--user", "alice"], "0").await;
    assert!(report.contains("changes dropped 2 (records 1)"), "{report}");
    cursor
}

async fn an_expired_cursor_is_told_to_clients_that_understand_it(h: Harness) {
    let cursor = expired_setup(&h).await;
    let laptop = h.device("alice", "laptop");
    let http = &laptop.http;
    let pull = http
        .get(format!(
            "{}/sync/todo/pull?collection=tasks&since={}",
            laptop.base,
            encode(&cursor)
        ))
        .bearer_auth(&laptop.token)
        .header("x-client-id", "laptop")
        .header(FEATURES.0, FEATURES.1)
        .send()
        .await
        .expect("sent");
    let reply = common::read(pull).await;
    common::assert_error(
        &reply,
        StatusCode::GONE,
        "cursor_expired",
        "no longer keeps",
    );
    let push = http
        .post(format!("{}/sync/todo", laptop.base))
        .bearer_auth(&laptop.token)
        .header("x-client-id", "laptop")
        .header(FEATURES.0, FEATURES.1)
        .json(&json!({"since": cursor, "changesetId": "cs-1", "changes": [rename("kept", "mine", 50)]}))
        .send()
        .await
        .expect("sent");
    let reply = common::read(push).await;
    common::assert_error(
        &reply,
        StatusCode::GONE,
        "cursor_expired",
        "no longer keeps",
    );
    // The stream says so, then ends.
    let stream = http
        .get(format!(
            "{}/sync/todo/stream?collections=tasks&since={}&features=cursor-expired",
            laptop.base,
            encode(&cursor)
        ))
        .bearer_auth(&laptop.token)
        .send()
        .await
        .expect("opens");
    let mut events = common::EventStream::new(stream);
    let (kind, data) = events.next().await;
    assert_eq!(kind, "cursor-expired");
    assert_eq!(data["error"]["code"], "cursor_expired");
    assert!(events.ended().await);
    // Downloading again from the start, and resending the changeset.
    let (state, fresh) = laptop.pull_all("todo", "tasks", START).await;
    assert_eq!(common::ids(&state), ["kept"]);
    let resend = http
        .post(format!("{}/sync/todo", laptop.base))
        .bearer_auth(&laptop.token)
        .header("x-client-id", "laptop")
        .header(FEATURES.0, FEATURES.1)
        .json(&json!({"since": fresh, "changesetId": "cs-1", "changes": [rename("kept", "mine", 50)]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resend.status(), StatusCode::OK);
    let (log, _) = h
        .device("alice", "other")
        .pull_all("todo", "tasks", START)
        .await;
    let renames = log.iter().filter(|c| c["op"] == "update").count();
    assert_eq!(renames, 1, "the changeset was stored once: {log:?}");
}

/// The seed's clients cannot understand `cursor_expired`: they are served
/// from their cursor (from the start they would get nothing more: their
/// copy keeps the dropped record either way).
async fn clients_of_the_seeds_protocol_are_served_from_their_cursor(h: Harness) {
    let cursor = expired_setup(&h).await;
    let laptop = h.device("alice", "laptop");
    h.device("alice", "phone")
        .push("todo", START, json!([rename("kept", "renamed", 60)]))
        .await;
    let (status, reply) = laptop
        .pull(
            "todo",
            &format!("collection=tasks&since={}", encode(&cursor)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        common::ids(reply["serverChanges"].as_array().expect("changes")),
        ["kept"]
    );
    common::assert_cursor(reply["syncedUntil"].as_str().expect("a plain cursor"));
    let (status, reply) = laptop.push("todo", &cursor, json!([])).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        common::ids(reply["serverChanges"].as_array().expect("changes")),
        ["kept"]
    );
    let mut stream = laptop.stream("todo", "tasks", &cursor).await;
    let page = stream.next_changes().await;
    assert_eq!(
        common::ids(page["changes"].as_array().expect("changes")),
        ["kept"]
    );
}

/// After a drop, a download from the start in small pages (whose cursors lie
/// before the dropped position) is never told it expired.
async fn a_download_begun_after_a_drop_is_not_expired(h: Harness) {
    let phone = h.device("alice", "phone");
    let creates: Vec<Value> = (0..5).map(|i| create(&format!("old{i}"), 1)).collect();
    phone.push("todo", START, json!(creates)).await;
    expired_setup(&h).await;
    let laptop = h.device("alice", "new-laptop");
    let mut since = START.to_owned();
    let mut seen = 0;
    loop {
        let response = laptop
            .http
            .get(format!(
                "{}/sync/todo/pull?collection=tasks&limit=2&since={}",
                laptop.base,
                encode(&since)
            ))
            .bearer_auth(&laptop.token)
            .header(FEATURES.0, FEATURES.1)
            .send()
            .await
            .expect("sent");
        let (status, page) = common::read(response).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen += page["serverChanges"].as_array().expect("changes").len();
        since = page["syncedUntil"].as_str().expect("cursor").to_owned();
        if page["hasMore"] == false {
            break;
        }
    }
    assert_eq!(seen, 6, "the five old tasks and `kept`");
    assert!(
        since.contains('!'),
        "{since} carries the expiry it was handed out with"
    );
}

async fn backups_after_compaction_restore_the_same_state(h: Harness) {
    let (full, _, _) = long_history(&h).await;
    let old_backup = export(&h.server, "alice").await;
    assert_eq!(old_backup.lines().count(), 310);
    compact_cli(&h, &["--user", "alice"], "90").await;
    let compacted = export(&h.server, "alice").await;
    assert_eq!(
        compacted.lines().count(),
        10,
        "the export is the compacted log"
    );
    let target = fresh(&h).await;
    let (status, report) = import(&target.server, "alice", compacted).await;
    assert_eq!(
        (status, report["imported"].as_u64()),
        (StatusCode::OK, Some(10))
    );
    let (restored, _) = target
        .device("alice", "new")
        .pull_all("todo", "tasks", START)
        .await;
    let mut state = Replica::default();
    state.apply_all(&restored);
    assert_eq!(state, full, "restored");
    // An old backup imported after compaction changes no device's state.
    let (status, _) = import(&h.server, "alice", old_backup).await;
    assert_eq!(status, StatusCode::OK);
    let (everything, _) = h
        .device("alice", "new")
        .pull_all("todo", "tasks", START)
        .await;
    let mut state = Replica::default();
    state.apply_all(&everything);
    assert_eq!(state, full, "after importing the old backup");
}

on_both_databases!(
    a_device_that_synced_before_compaction_pulls_what_it_missed,
    an_expired_cursor_is_told_to_clients_that_understand_it,
    clients_of_the_seeds_protocol_are_served_from_their_cursor,
    a_download_begun_after_a_drop_is_not_expired,
    backups_after_compaction_restore_the_same_state,
);

/// The background compactor, on either database.
mod background {
    use super::*;

    fn options() -> ServerOptions {
        ServerOptions {
            env: vec![
                ("COMPACTION_THRESHOLD".into(), "1".into()),
                ("COMPACTION_INTERVAL_SECS".into(), "1".into()),
            ],
            ..ServerOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let h = Harness::start_with(Db::Sqlite, options())
            .await
            .expect("starts");
        the_background_compactor_runs_and_a_stream_from_an_old_cursor_catches_up(h).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(h) = Harness::start_with(Db::Postgres, options()).await else {
            return;
        };
        the_background_compactor_runs_and_a_stream_from_an_old_cursor_catches_up(h).await;
    }
}
