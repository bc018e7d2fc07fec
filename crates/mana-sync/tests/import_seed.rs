//! `mana-sync import-seed` against a real table in the seed's schema: the
//! real binary copies it into SQLite or Postgres, then the server's HTTP API
//! shows what each user got.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Device, START};
use mana_sync_testkit::pg::TestDatabase;
use mana_sync_testkit::server::TestServer;
use serde_json::{Value, json};

/// The seed's table, as its Go server creates it.
const SEED_SCHEMA: &str = "CREATE TABLE sync_changes (
    id UUID PRIMARY KEY, app_id TEXT, table_name TEXT, record_id TEXT, user_id TEXT,
    op TEXT, data JSONB, field_timestamps JSONB, client_id TEXT, created_at TIMESTAMPTZ,
    schema_version INT DEFAULT 1, actor JSONB)";

fn row_id(n: u32) -> String {
    format!("5eed0000-0000-4000-8000-{n:012}")
}

/// One row of the seed: `(id, user, app, table, record, op, data,
/// field_timestamps, client, created_at, actor)`; `None` is NULL.
type SeedRow = (
    u32,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// Two users; ids deliberately out of `created_at` order, one `created_at`
/// tie (broken by id), NULL and present actors, every op and shape.
const ROWS: &[SeedRow] = &[
    (
        5,
        "bob",
        "notes",
        "pages",
        "p1",
        "update",
        Some(r#"{"body": "hello"}"#),
        Some(r#"{"body": "2026-01-01T09:00:00.900Z"}"#),
        "bob-web",
        "2026-01-01T09:00:01Z",
        None,
    ),
    (
        9,
        "alice",
        "todo",
        "tasks",
        "t1",
        "insert",
        Some(r#"{"title": "Buy milk", "done": false, "n": 1.50}"#),
        None,
        "web-1",
        "2026-01-01T10:00:00.5Z",
        None,
    ),
    (
        7,
        "alice",
        "todo",
        "tasks",
        "t1",
        "update",
        Some(r#"{"title": "Buy oat milk", "done": true}"#),
        Some(r#"{"title": "2026-01-01T10:00:02.000Z", "done": "2026-01-01T10:00:03.000Z"}"#),
        "web-2",
        "2026-01-01T10:00:04.5Z",
        None,
    ),
    (
        3,
        "alice",
        "todo",
        "tasks",
        "t2",
        "insert",
        Some(r#"{"title": "Call mum"}"#),
        Some(r#"{"title": "2026-01-01T10:00:01.000Z"}"#),
        "web-1",
        "2026-01-01T10:00:01.5Z",
        Some(r#"{"kind": "ai", "model": "planner-2"}"#),
    ),
    (
        2,
        "alice",
        "todo",
        "tasks",
        "t1",
        "update",
        Some(r#"{"n": 2.50}"#),
        None,
        "web-1",
        "2026-01-01T10:00:04.5Z",
        None,
    ),
    (
        8,
        "bob",
        "notes",
        "pages",
        "p1",
        "insert",
        Some(r#"{"body": ""}"#),
        None,
        "bob-web",
        "2026-01-01T09:00:00Z",
        Some(r#"{"kind": "ai"}"#),
    ),
    (
        1,
        "alice",
        "todo",
        "tasks",
        "t2",
        "delete",
        Some(r#"{"deletedAt": "2026-01-01T10:00:08.000Z"}"#),
        None,
        "web-2",
        "2026-01-01T10:00:08.5Z",
        None,
    ),
    (
        6,
        "bob",
        "notes",
        "pages",
        "p1",
        "delete",
        None,
        None,
        "bob-web",
        "2026-01-01T09:00:02Z",
        None,
    ),
    (
        4,
        "alice",
        "todo",
        "tasks",
        "t1",
        "delete",
        None,
        None,
        "web-1",
        "2026-01-01T10:00:09.5Z",
        Some(r#"{"kind": "system"}"#),
    ),
];

/// A throwaway database holding the seed's table with `rows`.
async fn seed_database(rows: &[SeedRow]) -> Option<TestDatabase> {
    let database = TestDatabase::create().await?;
    let client = database.app().await;
    client
        .batch_execute(SEED_SCHEMA)
        .await
        .expect("creates the seed table");
    for row in rows {
        insert_row(&client, row).await;
    }
    Some(database)
}

async fn insert_row(client: &tokio_postgres::Client, row: &SeedRow) {
    let (n, user, app, table, record, op, data, stamps, device, created_at, actor) = *row;
    client
        .execute(
            "INSERT INTO sync_changes (id, user_id, app_id, table_name, record_id, op, data,
                 field_timestamps, client_id, created_at, actor)
             VALUES ($1::text::uuid, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9,
                 $10::text::timestamptz, $11::text::jsonb)",
            &[
                &row_id(n),
                &user,
                &app,
                &table,
                &record,
                &op,
                &data,
                &stamps,
                &device,
                &created_at,
                &actor,
            ],
        )
        .await
        .expect("inserts a seed row");
}

/// Runs `mana-sync import-seed --from SEED` into `target`.
async fn import_seed(seed: &str, target: &str) -> std::process::Output {
    tokio::process::Command::new(common::BINARY)
        .args(["import-seed", "--from", seed, "--database-url", target])
        .env_clear()
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("runs")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Where the import writes: a SQLite file in a temporary directory, or
/// another throwaway Postgres database.
enum Target {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

impl Target {
    async fn sqlite() -> Option<Self> {
        Some(Self::Sqlite(tempfile::tempdir().expect("temp dir")))
    }

    async fn postgres() -> Option<Self> {
        TestDatabase::create().await.map(Self::Postgres)
    }

    fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("sync.db").display()),
            Self::Postgres(database) => database.url(),
        }
    }
}

/// Every change of one collection that a new device of `user` pulls.
async fn pull(server: &TestServer, user: &str, app: &str, collection: &str) -> Vec<Value> {
    let device = Device {
        http: mana_sync_testkit::http_client(),
        base: server.url.clone(),
        token: server.token(user),
        client_id: "new-device".into(),
    };
    device.pull_all(app, collection, START).await.0
}

async fn copies_every_user_in_created_at_order(target: Option<Target>) {
    let Some(target) = target else { return };
    let Some(seed) = seed_database(ROWS).await else {
        return;
    };
    let first = import_seed(&seed.url(), &target.url()).await;
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        stdout(&first),
        "users 2, rows read 9, imported 9, skipped 0"
    );

    let server = common::server_on(target.url()).await;
    let alice = vec![
        json!({"table": "tasks", "id": "t1", "op": "insert",
               "data": {"title": "Buy milk", "done": false, "n": 1.5},
               "eventId": row_id(9), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t2", "op": "insert", "data": {"title": "Call mum"},
               "fields": {"title": common::seed_field(json!("Call mum"), "2026-01-01T10:00:01.000Z")},
               "actor": {"kind": "ai", "model": "planner-2"},
               "eventId": row_id(3), "schemaVersion": 1}),
        // Same created_at as row 7: the smaller id comes first. `n` has no
        // timestamp of its own and takes the row's created_at.
        json!({"table": "tasks", "id": "t1", "op": "update",
               "fields": {"n": common::seed_field(json!(2.5), "2026-01-01T10:00:04.5Z")},
               "eventId": row_id(2), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t1", "op": "update",
               "fields": {"done": common::seed_field(json!(true), "2026-01-01T10:00:03.000Z"),
                          "title": common::seed_field(json!("Buy oat milk"), "2026-01-01T10:00:02.000Z")},
               "eventId": row_id(7), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t2", "op": "delete",
               "deletedAt": "2026-01-01T10:00:08.000Z", "eventId": row_id(1), "schemaVersion": 1}),
        json!({"table": "tasks", "id": "t1", "op": "delete",
               "deletedAt": "2026-01-01T10:00:09.5Z", "actor": {"kind": "system"},
               "eventId": row_id(4), "schemaVersion": 1}),
    ];
    let bob = vec![
        json!({"table": "pages", "id": "p1", "op": "insert", "data": {"body": ""},
               "actor": {"kind": "ai"}, "eventId": row_id(8), "schemaVersion": 1}),
        json!({"table": "pages", "id": "p1", "op": "update",
               "fields": {"body": common::seed_field(json!("hello"), "2026-01-01T09:00:00.900Z")},
               "eventId": row_id(5), "schemaVersion": 1}),
        json!({"table": "pages", "id": "p1", "op": "delete",
               "deletedAt": "2026-01-01T09:00:02Z", "eventId": row_id(6), "schemaVersion": 1}),
    ];
    assert_eq!(pull(&server, "alice", "todo", "tasks").await, alice);
    assert_eq!(pull(&server, "bob", "notes", "pages").await, bob);
    assert!(pull(&server, "alice", "notes", "pages").await.is_empty());
    assert!(pull(&server, "bob", "todo", "tasks").await.is_empty());

    // Devices and creation times are kept (the export shows them).
    let export = common::export(&server, "alice").await;
    let kept: Vec<(String, String)> = export
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line"))
        .map(|line| {
            (
                line["clientId"].as_str().expect("clientId").to_owned(),
                line["createdAt"].as_str().expect("createdAt").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            ("web-1", "2026-01-01T10:00:00.5Z"),
            ("web-1", "2026-01-01T10:00:01.5Z"),
            ("web-1", "2026-01-01T10:00:04.5Z"),
            ("web-2", "2026-01-01T10:00:04.5Z"),
            ("web-2", "2026-01-01T10:00:08.5Z"),
            ("web-1", "2026-01-01T10:00:09.5Z"),
        ]
        .map(|(device, at)| (device.to_owned(), at.to_owned()))
    );

    let second = import_seed(&seed.url(), &target.url()).await;
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        stdout(&second),
        "users 2, rows read 9, imported 0, skipped 9"
    );
    assert_eq!(pull(&server, "alice", "todo", "tasks").await, alice);
    assert_eq!(pull(&server, "bob", "notes", "pages").await, bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_every_user_in_created_at_order_into_sqlite() {
    copies_every_user_in_created_at_order(Target::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_every_user_in_created_at_order_into_postgres() {
    copies_every_user_in_created_at_order(Target::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_converted_stops_with_nothing_of_its_user_stored() {
    let Some(target) = Target::sqlite().await else {
        return;
    };
    let mut rows = ROWS.to_vec();
    rows.extend([
        (
            20,
            "carol",
            "todo",
            "tasks",
            "c1",
            "insert",
            Some(r#"{"title": "fine"}"#),
            None,
            "web-3",
            "2026-01-01T11:00:00Z",
            None,
        ),
        (
            21,
            "carol",
            "todo",
            "tasks",
            "c1",
            "update",
            Some(r#"{"title": "broken"}"#),
            Some(r#"["2026-01-01T11:00:01Z"]"#),
            "web-3",
            "2026-01-01T11:00:01Z",
            None,
        ),
        (
            22,
            "carol",
            "todo",
            "tasks",
            "c2",
            "insert",
            Some(r#"{"title": "after"}"#),
            None,
            "web-3",
            "2026-01-01T11:00:02Z",
            None,
        ),
    ]);
    let Some(seed) = seed_database(&rows).await else {
        return;
    };
    let failed = import_seed(&seed.url(), &target.url()).await;
    assert!(!failed.status.success());
    let message = stderr(&failed);
    let errors: Vec<&str> = message.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(errors.len(), 1, "one line: {message}");
    for needle in [
        row_id(21).as_str(),
        "carol",
        "`fieldTimestamps`",
        "nothing of user carol",
    ] {
        assert!(
            message.contains(needle),
            "`{message}` does not mention {needle}"
        );
    }

    let server = common::server_on(target.url()).await;
    assert!(
        pull(&server, "carol", "todo", "tasks").await.is_empty(),
        "carol's good rows before the bad one were rolled back"
    );
    assert_eq!(pull(&server, "alice", "todo", "tasks").await.len(), 6);

    // Fixed at the source, a re-run copies carol and skips the others.
    seed.app()
        .await
        .execute(
            "UPDATE sync_changes SET field_timestamps = NULL WHERE id = $1::text::uuid",
            &[&row_id(21)],
        )
        .await
        .expect("fixes the row");
    let rerun = import_seed(&seed.url(), &target.url()).await;
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert_eq!(
        stdout(&rerun),
        "users 3, rows read 12, imported 3, skipped 9"
    );
    assert_eq!(pull(&server, "carol", "todo", "tasks").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stream_in_batches_and_users_change_mid_batch() {
    let Some(target) = Target::postgres().await else {
        return;
    };
    let Some(seed) = seed_database(&[]).await else {
        return;
    };
    // 1300 rows over three users: more than one fetch, users interleaved in
    // the table, ids (md5) in no relation to created_at.
    seed.app()
        .await
        .batch_execute(
            "INSERT INTO sync_changes (id, user_id, app_id, table_name, record_id, op, data,
                 client_id, created_at)
             SELECT md5(i::text)::uuid, 'user' || (i % 3), 'todo', 'tasks', 'r' || i, 'insert',
                 jsonb_build_object('n', i), 'dev',
                 timestamptz '2026-01-01T00:00:00Z' + i * interval '1 millisecond'
               FROM generate_series(1, 1300) AS i",
        )
        .await
        .expect("fills the seed");
    let output = import_seed(&seed.url(), &target.url()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "users 3, rows read 1300, imported 1300, skipped 0"
    );
    let server = common::server_on(target.url()).await;
    for user in 0..3 {
        let pulled = pull(&server, &format!("user{user}"), "todo", "tasks").await;
        let numbers: Vec<u64> = pulled
            .iter()
            .map(|change| change["data"]["n"].as_u64().expect("n"))
            .collect();
        let expected: Vec<u64> = (1..=1300).filter(|i| i % 3 == user).collect();
        assert_eq!(numbers, expected, "user{user} in created_at order");
    }
}
