//! The raw database's side of `mana-sync-bench load`: the same durable
//! single-change transactions at the same concurrency, through the drivers
//! the server uses, with no server in between.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Measured, Shape};
use crate::cpu::Cpu;
use crate::server::Env;

/// How the raw Postgres side announces a change, if at all.
#[derive(Debug, Clone, Copy)]
pub enum RawNotify {
    /// One `INSERT` per transaction.
    None,
    /// `pg_notify` in the same transaction as the insert.
    InTransaction,
    /// `pg_notify` after the commit, in a statement (and transaction) of its own.
    AfterCommit,
}

/// `concurrency` connections, each committing one single-row `INSERT` per
/// transaction into a copy of the change log, for `duration`.
pub async fn raw_postgres(env: &Env, shape: &Shape, notify: RawNotify) -> anyhow::Result<Measured> {
    let setup = crate::raw::postgres_connection(env).await?;
    // A listener, as every instance has one.
    let db = env
        .database
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("not Postgres"))?;
    let (listener, mut connection) =
        tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await?;
    let drain = tokio::spawn(async move {
        while let Some(message) = futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if message.is_err() {
                break;
            }
        }
    });
    listener.batch_execute("LISTEN raw_bench").await?;
    drop(setup);
    let mut clients = Vec::new();
    for _ in 0..shape.concurrency {
        clients.push(crate::raw::postgres_connection(env).await?);
    }
    let deadline = Instant::now() + shape.duration;
    let started = Instant::now();
    let cpu_before = Cpu::now(None);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(worker, client)| {
            tokio::spawn(async move {
                let insert = client
                    .prepare(
                        "INSERT INTO raw_changes (user_id, seq, event_id, app_id, table_name, record_id,
                             op, fields, client_id, schema_version, created_at)
                         VALUES ($1, $2, $3, 'bench', 'tasks', $4, 'update', $5, $6, 1, now())",
                    )
                    .await?;
                let insert_notify = client
                    .prepare(
                        "WITH i AS (INSERT INTO raw_changes (user_id, seq, event_id, app_id, table_name,
                             record_id, op, fields, client_id, schema_version, created_at)
                         VALUES ($1, $2, $3, 'bench', 'tasks', $4, 'update', $5, $6, 1, now()))
                         SELECT pg_notify('raw_bench', $7)",
                    )
                    .await?;
                let notify_only = client.prepare("SELECT pg_notify('raw_bench', $1)").await?;
                let user = format!("raw-{notify:?}-{worker}");
                let client_id = format!("raw-device-{worker}");
                let fields = r#"{"title":{"value":"edit","updatedAt":"2026-11-29T19:20:00.000Z"}}"#;
                let mut latencies = Vec::new();
                let mut n = 0_i64;
                while Instant::now() < deadline {
                    n += 1;
                    let record = format!("{user}-{n}");
                    let event_id = uuid::Uuid::now_v7();
                    let payload = format!(r#"{{"u":"{user}","a":"bench","t":["tasks"],"p":{},"l":{n},"c":"{client_id}"}}"#, n - 1);
                    let begun = Instant::now();
                    match notify {
                        RawNotify::None => {
                            client
                                .execute(&insert, &[&user, &n, &event_id, &record, &fields, &client_id])
                                .await?;
                        }
                        RawNotify::InTransaction => {
                            client
                                .query_one(
                                    &insert_notify,
                                    &[&user, &n, &event_id, &record, &fields, &client_id, &payload],
                                )
                                .await?;
                        }
                        RawNotify::AfterCommit => {
                            client
                                .execute(&insert, &[&user, &n, &event_id, &record, &fields, &client_id])
                                .await?;
                            client.query_one(&notify_only, &[&payload]).await?;
                        }
                    }
                    latencies.push(begun.elapsed());
                }
                // Kept open until the CPU is read: a closed connection's
                // backend process, and its CPU time, are gone.
                anyhow::Ok((latencies, client))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut clients = Vec::new();
    for task in tasks {
        let (done, client) = task.await??;
        latencies.extend(done);
        clients.push(client);
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::now(None).since(&cpu_before);
    drop(clients);
    drop(listener);
    drain.abort();
    let label = match notify {
        RawNotify::None => "raw Postgres: one INSERT per transaction",
        RawNotify::InTransaction => "raw Postgres: INSERT + pg_notify in one transaction",
        RawNotify::AfterCommit => "raw Postgres: INSERT, then pg_notify after the commit",
    };
    Ok(Measured::of(label.into(), latencies, elapsed, cpu))
}

/// `concurrency` tasks sharing one rusqlite connection (SQLite has one
/// writer), each committing one durable transaction (`synchronous = FULL`)
/// per single-row insert, for `duration`.
pub async fn raw_sqlite(env: &Env, shape: &Shape) -> anyhow::Result<Measured> {
    let conn = Arc::new(Mutex::new(crate::raw::sqlite_connection(env)?));
    let deadline = Instant::now() + shape.duration;
    let started = Instant::now();
    let cpu_before = Cpu::now(None);
    let tasks: Vec<_> = (0..shape.concurrency)
        .map(|worker| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0_i64;
                while Instant::now() < deadline {
                    n += 1;
                    let conn = conn.clone();
                    let begun = Instant::now();
                    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                        let mut conn = conn.lock().expect("lock");
                        let tx = conn
                            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        tx.prepare_cached(
                            "INSERT INTO raw_changes (user_id, seq, event_id, app_id, table_name,
                                 record_id, op, fields, client_id, schema_version, created_at)
                             VALUES (?1, ?2, ?3, 'bench', 'tasks', ?4, 'update', ?5, ?6, 1, ?7)",
                        )?
                        .execute(rusqlite::params![
                            format!("raw-user-{worker}"),
                            n,
                            uuid::Uuid::now_v7().to_string(),
                            format!("raw-{worker}-{n}"),
                            r#"{"title":{"value":"edit","updatedAt":"2026-11-29T19:20:00.000Z"}}"#,
                            format!("raw-device-{worker}"),
                            0_i64,
                        ])?;
                        tx.commit()?;
                        Ok(())
                    })
                    .await??;
                    latencies.push(begun.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::now(None).since(&cpu_before);
    Ok(Measured::of(
        "raw SQLite: one durable transaction per insert".into(),
        latencies,
        elapsed,
        cpu,
    ))
}
