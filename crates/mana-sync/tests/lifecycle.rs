//! Health, metrics, CORS, and what happens when the database goes away.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::Duration;

use common::{Db, Harness, PROMPTLY, START, insert};
use reqwest::StatusCode;
use serde_json::json;

async fn health_reports_the_store_and_open_connections(h: Harness) {
    let http = mana_sync_testkit::http_client();
    let (status, body) =
        common::read(http.get(h.server.at("/health")).send().await.expect("sent")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert!(
        body["store"] == "sqlite" || body["store"] == "postgres",
        "{body}"
    );
    assert_eq!(body["connections"], json!({"streams": 0, "sockets": 0}));
}

async fn metrics_count_requests_changes_and_latency(h: Harness) {
    let phone = h.device("alice", "phone");
    let (status, _) = phone
        .push(
            "todo",
            START,
            json!([insert("tasks", "1"), insert("tasks", "2")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.device("alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    let text = h.server.metrics().await;
    assert!(text.contains("mana_sync_changes_stored_total 2"), "{text}");
    assert!(
        text.contains("mana_sync_push_transactions_total 1"),
        "{text}"
    );
    assert!(
        text.contains("mana_sync_push_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("mana_sync_pull_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"mana_sync_http_requests_total{method="POST",route="/sync/{app_id}",status="200"} 1"#
        ),
        "{text}"
    );
}

on_both_databases!(
    health_reports_the_store_and_open_connections,
    metrics_count_requests_changes_and_latency,
);

#[tokio::test]
async fn cors_allows_exactly_the_configured_origins() {
    let h =
        Harness::sqlite_with_env(&[("CORS_ORIGINS", "https://app.example,https://other.example")])
            .await;
    let http = mana_sync_testkit::http_client();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, h.server.at("/sync/todo"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-client-id,x-sync-features",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("sent");
    let allowed_headers = allowed
        .headers()
        .get("access-control-allow-headers")
        .map(|v| v.to_str().unwrap_or_default().to_ascii_lowercase())
        .unwrap_or_default();
    for header in [
        "authorization",
        "content-type",
        "x-client-id",
        "x-sync-features",
    ] {
        assert!(
            allowed_headers.contains(header),
            "{header} in {allowed_headers}"
        );
    }
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("https://app.example")
    );
    let refused = preflight("https://evil.example").await.expect("sent");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn cors_origins_are_trimmed_and_normalised_and_non_origins_are_named() {
    let h = Harness::sqlite_with_env(&[(
        "CORS_ORIGINS",
        "https://a.example, https://b.example/ ,HTTPS://C.Example:443,https://d.example/app,d.example,",
    )]).await;
    let http = mana_sync_testkit::http_client();
    for (origin, allowed) in [
        ("https://a.example", true),
        ("https://b.example", true),
        ("https://c.example", true),
        ("https://d.example", false),
        ("https://evil.example", false),
    ] {
        let preflight = http
            .request(reqwest::Method::OPTIONS, h.server.at("/sync/todo"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .expect("sent");
        let echoed = preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert_eq!(echoed.is_some(), allowed, "{origin}: {echoed:?}");
        if allowed {
            assert_eq!(echoed.as_deref(), Some(origin));
        }
    }
    let logs = h.server.logs();
    for entry in ["https://d.example/app", "`d.example`"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("WARN") && l.contains("CORS_ORIGINS") && l.contains(entry)),
            "no warning naming {entry}:\n{logs}"
        );
    }
}

#[tokio::test]
async fn a_lost_database_is_503_not_500_and_health_says_so() {
    let Some(h) = Harness::start(Db::Postgres).await else {
        return;
    };
    let phone = h.device("alice", "phone");
    let (status, _) = phone
        .push("todo", START, json!([insert("tasks", "1")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let db = h.db.as_ref().expect("postgres");
    db.refuse_connections().await;
    db.end_sessions(None).await;
    let http = mana_sync_testkit::http_client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) =
            common::read(http.get(h.server.at("/health")).send().await.expect("sent")).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["status"], "unavailable");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never noticed: {body}"
        );
    }
    let (status, body) = phone
        .push("todo", START, json!([insert("tasks", "2")]))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    // Logged once, with the database's own code and message.
    h.server
        .wait_for_log("cannot listen for changes", PROMPTLY)
        .await;
    let logs = h.server.logs();
    let failures: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("/sync/todo") && line.contains("ERROR"))
        .collect();
    assert_eq!(failures.len(), 1, "one 503, one log line: {failures:#?}");
    assert!(failures[0].contains("42501"), "{}", failures[0]);
    for line in logs
        .lines()
        .filter(|l| l.contains("cannot listen for changes"))
    {
        assert!(
            line.contains("42501") && line.contains("permission denied"),
            "the database's code and message: {line}"
        );
    }
    db.accept_connections().await;
    let (status, body) = phone
        .push("todo", START, json!([insert("tasks", "2")]))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "recovers once the database is back: {body}"
    );
}
