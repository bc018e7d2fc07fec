//! `GET /backup/export` and `POST /backup/import`.

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use http_body_util::{BodyDataStream, Limited};
use mana_sync_protocol::UserId;
use mana_sync_protocol::messages::ErrorBody;
use tokio_util::io::StreamReader;

use crate::AppState;
use crate::backup::{self, BodyTimedOut, BodyTooLarge, ImportReport};
use crate::error::{ApiError, is_body_timeout};
use crate::openapi::{E400_IMPORT, E401, E403_IMPORT, E408, E413_IMPORT, E503};
use crate::service::ServiceError;

/// The caller's whole history as NDJSON, streamed.
///
/// One change per line (`BackupLine`), oldest first, every app and every
/// shared space the caller belongs to, from one snapshot of the database.
#[utoipa::path(
    get,
    path = "/backup/export",
    tag = "backup",
    responses(
        (status = 200, description = "NDJSON: one `BackupLine` per line. A failure mid-way aborts the response, so a truncated download shows as one.", content_type = "application/x-ndjson", body = String),
        (status = 401, description = E401, body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn export(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
) -> Result<Response, ApiError> {
    let chunks = backup::export(&**state.service.store(), &user)
        .await
        .map_err(ServiceError::from)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"mana-sync-backup.ndjson\""),
            ),
        ],
        // A failure mid-way aborts the response, so a truncated download is
        // visible as one rather than passing for a complete backup.
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Restores an NDJSON backup: all of it or nothing.
///
/// Every line is checked first; changes whose `eventId` the caller already
/// has are skipped, so importing a file twice adds nothing. (A declared
/// length over `BACKUP_MAX_BYTES` was refused before the body, in `routes`.)
#[utoipa::path(
    post,
    path = "/backup/import",
    tag = "backup",
    request_body(content = String, description = "NDJSON, one `BackupLine` per line (lines of the seed's export are accepted too).", content_type = "application/x-ndjson"),
    responses(
        (status = 200, description = "Imported.", body = ImportReport),
        (status = 400, description = E400_IMPORT, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = E403_IMPORT, body = ErrorBody),
        (status = 408, description = E408, body = ErrorBody),
        (status = 413, description = E413_IMPORT, body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn import(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    body: Body,
) -> Result<Json<ImportReport>, ApiError> {
    let limit = state.backup_max_bytes;
    let bytes = BodyDataStream::new(Limited::new(
        body,
        usize::try_from(limit).unwrap_or(usize::MAX),
    ))
    .map_err(move |error| {
        if error.is::<http_body_util::LengthLimitError>() {
            std::io::Error::other(BodyTooLarge { limit })
        } else if is_body_timeout(&*error) {
            std::io::Error::other(BodyTimedOut)
        } else {
            std::io::Error::other(error)
        }
    });
    let report = backup::import(&**state.service.store(), &user, StreamReader::new(bytes)).await?;
    Ok(Json(report))
}
