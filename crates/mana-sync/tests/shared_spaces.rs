//! Syncing shared spaces against the real binary, on SQLite and Postgres:
//! members push into a space and every member's devices receive it (pulls,
//! push replies, streams, sockets), nobody else reads or writes it, and
//! membership changes take effect at once.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{
    Device, EventStream, Harness, START, Socket, assert_error, encode, ids, next_message,
};
use futures::SinkExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// `owner` creates a space and adds the others with their roles.
async fn space_of(owner: &Device, members: &[(&str, &str)]) -> String {
    let (status, body) = owner
        .call(Method::POST, "/spaces", Some(json!({"name": "Groceries"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let space = body["id"].as_str().expect("an id").to_owned();
    for (user, role) in members {
        set_role(owner, &space, user, role).await;
    }
    space
}

async fn set_role(owner: &Device, space: &str, user: &str, role: &str) {
    let reply = owner
        .call(
            Method::PUT,
            &format!("/spaces/{space}/members/{user}"),
            Some(json!({"role": role})),
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
}

async fn remove(owner: &Device, space: &str, user: &str) {
    let reply = owner
        .call(
            Method::DELETE,
            &format!("/spaces/{space}/members/{user}"),
            None,
        )
        .await;
    assert_eq!(reply.0, StatusCode::NO_CONTENT, "{}", reply.1);
}

fn item(space: &str, id: &str) -> Value {
    json!({"table": "items", "id": id, "op": "insert", "spaceId": space, "data": {"title": id}})
}

fn own_item(id: &str) -> Value {
    json!({"table": "items", "id": id, "op": "insert", "data": {"title": id}})
}

/// Pulls `items` from `since` to the end: the changes, the cursor, and the
/// spaces reported removed.
async fn pull_items(device: &Device, since: &str) -> (Vec<Value>, String, Vec<Value>) {
    let mut since = since.to_owned();
    let mut changes = Vec::new();
    let mut removed = Vec::new();
    loop {
        let (status, body) = device
            .pull(
                "todo",
                &format!("collection=items&since={}", encode(&since)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        changes.extend(
            body["serverChanges"]
                .as_array()
                .expect("array")
                .iter()
                .cloned(),
        );
        if let Some(gone) = body["removedSpaces"].as_array() {
            removed.extend(gone.iter().cloned());
        }
        since = body["syncedUntil"].as_str().expect("cursor").to_owned();
        if !body["hasMore"].as_bool().expect("hasMore") {
            return (changes, since, removed);
        }
    }
}

fn spaces_of(changes: &[Value]) -> Vec<Option<String>> {
    changes
        .iter()
        .map(|c| c["spaceId"].as_str().map(str::to_owned))
        .collect()
}

async fn members_share_a_space_and_nobody_else_reads_or_writes_it(h: Harness) {
    let ann = h.spaces_device("ann", "anns-phone");
    let bob = h.spaces_device("bob", "bobs-phone");
    let vic = h.spaces_device("vic", "vics-phone");
    let eve = h.spaces_device("eve", "eves-phone");
    let space = space_of(&ann, &[("bob", "editor"), ("vic", "viewer")]).await;

    // One changeset of bob's reaches his own log and the space.
    let (status, reply) = bob
        .push(
            "todo",
            START,
            json!([own_item("bobs-own"), item(&space, "milk")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, reply) = ann.push("todo", START, json!([item(&space, "eggs")])).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    // A space's log comes with the device's own changes too (a device that
    // left and joined again needs them back).
    assert_eq!(
        ids(reply["serverChanges"].as_array().expect("array")),
        ["milk", "eggs"],
        "ann's reply carries bob's change, and her own"
    );
    assert_eq!(reply["serverChanges"][0]["spaceId"], json!(space));

    // Another device of each member (a device is not sent its own changes).
    for (user, expected) in [
        ("ann", vec!["milk", "eggs"]),
        ("bob", vec!["bobs-own", "milk", "eggs"]),
        ("vic", vec!["milk", "eggs"]),
    ] {
        let member = &h.spaces_device(user, "tablet");
        let (changes, cursor, removed) = pull_items(member, START).await;
        let mut got = ids(&changes);
        got.sort();
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{}", member.client_id);
        for change in &changes {
            let expected_space = if change["id"] == "bobs-own" {
                Value::Null
            } else {
                json!(space)
            };
            assert_eq!(change["spaceId"], expected_space, "{change}");
        }
        assert!(removed.is_empty());
        // Nothing new from the cursor on.
        let (again, _, _) = pull_items(member, &cursor).await;
        assert!(again.is_empty(), "{}: {again:?}", member.client_id);
    }
    let (changes, _, _) = pull_items(&eve, START).await;
    assert!(changes.is_empty(), "a stranger reads nothing of the space");

    // A viewer's or a stranger's push into the space is refused, naming it,
    // and nothing of the changeset is stored.
    for (device, who) in [(&vic, "vic"), (&eve, "eve")] {
        let reply = device
            .push(
                "todo",
                START,
                json!([own_item(&format!("{who}-own")), item(&space, "sneaky")]),
            )
            .await;
        assert_error(&reply, StatusCode::FORBIDDEN, "space_forbidden", &space);
        let (own, _, _) = pull_items(&h.spaces_device(who, "other-device"), START).await;
        assert!(
            !ids(&own)
                .iter()
                .any(|id| id.ends_with("-own") || id == "sneaky"),
            "nothing of {who}'s changeset was stored: {own:?}"
        );
    }

    // A client of the seed's protocol sees its own log only, as before.
    let seed = h.device("bob", "seed-client");
    let (changes, cursor) = seed.pull_all("todo", "items", START).await;
    assert_eq!(ids(&changes), ["bobs-own"]);
    assert!(spaces_of(&changes).iter().all(Option::is_none));
    common::assert_cursor(&cursor);
}

async fn a_removed_member_is_told_at_once_and_receives_nothing_more(h: Harness) {
    let ann = h.spaces_device("ann", "anns-phone");
    let bob = h.spaces_device("bob", "bobs-phone");
    let bobs_laptop = h.spaces_device("bob", "bobs-laptop");
    let space = space_of(&ann, &[("bob", "editor")]).await;
    ann.push("todo", START, json!([item(&space, "before")]))
        .await;

    let mut stream = bob.stream("todo", "items", START).await;
    let backlog = stream.backlog(1).await;
    let first: Vec<Value> = backlog
        .iter()
        .flat_map(|p| p["changes"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(ids(&first), ["before"]);
    let cursor = backlog.last().expect("a page")["syncedUntil"]
        .as_str()
        .expect("cursor")
        .to_owned();

    ann.push("todo", START, json!([item(&space, "live")])).await;
    let live = stream.next_changes().await;
    assert_eq!(ids(live["changes"].as_array().expect("array")), ["live"]);
    assert_eq!(live["changes"][0]["spaceId"], json!(space));

    remove(&ann, &space, "bob").await;
    let (kind, data) = next_event(&mut stream).await;
    assert_eq!(
        (kind.as_str(), &data),
        ("space-removed", &json!({"spaceId": space}))
    );

    // After the removal: a change in the space, then one in bob's own log.
    // The stream delivers the second and never the first.
    ann.push("todo", START, json!([item(&space, "after")]))
        .await;
    bobs_laptop
        .push("todo", START, json!([own_item("marker")]))
        .await;
    let next = stream.next_changes().await;
    assert_eq!(ids(next["changes"].as_array().expect("array")), ["marker"]);

    // A pull with the cursor from before is told the space is gone.
    let (changes, _, removed) = pull_items(&bob, &cursor).await;
    assert_eq!(removed, [json!(space)]);
    assert!(!ids(&changes).contains(&"after".to_owned()), "{changes:?}");
    let reply = bob
        .push("todo", START, json!([item(&space, "after-removal")]))
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "space_forbidden", &space);
}

async fn joining_a_space_downloads_it_and_follows_it_live(h: Harness) {
    let ann = h.spaces_device("ann", "anns-phone");
    let bob = h.spaces_device("bob", "bobs-phone");
    let space = space_of(&ann, &[]).await;
    ann.push(
        "todo",
        START,
        json!([item(&space, "one"), item(&space, "two")]),
    )
    .await;

    let mut stream = bob.stream("todo", "items", START).await;
    let backlog = stream.backlog(1).await;
    assert!(
        backlog
            .iter()
            .all(|p| p["changes"].as_array().is_some_and(Vec::is_empty))
    );
    let cursor_before = backlog.last().expect("a page")["syncedUntil"]
        .as_str()
        .expect("cursor")
        .to_owned();

    set_role(&ann, &space, "bob", "viewer").await;
    let (kind, data) = next_event(&mut stream).await;
    assert_eq!(
        (kind.as_str(), &data),
        ("space-added", &json!({"spaceId": space, "role": "viewer"}))
    );
    let download = stream.next_changes().await;
    assert_eq!(
        ids(download["changes"].as_array().expect("array")),
        ["one", "two"]
    );
    ann.push("todo", START, json!([item(&space, "three")]))
        .await;
    let live = stream.next_changes().await;
    assert_eq!(ids(live["changes"].as_array().expect("array")), ["three"]);

    // A pull from before joining downloads the space from its start, once.
    let (changes, cursor, _) = pull_items(&bob, &cursor_before).await;
    assert_eq!(ids(&changes), ["one", "two", "three"]);
    let (again, _, _) = pull_items(&bob, &cursor).await;
    assert!(again.is_empty());
}

/// A socket of `user`'s device `client_id` on `/ws/todo` that follows
/// spaces, authenticated.
async fn spaces_socket(h: &Harness, user: &str, client_id: &str) -> Socket {
    let url = format!(
        "{}/ws/todo?features=spaces",
        h.server.url.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("socket opens");
    let auth = json!({"type": "auth", "token": h.server.token(user), "clientId": client_id});
    socket
        .send(Message::text(auth.to_string()))
        .await
        .expect("sends");
    assert_eq!(next_message(&mut socket).await, json!({"type": "auth-ok"}));
    socket
}

async fn sockets_hear_of_spaces_joined_changed_and_left(h: Harness) {
    let ann = h.spaces_device("ann", "anns-phone");
    let mut socket = spaces_socket(&h, "bob", "bobs-phone").await;

    let space = space_of(&ann, &[("bob", "editor")]).await;
    assert_eq!(
        next_message(&mut socket).await,
        json!({"type": "space-added", "spaceId": space, "role": "editor"})
    );
    assert_eq!(
        next_message(&mut socket).await,
        json!({"type": "sync-available", "appId": "todo", "tables": []})
    );
    ann.push("todo", START, json!([item(&space, "milk")])).await;
    assert_eq!(
        next_message(&mut socket).await,
        json!({"type": "sync-available", "appId": "todo", "tables": ["items"]})
    );
    remove(&ann, &space, "bob").await;
    assert_eq!(
        next_message(&mut socket).await,
        json!({"type": "space-removed", "spaceId": space})
    );
    // Nothing of the space after that: the next message is about bob's own log.
    ann.push("todo", START, json!([item(&space, "eggs")])).await;
    h.spaces_device("bob", "bobs-laptop")
        .push("todo", START, json!([own_item("marker")]))
        .await;
    assert_eq!(
        next_message(&mut socket).await,
        json!({"type": "sync-available", "appId": "todo", "tables": ["items"]})
    );
    socket
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("sends");
    assert_eq!(
        next_message(&mut socket).await,
        json!({"type": "pong"}),
        "no poke for the space's push"
    );
}

async fn spaces_cursors_page_across_logs_and_refuse_bad_input(h: Harness) {
    let ann = h.spaces_device("ann", "anns-phone");
    let bob = h.spaces_device("bob", "bobs-phone");
    let space = space_of(&ann, &[("bob", "editor")]).await;
    let own: Vec<Value> = (0..700).map(|i| own_item(&format!("own-{i}"))).collect();
    let shared: Vec<Value> = (0..700)
        .map(|i| item(&space, &format!("shared-{i}")))
        .collect();
    let (status, _) = bob.push("todo", START, Value::Array(own)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = ann.push("todo", START, Value::Array(shared)).await;
    assert_eq!(status, StatusCode::OK);
    let (changes, _, _) = pull_items(&h.spaces_device("bob", "tablet"), START).await;
    assert_eq!(changes.len(), 1400, "paged across both logs, nothing lost");
    let mut unique = ids(&changes);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1400, "nothing twice");

    for bad in [
        "nonsense",
        "2026-01-01T00:00:00Z~",
        "2026-01-01T00:00:00Z~x=y",
    ] {
        let reply = bob
            .pull("todo", &format!("collection=items&since={}", encode(bad)))
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor", "since");
    }
    let reply = bob
        .push(
            "todo",
            START,
            json!([{"table": "items", "id": "x", "op": "insert", "spaceId": "a~b", "data": {}}]),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_change", "spaceId");
}

async fn backups_hold_what_a_user_reads_and_restore_only_into_writable_spaces(h: Harness) {
    let ann = h.spaces_device("ann", "anns-phone");
    let bob = h.spaces_device("bob", "bobs-phone");
    let space = space_of(&ann, &[("bob", "editor"), ("vic", "viewer")]).await;
    ann.push(
        "todo",
        START,
        json!([own_item("anns-own"), item(&space, "milk")]),
    )
    .await;
    bob.push("todo", START, json!([own_item("bobs-own")])).await;

    let export = common::export(&h.server, "bob").await;
    let lines: Vec<Value> = export
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    let by_id = |id: &str| lines.iter().find(|l| l["id"] == id).cloned();
    assert_eq!(lines.len(), 2, "bob's own change and the space's: {export}");
    assert_eq!(
        by_id("bobs-own").expect("bob's own")["spaceId"],
        Value::Null
    );
    assert_eq!(by_id("milk").expect("the space's")["spaceId"], json!(space));
    assert!(by_id("anns-own").is_none(), "nothing of ann's own log");
    let strangers = common::export(&h.server, "eve").await;
    assert!(strangers.is_empty(), "{strangers}");

    // Restoring bob's own backup changes nothing: every event is known.
    let reply = common::import(&h.server, "bob", export.clone()).await;
    assert_eq!(
        reply,
        (StatusCode::OK, json!({"imported": 0, "skipped": 2}))
    );

    // A new line into the space from bob's backup reaches the space's members.
    let mut fresh = by_id("milk").expect("the space's");
    fresh["eventId"] = json!("0193a000-0000-7000-8000-000000000001");
    fresh["id"] = json!("bread");
    fresh["data"] = json!({"title": "bread"});
    let reply = common::import(&h.server, "bob", format!("{fresh}\n")).await;
    assert_eq!(
        reply,
        (StatusCode::OK, json!({"imported": 1, "skipped": 0}))
    );
    let (changes, _, _) = pull_items(&h.spaces_device("ann", "tablet"), START).await;
    assert!(ids(&changes).contains(&"bread".to_owned()), "{changes:?}");

    // A viewer's import naming the space is refused, naming the line, and
    // nothing of it is stored (not even the lines of the viewer's own log).
    let mut own = by_id("bobs-own").expect("bob's own");
    own["eventId"] = json!("0193a000-0000-7000-8000-000000000002");
    let mut into_space = fresh.clone();
    into_space["eventId"] = json!("0193a000-0000-7000-8000-000000000003");
    let backup = format!("{own}\n{into_space}\n");
    for who in ["vic", "eve"] {
        let reply = common::import(&h.server, who, backup.clone()).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "space_forbidden", "line 2");
        assert!(
            reply.1["error"]["message"]
                .as_str()
                .expect("message")
                .contains(&space)
        );
        assert!(
            common::export(&h.server, who)
                .await
                .lines()
                .all(|l| !l.contains("bobs-own"))
        );
    }
}

/// Device ids are chosen by each user's devices, so two members' devices
/// may share one (`phone`). A change another member pushed into a space is
/// never taken for the device's own: its stream and its socket get it.
async fn a_members_change_reaches_a_device_of_the_same_name(h: Harness) {
    let ann = h.spaces_device("ann", "phone");
    let bob = h.spaces_device("bob", "phone");
    let space = space_of(&ann, &[("bob", "editor")]).await;
    let mut stream = bob.stream("todo", "items", START).await;
    stream.backlog(1).await;
    let mut socket = spaces_socket(&h, "bob", "phone").await;

    ann.push("todo", START, json!([item(&space, "milk")])).await;
    let live = stream.next_changes().await;
    assert_eq!(ids(live["changes"].as_array().expect("array")), ["milk"]);
    assert_eq!(
        next_message(&mut socket).await,
        json!({"type": "sync-available", "appId": "todo", "tables": ["items"]})
    );
}

async fn next_event(stream: &mut EventStream) -> (String, Value) {
    loop {
        let (kind, data) = stream.next().await;
        if kind != "heartbeat" {
            return (kind, data);
        }
    }
}

on_both_databases!(
    members_share_a_space_and_nobody_else_reads_or_writes_it,
    a_removed_member_is_told_at_once_and_receives_nothing_more,
    joining_a_space_downloads_it_and_follows_it_live,
    sockets_hear_of_spaces_joined_changed_and_left,
    spaces_cursors_page_across_logs_and_refuse_bad_input,
    backups_hold_what_a_user_reads_and_restore_only_into_writable_spaces,
    a_members_change_reaches_a_device_of_the_same_name,
);
