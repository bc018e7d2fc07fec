//! Staying in sync: catch up (push + pull), then follow the server's live
//! stream (`GET /sync/{appId}/stream`, Server-Sent Events), pushing local
//! writes as they happen, and reconnecting with backoff when anything fails.
//!
//! The stream is opened with `since` = the app cursor (every change of every
//! synced collection up to it is applied, see `LocalStore`), right after a
//! full pull, so it delivers what arrived in between and then live changes.
//! Each `changes` event is applied in one transaction with its collection's
//! new cursor (`syncedUntil`). After any failure the loop waits (exponential
//! backoff with jitter, from `min_backoff` to `max_backoff`), pulls again from
//! the saved cursors, and reopens the stream.
//!
//! Shared spaces: the stream follows every space of the user. On
//! `space-added` the list of spaces is refreshed (the stream itself sends
//! the space's changes next). On `space-removed` the space's records,
//! unsent changes and cursor parts are dropped.
//!
//! The stream lists the `cursor-expired` feature (query `features`). Its
//! `cursor-expired` event (the server dropped history after the cursor) starts
//! a re-download, and the loop catches up again at once: the re-download, then
//! the outbox, then a new stream (see `crate::sync`).

use std::future::Future;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use mana_sync_protocol::StreamChanges;
use mana_sync_protocol::messages::SpaceEvent;

use crate::error::{ClientError, Result};
use crate::status::SyncStatus;
use crate::sync::{FEATURES, FEATURES_HEADER, START, SyncClient, error_from};

/// Exponential backoff with jitter.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next delay: the current one with ±25 % jitter (so that devices
    /// that lost the server together do not return together); doubles it.
    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter)
    }
}

/// Why the stream loop stopped.
enum Stopped {
    /// The caller asked.
    Shutdown,
    /// Something failed: reconnect.
    Failed(ClientError),
    /// The cursor expired; a re-download was started: catch up again now.
    Expired,
}

impl SyncClient {
    /// Syncs, then follows the live stream until `shutdown` completes,
    /// reconnecting with backoff after any failure (status `offline` or
    /// `error` meanwhile, `synced` while connected). Returns early only when
    /// retrying cannot help: the server refuses the token.
    pub async fn run_live(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let options = &self.inner.options;
        let mut backoff = Backoff::new(options.min_backoff, options.max_backoff);
        // A stream whose cursor expired is followed by a catch-up at once,
        // unless it expired again before the new stream delivered anything.
        let mut expired_last = false;
        tokio::pin!(shutdown);
        loop {
            self.inner.store.set_status(SyncStatus::Syncing)?;
            let caught_up = tokio::select! {
                result = self.sync_once() => result,
                () = &mut shutdown => return Ok(()),
            };
            let failure = match caught_up {
                Ok(_) => match self
                    .follow_stream(&mut shutdown, &mut backoff, &mut expired_last)
                    .await
                {
                    Stopped::Shutdown => return Ok(()),
                    Stopped::Expired if !expired_last => {
                        expired_last = true;
                        continue;
                    }
                    Stopped::Expired => ClientError::CursorExpired(
                        "the stream's cursor expired again right after a re-download".into(),
                    ),
                    Stopped::Failed(error) => error,
                },
                Err(error) => error,
            };
            expired_last = false;
            let result: Result<()> = Err(failure);
            self.settle(&result).await?;
            if let Err(ClientError::Unauthorized(message)) = result {
                return Err(ClientError::Unauthorized(message));
            }
            if let Err(error) = &result {
                tracing::info!(%error, "sync interrupted; reconnecting after a delay");
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return Ok(()),
            }
        }
    }

    /// Opens the stream and applies its events, pushing local writes as they
    /// come, until it fails or `shutdown` completes.
    async fn follow_stream(
        &self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        backoff: &mut Backoff,
        expired_last: &mut bool,
    ) -> Stopped {
        let store = self.inner.store.clone();
        let options = self.inner.options.clone();
        let since = match self.blocking(|store| store.app_cursor()).await {
            Ok(cursor) => cursor.unwrap_or_else(|| START.to_owned()),
            Err(error) => return Stopped::Failed(error),
        };
        let mut url = match self.endpoint(&["sync", store.app_id(), "stream"]) {
            Ok(url) => url,
            Err(error) => return Stopped::Failed(error),
        };
        url.query_pairs_mut()
            .append_pair("collections", &store.collections().join(","))
            .append_pair("since", &since);
        let request = self
            .inner
            .http
            .get(url)
            .bearer_auth(&self.inner.token)
            .header("x-client-id", store.client_id())
            .header(FEATURES_HEADER, FEATURES)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send();
        let response = tokio::select! {
            response = tokio::time::timeout(options.request_timeout, request) => response,
            () = shutdown.as_mut() => return Stopped::Shutdown,
        };
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Stopped::Failed(self.unreachable(&error)),
            Err(_) => {
                return Stopped::Failed(ClientError::Unreachable {
                    server: self.inner.server.to_string(),
                    reason: "opening the live stream timed out".into(),
                });
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return match error_from(status, &body) {
                ClientError::CursorExpired(message) => self.expired(&message).await,
                error => Stopped::Failed(error),
            };
        }
        let mut events = response.bytes_stream().eventsource();
        let mut outbox = store.watch_outbox();
        let mut external = tokio::time::interval(options.external_check_interval);
        external.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Local writes made while we were catching up are pushed right away.
        outbox.mark_changed();
        // Synced, unless refused changes wait aside.
        if let Err(error) = self.settle(&Ok(())).await {
            return Stopped::Failed(error);
        }
        backoff.reset();
        loop {
            tokio::select! {
                event = tokio::time::timeout(options.stream_idle_timeout, events.next()) => {
                    let event = match event {
                        Err(_) => return Stopped::Failed(ClientError::Unreachable {
                            server: self.inner.server.to_string(),
                            reason: format!(
                                "the live stream was silent for {} s",
                                options.stream_idle_timeout.as_secs()
                            ),
                        }),
                        Ok(None) => return Stopped::Failed(ClientError::Unreachable {
                            server: self.inner.server.to_string(),
                            reason: "the server closed the live stream".into(),
                        }),
                        Ok(Some(Err(error))) => return Stopped::Failed(ClientError::Unreachable {
                            server: self.inner.server.to_string(),
                            reason: format!("live stream: {error}"),
                        }),
                        Ok(Some(Ok(event))) => event,
                    };
                    if event.event != "cursor-expired" {
                        *expired_last = false;
                    }
                    match event.event.as_str() {
                        "changes" => {
                            if let Err(error) = self.apply_event(&event.data).await {
                                return Stopped::Failed(error);
                            }
                        }
                        "space-added" | "space-removed" => {
                            if let Err(error) = self.space_event(&event.event, &event.data).await {
                                return Stopped::Failed(error);
                            }
                        }
                        // History after the cursor was dropped: the server
                        // ends the stream; download everything again.
                        "cursor-expired" => return self.expired(&event.data).await,
                        // The server ends the stream on its own failure;
                        // reconnect from the saved cursors.
                        "error" => {
                            return Stopped::Failed(error_from(
                                reqwest::StatusCode::SERVICE_UNAVAILABLE,
                                event.data.as_bytes(),
                            ));
                        }
                        // Heartbeats only keep the idle timeout at bay.
                        _ => {}
                    }
                }
                changed = outbox.changed() => {
                    if changed.is_err() {
                        return Stopped::Shutdown;
                    }
                    outbox.borrow_and_update();
                    if let Err(error) = self.push_while_live().await {
                        return Stopped::Failed(error);
                    }
                }
                _ = external.tick() => {
                    if let Err(error) = store.check_external_changes() {
                        return Stopped::Failed(error);
                    }
                }
                () = shutdown.as_mut() => return Stopped::Shutdown,
            }
        }
    }

    /// The stream's cursor expired: starts a re-download (the next catch-up
    /// runs it).
    async fn expired(&self, message: &str) -> Stopped {
        tracing::info!(%message, "the stream's cursor expired; downloading everything again");
        match self.blocking(|store| store.start_redownload()).await {
            Ok(()) => Stopped::Expired,
            Err(error) => Stopped::Failed(error),
        }
    }

    async fn push_while_live(&self) -> Result<()> {
        let store = &self.inner.store;
        if self.blocking(|store| store.pending_count()).await? == 0 {
            return Ok(());
        }
        store.set_status(SyncStatus::Syncing)?;
        let result = self.push().await;
        match result {
            Ok(_) => self.settle(&Ok(())).await,
            Err(error) => Err(error),
        }
    }

    async fn apply_event(&self, data: &str) -> Result<()> {
        let event: StreamChanges = serde_json::from_str(data)
            .map_err(|error| ClientError::Protocol(format!("stream event: {error}")))?;
        self.blocking(move |store| {
            store.apply_page(
                &event.changes,
                Some((event.table.as_str(), event.synced_until.as_str())),
                &[],
            )
        })
        .await?;
        Ok(())
    }

    /// `space-added`: the user joined a space (the stream sends its changes
    /// next); the list of spaces is refreshed. `space-removed`: its records
    /// go.
    async fn space_event(&self, kind: &str, data: &str) -> Result<()> {
        let event: SpaceEvent = serde_json::from_str(data)
            .map_err(|error| ClientError::Protocol(format!("stream event {kind}: {error}")))?;
        if kind == "space-removed" {
            let gone = vec![event.space_id];
            self.blocking(move |store| store.drop_spaces(&gone)).await?;
            return Ok(());
        }
        self.refresh_spaces().await?;
        Ok(())
    }
}
