//! Live delivery against the real binary: SSE streams, WebSockets, slow
//! consumers, disconnects; on SQLite and Postgres. (Access and shutdown are
//! in `live_access.rs`, several instances in `live_instances.rs`.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::Duration;

use common::{Harness, START, Socket, ids, insert, next_message, wait_for_connections};
use futures::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn changes_of(page: &Value) -> Vec<String> {
    ids(page["changes"].as_array().expect("changes array"))
}

async fn a_stream_sends_its_backlog_then_live_changes_but_never_the_devices_own(h: Harness) {
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");
    phone
        .push(
            "todo",
            START,
            json!([
                insert("tasks", "t1"),
                insert("lists", "l1"),
                insert("tasks", "t2")
            ]),
        )
        .await;
    let mut stream = laptop.stream("todo", "tasks,lists", START).await;
    let backlog = stream.backlog(2).await;
    assert_eq!(backlog[0]["table"], "tasks");
    assert_eq!(changes_of(&backlog[0]), ["t1", "t2"]);
    assert_eq!(backlog[1]["table"], "lists");
    assert_eq!(changes_of(&backlog[1]), ["l1"]);
    for page in &backlog {
        assert_eq!(page["hasMore"], false);
        common::assert_cursor(page["syncedUntil"].as_str().expect("cursor"));
    }

    // The laptop's own push is not echoed; the phone's next one arrives.
    let (status, _) = laptop
        .push("todo", START, json!([insert("tasks", "own")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    phone
        .push(
            "todo",
            START,
            json!([insert("tasks", "t3"), insert("tasks", "t4")]),
        )
        .await;
    let live = stream.next_changes().await;
    assert_eq!(live["table"], "tasks");
    assert_eq!(changes_of(&live), ["t3", "t4"]);
    phone
        .push("todo", START, json!([insert("lists", "l2")]))
        .await;
    let live = stream.next_changes().await;
    assert_eq!(
        (live["table"].as_str(), changes_of(&live)),
        (Some("lists"), vec!["l2".to_owned()])
    );
    // Another app, and another user, are not this stream's business.
    phone
        .push("notes", START, json!([insert("tasks", "other-app")]))
        .await;
    h.device("bob", "phone")
        .push("todo", START, json!([insert("tasks", "bobs")]))
        .await;
    phone
        .push("todo", START, json!([insert("tasks", "t5")]))
        .await;
    assert_eq!(changes_of(&stream.next_changes().await), ["t5"]);
    // What the stream delivered is what a pull from its cursor would not repeat.
    let cursor = live["syncedUntil"].as_str().expect("cursor");
    let (after, _) = laptop.pull_all("todo", "tasks", cursor).await;
    assert_eq!(ids(&after), ["t5"]);
}

async fn a_stream_opened_at_a_cursor_gets_exactly_what_came_after_it(h: Harness) {
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");
    phone
        .push("todo", START, json!([insert("tasks", "before")]))
        .await;
    let (_, cursor) = laptop.pull_all("todo", "tasks", START).await;
    phone
        .push("todo", START, json!([insert("tasks", "after")]))
        .await;
    let mut stream = laptop.stream("todo", "tasks", &cursor).await;
    let backlog = stream.backlog(1).await;
    assert_eq!(changes_of(&backlog[0]), ["after"]);
    // A cursor from the future (an old client's timestamp) starts at the end.
    let mut late = laptop
        .stream("todo", "tasks", "2999-01-01T00:00:00.000Z")
        .await;
    assert!(changes_of(&late.backlog(1).await[0]).is_empty());
    phone
        .push("todo", START, json!([insert("tasks", "live")]))
        .await;
    assert_eq!(changes_of(&late.next_changes().await), ["live"]);
    assert_eq!(changes_of(&stream.next_changes().await), ["live"]);
}

async fn the_backlog_comes_in_pages_of_at_most_1000_then_live(h: Harness) {
    let phone = h.device("alice", "phone");
    for batch in 0..5 {
        let changes: Vec<Value> = (0..500)
            .map(|i| insert("tasks", &format!("{:04}", batch * 500 + i)))
            .collect();
        phone.push("todo", START, json!(changes)).await;
    }
    let mut stream = h
        .device("alice", "laptop")
        .stream("todo", "tasks", START)
        .await;
    let pages = stream.backlog(1).await;
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p["changes"].as_array().expect("array").len())
        .collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    let all: Vec<String> = pages.iter().flat_map(changes_of).collect();
    assert_eq!(
        all,
        (0..2500).map(|i| format!("{i:04}")).collect::<Vec<_>>()
    );
    // A push larger than one page arrives live in order, in pages.
    let big: Vec<Value> = (0..1500)
        .map(|i| insert("tasks", &format!("big-{i:04}")))
        .collect();
    phone.push("todo", START, json!(big)).await;
    let mut live = Vec::new();
    while live.len() < 1500 {
        live.extend(changes_of(&stream.next_changes().await));
    }
    assert_eq!(
        live,
        (0..1500).map(|i| format!("big-{i:04}")).collect::<Vec<_>>()
    );
}

async fn many_streams_of_one_user_each_get_every_change_once(h: Harness) {
    let phone = h.device("alice", "phone");
    let mut streams = Vec::new();
    for n in 0..20 {
        let mut stream = h
            .device("alice", &format!("reader-{n}"))
            .stream("todo", "tasks", START)
            .await;
        stream.backlog(1).await;
        streams.push(stream);
    }
    for p in 0..10 {
        phone
            .push("todo", START, json!([insert("tasks", &format!("p{p}"))]))
            .await;
    }
    let expected: Vec<String> = (0..10).map(|p| format!("p{p}")).collect();
    for stream in &mut streams {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            got.extend(changes_of(&stream.next_changes().await));
        }
        assert_eq!(got, expected);
    }
}

async fn streams_and_sockets_are_freed_when_devices_disconnect(h: Harness) {
    let mut streams = Vec::new();
    for n in 0..30 {
        let mut stream = h
            .device("alice", &format!("d{n}"))
            .stream("todo", "tasks", START)
            .await;
        stream.backlog(1).await;
        streams.push(stream);
    }
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(open_socket(&h, "/ws/todo", &h.server.token("alice"), None).await);
    }
    wait_for_connections(&h.server, 30, 10).await;
    drop(streams);
    for mut socket in sockets {
        socket.close(None).await.expect("closes");
    }
    wait_for_connections(&h.server, 0, 0).await;
}

async fn a_slow_consumer_delays_nobody_and_misses_nothing(h: Harness) {
    let phone = h.device("alice", "phone");
    // A device that opens a stream and then does not read at all: the
    // unread body backs up into the server's socket.
    let mut stuck = h
        .device("alice", "stuck")
        .stream("todo", "tasks", START)
        .await;
    let mut healthy = h
        .device("alice", "healthy")
        .stream("todo", "tasks", START)
        .await;
    healthy.backlog(1).await;
    wait_for_connections(&h.server, 2, 0).await;

    // Enough data to fill the stuck connection's socket buffers many times,
    // in more pushes than a subscriber may have pending (so the stuck stream
    // must later re-read from its cursor).
    let filler = "x".repeat(4000);
    let mut expected = Vec::new();
    for p in 0..80 {
        let changes: Vec<Value> = (0..100)
            .map(|i| {
                let id = format!("p{p:02}-{i:03}");
                expected.push(id.clone());
                json!({"table": "tasks", "id": id, "op": "insert", "data": {"filler": filler}})
            })
            .collect();
        let started = tokio::time::Instant::now();
        let (status, _) = phone.push("todo", START, json!(changes)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a push waited on the stuck stream"
        );
        let mut got = Vec::new();
        while got.len() < 100 {
            got.extend(changes_of(&healthy.next_changes().await));
        }
        assert_eq!(got, expected[expected.len() - 100..]);
    }

    // The stuck device starts reading: it gets every change, once, in order.
    let mut received = changes_of(&stuck.backlog(1).await[0]);
    while received.len() < expected.len() {
        received.extend(changes_of(&stuck.next_changes().await));
    }
    let metrics = h.server.metrics().await;
    assert!(
        metrics.contains("mana_sync_live_overflows_total 1"),
        "the stuck stream fell behind and re-read from its cursor: {metrics}"
    );
    assert_eq!(received, expected);
}

async fn open_socket(h: &Harness, path: &str, token: &str, client_id: Option<&str>) -> Socket {
    let mut socket = common::open_socket(&h.server, path).await;
    let mut auth = json!({"type": "auth", "token": token});
    if let Some(client_id) = client_id {
        auth["clientId"] = json!(client_id);
    }
    socket
        .send(Message::text(auth.to_string()))
        .await
        .expect("sends");
    assert_eq!(next_message(&mut socket).await, json!({"type": "auth-ok"}));
    socket
}

async fn sockets_answer_pings_and_hear_other_devices_pushes(h: Harness) {
    let phone = h.device("alice", "phone");
    let token = h.server.token("alice");
    let mut todo = open_socket(&h, "/ws/todo", &token, Some("laptop")).await;
    let mut every_app = open_socket(&h, "/ws", &token, None).await;
    todo.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("sends");
    assert_eq!(next_message(&mut todo).await, json!({"type": "pong"}));

    // Own push (the socket said it is the laptop): no notice for the laptop.
    h.device("alice", "laptop")
        .push("todo", START, json!([insert("tasks", "own")]))
        .await;
    assert_eq!(
        next_message(&mut every_app).await,
        json!({"type": "sync-available", "appId": "todo", "tables": ["tasks"]})
    );
    phone
        .push("notes", START, json!([insert("pages", "n1")]))
        .await;
    assert_eq!(
        next_message(&mut every_app).await,
        json!({"type": "sync-available", "appId": "notes", "tables": ["pages"]})
    );
    phone
        .push(
            "todo",
            START,
            json!([insert("tasks", "t1"), insert("lists", "l1")]),
        )
        .await;
    // The first thing /ws/todo hears is the phone's todo push: not its own,
    // not the other app.
    assert_eq!(
        next_message(&mut todo).await,
        json!({"type": "sync-available", "appId": "todo", "tables": ["tasks", "lists"]})
    );
    todo.send(Message::text(r#"{"type":"dance"}"#))
        .await
        .expect("sends");
    assert_eq!(next_message(&mut todo).await["code"], "invalid_message");
    // Bob's push is not Alice's business.
    h.device("bob", "phone")
        .push("todo", START, json!([insert("tasks", "b")]))
        .await;
    todo.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("sends");
    assert_eq!(next_message(&mut todo).await, json!({"type": "pong"}));
}

/// `mana_sync_live_reads_total` from `/metrics`.
async fn live_reads(h: &Harness) -> u64 {
    h.server
        .metric("mana_sync_live_reads_total")
        .await
        .expect("the counter is exported as a number")
}

async fn catch_up_reads(h: &Harness) -> u64 {
    h.server
        .metric("mana_sync_live_catch_up_reads_total")
        .await
        .expect("the counter is exported as a number")
}

/// Pushes fan out to this instance's streams from what the push wrote, with
/// no read of the database, and what they deliver is what a pull returns,
/// field for field.
async fn fan_out_on_one_instance_reads_nothing_and_sends_what_a_pull_returns(h: Harness) {
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");
    let tablet = h.device("alice", "tablet");
    let mut streams = [
        laptop.stream("todo", "tasks", START).await,
        tablet.stream("todo", "tasks", START).await,
    ];
    for stream in &mut streams {
        stream.backlog(1).await;
    }
    let before = live_reads(&h).await;
    let pushes = [
        json!([insert("tasks", "t1"), insert("tasks", "t2")]),
        json!([{ "table": "tasks", "id": "t1", "op": "update", "actor": {"name": "Ann"},
                 "fields": { "title": { "value": "Oat milk", "updatedAt": "2026-11-30T03:00:00.000Z" },
                             "done": { "value": true, "updatedAt": "2026-11-30T03:00:01.000Z" } } }]),
        json!([{ "table": "tasks", "id": "t2", "op": "delete", "deletedAt": "2026-11-30T03:00:02.000Z" }]),
    ];
    for changes in pushes {
        let (status, _) = phone.push("todo", START, changes).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (pulled, _) = h
        .device("alice", "desktop")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(pulled.len(), 4);
    for stream in &mut streams {
        let mut streamed: Vec<Value> = Vec::new();
        while streamed.len() < pulled.len() {
            let page = stream.next_changes().await;
            streamed.extend(page["changes"].as_array().expect("changes").iter().cloned());
        }
        assert_eq!(streamed, pulled);
    }
    assert_eq!(
        live_reads(&h).await,
        before,
        "the streams were served from the pushes, not from the database"
    );
}

/// A device's own push does not wake its stream (it never receives its own
/// changes); the stream only moves its cursor past it when something else
/// wakes it. However long that takes, here while another user's pushes
/// outrun the batches the hub keeps, it costs the stream no read, and the
/// next change of another device arrives alone.
async fn a_devices_own_pushes_cost_its_stream_no_read(h: Harness) {
    let laptop = h.device("alice", "laptop");
    let mut stream = laptop.stream("todo", "tasks", START).await;
    stream.backlog(1).await;
    let before = catch_up_reads(&h).await;
    for n in 0..3 {
        let (status, _) = laptop
            .push("todo", START, json!([insert("tasks", &format!("own-{n}"))]))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let bob = h.device("bob", "phone");
    for n in 0..70 {
        let (status, _) = bob
            .push(
                "todo",
                START,
                json!([insert("tasks", &format!("bobs-{n}"))]),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    h.device("alice", "phone")
        .push("todo", START, json!([insert("tasks", "t1")]))
        .await;
    assert_eq!(changes_of(&stream.next_changes().await), ["t1"]);
    assert_eq!(
        catch_up_reads(&h).await,
        before,
        "the stream passed its own pushes without reading the log"
    );
}

on_both_databases!(
    a_stream_sends_its_backlog_then_live_changes_but_never_the_devices_own,
    a_stream_opened_at_a_cursor_gets_exactly_what_came_after_it,
    the_backlog_comes_in_pages_of_at_most_1000_then_live,
    many_streams_of_one_user_each_get_every_change_once,
    streams_and_sockets_are_freed_when_devices_disconnect,
    a_slow_consumer_delays_nobody_and_misses_nothing,
    sockets_answer_pings_and_hear_other_devices_pushes,
    fan_out_on_one_instance_reads_nothing_and_sends_what_a_pull_returns,
    a_devices_own_pushes_cost_its_stream_no_read,
);
