//! Backups against the real binary: export, restore into a fresh server,
//! double imports, every refusal, legacy lines, isolation, live delivery of
//! restored changes, the operator commands; on SQLite and Postgres; and the
//! size limit. Backups exported by the seed's Go server are in
//! `seed_backup.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Device, Harness, START, export, fresh, import, insert};
use futures::StreamExt;
use mana_sync_testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A history with every kind of change, two apps, and another user.
async fn seed(h: &Harness) {
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");
    let (status, _) = phone
        .push(
            "todo",
            START,
            json!([
                {"table": "tasks", "id": "t1", "op": "insert", "data": {"title": "Buy milk", "done": false, "n": 1.50},
                 "actor": {"kind": "ai", "model": "planner-2"}},
                {"table": "lists", "id": "l1", "op": "insert", "data": {"name": "Home"}},
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    laptop
        .post(
            "todo",
            &json!({"clientId": "laptop", "since": START, "schemaVersion": 2, "changes": [
                {"table": "tasks", "id": "t1", "op": "update",
                 "fields": {"title": {"value": "Buy oat milk", "at": "2026-11-25T10:00:00.123004567Z"}}},
            ]}),
        )
        .await;
    phone
        .push(
            "todo",
            START,
            json!([
                {"table": "tasks", "id": "t1", "op": "update", "fields": {"done": {"value": true, "updatedAt": "2026-11-25T10:00:01.000Z"}}},
                {"table": "lists", "id": "l1", "op": "delete", "deletedAt": "2026-11-25T10:00:02.000Z"},
            ]),
        )
        .await;
    phone
        .push("notes", START, json!([insert("pages", "p1")]))
        .await;
    h.device("bob", "phone")
        .push("todo", START, json!([insert("tasks", "bobs-secret")]))
        .await;
}

/// What a new device of `user` would pull from `server`, every collection.
async fn everything(server: &TestServer, user: &str) -> Vec<Value> {
    let device = Device {
        http: mana_sync_testkit::http_client(),
        base: server.url.clone(),
        token: server.token(user),
        client_id: "new-device".into(),
    };
    let mut all = Vec::new();
    for (app, collection) in [("todo", "tasks"), ("todo", "lists"), ("notes", "pages")] {
        let (changes, _) = device.pull_all(app, collection, START).await;
        all.extend(changes);
    }
    all
}

async fn a_restore_into_a_fresh_server_gives_identical_pulls(h: Harness) {
    seed(&h).await;
    let backup = export(&h.server, "alice").await;
    assert_eq!(
        backup.lines().count(),
        6,
        "every change of every app, one per line:\n{backup}"
    );
    let lines: Vec<Value> = backup
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    for line in &lines {
        for key in [
            "eventId",
            "schemaVersion",
            "appId",
            "table",
            "id",
            "op",
            "clientId",
            "createdAt",
        ] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
        assert_ne!(line["id"], "bobs-secret");
    }
    assert_eq!(
        lines[0]["actor"],
        json!({"kind": "ai", "model": "planner-2"})
    );
    assert!(
        lines[1].get("actor").is_none(),
        "no actor key when there was none"
    );
    assert_eq!(
        lines[0]["data"],
        json!({"title": "Buy milk", "done": false, "n": 1.5})
    );

    let target = fresh(&h).await;
    let (status, report) = import(&target.server, "alice", backup.clone()).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report, json!({"imported": 6, "skipped": 0}));
    assert_eq!(
        everything(&target.server, "alice").await,
        everything(&h.server, "alice").await
    );
    // The restored history exports to the very same backup.
    assert_eq!(export(&target.server, "alice").await, backup);
    assert!(everything(&target.server, "bob").await.is_empty());
}

async fn importing_the_same_backup_twice_adds_nothing(h: Harness) {
    seed(&h).await;
    let backup = export(&h.server, "alice").await;
    let before = everything(&h.server, "alice").await;
    let (status, report) = import(&h.server, "alice", backup.clone()).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"imported": 0, "skipped": 6}))
    );
    let target = fresh(&h).await;
    for expected in [
        json!({"imported": 6, "skipped": 0}),
        json!({"imported": 0, "skipped": 6}),
    ] {
        let (status, report) = import(&target.server, "alice", backup.clone()).await;
        assert_eq!((status, report), (StatusCode::OK, expected));
    }
    assert_eq!(everything(&h.server, "alice").await, before);
    assert_eq!(everything(&target.server, "alice").await, before);
}

async fn every_refusal_names_the_line_and_stores_nothing(h: Harness) {
    seed(&h).await;
    let backup = export(&h.server, "alice").await;
    let lines: Vec<&str> = backup.lines().collect();
    let target = fresh(&h).await;
    let with_third = |third: &str| format!("{}\n{}\n{third}\n{}\n", lines[0], lines[1], lines[3]);
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (
            with_third("{not json"),
            "invalid_backup",
            vec!["line 3", "not a JSON object"],
        ),
        (
            with_third(&lines[2].replace(r#""eventId":"#, r#""noEventId":"#)),
            "invalid_backup",
            vec!["line 3", "eventId"],
        ),
        (
            with_third(&lines[2].replace(r#""op":"update""#, r#""op":"merge""#)),
            "invalid_backup",
            vec!["line 3", "op"],
        ),
        (
            with_third(&lines[2].replace(r#""schemaVersion":2"#, r#""schemaVersion":7"#)),
            "schema_version_too_new",
            vec!["line 3", "schemaVersion 7", "maximum 2"],
        ),
        (
            with_third(&lines[2].replace(r#""table":"tasks""#, r#""table":"""#)),
            "invalid_backup",
            vec!["line 3", "table"],
        ),
    ];
    for (body, code, needles) in cases {
        let (status, reply) = import(&target.server, "alice", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        let message = reply["error"]["message"].as_str().expect("message");
        for needle in needles {
            assert!(
                message.contains(needle),
                "`{message}` does not mention `{needle}`"
            );
        }
    }
    let mut not_utf8 = format!("{}\n", lines[0]).into_bytes();
    not_utf8.extend_from_slice(b"\xff\xfe\n");
    let (status, reply) = import(&target.server, "alice", not_utf8).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_backup"))
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .expect("message")
            .contains("line 2"),
        "{reply}"
    );
    assert!(
        export(&target.server, "alice").await.is_empty(),
        "nothing of a refused backup is stored"
    );
    // The good backup still goes in whole afterwards.
    let (status, report) = import(&target.server, "alice", backup).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"imported": 6, "skipped": 0}))
    );
}

async fn legacy_lines_are_carried_forward(h: Harness) {
    let legacy = concat!(
        r#"{"eventId":"0192a0f5-7d3c-7a1b-9c2d-000000000001","appId":"todo","table":"tasks","id":"t1","op":"insert","data":{"title":"From the old server"},"clientId":"old-web","createdAt":"2026-01-01T00:00:00Z"}"#,
        "\n",
        r#"{"eventId":"0192a0f5-7d3c-7a1b-9c2d-000000000002","appId":"todo","table":"tasks","id":"t1","op":"update","fields":{"done":{"value":true,"updatedAt":"2026-01-01T00:00:05Z"}},"clientId":"old-web","createdAt":"2026-01-01T00:00:06Z"}"#,
        "\n\n"
    );
    let (status, report) = import(&h.server, "alice", legacy).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"imported": 2, "skipped": 0}))
    );
    let (changes, _) = h
        .device("alice", "phone")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(
        changes[0]["eventId"],
        "0192a0f5-7d3c-7a1b-9c2d-000000000001"
    );
    assert_eq!(changes[0]["schemaVersion"], 1);
    assert_eq!(
        changes[1]["fields"]["done"],
        json!({"value": true, "updatedAt": "2026-01-01T00:00:05Z", "at": "2026-01-01T00:00:05Z"})
    );
}

async fn backups_are_per_user(h: Harness) {
    seed(&h).await;
    let bobs = export(&h.server, "bob").await;
    assert_eq!(bobs.lines().count(), 1);
    assert!(bobs.contains("bobs-secret") && !bobs.contains("Buy milk"));
    // Alice restoring Bob's backup gets a copy in her own history; Bob's
    // history is untouched, and dedup is per user.
    let (status, report) = import(&h.server, "alice", bobs.clone()).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"imported": 1, "skipped": 0}))
    );
    assert_eq!(export(&h.server, "bob").await, bobs);
    let http = mana_sync_testkit::http_client();
    for (method, path) in [
        (reqwest::Method::GET, "/backup/export"),
        (reqwest::Method::POST, "/backup/import"),
    ] {
        let response = http
            .request(method, h.server.at(path))
            .send()
            .await
            .expect("sent");
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{path} needs a token"
        );
    }
}

async fn restored_changes_reach_devices_like_any_other(h: Harness) {
    seed(&h).await;
    let backup = export(&h.server, "alice").await;
    let target = fresh(&h).await;
    // A device that wrote none of the restored changes hears all of them.
    let tablet = target.device("alice", "tablet");
    let mut stream = tablet.stream("todo", "tasks", START).await;
    stream.backlog(1).await;
    let mut socket =
        common::authenticating_socket(&target.server, "/ws/todo", &target.server.token("alice"))
            .await;
    let auth_ok = socket.next().await.expect("open").expect("frame");
    assert_eq!(
        auth_ok.into_text().expect("text").as_str(),
        r#"{"type":"auth-ok"}"#
    );

    let (status, _) = import(&target.server, "alice", backup).await;
    assert_eq!(status, StatusCode::OK);
    let mut live = Vec::new();
    while live.len() < 3 {
        let page = stream.next_changes().await;
        live.extend(
            page["changes"]
                .as_array()
                .expect("array")
                .iter()
                .map(|c| c["eventId"].clone()),
        );
    }
    assert_eq!(live.len(), 3, "the three task changes, once each");
    let notice: Value = loop {
        let frame = tokio::time::timeout(common::PROMPTLY, socket.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = frame {
            break serde_json::from_str(&text).expect("JSON");
        }
    };
    assert_eq!(notice["type"], "sync-available");
    assert_eq!(notice["appId"], "todo");
}

async fn the_operator_commands_round_trip_with_the_same_guarantees(h: Harness) {
    seed(&h).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("alice.ndjson");
    let run = |args: Vec<String>, database_url: String| async move {
        tokio::process::Command::new(common::BINARY)
            .args(args)
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("runs")
    };
    let exported = run(
        vec![
            "export".into(),
            "--user".into(),
            "alice".into(),
            "--out".into(),
            file.display().to_string(),
        ],
        h.server.database_url.clone(),
    )
    .await;
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert!(String::from_utf8_lossy(&exported.stderr).contains("exported 6 changes"));
    assert_eq!(
        std::fs::read_to_string(&file).expect("written"),
        export(&h.server, "alice").await
    );

    let target = fresh(&h).await;
    let import_args = vec![
        "import".into(),
        "--user".into(),
        "alice".into(),
        file.display().to_string(),
    ];
    let first = run(import_args.clone(), target.server.database_url.clone()).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "imported 6, skipped 0"
    );
    let second = run(import_args, target.server.database_url.clone()).await;
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        "imported 0, skipped 6"
    );
    assert_eq!(
        everything(&target.server, "alice").await,
        everything(&h.server, "alice").await
    );

    let broken = dir.path().join("broken.ndjson");
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str("{\"schemaVersion\":9}\n");
    std::fs::write(&broken, text).expect("written");
    let refused = run(
        vec![
            "import".into(),
            "--user".into(),
            "carol".into(),
            broken.display().to_string(),
        ],
        target.server.database_url.clone(),
    )
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("line 7") && stderr.contains("schemaVersion 9"),
        "{stderr}"
    );
    assert!(everything(&target.server, "carol").await.is_empty());
}

on_both_databases!(
    a_restore_into_a_fresh_server_gives_identical_pulls,
    importing_the_same_backup_twice_adds_nothing,
    every_refusal_names_the_line_and_stores_nothing,
    legacy_lines_are_carried_forward,
    backups_are_per_user,
    restored_changes_reach_devices_like_any_other,
    the_operator_commands_round_trip_with_the_same_guarantees,
);

#[tokio::test]
async fn a_backup_over_the_size_limit_is_413_and_stores_nothing() {
    let h = Harness::sqlite_with_env(&[("BACKUP_MAX_BYTES", "4096")]).await;
    let line = r#"{"eventId":"0192a0f5-7d3c-7a1b-9c2d-000000000001","appId":"todo","table":"tasks","id":"t1","op":"insert","data":{"title":"x"},"clientId":"c","createdAt":"2026-01-01T00:00:00Z"}"#;
    let many: String = (0..25)
        .map(|i| line.replace("000000000001", &format!("{i:012}")) + "\n")
        .collect();
    // Declared too large up front: refused before a byte of body is read.
    let address = h.server.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    let head = format!(
        "POST /backup/import HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: 10000000\r\n\r\n",
        h.server.token("alice")
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
        .await
        .expect("sent");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        common::PROMPTLY,
        tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut reply),
    )
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload_too_large"), "{reply}");
    // Found too large while streaming (no Content-Length): the whole body is
    // sent before the server answers, so the client reads the 413.
    let chunks = futures::stream::iter(
        many.into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, reply) = import(&h.server, "alice", reqwest::Body::wrap_stream(chunks)).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    assert!(export(&h.server, "alice").await.is_empty());
}
