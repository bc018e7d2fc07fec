//! The raw side: the same inserts and selects through the same drivers the
//! server uses (tokio-postgres, rusqlite), on a copy of the change log table
//! with the same columns and indexes.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::Backend;
use crate::server::Env;

/// The rows of one changeset, as the server would store them.
struct Batch {
    user: String,
    first_seq: i64,
    event_ids: Vec<Uuid>,
    record_ids: Vec<String>,
    data: Vec<String>,
}

fn batches(users: usize, changes: usize, batch: usize) -> Vec<Vec<Batch>> {
    let per_user = changes / users / batch;
    (0..users)
        .map(|u| {
            (0..per_user)
                .map(|b| {
                    let ids: Vec<String> = (0..batch).map(|i| format!("w{u}-{b}-{i}")).collect();
                    Batch {
                        user: format!("bench-user-{u}"),
                        first_seq: i64::try_from(b * batch + 1).expect("fits"),
                        event_ids: (0..batch).map(|_| Uuid::now_v7()).collect(),
                        data: ids
                            .iter()
                            .enumerate()
                            .map(|(i, id)| {
                                json!({"id": id, "title": "Buy oat milk", "done": false, "order": i}).to_string()
                            })
                            .collect(),
                        record_ids: ids,
                    }
                })
                .collect()
        })
        .collect()
}

/// The change log's table with the server's indexes (`migrations/sqlite`):
/// by position, and by event id.
const SQLITE_RAW_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS raw_changes (
        user_id TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL, app_id TEXT NOT NULL,
        table_name TEXT NOT NULL, record_id TEXT NOT NULL, op TEXT NOT NULL, data TEXT, fields TEXT,
        deleted_at TEXT, actor TEXT, client_id TEXT NOT NULL, schema_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL, author_id TEXT);
    CREATE UNIQUE INDEX IF NOT EXISTS raw_user_seq ON raw_changes (user_id, seq);
    CREATE UNIQUE INDEX IF NOT EXISTS raw_event_user ON raw_changes (event_id, user_id);";

pub fn sqlite_connection(env: &Env) -> anyhow::Result<rusqlite::Connection> {
    let path = env
        .sqlite_path()
        .ok_or_else(|| anyhow::anyhow!("not SQLite"))?;
    let conn = rusqlite::Connection::open(path)?;
    // The same durability the server uses.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
    )?;
    conn.execute_batch(SQLITE_RAW_TABLE)?;
    Ok(conn)
}

pub async fn postgres_connection(env: &Env) -> anyhow::Result<tokio_postgres::Client> {
    let db = env
        .database
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("not Postgres"))?;
    let client = db.app().await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS raw_changes (LIKE mana_changes INCLUDING ALL)")
        .await?;
    Ok(client)
}

/// Inserts the same rows the server stored, one transaction per changeset.
pub async fn push(
    env: &Env,
    users: usize,
    changes: usize,
    batch: usize,
) -> anyhow::Result<Duration> {
    let work = batches(users, changes, batch);
    match env.backend {
        Backend::Postgres => {
            let mut clients = Vec::new();
            for _ in 0..users {
                clients.push(postgres_connection(env).await?);
            }
            let started = Instant::now();
            let tasks: Vec<_> = clients
                .into_iter()
                .zip(work)
                .map(|(client, batches)| {
                    tokio::spawn(async move { postgres_insert(&client, &batches).await })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
            Ok(started.elapsed())
        }
        // SQLite has one writer; the best raw baseline is one connection
        // writing every user's changesets in turn (the server does the same).
        Backend::Sqlite => {
            let mut conn = sqlite_connection(env)?;
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                for batch in work.iter().flatten() {
                    sqlite_insert(&mut conn, batch)?;
                }
                Ok(started.elapsed())
            })
            .await?
        }
    }
}

async fn postgres_insert(client: &tokio_postgres::Client, batches: &[Batch]) -> anyhow::Result<()> {
    let insert = client
        .prepare(
            "INSERT INTO raw_changes (user_id, seq, event_id, app_id, table_name, record_id, op, data,
                 client_id, schema_version, created_at)
             SELECT $1, $2 + u.ord, u.event_id, 'bench', 'tasks', u.record_id, 'insert', u.data,
                 'device', 1, now()
             FROM UNNEST($3::uuid[], $4::text[], $5::text[]) WITH ORDINALITY AS u(event_id, record_id, data, ord)",
        )
        .await?;
    for batch in batches {
        let before_first = batch.first_seq - 1;
        client
            .execute(
                &insert,
                &[
                    &batch.user,
                    &before_first,
                    &batch.event_ids,
                    &batch.record_ids,
                    &batch.data,
                ],
            )
            .await?;
    }
    Ok(())
}

fn sqlite_insert(conn: &mut rusqlite::Connection, batch: &Batch) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO raw_changes (user_id, seq, event_id, app_id, table_name, record_id, op, data,
                 client_id, schema_version, created_at)
             VALUES (?1, ?2, ?3, 'bench', 'tasks', ?4, 'insert', ?5, 'device', 1, ?6)",
        )?;
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_micros(),
        )?;
        for (offset, ((event_id, record_id), data)) in batch
            .event_ids
            .iter()
            .zip(&batch.record_ids)
            .zip(&batch.data)
            .enumerate()
        {
            let seq = batch.first_seq + i64::try_from(offset)?;
            insert.execute(rusqlite::params![
                batch.user,
                seq,
                event_id.to_string(),
                record_id,
                data,
                now
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Copies the server's log into `raw_changes` for the pull comparison.
pub async fn copy_log(env: &Env) -> anyhow::Result<()> {
    match env.backend {
        Backend::Postgres => {
            postgres_connection(env).await?;
            let db = env
                .database
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("not Postgres"))?;
            // A superuser sees every row regardless of row-level security.
            db.admin()
                .await
                .batch_execute("INSERT INTO raw_changes SELECT * FROM mana_changes; ANALYZE raw_changes; ANALYZE mana_changes;")
                .await?;
        }
        Backend::Sqlite => {
            let conn = sqlite_connection(env)?;
            conn.execute_batch("INSERT INTO raw_changes SELECT * FROM mana_changes; ANALYZE;")?;
        }
    }
    Ok(())
}

/// Empties the copy of the change log.
pub async fn clear(env: &Env) -> anyhow::Result<()> {
    match env.backend {
        Backend::Postgres => {
            postgres_connection(env)
                .await?
                .batch_execute("TRUNCATE raw_changes")
                .await?;
        }
        Backend::Sqlite => sqlite_connection(env)?.execute_batch("DELETE FROM raw_changes")?,
    }
    Ok(())
}

const SELECT_PAGE: &str =
    "SELECT seq, event_id, app_id, table_name, record_id, op, data, fields, deleted_at, actor,
        client_id, schema_version, created_at
     FROM raw_changes WHERE user_id = $1 AND app_id = $2 AND table_name = $3 AND seq > $4
     ORDER BY seq LIMIT 1001";

/// Follows the same pages the server serves, reading every column into
/// owned values as the server does.
pub async fn pull(env: &Env, expected: usize) -> anyhow::Result<Duration> {
    match env.backend {
        Backend::Postgres => {
            let client = postgres_connection(env).await?;
            let select = client.prepare(SELECT_PAGE).await?;
            let started = Instant::now();
            let (mut after, mut seen) = (0_i64, 0);
            loop {
                let rows = client
                    .query(&select, &[&"bench-reader", &"bench", &"tasks", &after])
                    .await?;
                let has_more = rows.len() > 1000;
                for row in rows.iter().take(1000) {
                    let record: (i64, Uuid, String, String, String, String, Option<String>) = (
                        row.get(0),
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        row.get(4),
                        row.get(5),
                        row.get(6),
                    );
                    let rest: (Option<String>, Option<String>, Option<String>, String, i32) =
                        (row.get(7), row.get(8), row.get(9), row.get(10), row.get(11));
                    let _created: time::OffsetDateTime = row.get(12);
                    after = record.0;
                    std::hint::black_box((&record, &rest));
                    seen += 1;
                }
                if !has_more {
                    break;
                }
            }
            anyhow::ensure!(
                seen == expected,
                "raw pull read {seen}, expected {expected}"
            );
            Ok(started.elapsed())
        }
        Backend::Sqlite => {
            let conn = sqlite_connection(env)?;
            tokio::task::spawn_blocking(move || {
                let sql = SELECT_PAGE
                    .replace("$1", "?1")
                    .replace("$2", "?2")
                    .replace("$3", "?3")
                    .replace("$4", "?4");
                let mut select = conn.prepare(&sql)?;
                let started = Instant::now();
                let (mut after, mut seen) = (0_i64, 0);
                loop {
                    let mut rows = select.query(rusqlite::params!["bench-reader", "bench", "tasks", after])?;
                    let mut count = 0;
                    while let Some(row) = rows.next()? {
                        count += 1;
                        if count > 1000 {
                            break;
                        }
                        let record: (i64, String, String, String, String, String, Option<String>) =
                            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?);
                        let rest: (Option<String>, Option<String>, Option<String>, String, i64, i64) =
                            (row.get(7)?, row.get(8)?, row.get(9)?, row.get(10)?, row.get(11)?, row.get(12)?);
                        after = record.0;
                        std::hint::black_box((&record, &rest));
                        seen += 1;
                    }
                    if count <= 1000 {
                        break;
                    }
                }
                anyhow::ensure!(seen == expected, "raw pull read {seen}, expected {expected}");
                Ok(started.elapsed())
            })
            .await?
        }
    }
}
