//! `POST /sync/{appId}` and `GET /sync/{appId}/pull`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use mana_sync_protocol::messages::ErrorBody;
use mana_sync_protocol::{PullResponse, PushRequest, PushResponse, UserId};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{AppId, JsonBody, QueryMap, client_id_header, dialect};
use crate::openapi::{E400_PULL, E400_PUSH, E401, E403_SPACE, E408, E410, E413, E503};
use crate::service::PullParams;

/// Stores a changeset and replies with other devices' changes.
///
/// Every change is validated, then all are stored in one transaction, or
/// none. A `changesetId` already stored for this user is answered 200 and
/// not stored again, so retries are safe. The reply holds the other devices'
/// changes of every collection of the app after `since`, at most 1000
/// (`hasMore` when more wait).
#[utoipa::path(
    post,
    path = "/sync/{appId}",
    tag = "sync",
    params(("appId" = String, Path, description = "The app: a name of at most 128 characters, no control characters."), ("X-Client-Id" = Option<String>, Header, description = "The device; a device never receives its own changes."), ("X-Sync-Features" = Option<String>, Header, description = "Comma-separated features the client handles: `cursor-expired`, `spaces`.")),
    request_body = PushRequest,
    responses(
        (status = 200, description = "Stored (or already stored): the other devices' changes after `since`.", body = PushResponse),
        (status = 400, description = E400_PUSH, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = E403_SPACE, body = ErrorBody),
        (status = 408, description = E408, body = ErrorBody),
        (status = 410, description = E410, body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn push(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    AppId(app_id): AppId,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PushRequest>,
) -> Result<Json<PushResponse>, ApiError> {
    let client_id = client_id_header(&headers)?;
    let dialect = dialect(&headers, None);
    Ok(Json(
        state
            .service
            .push(&user, &app_id, client_id, dialect, request)
            .await?,
    ))
}

/// One page of one collection.
///
/// Changes of `collection` after `since`, in commit order, at most 1000 (or
/// `limit`). Follow `syncedUntil` while `hasMore`.
#[utoipa::path(
    get,
    path = "/sync/{appId}/pull",
    tag = "sync",
    params(
        ("appId" = String, Path, description = "The app: a name of at most 128 characters, no control characters."),
        ("collection" = String, Query, description = "The collection (`table` of its changes)."),
        ("since" = String, Query, description = "The cursor: a `syncedUntil`, or any RFC 3339 timestamp (`1970-01-01T00:00:00.000Z` is the start)."),
        ("limit" = Option<u32>, Query, description = "At most this many changes (1 to 1000)."),
        ("clientId" = Option<String>, Query, description = "The device, when `X-Client-Id` is not sent."),
        ("features" = Option<String>, Query, description = "As `X-Sync-Features`."),
        ("X-Client-Id" = Option<String>, Header, description = "The device; a device never receives its own changes."),
        ("X-Sync-Features" = Option<String>, Header, description = "Comma-separated features the client handles: `cursor-expired`, `spaces`."),
    ),
    responses(
        (status = 200, description = "One page.", body = PullResponse),
        (status = 400, description = E400_PULL, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 410, description = E410, body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn pull(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    AppId(app_id): AppId,
    headers: HeaderMap,
    QueryMap(mut query): QueryMap,
) -> Result<Json<PullResponse>, ApiError> {
    let params = PullParams {
        collection: query.remove("collection"),
        since: query.remove("since"),
        limit: query.remove("limit"),
        client_id: client_id_header(&headers)?.or_else(|| query.remove("clientId")),
        dialect: dialect(&headers, query.get("features").map(String::as_str)),
    };
    Ok(Json(state.service.pull(&user, &app_id, params).await?))
}
