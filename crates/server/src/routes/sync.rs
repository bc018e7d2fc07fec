//! `POST /sync/{appId}` and `GET /sync/{appId}/pull`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use mana_sync_protocol::{PullResponse, PushRequest, PushResponse, UserId};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{AppId, JsonBody, QueryMap, client_id_header, dialect};
use crate::service::PullParams;

/// Stores a changeset and replies with other devices' changes.
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
