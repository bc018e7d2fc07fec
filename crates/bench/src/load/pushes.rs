//! The pushing side of the load: `concurrency` workers taking every device in
//! turn, each push one update with a unique `changesetId`, sent from the
//! device's cursor.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::push_client::PushClient;
use super::{Book, Shape, change_id};
use crate::cpu::Cpu;
use crate::server::Env;

/// Where every device pushes.
const PUSH_PATH: &str = "/sync/bench";

/// The pushes of a run.
pub(super) struct Pushed {
    /// Each push's latency, sorted, failed ones included.
    pub latencies: Vec<Duration>,
    /// The pushes the server accepted: user, device and push count.
    pub accepted: Vec<(usize, usize, usize)>,
    pub failed: usize,
    pub elapsed: Duration,
    /// The server's CPU over the pushes.
    pub cpu: Cpu,
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

/// Pushes for `shape.duration` and returns what the server accepted.
///
/// The turn goes through every user's first device, then every user's
/// second one: the pushes in flight at once come from different users, as a
/// person's devices rarely push in the same millisecond. (Taking a user's
/// devices one after the other made every push wait for its sibling's
/// commit on the user's position lock: 1.08 ms per write statement on
/// Postgres instead of 0.15 ms.)
pub(super) async fn run(
    env: &Env,
    shape: &Shape,
    tokens: Arc<Vec<String>>,
    book: Arc<Book>,
) -> anyhow::Result<Pushed> {
    let next_device = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + shape.duration;
    let started = Instant::now();
    let cpu_before = Cpu::now(env.server.pid());
    let mut workers = Vec::new();
    for _ in 0..shape.concurrency {
        let mut client = PushClient::new(&env.server.url)?;
        let (book, next_device, tokens) = (book.clone(), next_device.clone(), tokens.clone());
        let slots = shape.users * shape.devices;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut accepted = Vec::new();
            let mut failed = 0_usize;
            while Instant::now() < deadline {
                let slot = next_device.fetch_add(1, Ordering::Relaxed) % slots;
                let (u, d) = book.device_at(slot);
                let (n, since) = book.next_push(slot);
                let body = push_body(u, d, n, &since);
                let begun = Instant::now();
                book.sent(slot, n, begun);
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
                        book.advance(slot, reply.synced_until);
                        accepted.push((u, d, n));
                    }
                    None => failed += 1,
                }
            }
            (latencies, accepted, failed)
        }));
    }
    let (mut latencies, mut accepted, mut failed) = (Vec::new(), Vec::new(), 0);
    for worker in workers {
        let (worker_latencies, worker_accepted, worker_failed) = worker.await?;
        latencies.extend(worker_latencies);
        accepted.extend(worker_accepted);
        failed += worker_failed;
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::now(env.server.pid()).since(&cpu_before);
    latencies.sort();
    Ok(Pushed {
        latencies,
        accepted,
        failed,
        elapsed,
        cpu,
    })
}
