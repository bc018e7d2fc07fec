//! `GET /health` and `GET /metrics`: no user data, so no token needed.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::AppState;

/// The reply of `GET /health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `unavailable` when the database did not answer within 2 s.
    status: &'static str,
    /// The database: `sqlite` or `postgres`.
    store: &'static str,
    /// Open live connections of this instance.
    connections: Connections,
}

/// Open streams and sockets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Connections {
    /// Server-Sent Event streams.
    streams: i64,
    /// WebSockets.
    sockets: i64,
}

/// 200 when the store answers within two seconds, 503 otherwise; with the
/// number of open streams and sockets.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers.", body = Health),
        (status = 503, description = "The database did not answer within 2 s (`status`: `unavailable`).", body = Health),
    ),
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let store = state.service.store();
    let healthy = matches!(
        tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
        Ok(Ok(()))
    );
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if healthy { "ok" } else { "unavailable" },
        store: store.kind().name(),
        connections: Connections {
            streams: state.metrics.open_streams.get(),
            sockets: state.metrics.open_sockets.get(),
        },
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text: request counts by method, route and status; changes stored and sent; duplicate changesets; push and pull latency; open streams and sockets; live overflows; database transactions that committed pushes.", content_type = "text/plain; version=0.0.4", body = String),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .observe_push_transactions(state.service.store().push_transactions());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
