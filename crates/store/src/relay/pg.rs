//! The default relay: Postgres `LISTEN/NOTIFY`, outside the push
//! transactions. One connection per instance sends batches of notices with
//! `pg_notify` in a transaction of its own; another listens.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::AsyncMessage;

use super::{Outgoing, Peers, Transport, deliver, publish, until_listening};
use crate::notice::{NOTIFY_CHANNEL, StoreEvent};
use crate::postgres::PgConnector;

/// Sends messages with `pg_notify` on a connection of its own, reconnecting
/// when it was lost.
struct PgTransport {
    connector: PgConnector,
    client: Option<(tokio_postgres::Client, tokio_postgres::Statement)>,
}

impl PgTransport {
    fn new(mut connector: PgConnector) -> Self {
        connector
            .config_mut()
            .application_name("mana-sync-notifier");
        Self {
            connector,
            client: None,
        }
    }

    async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio_postgres::Statement), tokio_postgres::Error> {
        let (client, connection) = self.connector.connect().await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let statement = client
            .prepare("SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m")
            .await?;
        Ok((client, statement))
    }
}

impl Transport for PgTransport {
    async fn send(&mut self, messages: &[String]) -> Result<(), String> {
        if self
            .client
            .as_ref()
            .is_none_or(|(client, _)| client.is_closed())
        {
            self.client = Some(self.connect().await.map_err(|e| e.to_string())?);
        }
        let Some((client, statement)) = &self.client else {
            return Err("not connected".into());
        };
        // One transaction for the whole batch: one turn at Postgres's
        // notification lock however many pushes it announces.
        let sent = client
            .execute(statement, &[&NOTIFY_CHANNEL, &messages])
            .await;
        if let Err(error) = sent {
            self.client = None;
            return Err(error.to_string());
        }
        Ok(())
    }
}

/// Starts the publisher and the listener on connections of their own, and
/// returns once the listener's first `LISTEN` took effect (or after
/// [`until_listening`]'s bound).
pub(crate) async fn start(
    connector: PgConnector,
    events: broadcast::Sender<StoreEvent>,
    outbox: mpsc::Receiver<Outgoing>,
    shed: Arc<AtomicBool>,
    instance: String,
    interval: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (listening, heard) = oneshot::channel();
    let tasks = vec![
        tokio::spawn(listen(
            connector.clone(),
            events,
            instance.clone(),
            interval,
            listening,
        )),
        tokio::spawn(publish(
            PgTransport::new(connector),
            outbox,
            shed,
            instance,
            interval,
        )),
    ];
    until_listening(heard).await;
    tasks
}

/// Listens for every instance's messages and announces them; reconnects
/// with backoff when the connection is lost (Postgres restart, network),
/// announcing [`StoreEvent::Resync`] once listening again so subscribers
/// re-read whatever they may have missed meanwhile. `listening` hears when
/// the first `LISTEN` took effect.
async fn listen(
    mut connector: PgConnector,
    events: broadcast::Sender<StoreEvent>,
    instance: String,
    interval: Duration,
    listening: oneshot::Sender<()>,
) {
    connector
        .config_mut()
        .application_name("mana-sync-listener")
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let mut peers = Peers::new(instance, interval);
    let mut backoff = LISTEN_BACKOFF_MIN;
    let mut listening = Some(listening);
    loop {
        match listen_until_disconnected(&connector, &events, &mut peers, interval, &mut listening)
            .await
        {
            Ok(()) => {
                tracing::warn!("lost the connection listening for changes; reconnecting");
                backoff = LISTEN_BACKOFF_MIN;
            }
            Err(error) => {
                let error = crate::postgres::describe(&error);
                tracing::warn!(%error, retry_in = ?backoff, "cannot listen for changes");
                backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn listen_until_disconnected(
    connector: &PgConnector,
    events: &broadcast::Sender<StoreEvent>,
    peers: &mut Peers,
    interval: Duration,
    listening: &mut Option<oneshot::Sender<()>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = connector.connect().await?;
    let (payloads, mut received) = mpsc::unbounded_channel::<String>();
    // The connection must be polled for the client to work; notifications
    // arrive as messages on it.
    let driver = tokio::spawn(async move {
        while let Some(message) = futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if payloads.send(notification.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let error = crate::postgres::describe(&error);
                    tracing::warn!(%error, "listener connection failed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    tracing::info!("listening for changes from every instance");
    // Whatever was committed while we were not listening is only found by
    // re-reading from the cursors.
    peers.forget();
    let _ = events.send(StoreEvent::Resync);
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    // Checked twice per interval: an instance that fell silent is noticed
    // within 3.5 intervals of its last message.
    let mut ticks = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            payload = received.recv() => match payload {
                Some(payload) => deliver(events, peers.receive(&payload, Instant::now())),
                None => break,
            },
            _ = ticks.tick() => {
                if peers.check_silence(Instant::now()) {
                    let _ = events.send(StoreEvent::Resync);
                }
            }
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}
