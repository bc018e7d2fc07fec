//! The live side of the load: a stream on every device and a socket per
//! user, open before the first push, and the check at the end that every
//! push reached every other device of its user exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource as _;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Book, Shape, parse_change_id};
use crate::server::Env;

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

/// What one device's stream received.
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

/// The open streams and sockets, until [`Live::finish`].
pub(super) struct Live {
    streams: Vec<JoinHandle<anyhow::Result<StreamResult>>>,
    sockets: Vec<JoinHandle<usize>>,
}

/// What the streams and sockets received, checked against the pushes.
#[derive(Default)]
pub(super) struct Deliveries {
    /// Pushes that reached a stream, counted once per receiving device.
    pub delivered: usize,
    /// Of those, how many arrived more than once.
    pub duplicates: usize,
    /// Accepted pushes some other device of their user never received.
    pub missing: usize,
    /// Push sent → first received by another device's stream, sorted.
    pub latencies: Vec<Duration>,
    pub sockets_notified: usize,
    pub sockets: usize,
}

impl Live {
    /// Opens a stream per device (each has read its backlog when this
    /// returns), then a socket per user.
    pub async fn open(
        http: &reqwest::Client,
        env: &Env,
        shape: &Shape,
        tokens: &[String],
        book: &Arc<Book>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let ready = Arc::new((AtomicUsize::new(0), Notify::new()));
        let mut streams = Vec::new();
        for (user, token) in tokens.iter().enumerate() {
            for device in 0..shape.devices {
                streams.push(tokio::spawn(stream(
                    http.get(
                        env.server.at(
                            "/sync/bench/stream?collections=tasks&since=1970-01-01T00:00:00.000Z",
                        ),
                    )
                    .bearer_auth(token)
                    .header("x-client-id", format!("u{user}-d{device}"))
                    .timeout(Duration::from_secs(3600)),
                    (user, device),
                    book.clone(),
                    ready.clone(),
                    stop.clone(),
                )));
            }
            // Open in waves so the accept queue never overflows.
            if user % 100 == 99 {
                wait_for(&ready, (user + 1) * shape.devices).await?;
            }
        }
        wait_for(&ready, tokens.len() * shape.devices).await?;

        let ws_base = env.server.url.replace("http://", "ws://");
        let mut sockets = Vec::new();
        for token in tokens {
            sockets.push(tokio::spawn(
                socket(&format!("{ws_base}/ws/bench"), token, stop.clone()).await?,
            ));
        }
        Ok(Self { streams, sockets })
    }

    /// Collects what the streams and sockets received (after `stop`) and
    /// checks it against the pushes the server accepted.
    pub async fn finish(self, accepted: &[(usize, usize, usize)], devices: usize) -> Deliveries {
        let mut deliveries = Deliveries::default();
        let mut by_stream: HashMap<(usize, usize), StreamResult> = HashMap::new();
        for stream in self.streams {
            if let Ok(Ok(mut result)) = stream.await {
                let counts = result.counts.iter().flatten();
                deliveries.delivered += counts.clone().filter(|c| **c > 0).count();
                deliveries.duplicates += counts.filter(|c| **c > 1).count();
                deliveries.latencies.append(&mut result.latencies);
                by_stream.insert((result.user, result.device), result);
            }
        }
        for (u, d, n) in accepted {
            for other in (0..devices).filter(|o| o != d) {
                if by_stream
                    .get(&(*u, other))
                    .is_none_or(|stream| stream.count(*d, *n) == 0)
                {
                    deliveries.missing += 1;
                }
            }
        }
        deliveries.sockets = self.sockets.len();
        for socket in self.sockets {
            if let Ok(notified) = socket.await {
                deliveries.sockets_notified += usize::from(notified > 0);
            }
        }
        deliveries.latencies.sort();
        deliveries
    }
}

/// Waits until `expected` first deliveries were counted, for at most 30 s.
pub(super) async fn settle(book: &Book, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let progressed = book.progress.notified();
        if book.delivered.load(Ordering::SeqCst) >= expected || Instant::now() > deadline {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), progressed).await;
    }
}

/// Reads one device's stream until `stop`: its backlog (then counts itself
/// ready), then every change, each counted by the push that made it.
async fn stream(
    request: reqwest::RequestBuilder,
    (user, device): (usize, usize),
    book: Arc<Book>,
    ready: Arc<(AtomicUsize, Notify)>,
    stop: CancellationToken,
) -> anyhow::Result<StreamResult> {
    let response = request.send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "stream {}",
        response.status()
    );
    let slot = book.slot(user, device);
    let devices = book.devices;
    let mut events = response.bytes_stream().eventsource();
    let mut result = StreamResult {
        user,
        device,
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
            ready.0.fetch_add(1, Ordering::SeqCst);
            ready.1.notify_one();
            continue;
        }
        let now = Instant::now();
        let page: StreamPage = serde_json::from_str(&event.data)?;
        book.advance(slot, page.synced_until);
        for change in page.changes {
            let Some((pusher_user, pusher_device, n)) =
                parse_change_id(&change.id).filter(|&(u, d, n)| u == user && d < devices && n > 0)
            else {
                anyhow::bail!(
                    "stream u{user}-d{device} received a change it should not: {}",
                    change.id
                );
            };
            let pushes = &mut result.counts[pusher_device];
            if pushes.len() < n {
                pushes.resize(n, 0);
            }
            pushes[n - 1] += 1;
            if pushes[n - 1] == 1 {
                let pusher = book.slot(pusher_user, pusher_device);
                if let Some(sent) = book.sent_at(pusher, n) {
                    result.latencies.push(now - sent);
                }
                book.delivered.fetch_add(1, Ordering::SeqCst);
            }
        }
        book.progress.notify_one();
    }
    Ok(result)
}

/// Connects and authenticates a user's socket; the returned task counts its
/// `sync-available` messages until `stop`.
async fn socket(
    url: &str,
    token: &str,
    stop: CancellationToken,
) -> anyhow::Result<impl Future<Output = usize> + use<>> {
    use tokio_tungstenite::tungstenite::Message;
    // tungstenite's default 128 KiB read buffer is zeroed again before
    // every read: an eighth of the generator's CPU with 200 sockets, on the
    // cores the server and the database share.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    socket
        .send(Message::text(
            serde_json::json!({"type": "auth", "token": token}).to_string(),
        ))
        .await?;
    Ok(async move {
        let mut notified = 0_usize;
        loop {
            let message = tokio::select! {
                message = socket.next() => message,
                () = stop.cancelled() => None,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    if text.contains("sync-available") {
                        notified += 1;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        notified
    })
}

/// Waits until `target` streams have read their backlog, for at most 60 s.
async fn wait_for(ready: &(AtomicUsize, Notify), target: usize) -> anyhow::Result<()> {
    let (counter, notify) = ready;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let notified = notify.notified();
        if counter.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {target} streams opened",
            counter.load(Ordering::SeqCst)
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
}
