//! `GET /sync/{appId}/stream` (Server-Sent Events) and `GET /ws`, `GET /ws/{appId}`.

use std::convert::Infallible;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use mana_sync_protocol::UserId;
use mana_sync_protocol::ident::{MAX_NAME_LEN, check_identifier};
use mana_sync_protocol::messages::ErrorBody;

use crate::AppState;
use crate::auth::TokenDeadline;
use crate::connections::ConnectionSlot;
use crate::error::ApiError;
use crate::extract::{AppId, QueryMap, client_id_header, dialect};
use crate::hub::SubscriberKind;
use crate::live::{
    self, MAX_SOCKET_MESSAGE, MAX_SOCKET_QUEUE, SOCKET_READ_BUFFER, SocketApp, StreamItem,
};
use crate::openapi::{E400_PULL, E401, E410, E429, E503_LIVE};
use crate::service::{ServiceError, StreamParams};

fn invalid(message: String) -> ApiError {
    ServiceError::InvalidRequest(message).into()
}

/// Opens a change stream: backlog first, then live changes, until the
/// token expires.
#[utoipa::path(
    get,
    path = "/sync/{appId}/stream",
    tag = "live",
    description = STREAM_DESCRIPTION,
    params(
        ("appId" = String, Path, description = "The app: a name of at most 128 characters, no control characters."),
        ("collections" = String, Query, description = "The collections to follow, comma-separated."),
        ("since" = Option<String>, Query, description = "The cursor (the smallest `syncedUntil` of the collections, or a composite cursor with `spaces`); absent: from the beginning."),
        ("clientId" = Option<String>, Query, description = "The device, when `X-Client-Id` is not sent."),
        ("features" = Option<String>, Query, description = "As `X-Sync-Features` (for `EventSource`, which cannot send headers)."),
        ("X-Client-Id" = Option<String>, Header, description = "The device; it never receives its own changes."),
        ("X-Sync-Features" = Option<String>, Header, description = "Comma-separated features the client handles: `cursor-expired`, `spaces`."),
    ),
    responses(
        (status = 200, description = "The stream (`text/event-stream`); its events are in the operation's description.", content_type = "text/event-stream", body = String),
        (status = 400, description = E400_PULL, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 410, description = E410, body = ErrorBody),
        (status = 429, description = E429, body = ErrorBody),
        (status = 503, description = E503_LIVE, body = ErrorBody),
    ),
    security(("bearer" = []), ("query_token" = [])),
)]
pub async fn stream(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    Extension(TokenDeadline(deadline)): Extension<TokenDeadline>,
    AppId(app_id): AppId,
    headers: HeaderMap,
    QueryMap(mut query): QueryMap,
) -> Result<
    (
        HeaderMap,
        Sse<impl Stream<Item = Result<Event, Infallible>>>,
    ),
    ApiError,
> {
    let params = StreamParams {
        collections: query.remove("collections"),
        since: query.remove("since"),
        client_id: client_id_header(&headers)?.or_else(|| query.remove("clientId")),
        dialect: dialect(&headers, query.get("features").map(String::as_str)),
    };
    let request = state.service.stream_request(user, app_id, params)?;
    let spaces = if request.dialect.follows_spaces {
        let spaces = state
            .service
            .store()
            .spaces_of(&request.user)
            .await
            .map_err(ServiceError::from)?;
        Some(spaces.into_iter().map(|m| m.space_id).collect::<Vec<_>>())
    } else {
        None
    };
    // Subscribed before the response starts, so that a refusal is a status.
    let subscription = state.hub.subscribe(
        &request.user,
        request.client_id.as_deref(),
        Some(&request.app_id),
        SubscriberKind::Stream,
        spaces.as_deref(),
    )?;
    let events = live::change_stream(
        state.service.clone(),
        state.hub.clone(),
        subscription,
        request,
        state.live.heartbeat,
        deadline,
    )
    .map(|item| Ok(to_event(item)));
    // Reverse proxies (nginx and alikes) would otherwise buffer the stream.
    let mut headers = HeaderMap::new();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok((headers, Sse::new(events)))
}

/// The events of a stream, as `openapi.json` describes them (OpenAPI 3.1
/// has no construct for them); `to_event` below writes them.
const STREAM_DESCRIPTION: &str = "Server-Sent Events. The stream first sends each \
collection's backlog after `since`, in pages of at most 1000 and at least one page per \
collection (so the device learns its cursor even when nothing is new), then one \
`changes` event per collection whenever another device pushes. Each change arrives \
exactly once, in commit order per collection, and never to the device that pushed it. \
Reconnect with the last `syncedUntil` of every collection. The token is sent in the \
`Authorization` header, or as `?token=` for `EventSource`; the stream ends when it \
expires.\n\n\
Events (`event:` name, then `data:` as JSON):\n\n\
- `changes`: `StreamChanges` (`{table, changes, syncedUntil, hasMore}`).\n\
- `heartbeat`: `{}`, every `SSE_HEARTBEAT_SECS`.\n\
- `space-added`: `SpaceEvent` (`{spaceId, role}`): the user joined a shared space (or got \
another role); its changes follow. Only with the `spaces` feature.\n\
- `space-removed`: `SpaceEvent` (`{spaceId}`): the user left or was removed; drop its \
records. Nothing more of it follows. Only with the `spaces` feature.\n\
- `cursor-expired`: `ErrorBody` with code `cursor_expired`, then the stream ends: the \
cursor is older than compaction kept; download the current state again. Only with the \
`cursor-expired` feature.\n\
- `error`: `ErrorBody`, then the stream ends: a failure on the server's side (code \
`unavailable`, reconnect with backoff) or the token expired (code `token_expired`, \
reconnect with a fresh token). On shutdown the stream ends without one.";

fn to_event(item: StreamItem) -> Event {
    match item {
        StreamItem::Changes(changes) => Event::default()
            .event("changes")
            .data(serde_json::to_string(&changes).unwrap_or_default()),
        StreamItem::Heartbeat => Event::default().event("heartbeat").data("{}"),
        StreamItem::Failed(error) => Event::default()
            .event("error")
            .data(serde_json::to_string(&ErrorBody { error }).unwrap_or_default()),
        StreamItem::CursorExpired(error) => Event::default()
            .event("cursor-expired")
            .data(serde_json::to_string(&ErrorBody { error }).unwrap_or_default()),
        StreamItem::SpaceAdded(space) => Event::default()
            .event("space-added")
            .data(serde_json::to_string(&space).unwrap_or_default()),
        StreamItem::SpaceRemoved(space) => Event::default()
            .event("space-removed")
            .data(serde_json::to_string(&space).unwrap_or_default()),
    }
}

/// `GET /ws`: notices for every app of the user.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "live",
    description = SOCKET_DESCRIPTION,
    params(("features" = Option<String>, Query, description = "`spaces` to be told of shared spaces (`space-added`, `space-removed`).")),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol; its messages are in the operation's description."),
        (status = 400, description = "`invalid_request`: not a WebSocket upgrade.", body = ErrorBody),
    ),
)]
pub async fn socket_all_apps(
    State(state): State<AppState>,
    slot: Option<Extension<ConnectionSlot>>,
    headers: HeaderMap,
    QueryMap(query): QueryMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let follows_spaces =
        dialect(&headers, query.get("features").map(String::as_str)).follows_spaces;
    upgrade_socket(
        state,
        upgrade,
        SocketApp {
            app: None,
            follows_spaces,
        },
        slot,
    )
}

/// `GET /ws/{appId}`: notices for one app.
#[utoipa::path(
    get,
    path = "/ws/{appId}",
    tag = "live",
    description = SOCKET_DESCRIPTION,
    params(
        ("appId" = String, Path, description = "The app: a name of at most 128 characters, no control characters."),
        ("features" = Option<String>, Query, description = "`spaces` to be told of shared spaces (`space-added`, `space-removed`)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol; its messages are in the operation's description."),
        (status = 400, description = "`invalid_request`: not a WebSocket upgrade, or an invalid app id.", body = ErrorBody),
    ),
)]
pub async fn socket_one_app(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    slot: Option<Extension<ConnectionSlot>>,
    headers: HeaderMap,
    QueryMap(query): QueryMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(error) = check_identifier(&app_id, MAX_NAME_LEN) {
        return invalid(format!("`appId` {error}")).into_response();
    }
    let follows_spaces =
        dialect(&headers, query.get("features").map(String::as_str)).follows_spaces;
    upgrade_socket(
        state,
        upgrade,
        SocketApp {
            app: Some(app_id),
            follows_spaces,
        },
        slot,
    )
}

/// The messages of a socket, as `openapi.json` describes them.
const SOCKET_DESCRIPTION: &str = "A WebSocket of notices (the device then pulls). Every \
message is a JSON text frame with a `type`; what the device sends is `SocketRequest`, \
what the server sends `SocketMessage`.\n\n\
- → `{\"type\":\"auth\",\"token\",\"clientId\"?}` first, within \
`WS_AUTH_TIMEOUT_SECS` (10 s); `clientId` keeps the device's own pushes from being \
announced to it. Sent again with a fresh token of the same user, it extends the \
socket's life.\n\
- ← `{\"type\":\"auth-ok\"}`.\n\
- ← `{\"type\":\"sync-available\",\"appId\",\"tables\"}` when another device of \
the user pushed: pull those collections. Empty `tables` means any collection, `appId` \
`*` (on `/ws`) any app; both are sent after the server lost track.\n\
- ← `{\"type\":\"space-added\",\"spaceId\",\"role\"}` and \
`{\"type\":\"space-removed\",\"spaceId\"}` with the `spaces` feature.\n\
- → `{\"type\":\"ping\"}`, ← `{\"type\":\"pong\"}`.\n\
- ← `{\"type\":\"error\",\"code\",\"message\"}`, then close code 1008, for a bad \
or missing token (`unauthorized`) or one that expired (`token_expired`); with \
`too_many_connections` or `server_busy`, close code 1013.\n\n\
Messages are at most 16 KiB (a larger one closes the socket with 1009); a socket that \
does not read what the server sends is closed rather than buffered (64 KiB, 5 s per \
write). On shutdown sockets are closed with 1001.";

fn upgrade_socket(
    state: AppState,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    app: SocketApp,
    slot: Option<Extension<ConnectionSlot>>,
) -> Response {
    let slot = slot.map(|Extension(slot)| slot);
    match upgrade {
        // Small frames only, and a bounded queue towards a device that does
        // not read (see the constants in `live`).
        Ok(upgrade) => upgrade
            .read_buffer_size(SOCKET_READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(MAX_SOCKET_QUEUE)
            .max_message_size(MAX_SOCKET_MESSAGE)
            .max_frame_size(MAX_SOCKET_MESSAGE)
            .on_upgrade(move |socket| {
                live::serve_socket(
                    socket,
                    state.verifier.clone(),
                    state.service.store().clone(),
                    state.hub.clone(),
                    app,
                    state.live,
                    slot,
                )
            })
            .into_response(),
        Err(rejection) => invalid(format!(
            "expected a WebSocket upgrade: {}",
            rejection.body_text()
        ))
        .into_response(),
    }
}
