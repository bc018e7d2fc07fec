//! The API description as the real server serves it: `GET /openapi.json`
//! needs no token and is the committed `docs/openapi.json` (which
//! `crates/server/tests/openapi.rs` keeps equal to the generated one), the
//! `mana-sync openapi` command prints the same, and every operation it
//! describes is routed by the server (none is the router's 404 or 405).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{BINARY, Db, Harness, read};
use mana_sync_testkit::server::ServerOptions;
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
    let h = Harness::start_with(
        Db::Sqlite,
        ServerOptions {
            jwt_secret: Some(String::new()),
            ..ServerOptions::default()
        },
    )
    .await
    .expect("SQLite always starts");
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
