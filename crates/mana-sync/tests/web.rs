//! The web app at `/` (static files, fallback to `index.html`, the
//! Content-Security-Policy, a missing build) and dev-mode sign-in
//! (`/dev/config`, `/dev/token`: only in dev mode, only from this machine).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::path::Path;

use common::{Db, Harness, START, assert_error, read};
use mana_sync_server::routes::CONTENT_SECURITY_POLICY;
use mana_sync_testkit::server::ServerOptions;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY as CSP, CONTENT_TYPE, HOST};
use serde_json::{Value, json};

const PAGE: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const INDEX: &str = "<!doctype html><title>Todo</title><div id=\"app\"></div>";

/// A built app: `index.html`, a hashed asset, and a secret beside the directory.
fn built_app() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let dist = root.path().join("dist");
    std::fs::create_dir_all(dist.join("assets")).expect("dirs");
    std::fs::write(dist.join("index.html"), INDEX).expect("index");
    std::fs::write(dist.join("assets/index-abc123.js"), "console.log('todo')").expect("asset");
    std::fs::write(
        dist.join("favicon.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    )
    .expect("icon");
    std::fs::write(root.path().join("secret.txt"), "not for the web").expect("secret");
    root
}

async fn start(db: Db, jwt_secret: Option<&str>, web_dir: Option<&Path>) -> Option<Harness> {
    let mut env = Vec::new();
    if let Some(dir) = web_dir {
        env.push(("WEB_DIR".to_owned(), dir.display().to_string()));
    }
    Harness::start_with(
        db,
        ServerOptions {
            jwt_secret: jwt_secret.map(str::to_owned),
            env,
            ..ServerOptions::default()
        },
    )
    .await
}

async fn get(h: &Harness, path: &str, accept: &str) -> reqwest::Response {
    mana_sync_testkit::http_client()
        .get(h.server.at(path))
        .header(ACCEPT, accept)
        .send()
        .await
        .expect("sent")
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_app_is_served_at_the_root_with_its_policy() {
    let app = built_app();
    let h = start(Db::Sqlite, None, Some(&app.path().join("dist")))
        .await
        .expect("SQLite always starts");

    let index = get(&h, "/", PAGE).await;
    assert_eq!(index.status(), StatusCode::OK);
    assert!(header(&index, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&index, CSP), CONTENT_SECURITY_POLICY);
    assert!(CONTENT_SECURITY_POLICY.contains("connect-src 'self';"));
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    assert_eq!(header(&index, CACHE_CONTROL), "no-cache");
    assert_eq!(index.text().await.expect("body"), INDEX);

    let asset = get(&h, "/assets/index-abc123.js", "*/*").await;
    assert_eq!(asset.status(), StatusCode::OK);
    assert!(header(&asset, CONTENT_TYPE).contains("javascript"));
    assert_eq!(header(&asset, CSP), CONTENT_SECURITY_POLICY);
    assert!(header(&asset, CACHE_CONTROL).contains("immutable"));
    assert_eq!(
        get(&h, "/favicon.svg", "image/*").await.status(),
        StatusCode::OK
    );

    let head = mana_sync_testkit::http_client()
        .head(h.server.at("/"))
        .send()
        .await
        .expect("sent");
    assert_eq!(head.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_apps_own_routes_fall_back_to_index_html_and_api_paths_keep_json_404s() {
    let app = built_app();
    let h = start(Db::Sqlite, None, Some(&app.path().join("dist")))
        .await
        .expect("SQLite always starts");

    // A page the app routes itself.
    let view = get(&h, "/lists/today", PAGE).await;
    assert_eq!(view.status(), StatusCode::OK);
    assert_eq!(header(&view, CSP), CONTENT_SECURITY_POLICY);
    assert_eq!(view.text().await.expect("body"), INDEX);

    // A missing file that is not a page: a JSON 404, not the app.
    let missing = read(get(&h, "/assets/gone-123.js", "*/*").await).await;
    assert_error(
        &missing,
        StatusCode::NOT_FOUND,
        "not_found",
        "/assets/gone-123.js",
    );

    // The API's paths are never the app's, even when a browser asks for a page.
    for path in [
        "/sync",
        "/sync/todo/nothing/here",
        "/ws/todo/x",
        "/dev/config",
        "/metrics/x",
        "/health/x",
    ] {
        let reply = read(get(&h, path, PAGE).await).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found", path);
    }
    // …and the API still answers.
    let (status, body) = read(get(&h, "/health", PAGE).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    let (status, _) = read(
        get(
            &h,
            &format!("/sync/todo/pull?collection=tasks&since={START}"),
            PAGE,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Other methods on the app's paths: a JSON 404.
    let post = mana_sync_testkit::http_client()
        .post(h.server.at("/lists/today"))
        .body("x")
        .send()
        .await
        .expect("sent");
    assert_error(
        &read(post).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "/lists/today",
    );

    // Nothing outside the directory is reachable.
    for path in [
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
    ] {
        let response = get(&h, path, "*/*").await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert!(
            !body.contains("not for the web"),
            "{path} served the secret"
        );
        assert!(status.is_client_error(), "{path}: {status}");
    }
}

#[tokio::test]
async fn only_regular_files_inside_the_directory_are_served_and_no_dotfiles() {
    let app = built_app();
    let dist = app.path().join("dist");
    std::fs::write(dist.join(".env"), "JWT_SECRET=not for the web").expect("dotfile");
    std::fs::create_dir_all(dist.join(".git")).expect("dot dir");
    std::fs::write(dist.join(".git/config"), "not for the web").expect("git");
    std::fs::create_dir_all(dist.join("assets/.cache")).expect("nested dot dir");
    std::fs::write(dist.join("assets/.cache/x.js"), "not for the web").expect("cached");
    std::os::unix::fs::symlink("/", dist.join("rootlink")).expect("symlink to /");
    std::os::unix::fs::symlink(app.path().join("secret.txt"), dist.join("secret.txt"))
        .expect("symlink to a file outside");
    std::os::unix::fs::symlink(dist.join("favicon.svg"), dist.join("icon.svg"))
        .expect("symlink inside");
    let h = start(Db::Sqlite, None, Some(&dist))
        .await
        .expect("SQLite always starts");
    for path in [
        "/rootlink/etc/passwd",
        "/rootlink/etc/hostname",
        "/secret.txt",
        "/.env",
        "/.git/config",
        "/%2eenv",
        "/assets/.cache/x.js",
        "/assets/%2Ecache/x.js",
    ] {
        for accept in ["*/*", PAGE] {
            let response = get(&h, path, accept).await;
            let status = response.status();
            let body = response.text().await.expect("body");
            assert!(
                !body.contains("not for the web") && !body.contains("root:"),
                "{path} ({accept}) served what it must not: {body}"
            );
            if accept == PAGE {
                // A page request falls back to the app, never to the file.
                assert_eq!(status, StatusCode::OK, "{path}");
                assert_eq!(body, INDEX, "{path}");
            } else {
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            }
        }
    }
    // A link that stays inside the directory is an ordinary file.
    let icon = get(&h, "/icon.svg", "image/*").await;
    assert_eq!(icon.status(), StatusCode::OK);
    assert_eq!(
        get(&h, "/assets/index-abc123.js", "*/*").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn no_path_makes_the_file_server_fail() {
    let app = built_app();
    let h = start(Db::Sqlite, None, Some(&app.path().join("dist")))
        .await
        .expect("SQLite always starts");
    let http = mana_sync_testkit::http_client();
    for path in [
        "/%00",
        "/assets/%00",
        "/%00/x",
        "/a%00b.js",
        "/assets/index-abc123.js%00",
        "/%ff%fe",
        "/%c0%ae%c0%ae/secret.txt",
        "/assets/%5c..%5c..%5csecret.txt",
        "/con",
        "/assets/",
        "/assets",
        "//",
        "/./index.html",
    ] {
        for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
            for accept in ["*/*", PAGE] {
                let response = http
                    .request(method.clone(), h.server.at(path))
                    .header(ACCEPT, accept)
                    .send()
                    .await
                    .expect("sent");
                let status = response.status();
                assert!(
                    status.is_success() || status.is_client_error() || status.is_redirection(),
                    "{method} {path} ({accept}): {status}"
                );
                if method == reqwest::Method::GET && status.is_client_error() {
                    let (_, body) = read(response).await;
                    assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
                }
            }
        }
    }
    let logs = h.server.logs();
    assert!(
        !logs.contains("ERROR"),
        "no request is a server failure:\n{logs}"
    );
}

#[tokio::test]
async fn an_unbuilt_app_is_a_404_that_says_how_to_build_it() {
    let empty = tempfile::tempdir().expect("temp dir");
    let h = start(Db::Sqlite, None, Some(&empty.path().join("dist")))
        .await
        .expect("SQLite always starts");
    for accept in [PAGE, "*/*"] {
        let reply = read(get(&h, "/", accept).await).await;
        assert_error(
            &reply,
            StatusCode::NOT_FOUND,
            "web_app_not_built",
            "make web",
        );
    }
    let reply = read(get(&h, "/lists/today", PAGE).await).await;
    assert_error(
        &reply,
        StatusCode::NOT_FOUND,
        "web_app_not_built",
        "make web",
    );
    // What is not a page is simply not found.
    let reply = read(get(&h, "/nope", "*/*").await).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", "/nope");
    let (status, _) = read(get(&h, "/health", "*/*").await).await;
    assert_eq!(status, StatusCode::OK);
}

async fn mint(h: &Harness, body: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = mana_sync_testkit::http_client()
        .post(h.server.at("/dev/token"))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.send().await.expect("sent")).await
}

async fn dev_sign_in_mints_working_tokens(db: Db) {
    let Some(h) = start(db, Some(""), None).await else {
        return;
    };
    let (status, body) = read(get(&h, "/dev/config", "*/*").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "devMode": true }));

    let (status, body) = mint(&h, r#"{"user": "alice"}"#, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"], "alice");
    assert!(body["expiresIn"].as_u64().expect("ttl") > 0);
    let token = body["token"].as_str().expect("token");

    // The token is alice's: her pushes come back to her other devices.
    let http = mana_sync_testkit::http_client();
    let (status, body) = read(
        http.post(h.server.at("/sync/todo"))
            .bearer_auth(token)
            .header("x-client-id", "phone")
            .json(&json!({"since": START, "changes": [common::insert("tasks", "t1")]}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // (The test kit's tokens use its own secret; dev mode has the database's.)
    let mut laptop = h.device("alice", "laptop");
    laptop.token = mint(&h, r#"{"user": "alice"}"#, &[]).await.1["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (changes, _) = laptop.pull_all("todo", "tasks", START).await;
    assert_eq!(common::ids(&changes), ["t1"]);

    // Same-origin pages of this machine may ask; the method is POST only.
    let same_origin = h.server.url.clone();
    let (status, body) = mint(&h, r#"{"user": "bob"}"#, &[("origin", &same_origin)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = read(get(&h, "/dev/token", "*/*").await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

async fn dev_sign_in_refuses_bad_names_and_bodies(db: Db) {
    let Some(h) = start(db, Some(""), None).await else {
        return;
    };
    assert_error(
        &mint(&h, r#"{"user": ""}"#, &[]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "user",
    );
    assert_error(
        &mint(&h, r#"{"user": "a\u0000b"}"#, &[]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "control",
    );
    assert_error(
        &mint(&h, r#"{}"#, &[]).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "user",
    );
    assert_error(
        &mint(&h, r#"{"user": 7}"#, &[]).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "user",
    );
    assert_error(
        &mint(&h, r#"{"user": "a", "admin": true}"#, &[]).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "admin",
    );
    assert_error(
        &mint(&h, "alice", &[]).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "",
    );
    assert_error(
        &mint(&h, "", &[]).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "empty",
    );
}

async fn dev_sign_in_answers_only_this_machine(db: Db) {
    let Some(h) = start(db, Some(""), None).await else {
        return;
    };
    let body = r#"{"user": "alice"}"#;
    // Forwarded by a proxy on this machine: the caller may be anywhere.
    for forwarded in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let reply = mint(&h, body, &[(forwarded, "203.0.113.9")]).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "forbidden", "forwarded");
    }
    // A name that resolves here but is not a loopback name (DNS rebinding).
    let reply = mint(&h, body, &[(HOST.as_str(), "evil.example:3050")]).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden", "evil.example");
    // A page of another site, in the user's browser.
    let reply = mint(&h, body, &[("origin", "https://evil.example")]).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden", "evil.example");
    // Nothing was minted for any of them; the server logs no failure.
    assert!(
        !h.server.logs().contains("request failed"),
        "{}",
        h.server.logs()
    );
}

async fn without_dev_mode_the_dev_routes_do_not_exist(db: Db) {
    let Some(h) = start(db, None, None).await else {
        return;
    };
    let reply = read(get(&h, "/dev/config", "*/*").await).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", "/dev/config");
    let reply = mint(&h, r#"{"user": "alice"}"#, &[]).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", "/dev/token");
}

mod sqlite {
    use super::*;

    #[tokio::test]
    async fn dev_sign_in_mints_working_tokens() {
        super::dev_sign_in_mints_working_tokens(Db::Sqlite).await;
    }
    #[tokio::test]
    async fn dev_sign_in_refuses_bad_names_and_bodies() {
        super::dev_sign_in_refuses_bad_names_and_bodies(Db::Sqlite).await;
    }
    #[tokio::test]
    async fn dev_sign_in_answers_only_this_machine() {
        super::dev_sign_in_answers_only_this_machine(Db::Sqlite).await;
    }
    #[tokio::test]
    async fn without_dev_mode_the_dev_routes_do_not_exist() {
        super::without_dev_mode_the_dev_routes_do_not_exist(Db::Sqlite).await;
    }
}

// The dev-mode secret lives in the database, so minting is checked on both.
mod postgres {
    use super::*;

    #[tokio::test]
    async fn dev_sign_in_mints_working_tokens() {
        super::dev_sign_in_mints_working_tokens(Db::Postgres).await;
    }
    #[tokio::test]
    async fn without_dev_mode_the_dev_routes_do_not_exist() {
        super::without_dev_mode_the_dev_routes_do_not_exist(Db::Postgres).await;
    }
}
