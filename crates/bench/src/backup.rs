//! Backups: export and import rate and the server's peak memory, against the
//! raw database reading and inserting the same rows through the same driver.

use std::time::{Duration, Instant};

use futures::StreamExt as _;

use crate::Backend;
use crate::raw::{postgres_connection, sqlite_connection};
use crate::server::{self, Env};

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} for {pid}"))
}

/// Resets the process's peak resident set to its current size (Linux).
fn reset_peak(pid: u32) -> anyhow::Result<u64> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    status_kib(pid, "VmRSS:")
}

/// One measured phase.
pub struct Phase {
    pub label: String,
    pub changes: usize,
    pub server: Duration,
    pub raw: Duration,
    pub peak_kib: u64,
}

async fn export_over_http(env: &Env, user: &str) -> anyhow::Result<(Vec<u8>, usize)> {
    let response = env
        .http
        .get(env.server.at("/backup/export"))
        .bearer_auth(env.server.token(user))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "export: {}",
        response.status()
    );
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        body.extend_from_slice(&chunk?);
    }
    let lines = body.iter().filter(|b| **b == b'\n').count();
    Ok((body, lines))
}

/// Reads every row of `user` in seq order, as the export does, into owned values.
async fn raw_export(env: &Env, user: &str) -> anyhow::Result<usize> {
    match env.backend {
        Backend::Postgres => {
            let mut client = postgres_connection(env).await?;
            let tx = client.transaction().await?;
            let statement = tx
                .prepare(
                    "SELECT seq, event_id, app_id, table_name, record_id, op, data, fields, deleted_at, actor,
                            client_id, schema_version, created_at
                     FROM raw_changes WHERE user_id = $1 ORDER BY seq",
                )
                .await?;
            let portal = tx.bind(&statement, &[&user]).await?;
            let mut rows_read = 0;
            loop {
                let rows = tx.query_portal(&portal, 500).await?;
                for row in &rows {
                    let _: (
                        i64,
                        uuid::Uuid,
                        String,
                        String,
                        String,
                        String,
                        Option<String>,
                    ) = (
                        row.get(0),
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        row.get(4),
                        row.get(5),
                        row.get(6),
                    );
                    let _: (
                        Option<String>,
                        Option<String>,
                        Option<String>,
                        String,
                        i32,
                        time::OffsetDateTime,
                    ) = (
                        row.get(7),
                        row.get(8),
                        row.get(9),
                        row.get(10),
                        row.get(11),
                        row.get(12),
                    );
                }
                rows_read += rows.len();
                if rows.len() < 500 {
                    return Ok(rows_read);
                }
            }
        }
        Backend::Sqlite => {
            let conn = sqlite_connection(env)?;
            let user = user.to_owned();
            tokio::task::spawn_blocking(move || {
                let mut statement = conn.prepare(
                    "SELECT seq, event_id, app_id, table_name, record_id, op, data, fields, deleted_at, actor,
                            client_id, schema_version, created_at
                     FROM raw_changes WHERE user_id = ?1 ORDER BY seq",
                )?;
                let mut rows = statement.query([&user])?;
                let mut rows_read = 0;
                while let Some(row) = rows.next()? {
                    let _: (i64, String, String, String, String, String, Option<String>) =
                        (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?);
                    let _: (Option<String>, Option<String>, Option<String>, String, i64, i64) =
                        (row.get(7)?, row.get(8)?, row.get(9)?, row.get(10)?, row.get(11)?, row.get(12)?);
                    rows_read += 1;
                }
                Ok(rows_read)
            })
            .await?
        }
    }
}

/// Inserts the exported rows again in one transaction, in batches, skipping
/// known event ids, as the import does.
async fn raw_import(env: &Env) -> anyhow::Result<()> {
    match env.backend {
        Backend::Postgres => {
            let mut reader = postgres_connection(env).await?;
            let mut writer = postgres_connection(env).await?;
            writer
                .batch_execute("CREATE TABLE raw_restore (LIKE raw_changes INCLUDING ALL);")
                .await?;
            let read = reader.transaction().await?;
            let statement = read
                .prepare("SELECT * FROM raw_changes ORDER BY user_id, seq")
                .await?;
            let portal = read.bind(&statement, &[]).await?;
            let write = writer.transaction().await?;
            let insert = write
                .prepare(
                    "INSERT INTO raw_restore SELECT * FROM UNNEST($1::text[], $2::int8[], $3::uuid[],
                         $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                         $10::text[], $11::text[], $12::text[], $13::int4[], $14::timestamptz[])
                     ON CONFLICT (user_id, event_id) DO NOTHING",
                )
                .await?;
            loop {
                let rows = read.query_portal(&portal, 1000).await?;
                if rows.is_empty() {
                    break;
                }
                macro_rules! column {
                    ($i:expr, $t:ty) => {
                        rows.iter()
                            .map(|row| row.get::<_, $t>($i))
                            .collect::<Vec<$t>>()
                    };
                }
                write
                    .execute(
                        &insert,
                        &[
                            &column!(0, String),
                            &column!(1, i64),
                            &column!(2, uuid::Uuid),
                            &column!(3, String),
                            &column!(4, String),
                            &column!(5, String),
                            &column!(6, String),
                            &column!(7, Option<String>),
                            &column!(8, Option<String>),
                            &column!(9, Option<String>),
                            &column!(10, Option<String>),
                            &column!(11, String),
                            &column!(12, i32),
                            &column!(13, time::OffsetDateTime),
                        ],
                    )
                    .await?;
            }
            write.commit().await?;
            read.commit().await?;
        }
        Backend::Sqlite => {
            let mut conn = sqlite_connection(env)?;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                conn.execute_batch(
                    "CREATE TABLE raw_restore AS SELECT * FROM raw_changes WHERE 0;
                     CREATE UNIQUE INDEX raw_restore_event ON raw_restore (event_id, user_id);
                     CREATE UNIQUE INDEX raw_restore_seq ON raw_restore (user_id, seq);",
                )?;
                let tx = conn.transaction()?;
                {
                    let mut read = tx.prepare("SELECT * FROM raw_changes ORDER BY user_id, seq")?;
                    // Every column of the raw table, however many it has
                    // (a fixed list broke when it gained `author_id`).
                    let columns = read.column_count();
                    let placeholders = (1..=columns)
                        .map(|i| format!("?{i}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let mut insert = tx.prepare(&format!(
                        "INSERT INTO raw_restore VALUES ({placeholders})
                         ON CONFLICT (event_id, user_id) DO NOTHING"
                    ))?;
                    let mut rows = read.query([])?;
                    while let Some(row) = rows.next()? {
                        let values: Vec<rusqlite::types::Value> =
                            (0..columns).map(|i| row.get(i)).collect::<Result<_, _>>()?;
                        insert.execute(rusqlite::params_from_iter(values))?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await??;
        }
    }
    Ok(())
}

/// Export and import of `changes` changes (plus a tenth as many, to show that
/// export memory does not grow with the history).
pub async fn run(
    backend: Backend,
    binary: &std::path::Path,
    changes: usize,
) -> anyhow::Result<Vec<Phase>> {
    let source = Env::new(backend, binary).await?;
    let pid = source
        .server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no server"))?;
    let small = changes / 10;
    server::preload_user(&source, "backup-big", changes, 500).await?;
    server::preload_user(&source, "backup-small", small, 500).await?;
    crate::raw::copy_log(&source).await?;
    let mut phases = Vec::new();
    let mut big_backup = Vec::new();
    for (user, count) in [("backup-small", small), ("backup-big", changes)] {
        let baseline = reset_peak(pid)?;
        let started = Instant::now();
        let (body, lines) = export_over_http(&source, user).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(lines == count, "exported {lines} lines, expected {count}");
        let peak = status_kib(pid, "VmHWM:")?.saturating_sub(baseline);
        let started = Instant::now();
        let raw_rows = raw_export(&source, user).await?;
        let raw = started.elapsed();
        anyhow::ensure!(raw_rows == count, "raw read {raw_rows} rows");
        phases.push(Phase {
            label: format!("export, {} MB of NDJSON", body.len() / 1_000_000),
            changes: count,
            server: elapsed,
            raw,
            peak_kib: peak,
        });
        if count == changes {
            big_backup = body;
        }
    }

    let target = Env::new(backend, binary).await?;
    let pid = target
        .server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no server"))?;
    let baseline = reset_peak(pid)?;
    let started = Instant::now();
    let response = target
        .http
        .post(target.server.at("/backup/import"))
        .bearer_auth(target.server.token("backup-big"))
        .body(big_backup)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "import: {}",
        response.status()
    );
    let report: serde_json::Value = response.json().await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(report["imported"] == changes, "import report {report}");
    let peak = status_kib(pid, "VmHWM:")?.saturating_sub(baseline);
    let started = Instant::now();
    raw_import(&source).await?;
    let raw = started.elapsed();
    phases.push(Phase {
        label: "import (validate, spool, one transaction)".into(),
        changes,
        server: elapsed,
        raw,
        peak_kib: peak,
    });
    Ok(phases)
}

/// Another user's pushes while a large backup is imported.
pub struct Contention {
    pub backend: Backend,
    pub backup_bytes: usize,
    pub changes: usize,
    pub import: Duration,
    pub idle: Vec<Duration>,
    pub during: Vec<Duration>,
}

/// The latency of one-change pushes of another user, before and while a
/// backup of `mib` MiB is imported over HTTP (the import is one transaction:
/// all or nothing).
pub async fn contention(
    backend: Backend,
    binary: &std::path::Path,
    mib: usize,
) -> anyhow::Result<Contention> {
    use std::io::Write as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let env = Env::new(backend, binary).await?;
    let filler = "x".repeat(900);
    let mut body = Vec::with_capacity((mib << 20) + 2048);
    let mut changes = 0;
    while body.len() < mib << 20 {
        writeln!(
            body,
            r#"{{"eventId":"{}","schemaVersion":2,"appId":"bench","table":"tasks","id":"r{changes}","op":"insert","data":{{"f":"{filler}"}},"clientId":"d","createdAt":"2026-11-25T10:00:00Z"}}"#,
            uuid::Uuid::new_v4()
        )?;
        changes += 1;
    }
    let backup_bytes = body.len();
    let push_url = env.server.at("/sync/bench");
    let push_token = env.server.token("bystander");
    let push = {
        let http = env.http.clone();
        move |n: usize| {
            let request = http
                .post(&push_url)
                .bearer_auth(&push_token)
                .header("x-client-id", "phone")
                .json(&serde_json::json!({
                    "since": "1970-01-01T00:00:00.000Z",
                    "changes": [{"table": "tasks", "id": format!("b{n}"), "op": "insert", "data": {"n": n}}],
                }));
            async move {
                let started = Instant::now();
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "push: {}",
                    response.status()
                );
                Ok(started.elapsed())
            }
        }
    };
    let mut idle = Vec::new();
    for n in 0..50 {
        idle.push(push(n).await?);
    }
    let importing = Arc::new(AtomicBool::new(true));
    let bystander = tokio::spawn({
        let importing = importing.clone();
        let push = push.clone();
        async move {
            let mut during = Vec::new();
            let mut n = 1000;
            while importing.load(Ordering::Relaxed) {
                during.push(push(n).await?);
                n += 1;
            }
            anyhow::Ok(during)
        }
    });
    let started = Instant::now();
    let response = env
        .http
        .post(env.server.at("/backup/import"))
        .bearer_auth(env.server.token("importer"))
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "import: {}",
        response.text().await?
    );
    let import = started.elapsed();
    importing.store(false, Ordering::Relaxed);
    let during = bystander.await??;
    Ok(Contention {
        backend,
        backup_bytes,
        changes,
        import,
        idle,
        during,
    })
}
