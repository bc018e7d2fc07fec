//! The one place where errors become HTTP responses.
//!
//! Every error reply is JSON `{"error": {"code", "message"}}`. Client mistakes
//! are 4xx with a message that says what to fix; only failures of the server or
//! its database are 5xx, and their details go to the log, not to the client.
//! Each failure is logged once, here (the trace layer does not log them again).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mana_sync_auth::AuthError;
use mana_sync_protocol::change::ChangeProblem;
use mana_sync_protocol::messages::{ErrorBody, ErrorDetail};
use mana_sync_protocol::schema::SchemaVersionError;
use mana_sync_store::StoreError;

use crate::backup::BackupError;
use crate::hub::LiveRefusal;
use crate::service::ServiceError;
use crate::spaces::SpacesError;
use mana_sync_store::MembershipError;

/// Seconds a client is asked to wait (`Retry-After`) when a limit is reached.
const RETRY_AFTER_SECS: &str = "5";

/// An error on its way to becoming a response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The sync core refused or failed the request.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The bearer token is missing or invalid.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The body is not the JSON the endpoint expects.
    #[error("{0}")]
    BadBody(String),
    /// The body is larger than [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES)
    /// (or, for a backup, `BACKUP_MAX_BYTES`).
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body stopped arriving for longer than `BODY_TIMEOUT_SECS`
    /// (detected by [`is_body_timeout`]).
    #[error("the request body stopped arriving; nothing was stored, send it again")]
    BodyTimeout,
    /// A stream could not be opened: a limit on open streams and sockets.
    #[error(transparent)]
    Live(#[from] LiveRefusal),
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists, but not for this method.
    #[error("method not allowed here")]
    MethodNotAllowed,
    /// A backup was refused, or its import failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A space operation was refused, or failed.
    #[error(transparent)]
    Spaces(#[from] SpacesError),
    /// The web app has no `index.html` (it was not built); says how to build it.
    #[error("the web app is not built: {0}")]
    WebAppNotBuilt(String),
    /// The request is understood but not answered to this caller.
    #[error("{0}")]
    Forbidden(String),
    /// The server failed in a way that is not the database's (a bug).
    #[error("{0}")]
    Internal(String),
    /// A handler panicked (a bug); the request is answered, not dropped.
    #[error("a handler panicked: {0}")]
    Panic(String),
}

/// The status and code of an error of the sync core.
fn service_status(error: &ServiceError) -> (StatusCode, &'static str) {
    match error {
        ServiceError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        ServiceError::MissingParameter(_) => (StatusCode::BAD_REQUEST, "missing_parameter"),
        ServiceError::InvalidCursor(_) => (StatusCode::BAD_REQUEST, "invalid_cursor"),
        ServiceError::SchemaVersion(SchemaVersionError::TooNew { .. })
        | ServiceError::InvalidChange {
            problem: ChangeProblem::SchemaVersion(SchemaVersionError::TooNew { .. }),
            ..
        } => (StatusCode::BAD_REQUEST, "schema_version_too_new"),
        ServiceError::SchemaVersion(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        ServiceError::InvalidChange { .. } => (StatusCode::BAD_REQUEST, "invalid_change"),
        ServiceError::Store(StoreError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        ServiceError::Store(StoreError::CursorExpired { .. }) => {
            (StatusCode::GONE, "cursor_expired")
        }
        ServiceError::Store(StoreError::SpaceForbidden { .. }) => {
            (StatusCode::FORBIDDEN, "space_forbidden")
        }
        ServiceError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Service(error) => service_status(error),
            ApiError::Backup(error) => match error {
                BackupError::Line(line) if line.is_too_new() => {
                    (StatusCode::BAD_REQUEST, "schema_version_too_new")
                }
                BackupError::Line(_)
                | BackupError::LineTooLong { .. }
                | BackupError::NotUtf8 { .. }
                | BackupError::Read(_) => (StatusCode::BAD_REQUEST, "invalid_backup"),
                BackupError::TooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
                }
                BackupError::TimedOut => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
                BackupError::SpaceForbidden { .. }
                | BackupError::Store(StoreError::SpaceForbidden { .. }) => {
                    (StatusCode::FORBIDDEN, "space_forbidden")
                }
                BackupError::Store(StoreError::Unavailable(_)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                BackupError::Spool(_) | BackupError::Store(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            ApiError::Spaces(SpacesError::Invalid(error)) => service_status(error),
            ApiError::Spaces(SpacesError::Membership(error)) => match error {
                MembershipError::NotFound(_) => (StatusCode::NOT_FOUND, "space_not_found"),
                MembershipError::NotOwner(_) => (StatusCode::FORBIDDEN, "forbidden"),
                MembershipError::LastOwner(_) => (StatusCode::CONFLICT, "last_owner"),
                MembershipError::NoSuchMember { .. } => (StatusCode::NOT_FOUND, "member_not_found"),
            },
            ApiError::Auth(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Live(LiveRefusal::PerUser { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_connections")
            }
            ApiError::Live(LiveRefusal::Full { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_busy")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::WebAppNotBuilt(_) => (StatusCode::NOT_FOUND, "web_app_not_built"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Panic(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Whether an answer with `code` tells the client when to come back.
fn asks_to_retry(code: &str) -> bool {
    matches!(code, "too_many_connections" | "server_busy")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let busy = matches!(self, ApiError::Live(LiveRefusal::Full { .. }));
        let message = if busy {
            // At capacity by design, not a failure.
            tracing::warn!(error = %self, "refused a stream");
            self.to_string()
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    "the database is unavailable; retry later".to_owned()
                }
                _ => "internal error; the server log has the details".to_owned(),
            }
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if asks_to_retry(code) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// Whether `error`, or one of its causes, is a request body that stopped
/// arriving for longer than `BODY_TIMEOUT_SECS` (tower-http's `TimeoutBody`,
/// which `connections` wraps around every request body).
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}
