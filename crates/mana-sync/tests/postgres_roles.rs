//! The stronger Postgres setup: migrations run as a role that owns the
//! tables (`mana-sync migrate`, or `MIGRATION_DATABASE_URL`), and the server
//! runs as a role that can only read and write rows, so not even a
//! compromised server can lift row-level security. The single-role setup
//! (every other Postgres test) keeps working and says what it risks.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::Duration;

use common::{Harness, PROMPTLY, START, insert};
use futures::StreamExt as _;
use mana_sync_testkit::pg::{OWNER_ROLE, ROWS_ROLE, TestDatabase};
use mana_sync_testkit::server::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(common::BINARY)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("finishes")
    .expect("runs")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Everything the server does works as the rows role: pushes, pulls (also
/// from a legacy `c1.<n>` cursor), streams, sockets, backups, dev-mode
/// settings.
async fn the_server_works(h: &Harness, db: &TestDatabase) {
    let phone = h.device("alice", "phone");
    let laptop = h.device("alice", "laptop");
    let mut stream = laptop.stream("todo", "tasks", START).await;
    stream.backlog(1).await;
    let mut socket =
        common::authenticating_socket(&h.server, "/ws", &h.server.token("alice")).await;
    let reply = socket.next().await.expect("open").expect("frame");
    assert_eq!(reply, Message::text(r#"{"type":"auth-ok"}"#));

    let body = json!({"clientId": "phone", "since": START, "changesetId": "cs-1",
                      "changes": [insert("tasks", "1"), insert("tasks", "2")]});
    let (status, reply) = phone.post("todo", &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, reply) = phone.post("todo", &body).await;
    assert_eq!(status, StatusCode::OK, "a repeated changeset: {reply}");
    assert_eq!(
        stream.next_changes().await["changes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let notice = tokio::time::timeout(PROMPTLY, socket.next())
        .await
        .expect("a notice")
        .expect("open")
        .expect("frame");
    assert!(
        notice.to_text().unwrap().contains("sync-available"),
        "{notice:?}"
    );
    let (changes, _) = laptop.pull_all("todo", "tasks", START).await;
    assert_eq!(common::ids(&changes), ["1", "2"]);
    let (status, reply) = laptop.pull("todo", "collection=tasks&since=c1.1").await;
    assert_eq!(status, StatusCode::OK, "a legacy cursor: {reply}");

    let http = mana_sync_testkit::http_client();
    let backup = common::export(&h.server, "alice").await;
    assert_eq!(backup.lines().count(), 2);
    let (status, reply) = common::read(
        http.post(h.server.at("/backup/import"))
            .bearer_auth(h.server.token("bob"))
            .body(backup)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["imported"], 2);

    // The dev-mode secret is a server setting: `mana-sync token` without a
    // secret reads (and first stores) it as the rows role.
    let minted = run(
        &["token", "--user", "alice"],
        &[("DATABASE_URL", &db.url())],
    )
    .await;
    assert!(minted.status.success(), "{}", stderr(&minted));
    let status = http
        .get(h.server.at("/health"))
        .send()
        .await
        .expect("sent")
        .status();
    assert_eq!(status, StatusCode::OK);
}

/// What the rows role cannot do, tried directly in SQL.
async fn the_rows_role_cannot_change_the_schema(db: &TestDatabase) {
    let rows = connect(&db.url()).await;
    for statement in [
        "ALTER TABLE mana_changes NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE mana_changes DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE mana_legacy_cursors NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY mana_log_isolation ON mana_changes",
        "CREATE POLICY everything ON mana_changes USING (true)",
        "CREATE TABLE mana_intruder (x INT)",
        "TRUNCATE mana_changes",
        "DROP TABLE mana_changesets",
        &format!("SET ROLE {OWNER_ROLE}"),
    ] {
        let error = rows
            .batch_execute(statement)
            .await
            .expect_err(&format!("{statement} must be refused"));
        let code = error.as_db_error().map(|db| db.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error:?}");
    }
    // Row-level security applies to it: without declaring a user it sees nothing.
    let visible: i64 = rows
        .query_one("SELECT count(*) FROM mana_changes", &[])
        .await
        .expect("reads")
        .get(0);
    assert_eq!(visible, 0);
    let admin = db.admin().await;
    let stored: i64 = admin
        .query_one("SELECT count(*) FROM mana_changes", &[])
        .await
        .expect("reads")
        .get(0);
    assert_eq!(stored, 4, "alice's two changes and bob's restored two");
    let owner: String = admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'mana_changes'",
            &[],
        )
        .await
        .expect("reads")
        .get(0);
    assert_eq!(owner, OWNER_ROLE);
}

async fn start_server(env: Vec<(String, String)>, database_url: String) -> TestServer {
    TestServer::start(
        std::path::Path::new(common::BINARY),
        ServerOptions {
            database_url: Some(database_url),
            env,
            ..ServerOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_as_the_owner_then_serve_as_a_role_that_only_reads_and_writes_rows() {
    let Some(db) = TestDatabase::create_split().await else {
        return;
    };
    // Before migrations, the rows role cannot create the schema: the server
    // says what to do instead of failing on a CREATE TABLE.
    let refused = run(
        &["serve"],
        &[
            ("DATABASE_URL", &db.url()),
            ("PORT", "0"),
            ("HOST", "127.0.0.1"),
            ("JWT_SECRET", mana_sync_testkit::server::TEST_SECRET),
        ],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("mana-sync migrate"),
        "{}",
        stderr(&refused)
    );

    let migrated = run(
        &["migrate", "--app-role", ROWS_ROLE],
        &[("DATABASE_URL", &db.owner_url())],
    )
    .await;
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    assert!(
        String::from_utf8_lossy(&migrated.stdout).contains(ROWS_ROLE),
        "says whom it granted rows to"
    );
    // Migrating again changes nothing and still succeeds.
    let again = run(
        &["migrate", "--app-role", ROWS_ROLE],
        &[("DATABASE_URL", &db.owner_url())],
    )
    .await;
    assert!(again.status.success(), "{}", stderr(&again));

    let server = start_server(Vec::new(), db.url()).await;
    let h = Harness {
        server,
        db: Some(db),
    };
    let db = h.db.as_ref().expect("database");
    the_server_works(&h, db).await;
    the_rows_role_cannot_change_the_schema(db).await;
    let logs = h.server.logs();
    assert!(!logs.contains("owns"), "no ownership warning: {logs}");
    assert!(!logs.contains("applied migration"), "{logs}");

    // A table the owner adds later (a future migration) is the rows role's
    // to read and write too.
    let owner = connect(&db.owner_url()).await;
    owner
        .batch_execute("CREATE TABLE mana_future (id INT PRIMARY KEY)")
        .await
        .expect("the owner creates a table");
    let rows = connect(&db.url()).await;
    rows.batch_execute("INSERT INTO mana_future VALUES (1); UPDATE mana_future SET id = 2; DELETE FROM mana_future")
        .await
        .expect("the rows role writes rows of a later table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_url_lets_the_server_migrate_as_the_owner_and_serve_as_the_rows_role() {
    let Some(db) = TestDatabase::create_split().await else {
        return;
    };
    let env = vec![("MIGRATION_DATABASE_URL".to_owned(), db.owner_url())];
    let server = start_server(env.clone(), db.url()).await;
    assert!(
        server.logs().contains("applied migration"),
        "{}",
        server.logs()
    );
    let mut h = Harness {
        server,
        db: Some(db),
    };
    the_server_works(&h, h.db.as_ref().expect("database")).await;
    the_rows_role_cannot_change_the_schema(h.db.as_ref().expect("database")).await;
    assert!(!h.server.logs().contains("owns"), "{}", h.server.logs());
    // A restart with nothing to migrate.
    h.server.terminate(PROMPTLY).await;
    let url = h.db.as_ref().expect("database").url();
    let restarted = start_server(env, url).await;
    let (status, _) = common::read(
        mana_sync_testkit::http_client()
            .get(restarted.at("/health"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_owns_its_tables_still_works_and_says_what_that_risks() {
    let Some(h) = Harness::start(common::Db::Postgres).await else {
        return;
    };
    h.server.wait_for_log("owns its tables", PROMPTLY).await;
    let (status, _) = h
        .device("alice", "phone")
        .push("todo", START, json!([insert("tasks", "1")]))
        .await;
    assert_eq!(status, StatusCode::OK);
}
