//! Nobody without a token can exhaust the server, and no user can starve the
//! others: WebSocket floods and oversized frames, silent and slow
//! connections, file-descriptor exhaustion, per-user caps on streams and
//! sockets, the server-wide reserve, `/metrics` cardinality and early 413s.
//!
//! These attack the server from outside, speaking raw TCP where a polite
//! client library would not misbehave. None of them depends on the
//! database, so they run on SQLite.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::Duration;

use common::{Harness, PROMPTLY, START, wait_for_connections};
use futures::{SinkExt as _, StreamExt as _};
use mana_sync_testkit::server::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

fn address(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(address(server)).await.expect("connects")
}

/// Reads until the end of the response head; `None` if the connection ends
/// first or nothing comes before `deadline`.
async fn response_head(socket: &mut TcpStream, deadline: Duration) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(deadline, async {
        while !head.ends_with(b"\r\n\r\n") {
            match socket.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    })
    .await;
    matches!(read, Ok(true)).then(|| String::from_utf8_lossy(&head).into_owned())
}

/// Whether the server closes `socket` (EOF or reset) before `deadline`,
/// reading and counting whatever it sends meanwhile.
async fn closed_within(socket: &mut TcpStream, deadline: Duration) -> Option<usize> {
    let mut buffer = vec![0_u8; 64 * 1024];
    let mut total = 0;
    tokio::time::timeout(deadline, async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .ok()
}

/// Opens `GET /ws` by hand: nothing is read after the handshake unless the
/// test does so itself.
async fn raw_socket(server: &TestServer) -> TcpStream {
    let mut socket = connect(server).await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        address(server)
    );
    socket.write_all(request.as_bytes()).await.expect("writes");
    let head = response_head(&mut socket, PROMPTLY)
        .await
        .expect("handshake answered");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    socket
}

/// A masked client frame with `payload_len` bytes of payload (`payload`
/// holds the first bytes; the rest is sent separately by the caller).
fn frame_header(opcode: u8, payload_len: u64) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload_len {
        0..=125 => frame.push(0x80 | payload_len as u8),
        126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&payload_len.to_be_bytes());
        }
    }
    frame.extend_from_slice(&[1, 2, 3, 4]); // the mask
    frame
}

const MIB: u64 = 1024;

/// Growth of the server's resident memory since `baseline`, in MiB.
fn grown_mib(server: &TestServer, baseline: u64) -> u64 {
    server.resident_kib().saturating_sub(baseline) / MIB
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_floods_pings_and_never_reads_costs_bounded_memory_and_is_closed() {
    let h = Harness::sqlite_with_env(&[("WS_AUTH_TIMEOUT_SECS", "2")]).await;
    let baseline = h.server.resident_kib();
    let mut socket = raw_socket(&h.server).await;
    // 8,000 pings of 125 bytes per write, for a second and a half: the
    // server must answer each with a pong, but this client never reads one.
    let mut pings = Vec::new();
    for _ in 0..8000 {
        pings.extend(frame_header(0x9, 125));
        pings.extend([0_u8; 125]);
    }
    let flooding = Instant::now();
    let mut sent = 0_usize;
    let mut peak = 0;
    while flooding.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(Duration::from_millis(200), socket.write_all(&pings)).await {
            Ok(Ok(())) => sent += pings.len(),
            Ok(Err(_)) => break, // closed by the server: fine
            Err(_) => {}         // the server stopped reading: fine too
        }
        peak = peak.max(grown_mib(&h.server, baseline));
    }
    assert!(sent > 0, "nothing was sent");
    peak = peak.max(grown_mib(&h.server, baseline));
    assert!(
        peak < 32,
        "{peak} MiB grew for {} MiB of pings never read",
        sent >> 20
    );
    // It never authenticated and never read: the server closes it without
    // having queued more than a little.
    let drained = closed_within(&mut socket, Duration::from_secs(15))
        .await
        .expect("the server closes the socket");
    assert!(drained < 8 << 20, "{drained} bytes were queued for it");
    // And the server still answers.
    let status = mana_sync_testkit::http_client()
        .get(h.server.at("/health"))
        .send()
        .await
        .expect("health")
        .status();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sockets_cannot_make_the_server_buffer_large_frames() {
    let h = Harness::sqlite_with_env(&[]).await;
    let baseline = h.server.resident_kib();
    let chunk = vec![0_u8; 1 << 20];
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(raw_socket(&h.server).await);
    }
    let mut peak = 0;
    let mut refused = 0;
    for socket in &mut sockets {
        // The header of a 16 MB frame, then 15 MB of it.
        let mut accepted = true;
        let header = frame_header(0x2, 16_000_000);
        if socket.write_all(&header).await.is_err() {
            accepted = false;
        }
        for _ in 0..15 {
            if !accepted {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(2), socket.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => accepted = false,
            }
        }
        if !accepted {
            refused += 1;
        }
        peak = peak.max(grown_mib(&h.server, baseline));
    }
    assert!(
        peak < 32,
        "{peak} MiB grew for 8 unauthenticated partial frames"
    );
    assert_eq!(refused, 8, "every oversized frame is refused at its header");
    for socket in &mut sockets {
        assert!(
            closed_within(socket, PROMPTLY).await.is_some(),
            "the socket is closed"
        );
    }
    // A real client still gets in, authenticates and pings.
    let mut socket =
        common::authenticating_socket(&h.server, "/ws", &h.server.token("alice")).await;
    let reply = socket.next().await.expect("open").expect("frame");
    assert_eq!(reply, Message::text(r#"{"type":"auth-ok"}"#));
    // After auth a message far larger than any the protocol has is refused
    // too: the socket is closed with 1009 (message too big). 32 KiB, twice
    // the limit, is written whole at once (a new connection's window is
    // 64 KiB): the server reads only its header, so the 1 MiB this test
    // used to send could still be being written when the server closed,
    // and the write failed on the reset (once in a full CI run).
    socket
        .send(Message::text("x".repeat(32 * 1024)))
        .await
        .expect("sends");
    let closed = tokio::time::timeout(PROMPTLY, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_header_timeout() {
    let h = Harness::sqlite_with_env(&[("HEADER_TIMEOUT_SECS", "1")]).await;
    // Never sends a byte.
    let mut silent = connect(&h.server).await;
    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection that never sent a byte is still open"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Sends half a request head.
    let mut slow = connect(&h.server).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writes");
    assert!(
        closed_within(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection that never finished its request head is still open"
    );
    // Asks once, then stays silent on the kept-alive connection.
    let mut idle = connect(&h.server).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("writes");
    let head = response_head(&mut idle, PROMPTLY).await.expect("answered");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle kept-alive connection is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_answered_408_and_closed() {
    let h = Harness::sqlite_with_env(&[("BODY_TIMEOUT_SECS", "1")]).await;
    for (path, token) in [
        ("/sync/todo", h.server.token("alice")),
        ("/backup/import", h.server.token("alice")),
    ] {
        let mut socket = connect(&h.server).await;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        socket.write_all(request.as_bytes()).await.expect("writes");
        let head = response_head(&mut socket, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{path}: no answer while the body stalls"));
        assert!(head.starts_with("HTTP/1.1 408"), "{path}: {head}");
        let mut body = Vec::new();
        let _ = tokio::time::timeout(PROMPTLY, socket.read_to_end(&mut body)).await;
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("request_timeout"), "{path}: {body}");
    }
    // Nothing was stored.
    let (changes, _) = h
        .device("alice", "other")
        .pull_all("todo", "tasks", START)
        .await;
    assert!(changes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_use_up_the_file_descriptors() {
    // A small machine: 256 open files. The header timeout is long, so only
    // the connection budget can keep the server reachable.
    let h = Harness::sqlite_with(
        &[("HEADER_TIMEOUT_SECS", "60")],
        ServerOptions {
            max_open_files: Some(256),
            ..ServerOptions::default()
        },
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(connect(&h.server).await);
    }
    // Everyone else still gets in: health checks, and a new user's push.
    let http = mana_sync_testkit::http_client();
    let health = tokio::time::timeout(PROMPTLY, http.get(h.server.at("/health")).send())
        .await
        .expect("/health answers while 300 connections sit silent")
        .expect("sent");
    assert_eq!(health.status(), StatusCode::OK);
    let (status, body) = tokio::time::timeout(
        PROMPTLY,
        h.device("newcomer", "phone")
            .push("todo", START, json!([common::insert("tasks", "1")])),
    )
    .await
    .expect("a push answers while 300 connections sit silent");
    assert_eq!(status, StatusCode::OK, "{body}");
    // The silent ones made room: the oldest were closed.
    assert!(
        closed_within(&mut silent[0], PROMPTLY).await.is_some(),
        "the oldest silent connection is still open"
    );
    // The limit is logged at start-up, with the connections it allows.
    h.server.wait_for_log("open file limit", PROMPTLY).await;
}

async fn open_stream(h: &Harness, user: &str, device: &str) -> reqwest::Response {
    let token = h.server.token(user);
    mana_sync_testkit::http_client()
        .get(h.server.at(&format!(
            "/sync/todo/stream?collections=tasks&since={}",
            common::encode(START)
        )))
        .bearer_auth(token)
        .header("x-client-id", device)
        .send()
        .await
        .expect("sent")
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    common::read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_open_more_than_its_share_of_streams_and_sockets() {
    let h = Harness::sqlite_with_env(&[("MAX_LIVE_PER_USER", "3")]).await;
    let mut open = Vec::new();
    for n in 0..3 {
        let response = open_stream(&h, "alice", &format!("d{n}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        open.push(common::EventStream::new(response));
    }
    for stream in &mut open {
        stream.backlog(1).await;
    }
    let refused = open_stream(&h, "alice", "d3").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("5".to_owned())
    );
    let reply = error_of(refused).await;
    common::assert_error(
        &reply,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        "3",
    );
    // A socket counts too: it is told why, then closed.
    let mut socket =
        common::authenticating_socket(&h.server, "/ws", &h.server.token("alice")).await;
    let reply = socket.next().await.expect("open").expect("frame");
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["code"], "too_many_connections", "{reply}");
    let closed = socket.next().await.expect("open").expect("frame");
    assert!(
        matches!(closed, Message::Close(Some(ref frame)) if u16::from(frame.code) == 1013),
        "{closed:?}"
    );
    // Other users are not affected.
    let bob = open_stream(&h, "bob", "d0").await;
    assert_eq!(bob.status(), StatusCode::OK);
    // Closing one of Alice's streams makes room for another.
    drop(open.pop());
    wait_for_connections(&h.server, 3, 0).await;
    let again = open_stream(&h, "alice", "d4").await;
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_sockets_leave_a_reserve_for_everyone_else() {
    // 20 connections: streams and sockets of all users may hold 18.
    let h =
        Harness::sqlite_with_env(&[("MAX_CONNECTIONS", "20"), ("MAX_LIVE_PER_USER", "100")]).await;
    let mut open = Vec::new();
    for n in 0..18 {
        let response = open_stream(&h, &format!("user{n}"), "d").await;
        assert_eq!(response.status(), StatusCode::OK, "stream {n}");
        open.push(response);
    }
    let late = open_stream(&h, "late", "d").await;
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reply = error_of(late).await;
    common::assert_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "server_busy",
        "streams",
    );
    // Health checks and pushes still get in.
    let health = mana_sync_testkit::http_client()
        .get(h.server.at("/health"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), StatusCode::OK);
    let (status, _) = h
        .device("late", "phone")
        .push("todo", START, json!([common::insert("tasks", "1")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !h.server.logs().contains("request failed"),
        "a full server is not a failure: {}",
        h.server.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let h = Harness::sqlite_with_env(&[]).await;
    let http = mana_sync_testkit::http_client();
    let before = h.server.metrics().await;
    for n in 0..300 {
        let method = format!("M{n:04}{}", "X".repeat(1000));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("token");
        let response = http
            .request(method, h.server.at(&format!("/made/up/{n}")))
            .send()
            .await
            .expect("sent");
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let after = h.server.metrics().await;
    assert!(!after.contains("XXXX"), "made-up methods became labels");
    assert!(
        after.len() < before.len() + 2048,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        after.contains(r#"method="other",route="unmatched""#),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_413_before_the_body_is_sent() {
    let h = Harness::sqlite_with_env(&[("BACKUP_MAX_BYTES", "1000")]).await;
    let token = h.server.token("alice");
    for (path, length) in [
        ("/sync/todo", 11 * 1024 * 1024),
        ("/backup/import", 1001),
        ("/dev/token", 11 * 1024 * 1024),
        ("/health", 11 * 1024 * 1024),
    ] {
        let mut socket = connect(&h.server).await;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await.expect("writes");
        let head = response_head(&mut socket, PROMPTLY)
            .await
            .unwrap_or_else(|| panic!("{path}: no answer before the body"));
        assert!(head.starts_with("HTTP/1.1 413"), "{path}: {head}");
    }
}
