//! Backups exported by the seed's Go server, restored through the real
//! binary on SQLite and Postgres: each line becomes the equivalent change
//! (values keep their JSON text, a second import adds nothing), and a
//! malformed line is refused with its number and the field at fault.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Harness, START, export, import};
use reqwest::StatusCode;
use serde_json::json;

/// A backup as the seed's Go server exports it: updates carry their values in
/// `data` and their timestamps in `fieldTimestamps` (omitted when empty),
/// deletes carry `data: {deletedAt}` or no `data`.
const SEED_BACKUP: &str = concat!(
    r#"{"eventId":"5eed0000-0000-4000-8000-000000000001","schemaVersion":1,"appId":"todo","table":"tasks","id":"t1","op":"insert","data":{"title":"Buy milk","done":false,"n":1.50},"fieldTimestamps":{"title":"2026-01-01T10:00:00.000Z","done":"2026-01-01T10:00:00.000Z"},"actor":{"kind":"ai","model":"planner-2"},"clientId":"web-1","createdAt":"2026-01-01T10:00:00.5Z"}"#,
    "\n",
    r#"{"eventId":"5eed0000-0000-4000-8000-000000000002","schemaVersion":1,"appId":"todo","table":"tasks","id":"t2","op":"insert","data":{"title":"Call mum"},"clientId":"web-1","createdAt":"2026-01-01T10:00:01.5Z"}"#,
    "\n",
    r#"{"eventId":"5eed0000-0000-4000-8000-000000000003","schemaVersion":1,"appId":"todo","table":"tasks","id":"t1","op":"update","data":{"title":"Buy oat milk","done":true},"fieldTimestamps":{"title":"2026-01-01T10:00:02.000Z","done":"2026-01-01T10:00:03.000Z"},"clientId":"web-2","createdAt":"2026-01-01T10:00:04.5Z"}"#,
    "\n",
    r#"{"eventId":"5eed0000-0000-4000-8000-000000000004","schemaVersion":1,"appId":"todo","table":"tasks","id":"t1","op":"update","data":{"title":"Buy soy milk","n":2.50},"fieldTimestamps":{"title":"2026-01-01T10:00:05.000Z"},"clientId":"web-1","createdAt":"2026-01-01T10:00:06.5Z"}"#,
    "\n",
    r#"{"eventId":"5eed0000-0000-4000-8000-000000000005","appId":"todo","table":"tasks","id":"t1","op":"update","data":{"done":false},"clientId":"web-2","createdAt":"2026-01-01T10:00:07.5Z"}"#,
    "\n",
    r#"{"eventId":"5eed0000-0000-4000-8000-000000000006","schemaVersion":1,"appId":"todo","table":"tasks","id":"t2","op":"delete","data":{"deletedAt":"2026-01-01T10:00:08.000Z"},"clientId":"web-1","createdAt":"2026-01-01T10:00:08.5Z"}"#,
    "\n",
    r#"{"eventId":"5eed0000-0000-4000-8000-000000000007","schemaVersion":1,"appId":"todo","table":"tasks","id":"t1","op":"delete","actor":{"kind":"system"},"clientId":"web-2","createdAt":"2026-01-01T10:00:09.5Z"}"#,
    "\n",
);

async fn a_backup_of_the_seed_server_restores_as_the_equivalent_changes(h: Harness) {
    let (status, report) = import(&h.server, "alice", SEED_BACKUP).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"imported": 7, "skipped": 0}))
    );
    let event = |n: u32| format!("5eed0000-0000-4000-8000-00000000000{n}");
    let expected = vec![
        json!({"table": "tasks", "id": "t1", "op": "insert",
               "data": {"title": "Buy milk", "done": false, "n": 1.5},
               "fields": {"done": common::seed_field(json!(false), "2026-01-01T10:00:00.000Z"),
                          "title": common::seed_field(json!("Buy milk"), "2026-01-01T10:00:00.000Z")},
               "actor": {"kind": "ai", "model": "planner-2"},
               "eventId": event(1), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t2", "op": "insert", "data": {"title": "Call mum"},
               "eventId": event(2), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t1", "op": "update",
               "fields": {"done": common::seed_field(json!(true), "2026-01-01T10:00:03.000Z"),
                          "title": common::seed_field(json!("Buy oat milk"), "2026-01-01T10:00:02.000Z")},
               "eventId": event(3), "schemaVersion": 1}),
        // `n` had no timestamp of its own: it takes the line's createdAt.
        json!({"table": "tasks", "id": "t1", "op": "update",
               "fields": {"n": common::seed_field(json!(2.5), "2026-01-01T10:00:06.5Z"),
                          "title": common::seed_field(json!("Buy soy milk"), "2026-01-01T10:00:05.000Z")},
               "eventId": event(4), "schemaVersion": 1}),
        // No `fieldTimestamps` at all (the seed omits empty maps).
        json!({"table": "tasks", "id": "t1", "op": "update",
               "fields": {"done": common::seed_field(json!(false), "2026-01-01T10:00:07.5Z")},
               "eventId": event(5), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t2", "op": "delete",
               "deletedAt": "2026-01-01T10:00:08.000Z", "eventId": event(6), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t1", "op": "delete",
               "deletedAt": "2026-01-01T10:00:09.5Z", "actor": {"kind": "system"},
               "eventId": event(7), "schemaVersion": 1}),
    ];
    let (changes, _) = h
        .device("alice", "phone")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(changes, expected);
    // Values keep their JSON text through the rewrite.
    let body = mana_sync_testkit::http_client()
        .get(h.server.at(&format!(
            "/sync/todo/pull?collection=tasks&since={}",
            common::encode(START)
        )))
        .bearer_auth(h.server.token("alice"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(body.contains(r#""n":1.50"#), "{body}");
    assert!(body.contains(r#"{"value":2.50,"#), "{body}");

    let (status, report) = import(&h.server, "alice", SEED_BACKUP).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"imported": 0, "skipped": 7}))
    );
    let (again, _) = h
        .device("alice", "phone")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(again, expected, "the second import added nothing");
}

async fn a_malformed_seed_line_names_the_line_and_the_field(h: Harness) {
    let lines: Vec<&str> = SEED_BACKUP.lines().collect();
    for (broken, needle) in [
        (
            lines[2].replace(
                r#""fieldTimestamps":{"title":"2026-01-01T10:00:02.000Z","#,
                r#""fieldTimestamps":{"title":"yesterday","#,
            ),
            "`fieldTimestamps.title`",
        ),
        (
            lines[2].replace(
                r#""fieldTimestamps":{"title":"2026-01-01T10:00:02.000Z","done":"2026-01-01T10:00:03.000Z"}"#,
                r#""fieldTimestamps":["2026-01-01T10:00:02.000Z"]"#,
            ),
            "`fieldTimestamps`",
        ),
        (
            lines[2].replace(
                r#""data":{"title":"Buy oat milk","done":true}"#,
                r#""data":"Buy oat milk""#,
            ),
            "`data`",
        ),
    ] {
        assert_ne!(broken, lines[2], "the replacement applies");
        let body = format!("{}\n{}\n{broken}\n", lines[0], lines[1]);
        let reply = import(&h.server, "alice", body).await;
        common::assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_backup", "line 3");
        common::assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_backup", needle);
    }
    assert!(
        export(&h.server, "alice").await.is_empty(),
        "nothing of a refused backup is stored"
    );
}

on_both_databases!(
    a_backup_of_the_seed_server_restores_as_the_equivalent_changes,
    a_malformed_seed_line_names_the_line_and_the_field,
);
