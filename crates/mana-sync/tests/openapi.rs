//! The API description as the real server serves it: `GET /openapi.json`
//! needs no token and is the committed `docs/openapi.json` (which
//! `crates/server/tests/openapi.rs` keeps equal to the generated one), the
//! `mana-sync openapi` command prints the same, and every operation it
//! describes is routed by the server (none is the router's 404 or 405).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{BINARY, Db, Harness, read};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

fn committed() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    std::fs::read_to_string(path).expect("docs/openapi.json")
}

#[tokio::test]
async fn the_served_description_is_the_committed_one_and_names_only_real_routes() {
    // Dev mode, so that the dev-only operations exist too.
    let h = Harness::sqlite_in_dev_mode().await;
    let http = mana_sync_testkit::http_client();
    let served = http
        .get(h.server.at("/openapi.json"))
        .send()
        .await
        .expect("sent");
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(
        served
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let served = served.text().await.expect("body");
    assert!(
        served == committed(),
        "GET /openapi.json differs from docs/openapi.json: regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p mana-sync-server --test openapi`"
    );
    let printed = std::process::Command::new(BINARY)
        .arg("openapi")
        .output()
        .expect("mana-sync openapi runs");
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).expect("UTF-8"), served);

    let document: Value = serde_json::from_str(&served).expect("JSON");
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{appId}", "todo")
            .replace("{spaceId}", "no-such-space")
            .replace("{userId}", "bob");
        for method in item.as_object().expect("path item").keys() {
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            // No token and no body: whatever the answer, it is the
            // operation's own, not the router's "no such route".
            let (status, body) = read(
                http.request(method.clone(), h.server.at(&concrete))
                    .send()
                    .await
                    .expect("sent"),
            )
            .await;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
            assert!(
                !(status == StatusCode::NOT_FOUND && body["error"]["code"] == "not_found"),
                "{method} {path} is described but not routed: {body}"
            );
            assert!(
                !status.is_server_error(),
                "{method} {path}: {status} {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 17, "only {checked} operations");
}

/// A validator for the component `name` of `document` (its `$ref`s resolve
/// within the document).
fn schema(document: &Value, name: &str) -> jsonschema::Validator {
    let root = serde_json::json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    jsonschema::draft202012::new(&root).expect("a valid schema")
}

#[track_caller]
fn assert_valid(document: &Value, name: &str, instance: &Value) {
    let validator = schema(document, name);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{instance} is not a {name}: {errors:?}");
}

#[tokio::test]
async fn real_replies_are_what_the_description_says() {
    let document: Value = serde_json::from_str(&committed()).expect("JSON");
    let h = Harness::start(Db::Sqlite)
        .await
        .expect("SQLite always starts");
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");

    // Push, with an insert, an update and a delete.
    let (status, pushed) = phone
        .push(
            "todo",
            common::START,
            serde_json::json!([
                common::insert("tasks", "t1"),
                {"table": "tasks", "id": "t1", "op": "update", "actor": {"kind": "user"},
                 "fields": {"done": {"value": true, "updatedAt": "2026-11-30T00:00:00.000Z"}}},
                {"table": "tasks", "id": "t2", "op": "delete", "deletedAt": "2026-11-30T00:00:01.000Z"},
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pushed}");
    assert_valid(&document, "PushResponse", &pushed);

    // The other device pulls them: every op's shape.
    let (status, pulled) = laptop
        .pull(
            "todo",
            &format!("collection=tasks&since={}", common::encode(common::START)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pulled}");
    assert_eq!(
        pulled["serverChanges"].as_array().expect("changes").len(),
        3
    );
    assert_valid(&document, "PushResponse", &pulled);

    // The stream's `changes` event.
    let mut stream = laptop.stream("todo", "tasks", common::START).await;
    let page = stream.next_changes().await;
    assert_valid(&document, "StreamChanges", &page);

    // Errors.
    let (status, refused) = phone.push("todo", "yesterday", serde_json::json!([])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_valid(&document, "ErrorBody", &refused);
    let http = mana_sync_testkit::http_client();
    let (status, unauthorized) =
        read(http.get(h.server.at("/spaces")).send().await.expect("sent")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_valid(&document, "ErrorBody", &unauthorized);

    // Spaces, backups, health.
    let (status, space) = read(
        http.post(h.server.at("/spaces"))
            .bearer_auth(&phone.token)
            .json(&serde_json::json!({"name": "Home"}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{space}");
    assert_valid(&document, "SpaceView", &space);
    let (_, spaces) = read(
        http.get(h.server.at("/spaces"))
            .bearer_auth(&phone.token)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_valid(&document, "SpaceList", &spaces);
    let backup = common::export(&h.server, "alice").await;
    for line in backup.lines() {
        assert_valid(
            &document,
            "BackupLine",
            &serde_json::from_str(line).expect("a line"),
        );
    }
    let (status, report) = read(
        http.post(h.server.at("/backup/import"))
            .bearer_auth(&phone.token)
            .body(backup)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_valid(&document, "ImportReport", &report);
    let (_, health) = read(http.get(h.server.at("/health")).send().await.expect("sent")).await;
    assert_valid(&document, "Health", &health);

    // What is not valid is refused: the schemas are not empty.
    assert!(!schema(&document, "PushResponse").is_valid(&serde_json::json!({"serverChanges": 1})));
    assert!(!schema(&document, "ErrorBody").is_valid(&serde_json::json!({"error": "x"})));
}
