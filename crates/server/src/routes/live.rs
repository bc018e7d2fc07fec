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
use crate::service::{ServiceError, StreamParams};

fn invalid(message: String) -> ApiError {
    ServiceError::InvalidRequest(message).into()
}

/// Opens a change stream: backlog first, then live changes, until the
/// token expires.
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
                    state.verifier,
                    state.service.store().clone(),
                    state.hub,
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
