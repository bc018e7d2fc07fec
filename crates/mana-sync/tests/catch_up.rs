//! Live delivery across instances when notices go missing: a notice lost on
//! its way, an instance that crashed between a commit and its notice, and a
//! NATS server that restarted. In each case the streams of the other
//! instances catch up from their cursors within two seconds, with the
//! default catch-up interval (`CATCHUP_INTERVAL_MS`, 500 ms). (A listener
//! that reconnects is covered in `live_instances.rs`.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::{Duration, Instant};

use common::{Device, EventStream, Harness, START, ids, insert};
use mana_sync_testkit::nats::NatsServer;
use mana_sync_testkit::server::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::json;

/// The bound the design promises after a missed notice.
const CATCH_UP: Duration = Duration::from_secs(2);

/// The ids of the next `changes` event, which must come before `deadline`.
async fn next_ids_by(stream: &mut EventStream, deadline: Instant, what: &str) -> Vec<String> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let page = tokio::time::timeout(remaining, stream.next_changes())
        .await
        .unwrap_or_else(|_| panic!("{what}: the stream did not catch up in time"));
    ids(page["changes"].as_array().expect("changes"))
}

/// A stream on `reader`'s instance that already received a push made
/// through `writer`: both instances are up and hear each other.
async fn connected(writer: &Device, reader: &Device) -> EventStream {
    let mut stream = reader.stream("todo", "tasks", START).await;
    stream.backlog(1).await;
    arrives_promptly(writer, &mut stream, "before", "warm-up").await;
    stream
}

/// Pushes the record `id` through `writer` and asserts that `stream`
/// delivers it, alone, promptly.
async fn arrives_promptly(writer: &Device, stream: &mut EventStream, id: &str, what: &str) {
    let (status, _) = writer
        .push("todo", START, json!([insert("tasks", id)]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + common::PROMPTLY;
    assert_eq!(next_ids_by(stream, deadline, what).await, [id]);
}

/// Two instances on one Postgres database (started with `env`): alice's
/// phone on the first, and her laptop's stream on the second, which already
/// heard the phone. `None` when Postgres is unreachable outside CI. (Bind
/// every field: one left out of a pattern would stop its server at once.)
struct TwoInstances {
    h: Harness,
    other: TestServer,
    phone: Device,
    stream: EventStream,
}

async fn two_instances(env: Vec<(String, String)>) -> Option<TwoInstances> {
    let h = Harness::start_with(
        common::Db::Postgres,
        ServerOptions {
            env: env.clone(),
            ..ServerOptions::default()
        },
    )
    .await?;
    let other = h.instance(env).await;
    let phone = h.device("alice", "phone");
    let stream = connected(&phone, &Device::on(&other, "alice", "laptop")).await;
    Some(TwoInstances {
        h,
        other,
        phone,
        stream,
    })
}

/// The pushing instance cannot send its notice (its notifier connection is
/// cut and Postgres refuses new ones), but the push commits through a
/// pooled connection. The other instance no longer hears the pusher's
/// heartbeats, takes that as notices lost, and its streams re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_lost_on_its_way_is_made_up_for_within_two_seconds() {
    let Some(TwoInstances {
        h,
        other,
        phone,
        mut stream,
    }) = two_instances(Vec::new()).await
    else {
        return;
    };
    let db = h.db.as_ref().expect("postgres");
    db.refuse_connections().await;
    db.end_sessions(Some("mana-sync-notifier")).await;
    let (status, body) = phone
        .push("todo", START, json!([insert("tasks", "unannounced")]))
        .await;
    let pushed = Instant::now();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        next_ids_by(&mut stream, pushed + CATCH_UP, "lost notice").await,
        ["unannounced"]
    );
    other.wait_for_log("fell silent", common::PROMPTLY).await;
    // Once the pusher can talk again, notices flow as before.
    db.accept_connections().await;
    arrives_promptly(&phone, &mut stream, "after", "after").await;
}

/// An instance commits a push and dies before its notice leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_an_instance_that_crashed_before_announcing_it_arrives_within_two_seconds() {
    let Some(h) = Harness::start(common::Db::Postgres).await else {
        return;
    };
    let reader = h.instance(Vec::new()).await;
    let mut doomed = h.instance(Vec::new()).await;
    let phone = Device::on(&doomed, "alice", "phone");
    let mut stream = connected(&phone, &Device::on(&reader, "alice", "laptop")).await;
    let db = h.db.as_ref().expect("postgres");
    db.refuse_connections().await;
    db.end_sessions(Some("mana-sync-notifier")).await;
    let (status, body) = phone
        .push("todo", START, json!([insert("tasks", "last-words")]))
        .await;
    let pushed = Instant::now();
    assert_eq!(status, StatusCode::OK, "{body}");
    doomed.kill().await;
    db.accept_connections().await;
    assert_eq!(
        next_ids_by(&mut stream, pushed + CATCH_UP, "crashed instance").await,
        ["last-words"]
    );
}

/// Notices travel through NATS (`NATS_URL`); the NATS server restarts while
/// a push commits. Every instance rejoins and its streams re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_catch_up_within_two_seconds_after_the_nats_server_restarts() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let Some(TwoInstances {
        h: _first,
        other,
        phone,
        mut stream,
    }) = two_instances(vec![("NATS_URL".to_owned(), nats.url())]).await
    else {
        return;
    };
    // No notice goes through Postgres.
    assert!(
        !other
            .logs()
            .contains("listening for changes from every instance\n")
    );
    nats.stop().await;
    other
        .wait_for_log("lost the connection to NATS", common::PROMPTLY)
        .await;
    let (status, body) = phone
        .push(
            "todo",
            START,
            json!([insert("tasks", "while-nats-was-down")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    nats.resume().await;
    let restarted = Instant::now();
    assert_eq!(
        next_ids_by(&mut stream, restarted + CATCH_UP, "NATS restart").await,
        ["while-nats-was-down"]
    );
    arrives_promptly(&phone, &mut stream, "after", "after").await;
}

/// The machine's NATS server (as in production, shared): pushes on one
/// instance reach streams and sockets' users on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_other_instances_through_the_shared_nats_server() {
    let Some(url) = mana_sync_testkit::nats::shared().await else {
        return;
    };
    let Some(TwoInstances {
        h: _first,
        other: _second,
        phone,
        mut stream,
    }) = two_instances(vec![("NATS_URL".to_owned(), url)]).await
    else {
        return;
    };
    for n in 0..5 {
        arrives_promptly(&phone, &mut stream, &format!("n{n}"), "through NATS").await;
    }
}
