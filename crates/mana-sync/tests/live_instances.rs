//! Live delivery across instances on one Postgres database: a push on one
//! instance reaches streams and sockets on another, and streams catch up
//! after the listener loses Postgres or every connection is dropped. (Lost
//! notices, crashed instances and NATS are in `catch_up.rs`.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Device, EventStream, Harness, PROMPTLY, START, ids, insert, next_message};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn changes_of(page: &Value) -> Vec<String> {
    ids(page["changes"].as_array().expect("changes array"))
}

#[tokio::test]
async fn a_push_on_one_instance_reaches_streams_and_sockets_on_another() {
    let Some(h) = Harness::start(common::Db::Postgres).await else {
        return;
    };
    let other = h.instance(Vec::new()).await;
    let phone = h.device("alice", "phone");
    let laptop = Device::on(&other, "alice", "laptop");
    let mut stream = laptop.stream("todo", "tasks", START).await;
    stream.backlog(1).await;
    let mut socket = common::authenticating_socket(&other, "/ws/todo", &other.token("alice")).await;
    assert_eq!(next_message(&mut socket).await, json!({"type": "auth-ok"}));
    for n in 0..5 {
        phone
            .push(
                "todo",
                START,
                json!([insert("tasks", &format!("from-1-{n}"))]),
            )
            .await;
        assert_eq!(
            changes_of(&stream.next_changes().await),
            [format!("from-1-{n}")]
        );
        assert_eq!(
            next_message(&mut socket).await,
            json!({"type": "sync-available", "appId": "todo", "tables": ["tasks"]})
        );
    }
    // And the other way round.
    let mut back = h
        .device("alice", "tablet")
        .stream("todo", "tasks", START)
        .await;
    back.backlog(1).await;
    laptop
        .push("todo", START, json!([insert("tasks", "from-2")]))
        .await;
    assert_eq!(changes_of(&back.next_changes().await), ["from-2"]);
}

/// Two instances on one Postgres database, a stream of the laptop on the
/// second, and the phone that pushes through the first.
async fn two_instances_with_a_stream() -> Option<(
    Harness,
    mana_sync_testkit::server::TestServer,
    Device,
    EventStream,
)> {
    let h = Harness::start(common::Db::Postgres).await?;
    let other = h.instance(Vec::new()).await;
    let phone = h.device("alice", "phone");
    let mut stream = Device::on(&other, "alice", "laptop")
        .stream("todo", "tasks", START)
        .await;
    stream.backlog(1).await;
    Some((h, other, phone, stream))
}

/// The listener of an instance loses Postgres (as in a restart) and cannot
/// reconnect for a while; a push committed meanwhile is announced to nobody.
/// Once the listener is back, the stream catches up from its cursor.
#[tokio::test]
async fn streams_catch_up_with_what_was_committed_while_postgres_was_away() {
    let Some((h, other, phone, mut stream)) = two_instances_with_a_stream().await else {
        return;
    };
    phone
        .push("todo", START, json!([insert("tasks", "before")]))
        .await;
    assert_eq!(changes_of(&stream.next_changes().await), ["before"]);
    // Nothing may connect, and every listener is cut off. The pushing
    // instance keeps the pool connection it already has.
    let db = h.db.as_ref().expect("postgres");
    db.refuse_connections().await;
    db.end_sessions(Some("mana-sync-listener")).await;
    other
        .wait_for_log("lost the connection listening", PROMPTLY)
        .await;
    let (status, body) = phone
        .push("todo", START, json!([insert("tasks", "while-away")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    db.accept_connections().await;
    assert_eq!(changes_of(&stream.next_changes().await), ["while-away"]);
    phone
        .push("todo", START, json!([insert("tasks", "after")]))
        .await;
    assert_eq!(changes_of(&stream.next_changes().await), ["after"]);
}

/// Every connection of both instances is dropped at once, as when Postgres
/// restarts: pushes, streams and notices all recover.
#[tokio::test]
async fn everything_recovers_when_every_connection_is_dropped() {
    let Some((h, _other, phone, mut stream)) = two_instances_with_a_stream().await else {
        return;
    };
    h.db.as_ref().expect("postgres").end_sessions(None).await;
    // A push may meet a dead pooled connection once (503, safe to retry with
    // the same changesetId); it must succeed within the deadline.
    let body = json!({"clientId": "phone", "since": START, "changesetId": "after-restart",
                      "changes": [insert("tasks", "after-restart")]});
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (status, reply) = phone.post("todo", &body).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushes never recovered"
        );
    }
    assert_eq!(changes_of(&stream.next_changes().await), ["after-restart"]);
}
