//! `mana-sync-bench load`: many users making small pushes at once, with a
//! live stream on every device and a socket per user attached, against the
//! raw database doing the same durable single-change transactions at the
//! same concurrency, in the same run.
//!
//! Every push is one update of a record of its own, so the streams can be
//! checked: each change must reach every other device of its user exactly
//! once. Its `changesetId` is a UUIDv7, as our Rust and browser clients
//! make them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource as _;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::Notify;

mod baseline;
mod push_client;

use baseline::{RawNotify, raw_postgres, raw_sqlite};
use push_client::PushClient;

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

/// Where every device pushes.
const PUSH_PATH: &str = "/sync/bench";

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

fn push_body(user: usize, device: usize, n: usize, since: &str) -> String {
    let id = change_id(user, device, n);
    let changeset = uuid::Uuid::now_v7();
    format!(
        r#"{{"clientId":"u{user}-d{device}","since":"{since}","changesetId":"{changeset}","changes":[{{"table":"tasks","id":"{id}","op":"update","fields":{{"title":{{"value":"edit {n}","updatedAt":"2026-11-29T19:20:00.000Z"}},"done":{{"value":false,"updatedAt":"2026-11-29T19:20:00.000Z"}}}}}}]}}"#
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushReply {
    synced_until: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamPage {
    changes: Vec<IdOnly>,
    synced_until: String,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// Shared bookkeeping of the run.
struct Book {
    /// By device slot (`device * users + user`), when its n-th push was sent
    /// (at `n - 1`).
    sent: Vec<Mutex<Vec<Instant>>>,
    /// First deliveries so far.
    delivered: AtomicUsize,
    progress: Notify,
}

struct StreamResult {
    user: usize,
    device: usize,
    /// By pushing device, how often its n-th push arrived (at `n - 1`).
    counts: Vec<Vec<u32>>,
    latencies: Vec<Duration>,
}

impl StreamResult {
    fn count(&self, device: usize, n: usize) -> u32 {
        self.counts
            .get(device)
            .and_then(|pushes| pushes.get(n - 1))
            .copied()
            .unwrap_or(0)
    }
}

/// Opens one stream per device and one socket per user, runs the pushes for
/// `shape.duration`, waits for every delivery, and checks exactly-once.
///
/// Runs on a Tokio runtime of one thread of its own ([`on_one_thread`]), with
/// an HTTP client of its own, so that none of its connections is driven by
/// the process's main runtime.
pub async fn run_server(env: &Env, shape: &Shape) -> anyhow::Result<ServerRun> {
    let http = mana_sync_testkit::http_client();
    let book = Arc::new(Book {
        sent: (0..shape.users * shape.devices)
            .map(|_| Mutex::new(Vec::new()))
            .collect(),
        delivered: AtomicUsize::new(0),
        progress: Notify::new(),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let tokens: Vec<String> = (0..shape.users)
        .map(|u| env.server.token(&format!("load-user-{u}")))
        .collect();

    // Each device's push counter and cursor. A device's cursor is the newest
    // `syncedUntil` it has seen, from its push replies or its stream: the
    // seed's client and ours both save a stream event's `syncedUntil` as
    // the collection's cursor, so a device whose stream is live pushes
    // with a cursor that is already current and gets back only what its
    // stream has not delivered yet.
    let cursors: Arc<Vec<Mutex<(usize, String)>>> = Arc::new(
        (0..shape.users * shape.devices)
            .map(|_| Mutex::new((0, "1970-01-01T00:00:00.000Z".to_owned())))
            .collect(),
    );
    // Streams: one per device, all open (backlog read) before any push.
    let ready = Arc::new(AtomicUsize::new(0));
    let ready_notify = Arc::new(Notify::new());
    let mut streams = Vec::new();
    let live_users = if shape.no_live { 0 } else { shape.users };
    for (u, token) in tokens.iter().enumerate().take(live_users) {
        for d in 0..shape.devices {
            let (http, url, token) = (
                http.clone(),
                env.server
                    .at("/sync/bench/stream?collections=tasks&since=1970-01-01T00:00:00.000Z"),
                token.clone(),
            );
            let (book, stop, ready, ready_notify, cursors) = (
                book.clone(),
                stop.clone(),
                ready.clone(),
                ready_notify.clone(),
                cursors.clone(),
            );
            let slot = d * shape.users + u;
            let (users, devices) = (shape.users, shape.devices);
            streams.push(tokio::spawn(async move {
                let response = http
                    .get(url)
                    .bearer_auth(token)
                    .header("x-client-id", format!("u{u}-d{d}"))
                    .timeout(Duration::from_secs(3600))
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "stream {}",
                    response.status()
                );
                let mut events = response.bytes_stream().eventsource();
                let mut result = StreamResult {
                    user: u,
                    device: d,
                    counts: vec![Vec::new(); devices],
                    latencies: Vec::new(),
                };
                let mut backlog_done = false;
                loop {
                    let event = tokio::select! {
                        event = events.next() => event,
                        () = stop.cancelled() => None,
                    };
                    let Some(event) = event else { break };
                    let event = event?;
                    if event.event != "changes" {
                        continue;
                    }
                    if !backlog_done {
                        backlog_done = true;
                        ready.fetch_add(1, Ordering::SeqCst);
                        ready_notify.notify_one();
                        continue;
                    }
                    let now = Instant::now();
                    let page: StreamPage = serde_json::from_str(&event.data)?;
                    advance(&cursors[slot], page.synced_until);
                    for change in page.changes {
                        let Some((user, device, n)) = parse_change_id(&change.id)
                            .filter(|&(user, device, n)| user == u && device < devices && n > 0)
                        else {
                            anyhow::bail!(
                                "stream u{u}-d{d} received a change it should not: {}",
                                change.id
                            );
                        };
                        let pushes = &mut result.counts[device];
                        if pushes.len() < n {
                            pushes.resize(n, 0);
                        }
                        pushes[n - 1] += 1;
                        if pushes[n - 1] == 1 {
                            let pusher = device * users + user;
                            if let Some(sent) = book.sent[pusher].lock().expect("lock").get(n - 1) {
                                result.latencies.push(now - *sent);
                            }
                            book.delivered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    book.progress.notify_one();
                }
                Ok(result)
            }));
        }
        // Open in waves so the accept queue never overflows.
        if u % 100 == 99 {
            wait_for(&ready, &ready_notify, (u + 1) * shape.devices).await;
        }
    }
    wait_for(&ready, &ready_notify, live_users * shape.devices).await;

    // Sockets: one per user on /ws/bench, counting sync-available messages.
    let ws_base = env.server.url.replace("http://", "ws://");
    let mut sockets = Vec::new();
    for token in tokens.iter().take(live_users) {
        let (url, token) = (format!("{ws_base}/ws/bench"), token.clone());
        let stop = stop.clone();
        // tungstenite's default 128 KiB read buffer is zeroed again before
        // every read: an eighth of the generator's CPU with 200 sockets, on the
        // cores the server and the database share.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096);
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                serde_json::json!({"type": "auth", "token": token}).to_string(),
            ))
            .await?;
        sockets.push(tokio::spawn(async move {
            let mut notified = 0_usize;
            loop {
                let message = tokio::select! {
                    message = socket.next() => message,
                    () = stop.cancelled() => None,
                };
                match message {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                        if text.contains("sync-available") {
                            notified += 1;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            notified
        }));
    }

    // The pushes: `concurrency` workers over every device in turn; each
    // device pushes from its cursor (see `cursors` above). The
    // turn goes through every user's first device, then every user's second
    // one: the pushes in flight at once come from different users, as a
    // person's devices rarely push in the same millisecond. (Taking a user's
    // devices one after the other made every push wait for its sibling's
    // commit on the user's position lock: 1.08 ms per write statement on
    // Postgres instead of 0.15 ms.)
    let next_device = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(tokens);
    let deadline = Instant::now() + shape.duration;
    let started = Instant::now();
    let cpu_before = Cpu::now(env.server.pid());
    let mut workers = Vec::new();
    for _ in 0..shape.concurrency {
        let mut client = PushClient::new(&env.server.url)?;
        let (book, cursors, next_device, tokens) = (
            book.clone(),
            cursors.clone(),
            next_device.clone(),
            tokens.clone(),
        );
        let (users, devices) = (shape.users, shape.devices);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut pushed: Vec<(usize, usize, usize)> = Vec::new();
            let mut failed = 0_usize;
            while Instant::now() < deadline {
                let slot = next_device.fetch_add(1, Ordering::Relaxed) % (users * devices);
                let (u, d) = (slot % users, slot / users);
                let (n, since) = {
                    let mut cursor = cursors[slot].lock().expect("lock");
                    cursor.0 += 1;
                    (cursor.0, cursor.1.clone())
                };
                let body = push_body(u, d, n, &since);
                let begun = Instant::now();
                {
                    let mut sent = book.sent[slot].lock().expect("lock");
                    if sent.len() < n {
                        sent.resize(n, begun);
                    }
                    sent[n - 1] = begun;
                }
                let reply = match client.post_json(PUSH_PATH, &tokens[u], &body).await {
                    Ok(reply) if (200..300).contains(&reply.status) => {
                        serde_json::from_slice::<PushReply>(&reply.body).ok()
                    }
                    Ok(reply) => {
                        eprintln!("push failed: {}", reply.status);
                        None
                    }
                    Err(error) => {
                        eprintln!("push failed: {error}");
                        None
                    }
                };
                latencies.push(begun.elapsed());
                match reply {
                    Some(reply) => {
                        advance(&cursors[slot], reply.synced_until);
                        pushed.push((u, d, n));
                    }
                    None => failed += 1,
                }
            }
            (latencies, pushed, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut pushed = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (l, p, f) = worker.await?;
        latencies.extend(l);
        pushed.extend(p);
        failed += f;
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::now(env.server.pid()).since(&cpu_before);
    latencies.sort();

    // Every push reaches the other devices of its user.
    let expected_deliveries = if shape.no_live {
        0
    } else {
        pushed.len() * (shape.devices - 1)
    };
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let progressed = book.progress.notified();
        if book.delivered.load(Ordering::SeqCst) >= expected_deliveries || Instant::now() > settle {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), progressed).await;
    }
    // A little longer, so that a duplicate sent late would be seen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http
        .get(env.server.at("/metrics"))
        .send()
        .await?
        .text()
        .await?
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && (line.starts_with("mana_sync_changes")
                    || line.starts_with("mana_sync_push_duration_seconds_count")
                    || line.starts_with("mana_sync_push_duration_seconds_sum")
                    || line.starts_with("mana_sync_open")
                    || line.starts_with("mana_sync_live")
                    || line.starts_with("mana_sync_notices")
                    || line.starts_with("mana_sync_resyncs")
                    || line.starts_with("mana_sync_sqlite")
                    || line.starts_with("mana_sync_duplicate")
                    || line.starts_with("mana_sync_push_transactions"))
        })
        .map(str::to_owned)
        .collect();
    stop.cancel();

    let mut delivered = 0;
    let mut duplicates = 0;
    let mut delivery_latencies = Vec::new();
    let mut by_stream: HashMap<(usize, usize), StreamResult> = HashMap::new();
    for stream in streams {
        if let Ok(Ok(mut result)) = stream.await {
            let counts = result.counts.iter().flatten();
            delivered += counts.clone().filter(|c| **c > 0).count();
            duplicates += counts.filter(|c| **c > 1).count();
            delivery_latencies.append(&mut result.latencies);
            by_stream.insert((result.user, result.device), result);
        }
    }
    let mut missing = 0;
    for (u, d, n) in pushed.iter().filter(|_| !shape.no_live) {
        for other in (0..shape.devices).filter(|o| o != d) {
            if by_stream
                .get(&(*u, other))
                .is_none_or(|stream| stream.count(*d, *n) == 0)
            {
                missing += 1;
            }
        }
    }
    let socket_count = sockets.len();
    let mut sockets_notified = 0;
    for socket in sockets {
        if let Ok(notified) = socket.await {
            sockets_notified += usize::from(notified > 0);
        }
    }
    delivery_latencies.sort();
    Ok(ServerRun {
        measured: Measured {
            label: "mana-sync".into(),
            pushes: pushed.len(),
            elapsed,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            // None with `--no-live`: no stream was open to receive.
            delivery: (!delivery_latencies.is_empty()).then(|| {
                (
                    percentile(&delivery_latencies, 0.5),
                    percentile(&delivery_latencies, 0.99),
                )
            }),
            cpu,
        },
        failed,
        expected_deliveries,
        delivered,
        duplicates,
        missing,
        sockets_notified,
        sockets: socket_count,
        metrics,
    })
}

/// Moves a device's cursor to `synced_until` unless it is already past it:
/// replies and stream events of one device can arrive in either order.
fn advance(cursor: &Mutex<(usize, String)>, synced_until: String) {
    let mut cursor = cursor.lock().expect("lock");
    if synced_until > cursor.1 {
        cursor.1 = synced_until;
    }
}

async fn wait_for(counter: &AtomicUsize, notify: &Notify, target: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let notified = notify.notified();
        if counter.load(Ordering::SeqCst) >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {target} streams opened",
            counter.load(Ordering::SeqCst)
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
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
                let raw = raw_postgres(&env, shape, notify).await?;
                eprintln!(
                    "{backend:?} {}: {:.0}/s, p50 {}, p99 {}; CPU per insert: {}",
                    raw.label,
                    raw.rate(),
                    ms(raw.p50),
                    ms(raw.p99),
                    raw.cpu.per(raw.pushes)
                );
                raws.push(raw);
            }
        }
        Backend::Sqlite => {
            let raw = raw_sqlite(&env, shape).await?;
            eprintln!(
                "{backend:?} {}: {:.0}/s, p50 {}, p99 {}; CPU per insert: {}",
                raw.label,
                raw.rate(),
                ms(raw.p50),
                ms(raw.p99),
                raw.cpu.per(raw.pushes)
            );
            raws.push(raw);
        }
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
