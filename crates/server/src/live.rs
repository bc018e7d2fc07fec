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
use std::time::{Duration, SystemTime};

use async_stream::stream;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{Stream, StreamExt};
use mana_sync_auth::{Verified, Verifier};
use mana_sync_protocol::messages::ErrorDetail;
use mana_sync_protocol::{Cursor, Since, SocketMessage, SocketRequest, StreamChanges, UserId};
use mana_sync_store::{ChangePage, ExpiredCursor, MAX_PAGE, Store, StoreError};
use tokio::time::{Instant, MissedTickBehavior};

use crate::connections::ConnectionSlot;
use crate::hub::{Hub, LiveRefusal, Pending, SubscriberKind, Subscription};
use crate::service::{CursorDialect, ServiceError, SyncService};

/// Largest message a socket may send: the auth message with its token
/// needs a few KB (a token travels in headers elsewhere, and request heads
/// are capped at 8 KiB), every other message is tiny. Larger frames are
/// refused at their header, before anything is buffered, and the socket is
/// closed with 1009.
pub const MAX_SOCKET_MESSAGE: usize = 16 * 1024;

/// Most bytes queued for a socket that does not read (pongs and notices).
/// Beyond that, writes fail and the socket is closed.
pub const MAX_SOCKET_QUEUE: usize = 64 * 1024;

/// Read buffer per socket: messages are small, and the default (128 KiB)
/// was the largest part of an idle socket's memory.
pub const SOCKET_READ_BUFFER: usize = 4096;

/// How long one write to a socket may wait for the device to read; a device
/// that has not read [`MAX_SOCKET_QUEUE`] plus the kernel's buffers by then
/// is gone or hostile, and its socket is closed.
pub const SOCKET_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A sleep until `deadline` (wall clock), for a token's expiry.
fn sleep_until(deadline: SystemTime) -> tokio::time::Sleep {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left)
}

fn token_expired() -> ErrorDetail {
    ErrorDetail {
        code: "token_expired".into(),
        message: "the token has expired; reconnect with a fresh one".into(),
    }
}

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

/// The stream of events for one `GET /sync/{appId}/stream`, subscribed
/// with `subscription` (taken before the response starts, so a refusal is
/// still an HTTP status). It ends with `event: error` `token_expired` at
/// `token_deadline`.
pub fn change_stream(
    service: Arc<SyncService>,
    hub: Arc<Hub>,
    subscription: Subscription,
    request: StreamRequest,
    heartbeat: Duration,
    token_deadline: SystemTime,
) -> impl Stream<Item = StreamItem> + Send + 'static {
    stream! {
        let StreamRequest { user, app_id, collections, since, client_id, expired, dialect } = request;
        let store: Arc<dyn Store> = service.store().clone();
        let mut expiry = std::pin::pin!(sleep_until(token_deadline));

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
                () = &mut expiry => {
                    yield StreamItem::Failed(token_expired());
                    return;
                }
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

/// WebSocket close code for a server going away.
const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code for a protocol error.
const CLOSE_PROTOCOL: u16 = 1002;
/// WebSocket close code for a policy violation (bad or missing auth).
const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a message larger than the server takes.
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for "try again later" (limits reached).
const CLOSE_TRY_LATER: u16 = 1013;

/// Sends `message`, giving up after [`SOCKET_SEND_TIMEOUT`] or when more
/// than [`MAX_SOCKET_QUEUE`] is already queued; `false` means the socket is
/// to be closed.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SOCKET_SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

/// Tells the device why, then closes (as far as it still reads).
async fn refuse(socket: &mut WebSocket, code: &str, message: String, close_code: u16) {
    let error = SocketMessage::Error {
        code: code.to_owned(),
        message,
    };
    if send(socket, to_text(&error)).await {
        let reason = match close_code {
            CLOSE_POLICY => "authentication required",
            CLOSE_TRY_LATER => "too many connections",
            _ => "closing",
        };
        let _ = send(socket, close(close_code, reason)).await;
    }
}

/// The close code for a frame the socket could not read: 1009 for one over
/// [`MAX_SOCKET_MESSAGE`], 1002 for anything else.
fn close_code_for(error: axum::Error) -> u16 {
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(error) if matches!(*error, tungstenite::Error::Capacity(_)) => CLOSE_TOO_BIG,
        _ => CLOSE_PROTOCOL,
    }
}

/// What a socket sent first.
enum First {
    Text(axum::extract::ws::Utf8Bytes),
    /// A frame it could not read (too big, malformed): close with this code.
    Unreadable(u16),
    /// It left, or was closed to make room.
    Gone,
}

/// Waits for `{type: "auth", token}` and verifies it; on failure tells the
/// device why and closes. Until then the socket counts as a silent
/// connection: it may be closed to make room for newcomers.
async fn authenticate(
    socket: &mut WebSocket,
    verifier: &Verifier,
    timeout: Duration,
    slot: Option<&ConnectionSlot>,
) -> Option<(Verified, Option<String>)> {
    let evicted = slot.map(ConnectionSlot::waiting);
    let first = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                () = async {
                    match &evicted {
                        Some(evicted) => evicted.cancelled().await,
                        None => std::future::pending().await,
                    }
                } => return First::Gone,
                message = socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => return First::Text(text),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Err(error)) => return First::Unreadable(close_code_for(error)),
                    _ => return First::Gone,
                },
            }
        }
    })
    .await;
    let (code, message) = match first {
        Err(_) => (
            "auth_timeout",
            format!(
                "send {{\"type\":\"auth\",\"token\":…}} within {} s",
                timeout.as_secs()
            ),
        ),
        Ok(First::Gone) => return None,
        Ok(First::Unreadable(code)) => {
            let _ = send(socket, close(code, "unreadable frame")).await;
            return None;
        }
        Ok(First::Text(text)) => match serde_json::from_str::<SocketRequest>(&text) {
            Ok(SocketRequest::Auth { token, client_id }) => {
                match verifier.verify_token(&token).await {
                    Ok(verified) => {
                        if let Some(slot) = slot {
                            slot.proven();
                        }
                        return Some((verified, client_id));
                    }
                    Err(error) => ("unauthorized", error.to_string()),
                }
            }
            Ok(_) | Err(_) => (
                "unauthorized",
                "the first message must be {\"type\":\"auth\",\"token\":…}".to_owned(),
            ),
        },
    };
    refuse(socket, code, message, CLOSE_POLICY).await;
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

/// Serves one WebSocket until the device leaves, its token expires, or the
/// server shuts down.
pub async fn serve_socket(
    mut socket: WebSocket,
    verifier: Arc<Verifier>,
    hub: Arc<Hub>,
    app: Option<String>,
    config: LiveConfig,
    slot: Option<ConnectionSlot>,
) {
    let Some((verified, client_id)) = authenticate(
        &mut socket,
        &verifier,
        config.socket_auth_timeout,
        slot.as_ref(),
    )
    .await
    else {
        return;
    };
    let Verified { user, refused_from } = verified;
    let subscription = match hub.subscribe(&user, app.as_deref(), SubscriberKind::Socket) {
        Ok(subscription) => subscription,
        Err(refusal) => {
            let code = match refusal {
                LiveRefusal::PerUser { .. } => "too_many_connections",
                LiveRefusal::Full { .. } => "server_busy",
            };
            refuse(&mut socket, code, refusal.to_string(), CLOSE_TRY_LATER).await;
            return;
        }
    };
    if !send(&mut socket, to_text(&SocketMessage::AuthOk)).await {
        return;
    }
    let mut expiry = std::pin::pin!(sleep_until(refused_from));
    loop {
        tokio::select! {
            () = hub.shutdown().cancelled() => {
                let _ = send(&mut socket, close(CLOSE_GOING_AWAY, "server shutting down")).await;
                return;
            }
            () = &mut expiry => {
                let expired = token_expired();
                refuse(&mut socket, &expired.code, expired.message, CLOSE_POLICY).await;
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    let reply = match serde_json::from_str::<SocketRequest>(&text) {
                        Ok(SocketRequest::Ping) => SocketMessage::Pong,
                        // A fresh token of the same user keeps the socket
                        // open past the old one's expiry.
                        Ok(SocketRequest::Auth { token, .. }) => {
                            match verifier.verify_token(&token).await {
                                Ok(fresh) if fresh.user == user => {
                                    expiry.set(sleep_until(fresh.refused_from));
                                    SocketMessage::AuthOk
                                }
                                Ok(_) => {
                                    refuse(
                                        &mut socket,
                                        "unauthorized",
                                        "a socket cannot change user; open a new one".into(),
                                        CLOSE_POLICY,
                                    )
                                    .await;
                                    return;
                                }
                                Err(error) => {
                                    refuse(&mut socket, "unauthorized", error.to_string(), CLOSE_POLICY)
                                        .await;
                                    return;
                                }
                            }
                        }
                        Err(error) => SocketMessage::Error {
                            code: "invalid_message".into(),
                            message: format!("expected {{\"type\":\"ping\"}}: {error}"),
                        },
                    };
                    if !send(&mut socket, to_text(&reply)).await {
                        return;
                    }
                }
                Some(Err(error)) => {
                    let _ = send(&mut socket, close(close_code_for(error), "unreadable frame")).await;
                    return;
                }
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
            },
            pending = subscription.changed() => {
                for message in sync_available(&pending, app.as_deref(), client_id.as_deref()) {
                    if !send(&mut socket, to_text(&message)).await {
                        return;
                    }
                }
            }
        }
    }
}
