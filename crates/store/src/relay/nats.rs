//! The relay for large deployments: core NATS (`NATS_URL`).
//!
//! Every instance publishes its messages on one subject and subscribes to
//! it. Core NATS delivers at most once and keeps nothing, which is all a
//! poke needs: the sequence numbers and heartbeats of the relay turn any
//! loss into a resync, and so does every (re)connection to the server and
//! every message NATS dropped for a slow consumer. No Postgres connection
//! is held for listening, and no notification goes through Postgres.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::Outgoing;
use super::{Peers, Transport, deliver, publish, until_listening};
use crate::notice::StoreEvent;

/// The subject every instance of one database publishes and hears notices
/// on: `mana-sync.notices.<hash of the database's host, port and name>`, so
/// that deployments (or test databases) sharing a NATS server do not hear
/// each other.
pub(crate) fn subject(database: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = database
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let identity = format!(
        "{}:{:?}/{}",
        hosts.join(","),
        database.get_ports(),
        database.get_dbname().unwrap_or_default()
    );
    // FNV-1a: stable across versions and platforms.
    let hash = identity
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("mana-sync.notices.{hash:016x}")
}

/// Longest wait between reconnection attempts: a restarted NATS server is
/// rejoined (and every stream resynced) within about this long.
const RECONNECT_MAX: Duration = Duration::from_millis(500);

struct NatsTransport {
    client: async_nats::Client,
    subject: String,
}

impl Transport for NatsTransport {
    async fn send(&mut self, messages: &[String]) -> Result<(), String> {
        for message in messages {
            self.client
                .publish(self.subject.clone(), message.clone().into())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Connects to `url` (retrying in the background if NATS is not up yet) and
/// starts the publisher and the receiver.
pub(crate) async fn start(
    url: &str,
    subject: String,
    events: broadcast::Sender<StoreEvent>,
    outbox: mpsc::Receiver<Outgoing>,
    shed: Arc<AtomicBool>,
    instance: String,
    interval: Duration,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let (connection_events, mut connection_changes) = mpsc::unbounded_channel();
    let (listening, heard) = oneshot::channel();
    let client = async_nats::ConnectOptions::new()
        .name("mana-sync")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            (Duration::from_millis(50) * u32::try_from(attempts).unwrap_or(u32::MAX))
                .min(RECONNECT_MAX)
        })
        .event_callback(move |event| {
            let connection_events = connection_events.clone();
            async move {
                let _ = connection_events.send(event);
            }
        })
        .connect(url)
        .await
        .map_err(|e| format!("NATS_URL {url}: {e}"))?;
    let mut subscriber = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| format!("NATS_URL {url}: {e}"))?;
    let publisher = tokio::spawn(publish(
        NatsTransport {
            client: client.clone(),
            subject,
        },
        outbox,
        shed,
        instance.clone(),
        interval,
    ));
    let receiver = tokio::spawn(async move {
        let _client = client;
        let mut peers = Peers::new(instance, interval);
        let mut listening = Some(listening);
        // Checked twice per interval: an instance that fell silent is noticed
        // within 3.5 intervals of its last message.
        let mut ticks = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                message = subscriber.next() => match message {
                    Some(message) => match std::str::from_utf8(&message.payload) {
                        Ok(text) => deliver(&events, peers.receive(text, Instant::now())),
                        Err(_) => tracing::warn!("ignoring a change notice that is not UTF-8"),
                    },
                    None => {
                        tracing::error!("the NATS subscription ended");
                        return;
                    }
                },
                event = connection_changes.recv() => match event {
                    Some(async_nats::Event::Connected) => {
                        tracing::info!("listening for changes from every instance (NATS)");
                        peers.forget();
                        let _ = events.send(StoreEvent::Resync);
                        if let Some(listening) = listening.take() {
                            let _ = listening.send(());
                        }
                    }
                    Some(async_nats::Event::SlowConsumer(_)) => {
                        tracing::warn!("NATS dropped change notices; streams re-read from their cursors");
                        let _ = events.send(StoreEvent::Resync);
                    }
                    Some(async_nats::Event::Disconnected) => {
                        tracing::warn!("lost the connection to NATS; reconnecting");
                    }
                    Some(other) => tracing::debug!(event = %other, "NATS"),
                    None => {}
                },
                _ = ticks.tick() => {
                    if peers.check_silence(Instant::now()) {
                        let _ = events.send(StoreEvent::Resync);
                    }
                }
            }
        }
    });
    until_listening(heard).await;
    Ok(vec![publisher, receiver])
}
