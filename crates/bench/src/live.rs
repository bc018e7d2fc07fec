//! Live delivery: push→stream latency on one instance and across two, and
//! one push fanned out to 10,000 idle streams (memory per stream, time to
//! reach them all).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use mana_sync_testkit::server::{ServerOptions, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::Backend;
use crate::server::Env;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Latency figures.
pub struct Latency {
    pub label: String,
    /// Push→stream delivery.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The push's own round trip.
    pub push_p50: Duration,
    pub push_p99: Duration,
    pub samples: usize,
}

impl Latency {
    pub fn print(&self) {
        println!(
            "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            self.label,
            self.samples,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            ms(self.push_p50),
            ms(self.push_p99)
        );
    }

    pub fn print_header() {
        println!(
            "| scenario | pushes | delivery p50 | delivery p99 | delivery max | push p50 | push p99 |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
    }
}

/// Who pushes and who listens.
#[derive(Clone, Copy)]
pub struct Route<'a> {
    /// The user who pushes.
    pub pusher: &'a str,
    /// The user whose stream must deliver the change.
    pub listener: &'a str,
    /// The shared space the change goes into (`None`: the pusher's own log).
    pub space: Option<&'a str>,
    /// The features both clients list.
    pub features: &'a str,
}

impl Route<'_> {
    /// Another device of the same user, the seed's way.
    pub const PERSONAL: Route<'static> = Route {
        pusher: "latency-user",
        listener: "latency-user",
        space: None,
        features: "",
    };
}

/// Pushes one change at a time as `route.pusher` and times until a stream
/// of `route.listener` on `stream_from` delivers it.
pub async fn latency(
    env: &Env,
    stream_from: &TestServer,
    label: &str,
    samples: usize,
    route: Route<'_>,
) -> anyhow::Result<Latency> {
    let http = &env.http;
    let response = http
        .get(stream_from.at(&format!(
            "/sync/bench/stream?collections=tasks&since=c1.0&features={}",
            route.features
        )))
        .bearer_auth(stream_from.token(route.listener))
        .header("x-client-id", "listener")
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "stream: {}",
        response.status()
    );
    let mut events = response.bytes_stream().eventsource();
    // The backlog's (empty) page.
    events.next().await;
    let token = env.server.token(route.pusher);
    let mut timings = Vec::with_capacity(samples);
    let mut push_timings = Vec::with_capacity(samples);
    let mut since = "c1.0".to_owned();
    for n in 0..samples + 20 {
        let id = format!("n{n}");
        let body = json!({"clientId": "pusher", "since": since,
                          "changes": [{"table": "tasks", "id": id, "op": "insert",
                                       "spaceId": route.space, "data": {"n": n}}]})
        .to_string();
        let started = Instant::now();
        let push = async {
            let response = http
                .post(env.server.at("/sync/bench"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("x-sync-features", route.features)
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "push: {}",
                response.status()
            );
            let reply: Value = response.json().await?;
            let elapsed = started.elapsed();
            let next = reply["syncedUntil"].as_str().unwrap_or_default().to_owned();
            anyhow::Ok((elapsed, next))
        };
        let deliver = async {
            loop {
                let event = events
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
                if event.event != "changes" {
                    continue;
                }
                let page: Value = serde_json::from_str(&event.data)?;
                if page["changes"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["id"] == id.as_str()))
                {
                    return anyhow::Ok(started.elapsed());
                }
            }
        };
        let (pushed, delivered) = tokio::join!(push, deliver);
        let (push_time, next) = pushed?;
        // Replies stay one change long, as a device's that keeps up.
        since = next;
        // The first pushes warm connections and caches.
        if n >= 20 {
            timings.push(delivered?);
            push_timings.push(push_time);
        }
    }
    timings.sort();
    push_timings.sort();
    Ok(Latency {
        label: label.to_owned(),
        p50: percentile(&timings, 0.5),
        p99: percentile(&timings, 0.99),
        max: timings[timings.len() - 1],
        push_p50: percentile(&push_timings, 0.5),
        push_p99: percentile(&push_timings, 0.99),
        samples,
    })
}

/// A second server on the same Postgres database.
pub async fn second_instance(env: &Env, binary: &std::path::Path) -> TestServer {
    TestServer::start(
        binary,
        ServerOptions {
            database_url: Some(env.server.database_url.clone()),
            env: vec![
                ("RUST_LOG".into(), "warn".into()),
                ("MAX_LIVE_PER_USER".into(), "1000000".into()),
            ],
            ..ServerOptions::default()
        },
    )
    .await
}

fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// Fan-out figures.
pub struct FanOut {
    pub backend: Backend,
    pub streams: usize,
    pub kib_per_stream: f64,
    pub reach_all: Vec<Duration>,
}

/// Opens `streams` idle streams of one user, measures the server's memory
/// per stream, then times single pushes until every stream has them.
pub async fn fan_out(env: &Env, streams: usize, pushes: usize) -> anyhow::Result<FanOut> {
    let pid = env
        .server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("server not running"))?;
    let address = env.server.url.trim_start_matches("http://").to_owned();
    let token = env.server.token("fanout-user");
    // Warm up the server (allocator, pools) before the baseline.
    let _ = env.http.get(env.server.at("/health")).send().await?;
    let baseline = resident_kib(pid)?;

    let delivered = Arc::new(AtomicUsize::new(0));
    let all_delivered = Arc::new(Notify::new());
    let ready = Arc::new(AtomicUsize::new(0));
    let all_ready = Arc::new(Notify::new());
    let mut readers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::with_capacity(streams);
    for n in 0..streams {
        let address = address.clone();
        let request = format!(
            "GET /sync/bench/stream?collections=tasks&since=c1.0 HTTP/1.1\r\nHost: {address}\r\n\
             Authorization: Bearer {token}\r\nX-Client-Id: idle-{n}\r\n\r\n"
        );
        let (delivered, all_delivered, stream_ready, stream_all_ready) = (
            delivered.clone(),
            all_delivered.clone(),
            ready.clone(),
            all_ready.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut socket = tokio::net::TcpStream::connect(&address).await?;
            socket.write_all(request.as_bytes()).await?;
            let mut buffer = vec![0_u8; 4096];
            let mut pages_seen = 0_usize;
            loop {
                let read = socket.read(&mut buffer).await?;
                anyhow::ensure!(read > 0, "stream closed");
                // Each page is one `event: changes` line; the backlog sends
                // one (empty) page, every push one more.
                let text = String::from_utf8_lossy(&buffer[..read]);
                for _ in text.matches("event: changes") {
                    pages_seen += 1;
                    let counter = if pages_seen == 1 {
                        &stream_ready
                    } else {
                        &delivered
                    };
                    let notify = if pages_seen == 1 {
                        &stream_all_ready
                    } else {
                        &all_delivered
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    notify.notify_one();
                }
            }
        }));
        // Connect in waves so the accept queue never overflows.
        if n % 500 == 499 {
            wait_for(&ready, &all_ready, n + 1).await;
        }
    }
    wait_for(&ready, &all_ready, streams).await;
    let just_connected = resident_kib(pid)?;
    // Connecting 10,000 streams briefly needs many blocking-pool threads
    // (SQLite reads) and transient buffers; what an idle stream costs is
    // what remains once the server has been idle past the pool's keep-alive.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let settled = resident_kib(pid)?;
    let kib_per_stream = settled.saturating_sub(baseline) as f64 / streams as f64;
    eprintln!(
        "{:?}: resident {} KiB before, {} KiB just after connecting {streams} streams, {} KiB idle",
        env.backend, baseline, just_connected, settled
    );

    let mut reach_all = Vec::with_capacity(pushes);
    for p in 0..pushes {
        let body = json!({"clientId": "pusher", "since": "c1.0",
                          "changes": [{"table": "tasks", "id": format!("p{p}"), "op": "insert", "data": {}}]})
        .to_string();
        let started = Instant::now();
        let response = env
            .http
            .post(env.server.at("/sync/bench"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "push failed");
        wait_for(&delivered, &all_delivered, streams * (p + 1)).await;
        reach_all.push(started.elapsed());
    }
    for reader in readers {
        reader.abort();
    }
    Ok(FanOut {
        backend: env.backend,
        streams,
        kib_per_stream,
        reach_all,
    })
}

async fn wait_for(counter: &AtomicUsize, notify: &Notify, target: usize) {
    loop {
        let notified = notify.notified();
        if counter.load(Ordering::SeqCst) >= target {
            return;
        }
        // A bounded wait guards against a lost wake-up between load and await.
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
}

/// `(ms)` list for printing.
pub fn list_ms(durations: &[Duration]) -> String {
    durations
        .iter()
        .map(|d| format!("{:.0}", ms(*d)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A space `owner` creates on `env`'s server, with `member` as an editor.
pub async fn shared_space(env: &Env, owner: &str, member: &str) -> anyhow::Result<String> {
    let created: Value = env
        .http
        .post(env.server.at("/spaces"))
        .bearer_auth(env.server.token(owner))
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let space = created["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no space id in {created}"))?
        .to_owned();
    env.http
        .put(env.server.at(&format!("/spaces/{space}/members/{member}")))
        .bearer_auth(env.server.token(owner))
        .json(&json!({"role": "editor"}))
        .send()
        .await?
        .error_for_status()?;
    Ok(space)
}
