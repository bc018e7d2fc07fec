//! The seed's clients, unchanged, lose nothing against our server (issue 9).
//!
//! `SeedClient` does with cursors exactly what the seed-era web client does:
//! it compares them as strings with its own clock, sends the string minimum as
//! `since`, moves every collection's cursor to a push reply's `syncedUntil`,
//! follows `hasMore`, and resumes streams from its oldest cursor. Each
//! scenario asserts that no change of another device is lost, on SQLite and
//! Postgres, against the real binary.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;
#[path = "legacy_client/seed_client.rs"]
mod seed_client;

use std::collections::BTreeMap;

use common::{Harness, START, encode, insert};
use reqwest::StatusCode;
use seed_client::{HOUR_MS, Route, SeedClient, Seen, is_cursor_shaped, iso, now_nanos};
use serde_json::{Value, json};

const APP: &str = "todo";

/// `(table, id)` pairs for `ids` of one table.
fn keys<'a>(table: &'a str, ids: &'a [String]) -> Vec<(&'a str, &'a str)> {
    ids.iter().map(|id| (table, id.as_str())).collect()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{prefix}{n:04}")).collect()
}

fn inserts(table: &str, ids: &[String]) -> Value {
    json!(ids.iter().map(|id| insert(table, id)).collect::<Vec<_>>())
}

/// A plain device pushes; it must be accepted.
async fn push(device: &common::Device, changes: Value) {
    let (status, reply) = device.push(APP, START, changes).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

/// Issue 9's reproduction: B pushes x2 while A is idle; A pushes y1 and
/// pulls. Then the same across several collections, from the push reply alone.
async fn an_idle_device_gets_what_others_pushed_meanwhile(h: Harness) {
    let b = h.device("alice", "b");
    let mut a = SeedClient::new(&h, "alice", "a", APP, &["tasks", "lists", "notes"]);
    push(&b, json!([insert("tasks", "x1")])).await;
    a.push(vec![]).await;
    a.pull_all().await;
    a.assert_has(&[("tasks", "x1")], "first sync");

    push(&b, json!([insert("tasks", "x2")])).await;
    a.push(vec![insert("tasks", "y1")]).await;
    a.pull("tasks").await;
    a.assert_has(&[("tasks", "x2")], "pushed y1 and pulled after B pushed x2");

    push(
        &b,
        json!([
            insert("tasks", "x3"),
            insert("lists", "l3"),
            insert("notes", "n3")
        ]),
    )
    .await;
    let reply = a.push(vec![insert("lists", "y2")]).await;
    assert_eq!(reply["hasMore"], false, "{reply}");
    let others = [("tasks", "x3"), ("lists", "l3"), ("notes", "n3")];
    a.assert_has(&others, "one push reply covers every collection");
    a.pull_all().await;
    a.assert_has(&others, "pulled every collection after the push");
    let (changes, _) = b.pull_all(APP, "lists", START).await;
    assert_eq!(common::ids(&changes), ["y2"], "B gets A's change");
}

/// More than a page of other devices' changes waits: the push reply is paged,
/// the client moves every collection's cursor to the page's end anyway, and
/// keeps syncing.
async fn a_paged_push_reply_moves_every_cursor_and_loses_nothing(h: Harness) {
    let b = h.device("alice", "b");
    let early = numbered("t", 0..1200);
    let lists = numbered("l", 0..300);
    let late = numbered("t", 1200..1500);
    for chunk in early.chunks(600) {
        push(&b, inserts("tasks", chunk)).await;
    }
    push(&b, inserts("lists", &lists)).await;
    push(&b, inserts("tasks", &late)).await;

    let mut a = SeedClient::new(&h, "alice", "a", APP, &["tasks", "lists"]);
    let mut reply = a.push(vec![insert("tasks", "mine")]).await;
    assert_eq!(reply["hasMore"], true, "the first reply is paged");
    assert_eq!(
        reply["serverChanges"].as_array().expect("array").len(),
        1000
    );
    let page_end = reply["syncedUntil"].as_str().expect("cursor");
    assert_eq!(
        (a.cursor("tasks"), a.cursor("lists")),
        (page_end, page_end),
        "the seed client moves every cursor to the page's end"
    );
    let mut pushes = 1;
    while reply["hasMore"] == true {
        assert!(pushes < 10, "the push replies never end: {reply}");
        reply = a.push(vec![]).await;
        pushes += 1;
    }
    a.pull_all().await;
    let mut expected = keys("tasks", &early);
    expected.extend(keys("lists", &lists));
    expected.extend(keys("tasks", &late));
    a.assert_has(&expected, "after a paged push reply");

    // And once more, after it has caught up.
    let more = numbered("m", 0..5);
    push(&b, inserts("lists", &more)).await;
    a.push(vec![]).await;
    a.assert_has(&keys("lists", &more), "the next push reply");

    // A device that only pulls follows the pages of each collection.
    let mut reader = SeedClient::new(&h, "alice", "reader", APP, &["tasks", "lists"]);
    reader.pull_all().await;
    expected.extend(keys("lists", &more));
    expected.push(("tasks", "mine"));
    reader.assert_has(&expected, "pulled page by page");
}

/// Devices whose clocks are an hour behind and an hour ahead lose nothing.
async fn devices_whose_clocks_are_an_hour_off_lose_nothing(h: Harness) {
    let b = h.device("alice", "b");
    let collections = ["tasks", "lists"];
    let mut behind =
        SeedClient::new(&h, "alice", "behind", APP, &collections).with_clock_skew(-HOUR_MS);
    let mut ahead =
        SeedClient::new(&h, "alice", "ahead", APP, &collections).with_clock_skew(HOUR_MS);
    push(&b, json!([insert("tasks", "t1")])).await;
    for device in [&mut behind, &mut ahead] {
        device.push(vec![]).await;
        device.pull_all().await;
    }
    push(&b, json!([insert("tasks", "t2"), insert("lists", "l2")])).await;
    behind.push(vec![insert("lists", "from-behind")]).await;
    behind.pull_all().await;
    ahead.push(vec![insert("lists", "from-ahead")]).await;
    ahead.pull_all().await;
    push(&b, json!([insert("tasks", "t3")])).await;
    for device in [&mut behind, &mut ahead] {
        device.push(vec![]).await;
        device.pull_all().await;
    }
    let from_b = [
        ("tasks", "t1"),
        ("tasks", "t2"),
        ("lists", "l2"),
        ("tasks", "t3"),
    ];
    behind.assert_has(&from_b, "clock an hour behind");
    behind.assert_has(&[("lists", "from-ahead")], "clock an hour behind");
    ahead.assert_has(&from_b, "clock an hour ahead");
    ahead.assert_has(&[("lists", "from-behind")], "clock an hour ahead");

    // Their streams, opened after B pushed again, start early enough.
    push(&b, json!([insert("lists", "l4")])).await;
    for device in [&mut behind, &mut ahead] {
        let mut stream = device.open_stream().await;
        device.read_backlog(&mut stream).await;
        device.assert_has(&[("lists", "l4")], "a stream's backlog");
    }
}

/// A stream opened from the oldest cursor reads the backlog, then live
/// changes; reopened after others pushed while it was closed, it catches up.
async fn a_stream_from_the_oldest_cursor_and_a_reconnect_lose_nothing(h: Harness) {
    let b = h.device("alice", "b");
    let mut a = SeedClient::new(&h, "alice", "a", APP, &["tasks", "lists"]);
    push(&b, json!([insert("tasks", "t1")])).await;
    a.push(vec![insert("tasks", "own")]).await;
    push(&b, json!([insert("tasks", "t2")])).await;
    a.pull("tasks").await; // tasks' cursor is now ahead of lists'
    push(&b, json!([insert("lists", "l1"), insert("tasks", "t3")])).await;

    let mut stream = a.open_stream().await;
    a.read_backlog(&mut stream).await;
    let mut expected = vec![
        ("tasks", "t1"),
        ("tasks", "t2"),
        ("lists", "l1"),
        ("tasks", "t3"),
    ];
    a.assert_has(&expected, "the backlog of a stream from the oldest cursor");
    push(&b, json!([insert("tasks", "t4"), insert("lists", "l2")])).await;
    a.read_until(&mut stream, &[("tasks", "t4"), ("lists", "l2")])
        .await;
    drop(stream);

    push(&b, json!([insert("lists", "l3"), insert("tasks", "t5")])).await;
    push(&b, json!([insert("tasks", "t6")])).await;
    let mut stream = a.open_stream().await;
    a.read_backlog(&mut stream).await;
    expected.extend([("tasks", "t4"), ("lists", "l2"), ("lists", "l3")]);
    expected.extend([("tasks", "t5"), ("tasks", "t6")]);
    a.assert_has(&expected, "the backlog after reconnecting");
    push(&b, json!([insert("tasks", "t7")])).await;
    a.read_until(&mut stream, &[("tasks", "t7")]).await;
}

/// The seed's own end-to-end flow: insert, pull, update with `updatedAt`,
/// pull, a delete without `deletedAt`, and a request without a token.
async fn the_seeds_end_to_end_flow_passes(h: Harness) {
    let mut a = SeedClient::new(&h, "alice", "a", APP, &["tasks"]);
    let mut b = SeedClient::new(&h, "alice", "b", APP, &["tasks"]);
    let data = json!({"id": "t1", "title": "Buy milk", "done": false, "updatedAt": a.now()});
    a.push(vec![
        json!({"table": "tasks", "id": "t1", "op": "insert", "data": data}),
    ])
    .await;
    b.pull("tasks").await;
    let title = |b: &SeedClient| b.record("tasks", "t1").map(|r| r.fields["title"].clone());
    assert_eq!(title(&b), Some(json!("Buy milk")));

    let field = json!({"value": "Buy oat milk", "updatedAt": a.now()});
    a.push(vec![
        json!({"table": "tasks", "id": "t1", "op": "update", "fields": {"title": field}}),
    ])
    .await;
    b.pull("tasks").await;
    assert_eq!(title(&b), Some(json!("Buy oat milk")));

    a.push(vec![json!({"table": "tasks", "id": "t1", "op": "delete"})])
        .await;
    let received = b.pull("tasks").await;
    let delete = received.last().expect("the delete reaches B");
    assert_eq!(
        (delete["id"].as_str(), delete["op"].as_str()),
        (Some("t1"), Some("delete"))
    );
    assert!(
        delete["deletedAt"].is_string(),
        "the server stamps deletedAt: {delete}"
    );
    assert!(b.record("tasks", "t1").expect("known").deleted_at.is_some());

    let response = mana_sync_testkit::http_client()
        .post(h.server.at(&format!("/sync/{APP}")))
        .json(&json!({"clientId": "a", "since": START, "changes": []}))
        .send()
        .await
        .expect("sent");
    let (status, body) = common::read(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body["error"]["code"], "unauthorized",
        "a JSON error: {body}"
    );
}

/// A stream request without `since` starts from the beginning, as the seed's did.
async fn a_stream_without_since_starts_from_the_beginning(h: Harness) {
    let b = h.device("alice", "b");
    push(&b, json!([insert("tasks", "first")])).await;
    push(&b, json!([insert("tasks", "second")])).await;
    let response = b
        .http
        .get(
            h.server
                .at(&format!("/sync/{APP}/stream?collections=tasks")),
        )
        .bearer_auth(h.server.token("alice"))
        .header("x-client-id", "a")
        .send()
        .await
        .expect("sent");
    let status = response.status();
    if status != StatusCode::OK {
        let (_, body) = common::read(response).await;
        panic!("a stream without `since` answered {status}: {body}");
    }
    let mut stream = common::EventStream::new(response);
    let backlog = stream.backlog(1).await;
    let ids: Vec<String> = backlog
        .iter()
        .flat_map(|page| common::ids(page["changes"].as_array().expect("array")))
        .collect();
    assert_eq!(
        ids,
        ["first", "second"],
        "the backlog starts at the beginning"
    );
    push(&b, json!([insert("tasks", "third")])).await;
    assert_eq!(
        common::ids(
            stream.next_changes().await["changes"]
                .as_array()
                .expect("array")
        ),
        ["third"]
    );
}

/// Every `syncedUntil` is a fixed-width RFC 3339 UTC timestamp after the
/// epoch, not ahead of the clock, and the cursors of one user never go back.
async fn cursors_are_timestamps_that_never_go_backwards(h: Harness) {
    let b = h.device("alice", "b");
    let collections = ["tasks", "lists"];
    let mut a = SeedClient::new(&h, "alice", "a", APP, &collections);
    let mut c = SeedClient::new(&h, "alice", "c", APP, &collections).with_clock_skew(HOUR_MS);
    push(&b, inserts("tasks", &numbered("t", 0..1100))).await;
    push(&b, json!([insert("lists", "l1")])).await;
    let mut reply = a.push(vec![insert("lists", "a1")]).await;
    while reply["hasMore"] == true {
        reply = a.push(vec![]).await;
    }
    a.pull_all().await;
    c.pull_all().await; // a paged pull
    c.push(vec![insert("tasks", "c1")]).await;
    let mut stream = a.open_stream().await;
    a.read_backlog(&mut stream).await;
    push(&b, json!([insert("tasks", "live")])).await;
    a.read_until(&mut stream, &[("tasks", "live")]).await;
    drop(stream);
    a.push(vec![]).await;
    c.push(vec![]).await; // after A's: its cursor is not before A's

    // Plain devices asking from the future still get cursors near the clock.
    let mut plain = Vec::new();
    for since in ["2999-01-01T00:00:00.000Z".to_owned(), c.now()] {
        let (_, reply) = b.push(APP, &since, json!([])).await;
        plain.push(reply["syncedUntil"].as_str().expect("cursor").to_owned());
        let query = format!("collection=tasks&since={}", encode(&since));
        let (_, page) = b.pull(APP, &query).await;
        plain.push(page["syncedUntil"].as_str().expect("cursor").to_owned());
    }

    // A user with nothing stored yet gets a cursor too.
    let mut fresh = SeedClient::new(&h, "dave", "d", APP, &collections);
    fresh.push(vec![]).await;
    fresh.pull_all().await;

    let limit = iso(now_nanos() + 60 * 1_000_000_000, 9);
    let seen = a.seen.iter().chain(&c.seen).chain(&fresh.seen);
    let all = seen.map(|s| &s.synced_until);
    for cursor in all.chain(&plain) {
        assert!(
            is_cursor_shaped(cursor),
            "`{cursor}` is not a timestamp like 2026-11-29T19:20:00.123456789Z"
        );
        assert!(cursor.as_str() > START, "`{cursor}` is not after {START}");
        assert!(
            *cursor <= limit,
            "`{cursor}` is ahead of the clock ({limit})"
        );
    }
    assert_never_backwards(&a.seen);
    assert_never_backwards(&c.seen);
    assert_never_backwards(&fresh.seen);
    let (a_last, c_last) = (a.cursor("tasks"), c.cursor("tasks"));
    assert!(
        c_last >= a_last,
        "C's later push went back: {c_last} < {a_last}"
    );
}

/// The cursors one device received, in order: a complete reply (no
/// `hasMore`) is never before an earlier complete reply of the same route
/// (requests; each table of the streams), and a page is after its `since`.
fn assert_never_backwards(seen: &[Seen]) {
    let mut requests = START.to_owned();
    let mut streams: BTreeMap<String, String> = BTreeMap::new();
    for s in seen {
        let latest = match s.route {
            Route::Push | Route::Pull => &mut requests,
            Route::Stream => streams
                .entry(s.table.clone().expect("table"))
                .or_insert_with(|| START.to_owned()),
        };
        if s.has_more {
            if is_cursor_shaped(&s.since) {
                assert!(s.synced_until > s.since, "a page went backwards: {s:?}");
            }
        } else {
            assert!(s.synced_until >= *latest, "went back from {latest}: {s:?}");
            latest.clone_from(&s.synced_until);
        }
    }
}

/// What writer `w` pushes in its push `p`: eight inserts into one collection.
fn writer_batch(w: usize, p: usize) -> (&'static str, Vec<String>) {
    let table = if p.is_multiple_of(2) {
        "tasks"
    } else {
        "lists"
    };
    (table, numbered(&format!("w{w}-p{p}-"), 0..8))
}

/// Several devices push at once while a seed client keeps syncing: it ends
/// with every change.
async fn a_seed_client_syncing_during_concurrent_pushes_loses_nothing(h: Harness) {
    const WRITERS: usize = 4;
    const PUSHES: usize = 25;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let device = h.device("alice", &format!("writer-{w}"));
            tokio::spawn(async move {
                for p in 0..PUSHES {
                    let (table, ids) = writer_batch(w, p);
                    push(&device, inserts(table, &ids)).await;
                }
            })
        })
        .collect();
    let mut a = SeedClient::new(&h, "alice", "a", APP, &["tasks", "lists"]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writers never finished"
        );
        a.push(vec![]).await;
        a.pull_all().await;
    }
    for writer in writers {
        writer.await.expect("writer finished");
    }
    a.push(vec![]).await;
    a.pull_all().await;
    let batches: Vec<_> = (0..WRITERS)
        .flat_map(|w| (0..PUSHES).map(move |p| writer_batch(w, p)))
        .collect();
    let expected: Vec<_> = batches.iter().flat_map(|(t, ids)| keys(t, ids)).collect();
    a.assert_has(&expected, "synced while others pushed");
}

on_both_databases!(
    an_idle_device_gets_what_others_pushed_meanwhile,
    a_paged_push_reply_moves_every_cursor_and_loses_nothing,
    devices_whose_clocks_are_an_hour_off_lose_nothing,
    a_stream_from_the_oldest_cursor_and_a_reconnect_lose_nothing,
    the_seeds_end_to_end_flow_passes,
    a_stream_without_since_starts_from_the_beginning,
    cursors_are_timestamps_that_never_go_backwards,
    a_seed_client_syncing_during_concurrent_pushes_loses_nothing,
);

#[test]
fn the_model_formats_dates_as_javascript_does() {
    assert_eq!(iso(0, 3), START);
    assert_eq!(
        iso(1_700_000_000_123_456_789, 3),
        "2023-11-14T22:13:20.123Z"
    );
    assert_eq!(
        iso(1_700_000_000_123_456_789, 9),
        "2023-11-14T22:13:20.123456789Z"
    );
    assert_eq!(iso(951_782_400_000_000_000, 3), "2000-02-29T00:00:00.000Z");
    assert_eq!(iso(-1_000_000, 3), "1969-12-31T23:59:59.999Z");
    assert!(is_cursor_shaped("2026-11-29T19:20:00.123456789Z"));
    assert!(!is_cursor_shaped("2026-11-29T19:20:00.123Z"));
    assert!(!is_cursor_shaped("c1.57"));
    // The string order the seed client relies on.
    assert!("c1.57" > "2026-11-29T19:20:00.123Z");
    assert!("2026-11-29T19:20:00.123456789Z" < "2026-11-29T19:20:00.123Z");
}
