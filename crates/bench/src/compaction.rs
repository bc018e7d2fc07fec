//! A long-lived account, before and after compaction: `records` records, each
//! updated `updates` times across its fields from three devices; then a new
//! device's first sync (changes and bytes downloaded, time over HTTP, log
//! rows), compaction by `mana-sync compact` (changes folded per second), and
//! the latency of small pushes of the same user while it runs. The raw
//! database reads the same rows in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::server::Env;
use crate::{Backend, raw};

const USER: &str = "bench-reader";
const APP: &str = "bench";
const FIELDS: [&str; 4] = ["title", "done", "note", "order"];

/// What a new device downloads on its first sync.
pub struct FirstSync {
    pub changes: usize,
    pub bytes: usize,
    pub elapsed: Duration,
    /// The raw database reading the same rows.
    pub raw: Duration,
}

/// One database's results.
pub struct Report {
    pub backend: Backend,
    pub records: usize,
    pub before: FirstSync,
    pub after: FirstSync,
    /// Postgres: right after compaction, before (auto)vacuum.
    pub before_vacuum: Option<FirstSync>,
    pub folded: u64,
    pub compaction: Duration,
    pub push_idle: Latencies,
    pub push_during: Latencies,
}

/// Latencies of small pushes, sorted.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn percentile(&self, p: f64) -> Duration {
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(index).copied().unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    synced_until: String,
    has_more: bool,
    server_changes: Vec<serde::de::IgnoredAny>,
}

fn timestamp(n: usize) -> String {
    // Increasing, fixed-width, like the clients' hybrid logical clocks.
    format!(
        "2026-11-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        1 + n / 86_400_000 % 28,
        n / 3_600_000 % 24,
        n / 60_000 % 60,
        n / 1000 % 60,
        n % 1000
    )
}

async fn push(env: &Env, device: &str, token: &str, changes: serde_json::Value) -> Duration {
    let started = Instant::now();
    let response = env
        .http
        .post(env.server.at(&format!("/sync/{APP}")))
        .bearer_auth(token)
        .header("x-client-id", device)
        // A cursor far ahead: the reply carries nothing (loading, not syncing).
        .json(&json!({"since": "2999-01-01T00:00:00.000Z", "changes": changes}))
        .send()
        .await
        .expect("push sent");
    assert!(
        response.status().is_success(),
        "push failed: {}",
        response.status()
    );
    response.bytes().await.expect("reply");
    started.elapsed()
}

/// Inserts the records, then `updates` rounds of one update per record, the
/// three devices taking turns, three pushes in flight.
async fn load(env: &Env, records: usize, updates: usize) {
    let token = env.server.token(USER);
    let inserts: Vec<_> = (0..records)
        .map(|r| {
            json!({"table": "tasks", "id": format!("r{r:06}"), "op": "insert",
                   "data": {"id": format!("r{r:06}"), "title": "new", "done": false, "note": "", "order": r},
                   "fields": {"title": {"value": "new", "at": timestamp(0)}}})
        })
        .collect();
    for chunk in inserts.chunks(500) {
        push(env, "device-0", &token, json!(chunk)).await;
    }
    let mut n = 1;
    for round in 0..updates {
        let device = format!("device-{}", round % 3);
        let field = FIELDS[round % FIELDS.len()];
        let changes: Vec<_> = (0..records)
            .map(|r| {
                n += 1;
                json!({"table": "tasks", "id": format!("r{r:06}"), "op": "update",
                       "fields": {field: {"value": format!("{field} {round}"), "at": timestamp(n)}}})
            })
            .collect();
        let pushes = changes
            .chunks(500)
            .map(|chunk| push(env, &device, &token, json!(chunk)));
        futures::stream::iter(pushes)
            .buffer_unordered(3)
            .collect::<Vec<_>>()
            .await;
    }
}

/// A new device pulls the collection from the start.
async fn first_sync(env: &Env) -> FirstSync {
    let token = env.server.token(USER);
    let started = Instant::now();
    let (mut since, mut changes, mut bytes) = (String::from("1970-01-01T00:00:00.000Z"), 0, 0);
    loop {
        let response = env
            .http
            .get(
                env.server
                    .at(&format!("/sync/{APP}/pull?collection=tasks&since={since}")),
            )
            .bearer_auth(&token)
            .header("x-client-id", "new-device")
            .send()
            .await
            .expect("pull sent");
        assert!(response.status().is_success(), "{}", response.status());
        let body = response.bytes().await.expect("page");
        bytes += body.len();
        let page: Page = serde_json::from_slice(&body).expect("a page");
        changes += page.server_changes.len();
        since = page.synced_until;
        if !page.has_more {
            break;
        }
    }
    FirstSync {
        changes,
        bytes,
        elapsed: started.elapsed(),
        raw: Duration::ZERO,
    }
}

/// Small pushes (one update) of the same user, one after the other, until
/// `done` has resolved; their latencies.
async fn small_pushes(env: &Env, done: impl std::future::Future<Output = ()>) -> Latencies {
    let token = env.server.token(USER);
    let mut latencies = Vec::new();
    let mut done = std::pin::pin!(done);
    let mut n = 0_usize;
    loop {
        n += 1;
        let change = json!([{"table": "tasks", "id": "busy", "op": "update",
            "fields": {"title": {"value": n, "at": timestamp(1_000_000_000 + n)}}}]);
        // Never abandon a push half way: it would land after the run.
        if futures::poll!(&mut done).is_ready() {
            break;
        }
        latencies.push(push(env, "phone", &token, change).await);
    }
    latencies.sort();
    Latencies(latencies)
}

pub async fn run(
    backend: Backend,
    binary: &Path,
    records: usize,
    updates: usize,
) -> anyhow::Result<Report> {
    // Background compaction off: this run decides when to compact.
    let env = Env::with_env(
        backend,
        binary,
        vec![("COMPACTION_THRESHOLD".into(), "0".into())],
    )
    .await?;
    eprintln!("{backend:?}: loading {records} records × {updates} updates");
    load(&env, records, updates).await;
    raw::copy_log(&env).await?;
    let mut before = first_sync(&env).await;
    before.raw = raw::pull(&env, before.changes).await?;
    eprintln!(
        "{backend:?}: first sync before compaction: {} changes in {:?}",
        before.changes, before.elapsed
    );
    let push_idle = small_pushes(&env, tokio::time::sleep(Duration::from_secs(5))).await;

    let started = Instant::now();
    let compaction = tokio::process::Command::new(binary)
        .args(["compact", "--user", USER])
        .env("DATABASE_URL", &env.server.database_url)
        .env("RUST_LOG", "warn")
        .output();
    let (output, push_during) = {
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let compaction = async move {
            let output = compaction.await;
            let _ = sender.send(());
            output
        };
        let pushes = small_pushes(&env, async {
            let _ = receiver.await;
        });
        tokio::join!(compaction, pushes)
    };
    let compaction = started.elapsed();
    let output = output?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "compaction failed: {report}");
    let folded = report
        .split("changes folded ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);

    // The small pushes made while it ran are the next compaction's work (the
    // background compactor's, in a server); do it before measuring.
    let again = tokio::process::Command::new(binary)
        .args(["compact", "--user", USER])
        .env("DATABASE_URL", &env.server.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    anyhow::ensure!(again.status.success(), "the second compaction failed");
    raw::clear(&env).await?;
    raw::copy_log(&env).await?;
    let mut at_once = first_sync(&env).await;
    at_once.raw = raw::pull(&env, at_once.changes).await?;
    // On Postgres the folded rows stay as dead tuples until (auto)vacuum,
    // which the first reads must skip; measure what a device gets once
    // autovacuum has run (it starts by itself with this many dead rows).
    let (after, before_vacuum) = match &env.database {
        Some(db) => {
            db.admin()
                .await
                .batch_execute("VACUUM ANALYZE mana_changes")
                .await?;
            let mut after = first_sync(&env).await;
            after.raw = raw::pull(&env, after.changes).await?;
            (after, Some(at_once))
        }
        None => (at_once, None),
    };
    Ok(Report {
        backend,
        records,
        before,
        after,
        before_vacuum,
        folded,
        compaction,
        push_idle,
        push_during,
    })
}
