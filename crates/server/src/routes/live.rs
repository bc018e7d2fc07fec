//! `GET /sync/{appId}/stream` (Server-Sent Events) and `GET /ws`, `GET /ws/{appId}`.

use std::convert::Infallible;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use mana_sync_protocol::ident::{MAX_ID_LEN, MAX_NAME_LEN, check_identifier};
use mana_sync_protocol::messages::ErrorBody;
use mana_sync_protocol::{Since, UserId};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{AppId, QueryMap, client_id_header};
use crate::live::{self, StreamItem, StreamRequest};
use crate::service::ServiceError;

/// Most collections one stream may follow.
pub const MAX_STREAM_COLLECTIONS: usize = 100;

fn invalid(message: String) -> ApiError {
    ServiceError::InvalidRequest(message).into()
}

/// Opens a change stream: backlog first, then live changes.
pub async fn stream(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    AppId(app_id): AppId,
    headers: HeaderMap,
    QueryMap(mut query): QueryMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    check_identifier(&app_id, MAX_NAME_LEN).map_err(|e| invalid(format!("`appId` {e}")))?;
    let listed = query
        .remove("collections")
        .ok_or(ServiceError::MissingParameter("collections"))?;
    let mut collections: Vec<String> = Vec::new();
    for name in listed
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        check_identifier(name, MAX_NAME_LEN)
            .map_err(|e| invalid(format!("collection `{name}` {e}")))?;
        if !collections.iter().any(|known| known == name) {
            collections.push(name.to_owned());
        }
    }
    if collections.is_empty() {
        return Err(ServiceError::MissingParameter("collections").into());
    }
    if collections.len() > MAX_STREAM_COLLECTIONS {
        return Err(invalid(format!(
            "at most {MAX_STREAM_COLLECTIONS} collections per stream"
        )));
    }
    let since = Since::parse(
        &query
            .remove("since")
            .ok_or(ServiceError::MissingParameter("since"))?,
    )
    .map_err(ServiceError::from)?;
    let client_id = client_id_header(&headers)?.or_else(|| query.remove("clientId"));
    if let Some(client_id) = &client_id {
        check_identifier(client_id, MAX_ID_LEN).map_err(|e| invalid(format!("`clientId` {e}")))?;
    }
    let request = StreamRequest {
        user,
        app_id,
        collections,
        since,
        client_id,
    };
    let events = live::change_stream(
        state.service.clone(),
        state.hub.clone(),
        request,
        state.live.heartbeat,
    )
    .map(|item| Ok(to_event(item)));
    Ok(Sse::new(events))
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
    }
}

/// `GET /ws`: notices for every app of the user.
pub async fn socket_all_apps(
    State(state): State<AppState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade_socket(state, upgrade, None)
}

/// `GET /ws/{appId}`: notices for one app.
pub async fn socket_one_app(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(error) = check_identifier(&app_id, MAX_NAME_LEN) {
        return invalid(format!("`appId` {error}")).into_response();
    }
    upgrade_socket(state, upgrade, Some(app_id))
}

fn upgrade_socket(
    state: AppState,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    app: Option<String>,
) -> Response {
    match upgrade {
        Ok(upgrade) => upgrade
            .on_upgrade(move |socket| {
                live::serve_socket(socket, state.verifier, state.hub, app, state.live)
            })
            .into_response(),
        Err(rejection) => invalid(format!(
            "expected a WebSocket upgrade: {}",
            rejection.body_text()
        ))
        .into_response(),
    }
}
