//! `mana-sync-bench load`: many users making small pushes at once, with a
//! live stream on every device and a socket per user attached, against the
//! raw database doing the same durable single-change transactions at the
//! same concurrency, in the same run.
//!
//! Every push is one update of a record of its own, so the streams can be
//! checked: each change must reach every other device of its user exactly
//! once. Its `changesetId` is a UUIDv7, as our Rust and browser clients
//! make them.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

mod baseline;
mod live;
mod push_client;
mod pushes;

use baseline::{RawNotify, raw_postgres, raw_sqlite};
use live::Live;

use crate::Backend;
use crate::cpu::Cpu;
use crate::server::Env;

/// The load's shape.
#[derive(Debug, Clone)]
pub struct Shape {
    pub users: usize,
    pub devices: usize,
    pub concurrency: usize,
    pub duration: Duration,
    /// Server environment (e.g. `NATS_URL`).
    pub server_env: Vec<(String, String)>,
    /// Open no streams or sockets (pushes only; nothing is checked).
    pub no_live: bool,
}

/// What one side (mana-sync or a raw variant) achieved.
#[derive(Debug, Clone)]
pub struct Measured {
    pub label: String,
    pub pushes: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Push sent → change received by another device's stream.
    pub delivery: Option<(Duration, Duration)>,
    /// The CPU the run used (server, database, generator).
    pub cpu: Cpu,
}

impl Measured {
    /// A run of `latencies.len()` operations without deliveries (a raw
    /// database's side).
    pub fn of(label: String, mut latencies: Vec<Duration>, elapsed: Duration, cpu: Cpu) -> Self {
        latencies.sort();
        Self {
            label,
            pushes: latencies.len(),
            elapsed,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            delivery: None,
            cpu,
        }
    }

    pub fn rate(&self) -> f64 {
        self.pushes as f64 / self.elapsed.as_secs_f64()
    }
}

/// The outcome of the mana-sync side: figures and the exactly-once check.
pub struct ServerRun {
    pub measured: Measured,
    pub failed: usize,
    pub expected_deliveries: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub missing: usize,
    pub sockets_notified: usize,
    pub sockets: usize,
    pub metrics: Vec<String>,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn change_id(user: usize, device: usize, n: usize) -> String {
    format!("u{user}-d{device}-{n}")
}

/// The user, device and push count a [`change_id`] names. The bookkeeping
/// is indexed by these rather than hashed by id: the generator shares the
/// server's cores, so what it spends per push is taken from the server.
fn parse_change_id(id: &str) -> Option<(usize, usize, usize)> {
    let (user, rest) = id.strip_prefix('u')?.split_once("-d")?;
    let (device, n) = rest.split_once('-')?;
    Some((user.parse().ok()?, device.parse().ok()?, n.parse().ok()?))
}

/// One simulated device, shared by the workers pushing for it and the
/// streams receiving its pushes.
struct Device {
    /// Pushes begun so far; the n-th changes the record [`change_id`]`(user,
    /// device, n)`.
    pushes: usize,
    /// The newest `syncedUntil` it has seen, from its push replies or its
    /// stream: the seed's client and ours both save a stream event's
    /// `syncedUntil` as the collection's cursor, so a device whose stream is
    /// live pushes with a cursor that is already current and gets back only
    /// what its stream has not delivered yet.
    cursor: String,
    /// When its n-th push was sent (at `n - 1`).
    sent: Vec<Instant>,
}

/// The run's shared bookkeeping.
struct Book {
    users: usize,
    devices: usize,
    /// By slot, `device * users + user`: the order the pushing workers take
    /// them in.
    by_slot: Vec<Mutex<Device>>,
    /// First deliveries so far.
    delivered: AtomicUsize,
    /// Woken by each stream event.
    progress: Notify,
}

impl Book {
    fn new(users: usize, devices: usize) -> Self {
        let device = || Device {
            pushes: 0,
            cursor: "1970-01-01T00:00:00.000Z".to_owned(),
            sent: Vec::new(),
        };
        Self {
            users,
            devices,
            by_slot: (0..users * devices).map(|_| Mutex::new(device())).collect(),
            delivered: AtomicUsize::new(0),
            progress: Notify::new(),
        }
    }

    fn slot(&self, user: usize, device: usize) -> usize {
        device * self.users + user
    }

    /// The user and device of `slot`.
    fn device_at(&self, slot: usize) -> (usize, usize) {
        (slot % self.users, slot / self.users)
    }

    fn device(&self, slot: usize) -> std::sync::MutexGuard<'_, Device> {
        // A worker that panicked fails the run when it is joined.
        self.by_slot[slot]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a new push of the device: its number and the cursor to send.
    fn next_push(&self, slot: usize) -> (usize, String) {
        let mut device = self.device(slot);
        device.pushes += 1;
        (device.pushes, device.cursor.clone())
    }

    /// Records when the device's n-th push was sent. Two workers can push
    /// for one device at once, so pushes may be recorded out of order.
    fn sent(&self, slot: usize, n: usize, at: Instant) {
        let mut device = self.device(slot);
        if device.sent.len() < n {
            device.sent.resize(n, at);
        }
        device.sent[n - 1] = at;
    }

    fn sent_at(&self, slot: usize, n: usize) -> Option<Instant> {
        self.device(slot).sent.get(n - 1).copied()
    }

    /// Moves a device's cursor to `synced_until` unless it is already past
    /// it: replies and stream events of one device can arrive in either
    /// order.
    fn advance(&self, slot: usize, synced_until: String) {
        let mut device = self.device(slot);
        if synced_until > device.cursor {
            device.cursor = synced_until;
        }
    }
}

/// The `/metrics` lines that show the load.
const METRICS_SHOWN: [&str; 10] = [
    "mana_sync_changes",
    "mana_sync_push_duration_seconds_count",
    "mana_sync_push_duration_seconds_sum",
    "mana_sync_open",
    "mana_sync_live",
    "mana_sync_notices",
    "mana_sync_resyncs",
    "mana_sync_sqlite",
    "mana_sync_duplicate",
    "mana_sync_push_transactions",
];

/// Opens one stream per device and one socket per user, runs the pushes for
/// `shape.duration`, waits for every delivery, and checks exactly-once.
///
/// Runs on a Tokio runtime of one thread of its own ([`on_one_thread`]), with
/// an HTTP client of its own, so that none of its connections is driven by
/// the process's main runtime.
pub async fn run_server(env: &Env, shape: &Shape) -> anyhow::Result<ServerRun> {
    let http = mana_sync_testkit::http_client();
    let book = Arc::new(Book::new(shape.users, shape.devices));
    let stop = tokio_util::sync::CancellationToken::new();
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..shape.users)
            .map(|u| env.server.token(&format!("load-user-{u}")))
            .collect(),
    );
    let live = match shape.no_live {
        true => None,
        false => Some(Live::open(&http, env, shape, &tokens, &book, &stop).await?),
    };
    let pushed = pushes::run(env, shape, tokens, book.clone()).await?;
    let expected_deliveries = match live {
        Some(_) => pushed.accepted.len() * (shape.devices - 1),
        None => 0,
    };
    live::settle(&book, expected_deliveries).await;
    // A little longer, so that a duplicate sent late would be seen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http
        .get(env.server.at("/metrics"))
        .send()
        .await?
        .text()
        .await?
        .lines()
        .filter(|line| METRICS_SHOWN.iter().any(|name| line.starts_with(name)))
        .map(str::to_owned)
        .collect();
    stop.cancel();
    let deliveries = match live {
        Some(live) => live.finish(&pushed.accepted, shape.devices).await,
        None => Default::default(),
    };
    Ok(ServerRun {
        measured: Measured {
            label: "mana-sync".into(),
            pushes: pushed.accepted.len(),
            elapsed: pushed.elapsed,
            p50: percentile(&pushed.latencies, 0.5),
            p99: percentile(&pushed.latencies, 0.99),
            // None with `--no-live`: no stream was open to receive.
            delivery: (!deliveries.latencies.is_empty()).then(|| {
                (
                    percentile(&deliveries.latencies, 0.5),
                    percentile(&deliveries.latencies, 0.99),
                )
            }),
            cpu: pushed.cpu,
        },
        failed: pushed.failed,
        expected_deliveries,
        delivered: deliveries.delivered,
        duplicates: deliveries.duplicates,
        missing: deliveries.missing,
        sockets_notified: deliveries.sockets_notified,
        sockets: deliveries.sockets,
        metrics,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `work` (the simulated devices) to completion on a Tokio runtime of
/// one thread, leaving the process's runtime idle meanwhile.
///
/// In production the devices are other machines; here they share the
/// server's two cores, and what they cost besides their own work is taken
/// from the server. With the default runtime (a worker per core), a push's
/// reply and deliveries woke generator workers on both cores, each wake-up a
/// context switch and a task moved between cores. Five alternated SQLite
/// pairs of 15 s, same server: one thread was faster in all five, 20,570 →
/// 23,943 pushes/s on average, CPU per push 56 → 52 µs in the server and
/// 22 → 20 µs here; on Postgres no change (two pairs). The raw baselines
/// keep the default runtime: their client stands for the server's own
/// database client, and a runtime of one worker slowed raw Postgres by 15%.
fn on_one_thread<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work)
    })
}

/// Runs the load on `backend` and its raw baselines; returns table rows.
pub async fn run(
    backend: Backend,
    binary: &std::path::Path,
    shape: &Shape,
) -> anyhow::Result<Vec<String>> {
    let env = Env::with_env(backend, binary, shape.server_env.clone()).await?;
    eprintln!(
        "{backend:?}: {} users × {} devices, {} concurrent pushes for {:?}…",
        shape.users, shape.devices, shape.concurrency, shape.duration
    );
    let server = on_one_thread(run_server(&env, shape))?;
    eprintln!(
        "{backend:?} mana-sync: {:.0} pushes/s, p50 {}, p99 {}; {} failed; deliveries {}/{} \
         (missing {}, duplicates {}); sockets notified {}/{}",
        server.measured.rate(),
        ms(server.measured.p50),
        ms(server.measured.p99),
        server.failed,
        server.delivered,
        server.expected_deliveries,
        server.missing,
        server.duplicates,
        server.sockets_notified,
        server.sockets,
    );
    for line in &server.metrics {
        eprintln!("  /metrics: {line}");
    }
    eprintln!(
        "{backend:?} mana-sync CPU per push: {}",
        server.measured.cpu.per(server.measured.pushes)
    );
    let mut raws = Vec::new();
    match backend {
        Backend::Postgres => {
            for notify in [
                RawNotify::None,
                RawNotify::InTransaction,
                RawNotify::AfterCommit,
            ] {
                raws.push(raw_postgres(&env, shape, notify).await?);
            }
        }
        Backend::Sqlite => {
            raws.push(raw_sqlite(&env, shape).await?);
        }
    }
    for raw in &raws {
        eprintln!(
            "{backend:?} {}: {:.0}/s, p50 {}, p99 {}; CPU per insert: {}",
            raw.label,
            raw.rate(),
            ms(raw.p50),
            ms(raw.p99),
            raw.cpu.per(raw.pushes)
        );
    }
    let base = &raws[0];
    let mut rows = Vec::new();
    let s = &server.measured;
    let (d50, d99) = match s.delivery {
        Some((d50, d99)) => (ms(d50), ms(d99)),
        None => ("–".to_owned(), "–".to_owned()),
    };
    rows.push(format!(
        "| {backend:?} | mana-sync, small pushes | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} of {} delivered, {} missing, {} twice; {} failed |",
        s.rate(),
        ms(s.p50),
        ms(s.p99),
        d50,
        d99,
        s.rate() / base.rate(),
        s.p99.as_secs_f64() / base.p99.as_secs_f64(),
        s.cpu.micros_per(s.pushes),
        server.delivered,
        server.expected_deliveries,
        server.missing,
        server.duplicates,
        server.failed,
    ));
    for raw in &raws {
        rows.push(format!(
            "| {backend:?} | {} | {:.0} | {} | {} | – | – | {:.2} | {:.2} | {} | |",
            raw.label,
            raw.rate(),
            ms(raw.p50),
            ms(raw.p99),
            raw.rate() / base.rate(),
            raw.p99.as_secs_f64() / base.p99.as_secs_f64(),
            raw.cpu.micros_per(raw.pushes),
        ));
    }
    anyhow::ensure!(
        server.missing == 0 && server.duplicates == 0 && server.failed == 0,
        "{backend:?}: changes were lost or repeated under load:\n{}",
        rows.join("\n")
    );
    Ok(rows)
}

/// The table's header.
pub const HEADER: &str = "| database | workload | pushes/s | p50 | p99 | push→stream p50 | push→stream p99 | rate ÷ raw | p99 ÷ raw | CPU µs each: server / database / generator | exactly once |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_id_names_its_push() {
        assert_eq!(
            parse_change_id(&change_id(17, 1, 4021)),
            Some((17, 1, 4021))
        );
        for foreign in ["t1", "u1-d2", "u-d1-2", "ux-d1-2", "u1-d2-3-4", ""] {
            assert_eq!(parse_change_id(foreign), None, "{foreign}");
        }
    }
}
