//! Who may hold a stream or a socket open, and until when: a socket must
//! authenticate promptly, a stream's token comes in a header or the query
//! (and is never logged), idle streams are kept alive, SIGTERM ends them
//! cleanly, and an expired token ends them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::Duration;

use common::{
    Device, EventStream, Harness, PROMPTLY, START, authenticating_socket, encode, ids, insert,
    next_message, open_socket, send_auth, wait_for_connections,
};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sockets_must_authenticate_promptly() {
    let h = Harness::sqlite_with_env(&[("WS_AUTH_TIMEOUT_SECS", "1")]).await;
    let cases = [
        (
            Some(json!({"type": "auth", "token": "not-a-jwt"})),
            "unauthorized",
        ),
        (Some(json!({"type": "ping"})), "unauthorized"),
        (None, "auth_timeout"),
    ];
    for (first, code) in cases {
        let mut socket = open_socket(&h.server, "/ws/todo").await;
        if let Some(first) = first {
            socket
                .send(Message::text(first.to_string()))
                .await
                .expect("sends");
        }
        let error = next_message(&mut socket).await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], code, "{error}");
        assert_eq!(next_message(&mut socket).await, json!({"closed": 1008}));
    }
    let http = mana_sync_testkit::http_client();
    let (status, body) = common::read(
        http.get(h.server.at("/ws/todo"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a plain GET is not an upgrade: {body}"
    );
    wait_for_connections(&h.server, 0, 0).await;
}

#[tokio::test]
async fn streams_need_a_token_in_the_header_or_the_query_and_never_log_it() {
    let h = Harness::sqlite_with_env(&[("RUST_LOG", "debug")]).await;
    let http = mana_sync_testkit::http_client();
    let token = h.server.token("alice");
    let url = |query: &str| {
        h.server.at(&format!(
            "/sync/todo/stream?collections=tasks&since={}{query}",
            encode(START)
        ))
    };
    let response = http
        .get(url(&format!("&token={token}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = EventStream::new(response);
    assert_eq!(stream.next_changes().await["table"], "tasks");
    for query in ["", "&token=", "&token=garbage"] {
        let (status, body) = common::read(http.get(url(query)).send().await.expect("sent")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{query}: {body}");
    }
    let since = encode(START);
    for (path, code) in [
        (
            format!("/sync/todo/stream?since={since}&collections="),
            "missing_parameter",
        ),
        (
            format!("/sync/todo/stream?since={since}&collections=a%00b"),
            "invalid_request",
        ),
        (
            "/sync/todo/stream?since=c1.0".to_owned(),
            "missing_parameter",
        ),
        (
            "/sync/todo/stream?collections=tasks&since=soon".to_owned(),
            "invalid_cursor",
        ),
    ] {
        let response = http
            .get(h.server.at(&path))
            .bearer_auth(&token)
            .send()
            .await
            .expect("sent");
        let (status, body) = common::read(response).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
    }
    h.server.wait_for_log("/sync/todo/stream", PROMPTLY).await;
    assert!(!h.server.logs().contains(&token), "the token was logged");
}

#[tokio::test]
async fn heartbeats_keep_idle_streams_alive() {
    let h = Harness::sqlite_with_env(&[("SSE_HEARTBEAT_SECS", "1")]).await;
    let mut stream = h
        .device("alice", "laptop")
        .stream("todo", "tasks", START)
        .await;
    stream.backlog(1).await;
    for _ in 0..2 {
        let (kind, data) = stream
            .next_within(Duration::from_secs(5))
            .await
            .expect("open");
        assert_eq!((kind.as_str(), data), ("heartbeat", json!({})));
    }
}

/// SIGTERM: the server stops accepting, ends streams cleanly, finishes the
/// push in flight, and exits successfully.
#[tokio::test]
async fn sigterm_ends_streams_and_finishes_the_push_in_flight() {
    let Harness { server, db } =
        Harness::sqlite_with_env(&[("RUST_LOG", "info,tower_http=debug")]).await;
    let h = Harness { server, db };
    let mut stream = h
        .device("alice", "laptop")
        .stream("todo", "tasks", START)
        .await;
    stream.backlog(1).await;

    // A push whose body is still arriving when SIGTERM comes.
    let body =
        json!({"clientId": "phone", "since": START, "changes": [insert("tasks", "in-flight")]})
            .to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let (send_rest, rest_rx) = tokio::sync::oneshot::channel::<()>();
    let (first, rest) = (first.to_owned(), rest.to_owned());
    let chunks = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures::stream::once(async move {
            let _ = rest_rx.await;
            Ok(rest)
        }),
    );
    let push = mana_sync_testkit::http_client()
        .post(h.server.at("/sync/todo"))
        .bearer_auth(h.server.token("alice"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let push = tokio::spawn(push);
    h.server
        .wait_for_log("started processing request", PROMPTLY)
        .await;
    h.server.wait_for_log("POST", PROMPTLY).await;

    let Harness { mut server, db } = h;
    let pid = server.pid().expect("running");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    assert!(stream.ended().await, "the stream ends cleanly");
    server.wait_for_log("shutting down", PROMPTLY).await;
    // No new connections once shutting down.
    let address = server.url.trim_start_matches("http://").to_owned();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting connections"
        );
    }
    send_rest.send(()).expect("push still waiting");
    let response = push
        .await
        .expect("joins")
        .expect("the push in flight is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let status = server.wait_exit(PROMPTLY).await;
    assert!(status.success(), "exit status {status}");

    // The push was stored.
    let restarted = common::server_on(server.database_url.clone()).await;
    let reader = Device {
        http: mana_sync_testkit::http_client(),
        base: restarted.url.clone(),
        token: restarted.token("alice"),
        client_id: "reader".into(),
    };
    let (changes, _) = reader.pull_all("todo", "tasks", START).await;
    assert_eq!(ids(&changes), ["in-flight"]);
    drop((db, server));
}

/// A stream and a socket opened with a token that then expires are told so
/// and ended; the token no longer opens anything.
#[tokio::test]
async fn streams_and_sockets_end_when_their_token_expires() {
    let h =
        Harness::sqlite_with_env(&[("JWT_LEEWAY_SECS", "0"), ("SSE_HEARTBEAT_SECS", "1")]).await;
    let token = h.server.token_with_ttl("alice", Duration::from_secs(3));
    let device = Device {
        token: token.clone(),
        ..h.device("alice", "laptop")
    };
    let mut stream = device.stream("todo", "tasks", START).await;
    stream.backlog(1).await;
    let mut socket = authenticating_socket(&h.server, "/ws", &token).await;
    assert_eq!(next_message(&mut socket).await, json!({"type": "auth-ok"}));
    // A second socket renews its token in-band before it expires.
    let mut renewed = open_socket(&h.server, "/ws").await;
    for fresh in [token.clone(), h.server.token("alice")] {
        send_auth(&mut renewed, &fresh).await;
        assert_eq!(next_message(&mut renewed).await, json!({"type": "auth-ok"}));
    }
    wait_for_connections(&h.server, 1, 2).await;

    let expired = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next_within(Duration::from_secs(10)).await {
                Some((kind, _)) if kind == "heartbeat" => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream is told before the deadline");
    let (kind, data) = expired.expect("an event before the end");
    assert_eq!(kind, "error");
    assert_eq!(data["error"]["code"], "token_expired", "{data}");
    assert!(stream.ended().await);

    let message = tokio::time::timeout(Duration::from_secs(10), next_message(&mut socket))
        .await
        .expect("the socket is told");
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["code"], "token_expired", "{message}");
    assert_eq!(next_message(&mut socket).await, json!({"closed": 1008}));
    // The renewed socket lives on; another user's token would not renew it.
    renewed
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("sends");
    assert_eq!(next_message(&mut renewed).await, json!({"type": "pong"}));
    send_auth(&mut renewed, &h.server.token("mallory")).await;
    assert_eq!(next_message(&mut renewed).await["code"], "unauthorized");
    assert_eq!(next_message(&mut renewed).await, json!({"closed": 1008}));
    wait_for_connections(&h.server, 0, 0).await;

    // Reconnecting with the expired token is refused; a fresh one works.
    let response = device
        .http
        .get(h.server.at("/sync/todo/stream?collections=tasks"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let mut fresh = h
        .device("alice", "laptop")
        .stream("todo", "tasks", START)
        .await;
    fresh.backlog(1).await;
}
