//! The notification loop behind `GET /ws` and `GET /ws/{appId}`: after
//! authenticating, a socket is told which apps and collections changed
//! (`sync-available`), and the device pulls. A socket that follows spaces
//! (`features=spaces`) is also told of its spaces' changes, and when its
//! user joins or leaves a space.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use mana_sync_auth::{Verified, Verifier};
use mana_sync_protocol::{SocketMessage, SocketRequest};
use mana_sync_store::Store;

use super::{LiveConfig, SOCKET_SEND_TIMEOUT, sleep_until, token_expired};
use crate::connections::ConnectionSlot;
use crate::hub::{Hub, LiveRefusal, Pending, SubscriberKind};

/// What a socket follows.
#[derive(Debug, Clone, Default)]
pub struct SocketApp {
    /// One app (`GET /ws/{appId}`), or every app (`None`, `GET /ws`).
    pub app: Option<String>,
    /// Whether it follows the user's shared spaces (`features=spaces`).
    pub follows_spaces: bool,
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
/// than [`MAX_SOCKET_QUEUE`](super::MAX_SOCKET_QUEUE) is already queued; `false` means the socket is
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
/// [`MAX_SOCKET_MESSAGE`](super::MAX_SOCKET_MESSAGE), 1002 for anything else.
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
/// device's own pushes into its user's log, one per app.
fn sync_available(
    pending: &Pending,
    app: Option<&str>,
    client_id: Option<&str>,
) -> Vec<SocketMessage> {
    let mut messages: Vec<SocketMessage> = pending
        .memberships
        .iter()
        .map(|(space, role)| match role {
            Some(role) => SocketMessage::SpaceAdded {
                space_id: space.as_str().to_owned(),
                role: role.as_str().to_owned(),
            },
            None => SocketMessage::SpaceRemoved {
                space_id: space.as_str().to_owned(),
            },
        })
        .collect();
    // A space joined: everything of it is new to the device.
    let joined = pending.memberships.iter().any(|(_, role)| role.is_some());
    if pending.resync || joined {
        messages.push(SocketMessage::SyncAvailable {
            app_id: app.unwrap_or("*").to_owned(),
            tables: Vec::new(),
        });
        return messages;
    }
    let mut by_app: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for published in &pending.notices {
        let notice = &published.notice;
        if notice.is_own_push_of(client_id) {
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
    messages.extend(
        by_app
            .into_iter()
            .map(|(app_id, tables)| SocketMessage::SyncAvailable {
                app_id,
                tables: tables.unwrap_or_default(),
            }),
    );
    messages
}

/// Serves one WebSocket until the device leaves, its token expires, or the
/// server shuts down; with `follows_spaces`, it also hears of the spaces its
/// user belongs to.
pub async fn serve_socket(
    mut socket: WebSocket,
    verifier: Arc<Verifier>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    socket_app: SocketApp,
    config: LiveConfig,
    slot: Option<ConnectionSlot>,
) {
    let SocketApp {
        app,
        follows_spaces,
    } = socket_app;
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
    let spaces = if follows_spaces {
        match store.spaces_of(&user).await {
            Ok(spaces) => Some(spaces.into_iter().map(|m| m.space_id).collect::<Vec<_>>()),
            Err(error) => {
                tracing::warn!(%error, "cannot list a socket's spaces");
                refuse(
                    &mut socket,
                    "unavailable",
                    "the server cannot read your spaces now; reconnect later".into(),
                    CLOSE_TRY_LATER,
                )
                .await;
                return;
            }
        }
    } else {
        None
    };
    let subscription = match hub.subscribe(
        &user,
        client_id.as_deref(),
        app.as_deref(),
        SubscriberKind::Socket,
        spaces.as_deref(),
    ) {
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
