//! Black-box tests of the `mana-todo` binary: its pinned commands, flags and
//! outputs, against the real `mana-sync` server.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use mana_sync_testkit::server::{ServerOptions, TestServer, workspace_binary};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TODO: &str = env!("CARGO_BIN_EXE_mana-todo");
const DEADLINE: Duration = Duration::from_secs(20);

async fn todo(data: &Path, args: &[&str]) -> Output {
    Command::new(TODO)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("MANA_SYNC_SERVER")
        .env_remove("MANA_SYNC_TOKEN")
        .env_remove("MANA_TODO_DATA")
        .output()
        .await
        .expect("mana-todo runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn ok(data: &Path, args: &[&str]) -> String {
    let output = todo(data, args).await;
    assert!(
        output.status.success(),
        "mana-todo {args:?} failed:\n{}",
        stderr(&output)
    );
    stdout(&output)
}

async fn list(data: &Path) -> Vec<Value> {
    let text = ok(data, &["list", "--json"]).await;
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn titles(todos: &[Value]) -> Vec<&str> {
    todos.iter().map(|t| t["title"].as_str().unwrap()).collect()
}

async fn server() -> TestServer {
    TestServer::start(&workspace_binary("mana-sync"), ServerOptions::default()).await
}

#[tokio::test]
async fn add_list_done_rename_rm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let ids = ok(data, &["--no-seed", "add", "Buy oat milk", "Call mum"]).await;
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 2, "one id per line");
    let todos = list(data).await;
    assert_eq!(titles(&todos), ["Buy oat milk", "Call mum"]);
    assert_eq!(todos[0]["id"], ids[0]);
    assert_eq!(todos[0]["done"], false);
    assert!(todos[0]["createdAt"].is_string());

    ok(data, &["done", ids[0]]).await;
    ok(data, &["rename", ids[1], "Call", "dad"]).await;
    let todos = list(data).await;
    assert_eq!(todos[0]["done"], true);
    assert_eq!(todos[1]["title"], "Call dad");

    ok(data, &["rm", ids[0]]).await;
    assert_eq!(titles(&list(data).await), ["Call dad"]);
    let readable = ok(data, &["list"]).await;
    assert!(readable.contains("[ ] Call dad"), "{readable}");
    assert!(readable.contains(ids[1]), "{readable}");

    // Unknown ids are a clear error, and a unique prefix is enough.
    let output = todo(data, &["done", "nope"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no todo with id `nope`"),
        "{}",
        stderr(&output)
    );
    ok(data, &["done", &ids[1][..30]]).await;
    assert_eq!(list(data).await[0]["done"], true);
    assert_eq!(ok(data, &["status"]).await.trim(), "local-only");
}

#[tokio::test]
async fn a_new_store_is_seeded_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let seeded = list(&dir.path().join("a")).await;
    assert_eq!(seeded.len(), 3);
    assert!(seeded.iter().all(|t| t["done"] == false));
    let unseeded = ok(&dir.path().join("b"), &["--no-seed", "list", "--json"]).await;
    assert_eq!(unseeded.trim(), "[]");
    // `--no-seed` only matters for a new store.
    let later = dir.path().join("c");
    ok(&later, &["--no-seed", "list"]).await;
    assert!(list(&later).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_sync_through_one_server() {
    let server = server().await;
    let token = server.token("alice");
    let dir = tempfile::tempdir().unwrap();
    let (phone, laptop) = (dir.path().join("phone"), dir.path().join("laptop"));
    let sync = ["sync", "--server", &server.url, "--token", &token];

    // The phone was used as a guest: its todos (onboarding included) become
    // the account's at the first sync.
    let id = ok(&phone, &["add", "Buy oat milk"]).await;
    let id = id.trim();
    let output = todo(&phone, &sync).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("Signed in as alice"),
        "{}",
        stderr(&output)
    );
    assert_eq!(ok(&phone, &["status"]).await.trim(), "synced");

    ok(
        &laptop,
        &[
            "--no-seed",
            "sync",
            "--server",
            &server.url,
            "--token",
            &token,
        ],
    )
    .await;
    let todos = list(&laptop).await;
    assert_eq!(todos.len(), 4);
    assert!(titles(&todos).contains(&"Buy oat milk"));

    ok(&laptop, &["done", id]).await;
    assert_eq!(ok(&laptop, &["status"]).await.trim(), "pending 1");
    ok(&laptop, &sync).await;
    ok(&phone, &sync).await;
    let milk = list(&phone)
        .await
        .into_iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert_eq!(milk["done"], true);
    assert_eq!(list(&phone).await, list(&laptop).await);

    // Another account's token is refused for this store.
    let other = server.token("mallory");
    let output = todo(
        &phone,
        &["sync", "--server", &server.url, "--token", &other],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("belongs to user `alice`"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_and_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    ok(data, &["--no-seed", "add", "a", "b"]).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    // A syntactically valid token; the server is never reached.
    let token = "e30.eyJzdWIiOiJhbGljZSJ9.c2ln";
    let output = todo(data, &["sync", "--server", &url, "--token", token]).await;
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("cannot reach the sync server"),
        "{message}"
    );
    assert!(
        message.contains("kept on this device (2 waiting"),
        "{message}"
    );
    assert_eq!(titles(&list(data).await), ["a", "b"]);
    let status = ok(data, &["status"]).await;
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines[0], "pending 2");
    assert!(lines[1].starts_with("last error: cannot reach"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_list_again_whenever_it_changes() {
    let server = server().await;
    let token = server.token("walt");
    let dir = tempfile::tempdir().unwrap();
    let (watcher, writer) = (dir.path().join("watcher"), dir.path().join("writer"));
    let mut child = Command::new(TODO)
        .arg("--data")
        .arg(&watcher)
        .args([
            "--no-seed",
            "watch",
            "--json",
            "--server",
            &server.url,
            "--token",
            &token,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("watch starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_list = async || -> Vec<Value> {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("a list before the deadline")
            .unwrap()
            .expect("watch goes on");
        serde_json::from_str::<Value>(&line)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(next_list().await.is_empty());

    // Another device adds a todo and syncs: the watcher prints it.
    ok(&writer, &["--no-seed", "add", "Water the plants"]).await;
    ok(
        &writer,
        &["sync", "--server", &server.url, "--token", &token],
    )
    .await;
    assert_eq!(titles(&next_list().await), ["Water the plants"]);

    // A write by another process on the watcher's own store is printed too,
    // and pushed by the watcher.
    ok(&watcher, &["add", "Feed the cat"]).await;
    let mut seen = next_list().await;
    while seen.len() < 2 {
        seen = next_list().await;
    }
    assert_eq!(titles(&seen), ["Water the plants", "Feed the cat"]);
    // Observe the server's stream as a third device until the cat arrives.
    let response = mana_sync_testkit::http_client()
        .get(server.at("/sync/todo/stream?collections=tasks&since=1970-01-01T00:00:00.000Z"))
        .bearer_auth(&token)
        .header("x-client-id", "observer")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut seen_text = String::new();
    tokio::time::timeout(DEADLINE, async {
        while !seen_text.contains("Feed the cat") {
            let chunk = futures::StreamExt::next(&mut body).await.unwrap().unwrap();
            seen_text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the watcher pushed the other process's write");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_lists_lists_share_members_and_a_viewer_cannot_edit() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let (ann, bob, vic) = (
        dir.path().join("ann"),
        dir.path().join("bob"),
        dir.path().join("vic"),
    );
    let (ann_token, bob_token, vic_token) = (
        server.token("ann"),
        server.token("bob"),
        server.token("vic"),
    );
    let with = |token: &str| -> Vec<String> {
        vec![
            "--server".into(),
            server.url.clone(),
            "--token".into(),
            token.to_owned(),
        ]
    };
    let run = async |data: &Path, args: &[&str], token: &str| -> String {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(with(token));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        ok(data, &all).await
    };

    // Ann creates a list, puts a todo in it and shares it.
    let list_id = run(&ann, &["--no-seed", "new-list", "Groceries"], &ann_token).await;
    let list_id = list_id.trim().to_owned();
    let milk = ok(&ann, &["add", "--list", "Groceries", "Milk"]).await;
    let milk = milk.trim().to_owned();
    ok(&ann, &["add", "Ann's own"]).await;
    let shared = run(&ann, &["share", "Groceries", "--with", "bob"], &ann_token).await;
    assert_eq!(shared.trim(), "Shared `Groceries` with bob (editor).");
    run(
        &ann,
        &["share", &list_id, "--with", "vic", "--role", "viewer"],
        &ann_token,
    )
    .await;
    run(&ann, &["sync"], &ann_token).await;
    let lists = ok(&ann, &["lists"]).await;
    assert!(lists.contains("My todos"), "{lists}");
    assert!(
        lists
            .lines()
            .any(|l| l.starts_with("Groceries") && l.contains("owner") && l.contains(&list_id)),
        "{lists}"
    );

    // Bob's device gets the list at its next sync and both edit it.
    run(&bob, &["--no-seed", "sync"], &bob_token).await;
    let lists: Value = serde_json::from_str(&ok(&bob, &["lists", "--json"]).await).unwrap();
    assert_eq!(
        lists,
        serde_json::json!([
            {"id": null, "name": "My todos", "role": "owner", "todos": 0},
            {"id": list_id, "name": "Groceries", "role": "editor", "todos": 1}
        ])
    );
    let grouped = ok(&bob, &["list"]).await;
    assert!(grouped.contains("== Groceries (editor) =="), "{grouped}");
    assert!(grouped.contains("[ ] Milk"), "{grouped}");
    assert!(!grouped.contains("Ann's own"), "{grouped}");
    ok(&bob, &["add", "--list", "Groceries", "Eggs"]).await;
    ok(&bob, &["done", &milk]).await;
    run(&bob, &["sync"], &bob_token).await;
    run(&ann, &["sync"], &ann_token).await;
    let on_ann =
        serde_json::from_str::<Value>(&ok(&ann, &["list", "--list", "Groceries", "--json"]).await)
            .unwrap();
    let on_ann = on_ann.as_array().unwrap();
    assert_eq!(titles(on_ann), ["Milk", "Eggs"]);
    assert_eq!(on_ann[0]["done"], true);
    assert!(on_ann.iter().all(|t| t["spaceId"] == list_id.as_str()));

    // Members and roles.
    let members = run(&bob, &["members", "Groceries"], &bob_token).await;
    let lines: Vec<&str> = members.lines().collect();
    assert_eq!(lines[0], "Members of `Groceries`:");
    let mut rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            vec!["ann", "owner"],
            vec!["bob", "editor", "(you)"],
            vec!["vic", "viewer"]
        ]
    );
    // Only owners manage members: the server's refusal is shown.
    let mut args = vec!["share", "Groceries", "--with", "eve"];
    let bobs = with(&bob_token);
    args.extend(bobs.iter().map(String::as_str));
    let output = todo(&bob, &args).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot share `Groceries` with eve"),
        "{}",
        stderr(&output)
    );

    // A viewer reads the list but cannot edit it: a clear message, and
    // nothing is queued.
    run(&vic, &["--no-seed", "sync"], &vic_token).await;
    assert_eq!(titles(&list(&vic).await), ["Milk", "Eggs"]);
    for args in [
        vec!["rename", milk.as_str(), "Oat", "milk"],
        vec!["add", "--list", "Groceries", "Sneaky"],
    ] {
        let output = todo(&vic, &args).await;
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains("`Groceries` is shared with you as a viewer"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(ok(&vic, &["status"]).await.trim(), "synced");
    assert!(ok(&vic, &["lists"]).await.contains("viewer, read-only"));

    // Ann removes Bob: his device drops the list at its next sync.
    run(&ann, &["unshare", "Groceries", "--with", "bob"], &ann_token).await;
    run(&bob, &["sync"], &bob_token).await;
    assert!(list(&bob).await.is_empty());
    assert!(!ok(&bob, &["lists"]).await.contains("Groceries"));
    // Vic leaves: the list leaves his device at once. The last owner
    // cannot leave.
    let left = run(&vic, &["leave", "Groceries"], &vic_token).await;
    assert!(left.starts_with("Left `Groceries`"), "{left}");
    assert!(list(&vic).await.is_empty());
    let mut args = vec!["leave", "Groceries"];
    let anns = with(&ann_token);
    args.extend(anns.iter().map(String::as_str));
    let output = todo(&ann, &args).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot leave `Groceries`"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        titles(&list(&ann).await),
        ["Milk", "Ann's own", "Eggs"],
        "by creation time"
    );

    let output = todo(&bob, &["add", "--list", "Groceries", "Late"]).await;
    assert!(
        stderr(&output).contains("no list `Groceries`"),
        "{}",
        stderr(&output)
    );
}
