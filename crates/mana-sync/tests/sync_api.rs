//! The sync API over HTTP, as devices use it, on SQLite and Postgres.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Harness, START, assert_error, encode, ids, insert};
use mana_sync_testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn changes_round_trip_in_the_seed_wire_format(h: Harness) {
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");
    let actor = r#"{"kind":"ai","agent":{"name":"planner","version":2.50},"tags":["a","b"]}"#;
    let body = format!(
        r#"{{"clientId":"phone","since":"{START}","changes":[
            {{"table":"tasks","id":"t1","op":"insert","data":{{"id":"t1","title":"Buy milk","done":false}},"actor":{actor}}},
            {{"table":"tasks","id":"t1","op":"update","fields":{{"title":{{"value":"Buy oat milk","updatedAt":"2026-11-25T10:00:00.000Z"}}}}}},
            {{"table":"tasks","id":"t1","op":"update","schemaVersion":2,"fields":{{"done":{{"value":true,"at":"2026-11-25T10:00:01.000Z"}}}}}},
            {{"table":"tasks","id":"t1","op":"delete","deletedAt":"2026-11-25T10:00:02.000Z"}}
        ]}}"#
    );
    let response = phone
        .http
        .post(format!("{}/sync/todo", phone.base))
        .bearer_auth(&phone.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    let (status, reply) = common::read(response).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["serverChanges"], json!([]));
    assert_eq!(reply["conflicts"], json!([]));
    assert_eq!(reply["hasMore"], json!(false));
    assert!(reply["syncedUntil"].is_string());

    let raw = laptop
        .http
        .get(format!(
            "{}/sync/todo/pull?collection=tasks&since={}",
            laptop.base,
            encode(START)
        ))
        .bearer_auth(&laptop.token)
        .header("x-client-id", "laptop")
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(
        raw.contains(&format!(r#""actor":{actor}"#)),
        "actor not byte-for-byte: {raw}"
    );
    let pulled: Value = serde_json::from_str(&raw).expect("JSON");
    let changes = pulled["serverChanges"].as_array().expect("array");
    assert_eq!(changes.len(), 4);
    for change in changes {
        let event_id = change["eventId"].as_str().expect("eventId");
        assert_eq!(event_id.len(), 36, "a UUID: {event_id}");
    }
    let versions: Vec<_> = changes.iter().map(|c| c["schemaVersion"].clone()).collect();
    assert_eq!(versions, [json!(1), json!(1), json!(2), json!(1)]);
    assert_eq!(
        changes[0]["data"],
        json!({"id":"t1","title":"Buy milk","done":false})
    );
    assert_eq!(
        changes[0]["actor"],
        serde_json::from_str::<Value>(actor).unwrap()
    );
    assert_eq!(
        changes[1]["fields"]["title"],
        json!({"value":"Buy oat milk","updatedAt":"2026-11-25T10:00:00.000Z","at":"2026-11-25T10:00:00.000Z"})
    );
    assert_eq!(
        changes[2]["fields"]["done"],
        json!({"value":true,"updatedAt":"2026-11-25T10:00:01.000Z","at":"2026-11-25T10:00:01.000Z"})
    );
    assert_eq!(changes[3]["deletedAt"], "2026-11-25T10:00:02.000Z");
    for change in &changes[1..] {
        assert!(
            change.get("actor").is_none(),
            "no actor key when none was sent: {change}"
        );
    }
}

async fn a_push_reply_carries_other_devices_changes_of_every_collection(h: Harness) {
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");
    let (status, _) = laptop
        .push(
            "todo",
            START,
            json!([insert("tasks", "l1"), insert("lists", "l2")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    laptop
        .push("notes", START, json!([insert("notes", "other-app")]))
        .await;
    let (status, reply) = phone
        .push("todo", START, json!([insert("tasks", "p1")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let changes = reply["serverChanges"].as_array().expect("array");
    assert_eq!(
        ids(changes),
        ["l1", "l2"],
        "other devices' changes, this app only, not its own"
    );
    let cursor = reply["syncedUntil"].as_str().expect("cursor");
    let (_, again) = phone.push("todo", cursor, json!([])).await;
    assert_eq!(
        again["serverChanges"],
        json!([]),
        "nothing new after syncedUntil"
    );
    // The laptop gets the phone's change, and not its own.
    let (_, reply) = laptop.push("todo", START, json!([])).await;
    assert_eq!(
        ids(reply["serverChanges"].as_array().expect("array")),
        ["p1"]
    );
}

async fn the_device_is_named_by_header_or_body(h: Harness) {
    let alice = h.device("alice", "phone");
    // Body says "tablet" but the header says "phone": the header wins.
    alice
        .post(
            "todo",
            &json!({"clientId":"tablet","since":START,"changes":[insert("tasks","1")]}),
        )
        .await;
    let (changes, _) = alice.pull_all("todo", "tasks", START).await;
    assert!(
        changes.is_empty(),
        "the phone does not get its own change back"
    );
    // Without the header, the body's clientId names the device.
    let response = alice
        .http
        .post(format!("{}/sync/todo", alice.base))
        .bearer_auth(&alice.token)
        .json(&json!({"clientId":"tablet","since":START,"changes":[insert("tasks","2")]}))
        .send()
        .await
        .expect("sent");
    let (status, reply) = common::read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ids(reply["serverChanges"].as_array().expect("array")),
        ["1"]
    );
    // Pull by query parameter when no header is sent.
    let response = alice
        .http
        .get(format!(
            "{}/sync/todo/pull?collection=tasks&since={}&clientId=tablet",
            alice.base,
            encode(START)
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("sent");
    let (_, reply) = common::read(response).await;
    assert_eq!(
        ids(reply["serverChanges"].as_array().expect("array")),
        ["1"]
    );
    // No client id at all on a push is a 400.
    let response = alice
        .http
        .post(format!("{}/sync/todo", alice.base))
        .bearer_auth(&alice.token)
        .json(&json!({"since":START,"changes":[]}))
        .send()
        .await
        .expect("sent");
    assert_error(
        &common::read(response).await,
        StatusCode::BAD_REQUEST,
        "missing_parameter",
        "clientId",
    );
}

async fn pulls_come_in_pages_of_at_most_1000(h: Harness) {
    let writer = h.device("alice", "writer");
    let reader = h.device("alice", "reader");
    for batch in 0..5 {
        let changes: Vec<Value> = (0..500)
            .map(|i| insert("tasks", &format!("{:04}", batch * 500 + i)))
            .collect();
        let (status, _) = writer.push("todo", START, json!(changes)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, first) = reader
        .pull("todo", &format!("collection=tasks&since={}", encode(START)))
        .await;
    assert_eq!(
        first["serverChanges"].as_array().expect("array").len(),
        1000
    );
    assert_eq!(first["hasMore"], true);
    let (changes, _) = reader.pull_all("todo", "tasks", START).await;
    let expected: Vec<String> = (0..2500).map(|i| format!("{i:04}")).collect();
    assert_eq!(
        ids(&changes),
        expected,
        "every change once, in order, across page edges"
    );
    let (_, small) = reader
        .pull(
            "todo",
            &format!("collection=tasks&since={}&limit=10", encode(START)),
        )
        .await;
    assert_eq!(small["serverChanges"].as_array().expect("array").len(), 10);
    let (_, capped) = reader
        .pull(
            "todo",
            &format!("collection=tasks&since={}&limit=5000", encode(START)),
        )
        .await;
    assert_eq!(
        capped["serverChanges"].as_array().expect("array").len(),
        1000
    );
    for bad in ["0", "-1", "ten", "1.5"] {
        let reply = reader
            .pull(
                "todo",
                &format!("collection=tasks&since={}&limit={bad}", encode(START)),
            )
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request", "limit");
    }
}

async fn a_push_reply_is_paged_never_cut(h: Harness) {
    let writer = h.device("alice", "writer");
    let other = h.device("alice", "other");
    for batch in 0..3 {
        let changes: Vec<Value> = (0..500)
            .map(|i| insert("tasks", &format!("{:04}", batch * 500 + i)))
            .collect();
        writer.push("todo", START, json!(changes)).await;
    }
    let (_, reply) = other.push("todo", START, json!([])).await;
    assert_eq!(
        reply["serverChanges"].as_array().expect("array").len(),
        1000
    );
    assert_eq!(reply["hasMore"], true);
    let (_, rest) = other
        .push(
            "todo",
            reply["syncedUntil"].as_str().expect("cursor"),
            json!([]),
        )
        .await;
    let rest_ids = ids(rest["serverChanges"].as_array().expect("array"));
    assert_eq!(rest_ids.len(), 500);
    assert_eq!(rest_ids.first().map(String::as_str), Some("1000"));
    assert_eq!(rest["hasMore"], false);
}

async fn a_retried_changeset_is_stored_once(h: Harness) {
    let phone = h.device("alice", "phone");
    let body = json!({"clientId":"phone","since":START,"changesetId":"cs-42","changes":[insert("tasks","1"), insert("tasks","2")]});
    for _ in 0..3 {
        let (status, reply) = phone.post("todo", &body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let (changes, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(ids(&changes), ["1", "2"]);
}

async fn a_too_new_schema_version_is_refused_whole(h: Harness) {
    let phone = h.device("alice", "phone");
    let reply = phone
        .post("todo", &json!({"clientId":"phone","since":START,"schemaVersion":3,"changes":[insert("tasks","1")]}))
        .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "schema_version_too_new",
        "3",
    );
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "schema_version_too_new",
        "maximum 2",
    );
    let mut too_new = insert("tasks", "2");
    too_new["schemaVersion"] = json!(99);
    let reply = phone
        .push("todo", START, json!([insert("tasks", "1"), too_new]))
        .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "schema_version_too_new",
        "changes[1]",
    );
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "schema_version_too_new",
        "99",
    );
    let (changes, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    assert!(
        changes.is_empty(),
        "nothing of a refused changeset is stored"
    );
}

async fn one_invalid_change_stores_nothing(h: Harness) {
    let phone = h.device("alice", "phone");
    let reply = phone
        .push(
            "todo",
            START,
            json!([insert("tasks", "1"), {"table":"tasks","id":"2","op":"update"}]),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_change",
        "changes[1]",
    );
    let (changes, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    assert!(changes.is_empty());
}

async fn cursors_are_timestamps_in_commit_order_and_legacy_timestamps_still_work(h: Harness) {
    let writer = h.device("alice", "writer");
    let reader = h.device("alice", "reader");
    writer
        .push("todo", START, json!([insert("tasks", "1")]))
        .await;
    let (changes, cursor) = reader.pull_all("todo", "tasks", START).await;
    assert_eq!(ids(&changes), ["1"]);
    common::assert_cursor(&cursor);
    assert!(cursor.as_str() > START, "{cursor} sorts after the epoch");
    writer
        .push("todo", START, json!([insert("tasks", "2")]))
        .await;
    let (changes, next) = reader.pull_all("todo", "tasks", &cursor).await;
    assert_eq!(
        ids(&changes),
        ["2"],
        "resuming from the cursor returns only what is new"
    );
    assert!(next > cursor, "{next} sorts after {cursor}");
    // An old client's timestamp from the future: nothing, and the real end
    // of the log back (so it does not skip what the server stores next).
    let (changes, end) = reader
        .pull_all("todo", "tasks", "2999-01-01T00:00:00.000Z")
        .await;
    assert!(changes.is_empty());
    assert_eq!(end, next);
    // Unparseable cursors are refused, never treated as "from the start".
    for bad in ["", "yesterday", "c1.x", "12345"] {
        let reply = reader
            .pull("todo", &format!("collection=tasks&since={}", encode(bad)))
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor", "since");
        let reply = reader.push("todo", bad, json!([])).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor", "since");
    }
    let reply = reader.pull("todo", "collection=tasks").await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "missing_parameter",
        "since",
    );
    let reply = reader
        .pull("todo", &format!("since={}", encode(START)))
        .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "missing_parameter",
        "collection",
    );
    let reply = reader
        .post("todo", &json!({"clientId":"reader","changes":[]}))
        .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "missing_parameter",
        "since",
    );
}

async fn users_never_see_each_other(h: Harness) {
    let alice = h.device("alice", "phone");
    let bob = h.device("bob", "phone");
    alice
        .push("todo", START, json!([insert("tasks", "alice-secret")]))
        .await;
    let (changes, _) = bob.pull_all("todo", "tasks", START).await;
    assert!(changes.is_empty());
    let (_, reply) = bob.push("todo", START, json!([])).await;
    assert_eq!(reply["serverChanges"], json!([]));
}

async fn a_restart_keeps_every_change(h: Harness) {
    let Harness { mut server, db } = h;
    let phone = Harness::device_of(&server, "alice", "phone");
    phone
        .push(
            "todo",
            START,
            json!([insert("tasks", "1"), insert("tasks", "2")]),
        )
        .await;
    let database_url = server.database_url.clone();
    server.kill().await;
    // The SQLite file lives in the old server's temp dir, which `server`
    // still owns; keep it alive while the new server runs.
    let restarted = common::server_on(database_url).await;
    let laptop = Harness::device_of(&restarted, "alice", "laptop");
    let (changes, _) = laptop.pull_all("todo", "tasks", START).await;
    assert_eq!(ids(&changes), ["1", "2"]);
    drop((restarted, server, db));
}

/// Six devices push at once through the server while a seventh follows the
/// cursor over HTTP: it must receive every change exactly once.
async fn a_device_following_the_cursor_gets_every_concurrent_change_once(h: Harness) {
    const WRITERS: usize = 6;
    const PUSHES: usize = 30;
    const PER_PUSH: usize = 20;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let device = h.device("alice", &format!("writer-{w}"));
            tokio::spawn(async move {
                for p in 0..PUSHES {
                    let changes: Vec<Value> = (0..PER_PUSH)
                        .map(|i| insert("tasks", &format!("w{w}-p{p}-i{i}")))
                        .collect();
                    let (status, body) = device.push("todo", START, json!(changes)).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            })
        })
        .collect();
    let writers_done = tokio::spawn(async move {
        for writer in writers {
            writer.await.expect("writer finished");
        }
    });
    let reader = h.device("alice", "reader");
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut since = START.to_owned();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader saw {}",
            seen.len()
        );
        let finished = writers_done.is_finished();
        let (status, page) = reader
            .pull(
                "todo",
                &format!("collection=tasks&since={}", encode(&since)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let changes = page["serverChanges"].as_array().expect("array");
        for id in ids(changes) {
            *seen.entry(id).or_default() += 1;
        }
        since = page["syncedUntil"].as_str().expect("cursor").to_owned();
        if changes.is_empty() && finished {
            break;
        }
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a change was delivered twice"
    );
    assert_eq!(
        seen.len(),
        WRITERS * PUSHES * PER_PUSH,
        "changes were missed"
    );
}

impl Harness {
    fn device_of(server: &TestServer, user: &str, client_id: &str) -> common::Device {
        common::Device {
            http: mana_sync_testkit::http_client(),
            base: server.url.clone(),
            token: server.token(user),
            client_id: client_id.to_owned(),
        }
    }
}

on_both_databases!(
    changes_round_trip_in_the_seed_wire_format,
    a_push_reply_carries_other_devices_changes_of_every_collection,
    the_device_is_named_by_header_or_body,
    pulls_come_in_pages_of_at_most_1000,
    a_push_reply_is_paged_never_cut,
    a_retried_changeset_is_stored_once,
    a_too_new_schema_version_is_refused_whole,
    one_invalid_change_stores_nothing,
    cursors_are_timestamps_in_commit_order_and_legacy_timestamps_still_work,
    users_never_see_each_other,
    a_restart_keeps_every_change,
    a_device_following_the_cursor_gets_every_concurrent_change_once,
);
