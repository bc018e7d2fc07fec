//! The committed API description (`docs/openapi.json`) is the one the server
//! generates from its handlers and wire types, so a change of the API that
//! is not committed there fails here.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

use std::path::PathBuf;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_committed_description_is_the_generated_one() {
    let generated = mana_sync_server::openapi::json();
    let path = committed();
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("docs/openapi.json written");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the description the server generates (GET /openapi.json). \
         The API changed: regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p mana-sync-server --test openapi` \
         (or `cargo run -p mana-sync -- openapi > docs/openapi.json`), review the diff, and commit it."
    );
}

#[test]
fn the_description_is_openapi_3_1_with_every_operation() {
    let document: serde_json::Value =
        serde_json::from_str(&mana_sync_server::openapi::json()).expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let operations: Vec<String> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    for operation in [
        "POST /sync/{appId}",
        "GET /sync/{appId}/pull",
        "GET /sync/{appId}/stream",
        "GET /ws",
        "GET /ws/{appId}",
        "GET /spaces",
        "POST /spaces",
        "GET /spaces/{spaceId}",
        "PUT /spaces/{spaceId}/members/{userId}",
        "DELETE /spaces/{spaceId}/members/{userId}",
        "GET /backup/export",
        "POST /backup/import",
        "GET /health",
        "GET /metrics",
        "GET /dev/config",
        "POST /dev/token",
        "GET /openapi.json",
    ] {
        assert!(
            operations.iter().any(|o| o == operation),
            "{operation} missing: {operations:?}"
        );
    }
    // Every error reply is the one error shape.
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') && path != "/health" {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let bearer = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");
}
