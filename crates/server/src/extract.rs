//! Request extractors whose rejections are [`ApiError`]s, so that malformed
//! input gets the same JSON error shape as everything else.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use mana_sync_protocol::json;
use serde::de::DeserializeOwned;

use crate::MAX_BODY_BYTES;
use crate::error::{ApiError, is_body_timeout};
use crate::service::{CursorDialect, ServiceError};

/// A JSON body parsed into `T`, with errors that name the offending path.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES as u64,
                    }
                } else if is_body_timeout(&rejection) {
                    ApiError::BodyTimeout
                } else {
                    ApiError::BadBody(rejection.body_text())
                }
            })?;
        if bytes.is_empty() {
            return Err(ApiError::BadBody(
                "the request body is empty; send a JSON object".into(),
            ));
        }
        json::parse(&bytes)
            .map(JsonBody)
            .map_err(|error| ApiError::BadBody(error.message))
    }
}

/// The `{app_id}` path segment.
pub struct AppId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AppId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(app_id)| AppId(app_id))
            .map_err(|rejection| {
                ServiceError::InvalidRequest(format!(
                    "invalid app id in the path: {}",
                    rejection.body_text()
                ))
                .into()
            })
    }
}

/// The query string as name → value (the last value wins for repeated names).
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(map)| QueryMap(map))
            .map_err(|rejection| {
                ServiceError::InvalidRequest(format!(
                    "invalid query string: {}",
                    rejection.body_text()
                ))
                .into()
            })
    }
}

/// The device id from `X-Client-Id`, if the header is present.
/// How the client reads and writes cursors, from the features it lists in
/// `X-Sync-Features` (or the `features` query parameter, for `EventSource`
/// and WebSockets, which cannot set headers):
///
/// - `cursor-expired`: it wants to be told that its cursor is older than
///   history compaction dropped, downloads the current state again when
///   told, and accepts cursors that carry the expiry they were handed out
///   with. Any other client (the seed's) cannot understand that and is
///   served from its cursor.
/// - `spaces`: it follows the user's shared spaces, with a cursor per log.
pub fn dialect(headers: &HeaderMap, query: Option<&str>) -> CursorDialect {
    let lists = |wanted: &str| {
        let listed = |features: &str| {
            features
                .split(',')
                .any(|feature| feature.trim().eq_ignore_ascii_case(wanted))
        };
        headers
            .get_all("x-sync-features")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(listed)
            || query.is_some_and(listed)
    };
    CursorDialect {
        told_expiry: lists(CURSOR_EXPIRED_FEATURE),
        follows_spaces: lists(SPACES_FEATURE),
    }
}

/// The feature a client lists to be told that its cursor expired.
pub const CURSOR_EXPIRED_FEATURE: &str = "cursor-expired";

/// The feature a client lists to follow its user's shared spaces.
pub const SPACES_FEATURE: &str = "spaces";

/// The device id from `X-Client-Id`, if the header is present.
pub fn client_id_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("x-client-id") {
        None => Ok(None),
        Some(value) => value.to_str().map(|id| Some(id.to_owned())).map_err(|_| {
            ServiceError::InvalidRequest("`X-Client-Id` must be visible ASCII".into()).into()
        }),
    }
}
