//! Live delivery: the change stream behind `GET /sync/{appId}/stream` and the
//! notification loop behind `GET /ws` and `GET /ws/{appId}`.
//!
//! A stream keeps one cursor per collection. It subscribes to the hub
//! *before* reading its backlog, so a push committed while the backlog is
//! being read is still announced afterwards. Every notice either continues
//! where a cursor stands (then the notice's shared batch is used, one database
//! read for all streams) or it does not (then the stream pages from its own
//! cursor). Either way each change is sent exactly once, in order, and never
//! to the device that pushed it.

use std::sync::Arc;
use std::time::Duration;

use async_stream::stream;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{Stream, StreamExt};
use mana_sync_auth::Verifier;
use mana_sync_protocol::messages::ErrorDetail;
use mana_sync_protocol::{Cursor, Since, SocketMessage, SocketRequest, StreamChanges, UserId};
use mana_sync_store::{ChangePage, ExpiredCursor, MAX_PAGE, Store, StoreError};
use tokio::time::{Instant, MissedTickBehavior};

use crate::hub::{Hub, Pending, SubscriberKind};
use crate::service::{CursorDialect, ServiceError, SyncService};

/// Timing of live connections.
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    /// Interval between stream heartbeats.
    pub heartbeat: Duration,
    /// How long a new socket may take to authenticate.
    pub socket_auth_timeout: Duration,
}

/// What a stream sends.
pub enum StreamItem {
    /// A page of one collection's changes (`event: changes`).
    Changes(StreamChanges),
    /// Still here (`event: heartbeat`).
    Heartbeat,
    /// The stream ends because of a server-side failure (`event: error`); the
    /// device reconnects from its cursor.
    Failed(ErrorDetail),
    /// The stream ends because a cursor is older than history compaction
    /// dropped (`event: cursor-expired`); the device downloads the current
    /// state again. Only sent to clients that asked for it.
    CursorExpired(ErrorDetail),
}

/// A validated stream request.
pub struct StreamRequest {
    /// Whose changes.
    pub user: UserId,
    /// Of which app.
    pub app_id: String,
    /// Which collections, each with its own cursor.
    pub collections: Vec<String>,
    /// Where every collection starts.
    pub since: Since,
    /// The device; its own changes are not sent to it.
    pub client_id: Option<String>,
    /// What to do with a cursor older than dropped history.
    pub expired: ExpiredCursor,
    /// How the client reads and writes cursors.
    pub dialect: CursorDialect,
}

fn changes_event(
    service: &SyncService,
    dialect: CursorDialect,
    table: &str,
    page: ChangePage,
) -> StreamItem {
    service.count_sent(page.changes.len());
    let synced_until = dialect.format(&page);
    StreamItem::Changes(StreamChanges {
        table: table.to_owned(),
        changes: page
            .changes
            .into_iter()
            .map(|change| change.into_sync_change())
            .collect(),
        synced_until,
        has_more: page.has_more,
    })
}

fn failure(error: &ServiceError) -> StreamItem {
    if let ServiceError::Store(StoreError::CursorExpired { .. }) = error {
        return StreamItem::CursorExpired(ErrorDetail {
            code: "cursor_expired".into(),
            message: format!("{error}; download the current state from the start again"),
        });
    }
    tracing::warn!(%error, "ending a change stream");
    StreamItem::Failed(ErrorDetail {
        code: "unavailable".into(),
        message: "the stream ended; reconnect from your last syncedUntil".into(),
    })
}

/// Every page of one collection from `since` to the end.
fn pages(
    service: Arc<SyncService>,
    user: UserId,
    app_id: String,
    table: String,
    since: Since,
    exclude: Option<String>,
    expired: ExpiredCursor,
) -> impl Stream<Item = Result<ChangePage, ServiceError>> {
    stream! {
        let mut since = since;
        loop {
            let page = service
                .page(&user, &app_id, &table, since, exclude.as_deref(), MAX_PAGE, expired)
                .await;
            let more = match &page {
                Ok(page) => {
                    since = Since::Cursor(page.next);
                    page.has_more
                }
                Err(_) => false,
            };
            yield page;
            if !more {
                break;
            }
        }
    }
}

/// The stream of events for one `GET /sync/{appId}/stream`.
pub fn change_stream(
    service: Arc<SyncService>,
    hub: Arc<Hub>,
    request: StreamRequest,
    heartbeat: Duration,
) -> impl Stream<Item = StreamItem> + Send + 'static {
    stream! {
        let StreamRequest { user, app_id, collections, since, client_id, expired, dialect } = request;
        let subscription = hub.subscribe(&user, Some(&app_id), SubscriberKind::Stream);
        let store: Arc<dyn Store> = service.store().clone();

        // Backlog: every collection to its end, one event per page (even an
        // empty one, so the device learns its cursor).
        let mut cursors: Vec<(String, Cursor)> = Vec::with_capacity(collections.len());
        for table in collections {
            let mut cursor = Cursor::START;
            let mut backlog = std::pin::pin!(pages(
                service.clone(), user.clone(), app_id.clone(), table.clone(), since, client_id.clone(),
                expired,
            ));
            while let Some(page) = backlog.next().await {
                match page {
                    Ok(page) => {
                        cursor = page.next;
                        yield changes_event(&service, dialect, &table, page);
                    }
                    Err(error) => {
                        yield failure(&error);
                        return;
                    }
                }
            }
            cursors.push((table, cursor));
        }

        let mut ticks = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let pending: Pending = tokio::select! {
                () = hub.shutdown().cancelled() => return,
                _ = ticks.tick() => {
                    yield StreamItem::Heartbeat;
                    continue;
                }
                pending = subscription.changed() => pending,
            };

            // Which collections to read from their own cursor, and which are
            // served from a notice's shared batch.
            let mut reread: Vec<usize> = Vec::new();
            if pending.resync {
                reread.extend(0..cursors.len());
            } else {
                for published in &pending.notices {
                    let notice = &published.notice;
                    let affected: Vec<usize> = (0..cursors.len())
                        .filter(|&i| notice.touches(&cursors[i].0) && cursors[i].1.position() < notice.last)
                        .filter(|i| !reread.contains(i))
                        .collect();
                    if affected.is_empty() {
                        continue;
                    }
                    let continues = affected
                        .iter()
                        .all(|&i| cursors[i].1.position() >= notice.after);
                    let batch = if continues {
                        published.batch(&*store).await.and_then(Result::ok)
                    } else {
                        None
                    };
                    match batch {
                        Some(batch) if !batch.has_more => {
                            for i in affected {
                                let (table, cursor) = &mut cursors[i];
                                let changes: Vec<_> = batch
                                    .changes
                                    .iter()
                                    .filter(|c| c.table == *table && c.seq > cursor.position())
                                    .filter(|c| client_id.as_deref() != Some(c.client_id.as_str()))
                                    .cloned()
                                    .collect();
                                *cursor = (*cursor).max(batch.next);
                                if !changes.is_empty() {
                                    yield changes_event(
                                        &service,
                                        dialect,
                                        table,
                                        ChangePage { changes, next: *cursor, has_more: false, expired_through: batch.expired_through },
                                    );
                                }
                            }
                        }
                        _ => reread.extend(affected),
                    }
                }
            }
            for i in reread {
                let (table, cursor) = cursors[i].clone();
                let mut catch_up = std::pin::pin!(pages(
                    service.clone(), user.clone(), app_id.clone(), table.clone(),
                    Since::Cursor(cursor), client_id.clone(), expired,
                ));
                while let Some(page) = catch_up.next().await {
                    match page {
                        Ok(page) => {
                            cursors[i].1 = page.next;
                            if !page.changes.is_empty() {
                                yield changes_event(&service, dialect, &table, page);
                            }
                        }
                        Err(error) => {
                            yield failure(&error);
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn to_text(message: &SocketMessage) -> Message {
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// WebSocket close code for a policy violation (bad or missing auth).
const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a server going away.
const CLOSE_GOING_AWAY: u16 = 1001;

/// Waits for `{type: "auth", token}` and verifies it; on failure tells the
/// device why and closes.
async fn authenticate(
    socket: &mut WebSocket,
    verifier: &Verifier,
    timeout: Duration,
) -> Option<(UserId, Option<String>)> {
    let first = tokio::time::timeout(timeout, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Text(text))) => return Some(text),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await;
    let refusal = match first {
        Err(_) => (
            "auth_timeout",
            format!(
                "send {{\"type\":\"auth\",\"token\":…}} within {} s",
                timeout.as_secs()
            ),
        ),
        Ok(None) => return None,
        Ok(Some(text)) => match serde_json::from_str::<SocketRequest>(&text) {
            Ok(SocketRequest::Auth { token, client_id }) => match verifier.verify(&token).await {
                Ok(user) => return Some((user, client_id)),
                Err(error) => ("unauthorized", error.to_string()),
            },
            Ok(_) | Err(_) => (
                "unauthorized",
                "the first message must be {\"type\":\"auth\",\"token\":…}".to_owned(),
            ),
        },
    };
    let (code, message) = refusal;
    let _ = socket
        .send(to_text(&SocketMessage::Error {
            code: code.to_owned(),
            message,
        }))
        .await;
    let _ = socket
        .send(close(CLOSE_POLICY, "authentication required"))
        .await;
    None
}

/// The `sync-available` messages for what is pending, leaving out the
/// device's own pushes, one per app.
fn sync_available(
    pending: &Pending,
    app: Option<&str>,
    client_id: Option<&str>,
) -> Vec<SocketMessage> {
    if pending.resync {
        return vec![SocketMessage::SyncAvailable {
            app_id: app.unwrap_or("*").to_owned(),
            tables: Vec::new(),
        }];
    }
    let mut by_app: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for published in &pending.notices {
        let notice = &published.notice;
        if client_id == Some(notice.client_id.as_str()) {
            continue;
        }
        let index = match by_app.iter().position(|(a, _)| *a == notice.app_id) {
            Some(index) => index,
            None => {
                by_app.push((notice.app_id.clone(), Some(Vec::new())));
                by_app.len() - 1
            }
        };
        let entry = &mut by_app[index].1;
        match (&notice.tables, entry.as_mut()) {
            (Some(tables), Some(known)) => {
                for table in tables {
                    if !known.contains(table) {
                        known.push(table.clone());
                    }
                }
            }
            _ => *entry = None,
        }
    }
    by_app
        .into_iter()
        .map(|(app_id, tables)| SocketMessage::SyncAvailable {
            app_id,
            tables: tables.unwrap_or_default(),
        })
        .collect()
}

/// Serves one WebSocket until the device leaves or the server shuts down.
pub async fn serve_socket(
    mut socket: WebSocket,
    verifier: Arc<Verifier>,
    hub: Arc<Hub>,
    app: Option<String>,
    config: LiveConfig,
) {
    let Some((user, client_id)) =
        authenticate(&mut socket, &verifier, config.socket_auth_timeout).await
    else {
        return;
    };
    if socket.send(to_text(&SocketMessage::AuthOk)).await.is_err() {
        return;
    }
    let subscription = hub.subscribe(&user, app.as_deref(), SubscriberKind::Socket);
    loop {
        tokio::select! {
            () = hub.shutdown().cancelled() => {
                let _ = socket.send(close(CLOSE_GOING_AWAY, "server shutting down")).await;
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    let reply = match serde_json::from_str::<SocketRequest>(&text) {
                        Ok(SocketRequest::Ping) => SocketMessage::Pong,
                        Ok(SocketRequest::Auth { .. }) => continue,
                        Err(error) => SocketMessage::Error {
                            code: "invalid_message".into(),
                            message: format!("expected {{\"type\":\"ping\"}}: {error}"),
                        },
                    };
                    if socket.send(to_text(&reply)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            pending = subscription.changed() => {
                for message in sync_available(&pending, app.as_deref(), client_id.as_deref()) {
                    if socket.send(to_text(&message)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
