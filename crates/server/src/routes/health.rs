//! `GET /health` and `GET /metrics`: no user data, so no token needed.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// 200 when the store answers within two seconds, 503 otherwise; with the
/// number of open streams and sockets.
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
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "store": store.kind().name(),
        "connections": {
            "streams": state.metrics.open_streams.get(),
            "sockets": state.metrics.open_sockets.get(),
        },
    });
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
