//! The web app built into the binary: a copy of the binary, started from an
//! empty directory with no `WEB_DIR`, serves the app that `web/todo/dist`
//! held when it was compiled, with its content types, caching headers and
//! Content-Security-Policy. (`WEB_DIR` overriding it is `web.rs`: every test
//! there serves a directory of its own.)
//!
//! `make test` builds the app before `cargo test`; without it the binary
//! holds no app and answers `web_app_not_built`, which is checked instead
//! (and is a failure under `CI=true`, where the app must have been built).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::path::{Path, PathBuf};

use common::{assert_error, read};
use mana_sync_server::routes::CONTENT_SECURITY_POLICY;
use mana_sync_testkit::server::{ServerOptions, TestServer};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY as CSP, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
};

const PAGE: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The built app in the repository, as `make web` leaves it.
fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/todo/dist")
}

/// A copy of the binary alone in a directory of its own, started from
/// another empty directory (the test server's, which holds only its SQLite
/// file) with nothing in its environment but its port and database.
async fn lone_binary() -> (tempfile::TempDir, TestServer) {
    let alone = tempfile::tempdir().expect("temp dir");
    let binary = alone.path().join("mana-sync");
    std::fs::copy(common::BINARY, &binary).expect("binary copied");
    let server = TestServer::start(&binary, ServerOptions::default()).await;
    (alone, server)
}

async fn get(server: &TestServer, path: &str, accept: &str) -> reqwest::Response {
    mana_sync_testkit::http_client()
        .get(server.at(path))
        .header(ACCEPT, accept)
        .send()
        .await
        .expect("sent")
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// What every one of the app's files is sent with.
fn assert_app_headers(response: &reqwest::Response, path: &str) {
    assert_eq!(header(response, CSP), CONTENT_SECURITY_POLICY, "{path}");
    assert_eq!(
        header(response, X_CONTENT_TYPE_OPTIONS),
        "nosniff",
        "{path}"
    );
}

#[tokio::test]
async fn the_binary_alone_serves_the_app_it_was_built_with() {
    let dist = dist();
    let (_alone, server) = lone_binary().await;
    if !dist.join("index.html").is_file() {
        assert!(
            !mana_sync_testkit::in_ci(),
            "web/todo/dist is not built: run `make web` before the tests (`make test` does)"
        );
        eprintln!(
            "web/todo/dist is not built, so the binary holds no app: checking only its \
             `web_app_not_built` answer (run `make web`, then the tests again)"
        );
        let reply = read(get(&server, "/", PAGE).await).await;
        assert_error(
            &reply,
            StatusCode::NOT_FOUND,
            "web_app_not_built",
            "make web",
        );
        let (status, _) = read(get(&server, "/health", "*/*").await).await;
        assert_eq!(status, StatusCode::OK);
        return;
    }

    // index.html, byte for byte, never cached without asking.
    let built_index = std::fs::read(dist.join("index.html")).expect("built index");
    let index = get(&server, "/", PAGE).await;
    assert_eq!(index.status(), StatusCode::OK);
    assert_app_headers(&index, "/");
    assert!(header(&index, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&index, CACHE_CONTROL), "no-cache");
    assert_eq!(index.bytes().await.expect("body"), built_index);

    // The app's own routes get its index.html; the compat mode its own.
    let view = get(&server, "/lists/today", PAGE).await;
    assert_eq!(view.status(), StatusCode::OK);
    assert_app_headers(&view, "/lists/today");
    assert_eq!(view.bytes().await.expect("body"), built_index);
    let compat = get(&server, "/compat/", PAGE).await;
    assert_eq!(compat.status(), StatusCode::OK);
    assert_eq!(
        compat.bytes().await.expect("body"),
        std::fs::read(dist.join("compat/index.html")).expect("built compat page")
    );

    // Every hashed asset, with its type, cached for good.
    let mut types = Vec::new();
    for entry in std::fs::read_dir(dist.join("assets")).expect("assets") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("name");
        let path = format!("/assets/{name}");
        let asset = get(&server, &path, "*/*").await;
        assert_eq!(asset.status(), StatusCode::OK, "{path}");
        assert_app_headers(&asset, &path);
        assert_eq!(header(&asset, CACHE_CONTROL), IMMUTABLE, "{path}");
        let content_type = header(&asset, CONTENT_TYPE);
        if name.ends_with(".js") {
            assert!(
                content_type.contains("javascript"),
                "{path}: {content_type}"
            );
        } else if name.ends_with(".css") {
            assert!(
                content_type.starts_with("text/css"),
                "{path}: {content_type}"
            );
        }
        types.push(content_type);
        let expected = std::fs::read(dist.join("assets").join(&name)).expect("built asset");
        assert_eq!(asset.bytes().await.expect("body"), expected, "{path}");
    }
    assert!(
        types.iter().any(|t| t.contains("javascript")) && types.iter().any(|t| t == "text/css"),
        "the build has scripts and styles: {types:?}"
    );
    let icon = get(&server, "/favicon.svg", "image/*").await;
    assert_eq!(icon.status(), StatusCode::OK);
    assert_eq!(header(&icon, CONTENT_TYPE), "image/svg+xml");

    // A browser that has a file already is told so.
    let script = first_script(&dist);
    let first = get(&server, &script, "*/*").await;
    let etag = header(&first, ETAG);
    assert!(etag.starts_with('"'), "an ETag: {etag:?}");
    let again = mana_sync_testkit::http_client()
        .get(server.at(&script))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("sent");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        header(&again, CACHE_CONTROL),
        IMMUTABLE,
        "a 304 keeps the policy"
    );

    // HEAD: the length, no body.
    let head = mana_sync_testkit::http_client()
        .head(server.at("/"))
        .send()
        .await
        .expect("sent");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, CONTENT_LENGTH), built_index.len().to_string());

    // A missing file that is not a page, and the API's paths, stay JSON 404s.
    let missing = read(get(&server, "/assets/gone-123.js", "*/*").await).await;
    assert_error(
        &missing,
        StatusCode::NOT_FOUND,
        "not_found",
        "/assets/gone-123.js",
    );
    let api = read(get(&server, "/sync/todo/nothing/here", PAGE).await).await;
    assert_error(&api, StatusCode::NOT_FOUND, "not_found", "/sync/todo");
    // (Paths the client would not normalise: `..%2f` stays one segment.)
    for path in [
        "/..%2f..%2fCargo.toml",
        "/assets/..%2findex.html",
        "/.env",
        "/%2eenv",
    ] {
        let reply = read(get(&server, path, "*/*").await).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found", "");
    }
}

/// The path of a script of the build.
fn first_script(dist: &Path) -> String {
    std::fs::read_dir(dist.join("assets"))
        .expect("assets")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| name.ends_with(".js"))
        .map(|name| format!("/assets/{name}"))
        .expect("the build has a script")
}
