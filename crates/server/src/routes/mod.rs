//! The HTTP surface: which path goes to which handler, and the middleware
//! around them (auth on sync routes; body limit, request metrics, CORS,
//! tracing and panic capture on everything).

mod app;
pub(crate) mod backup;
pub(crate) mod dev;
pub(crate) mod health;
pub(crate) mod live;
pub(crate) mod spaces;
pub(crate) mod sync;

pub use app::CONTENT_SECURITY_POLICY;
pub use dev::DEV_TOKEN_TTL;

use std::any::Any;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::backup::BackupError;
use crate::error::ApiError;
use crate::{AppState, MAX_BODY_BYTES, ServerConfig, StartError, auth};

/// The whole HTTP service: the router, wrapped once in the layers that do
/// not need to know the route (panic capture, tracing, CORS).
///
/// These wrap the finished router rather than each route (`Router::layer`):
/// wrapping each route clones the whole stack for every request, and an open
/// stream keeps its request's clone alive for as long as it lasts, several
/// KiB per idle stream.
pub fn service(
    state: AppState,
    config: &ServerConfig,
    dev_secret: Option<&str>,
) -> Result<
    impl tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
    StartError,
> {
    let cors = cors(&config.cors_origins)?;
    Ok(tower::ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            // Only the path is logged: query strings can carry tokens.
            // Failures are logged once, with their cause, where they become
            // responses (`ApiError::into_response`), not again here.
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
                })
                .on_failure(()),
        )
        .layer(cors)
        .service(router(state, config, dev_secret)))
}

/// The routes, with the layers that need to know the route (auth, request
/// metrics by route, body limit).
fn router(state: AppState, config: &ServerConfig, dev_secret: Option<&str>) -> Router {
    let sync = Router::new()
        .route("/sync/{app_id}", post(sync::push))
        .route("/sync/{app_id}/pull", get(sync::pull))
        .route("/backup/export", get(backup::export))
        .route("/backup/import", post(backup::import))
        .route("/spaces", get(spaces::list).post(spaces::create))
        .route("/spaces/{space_id}", get(spaces::get))
        .route(
            "/spaces/{space_id}/members/{user_id}",
            put(spaces::set_member).delete(spaces::remove_member),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_user,
        ));
    // Browsers' EventSource cannot send headers, so streams also accept the
    // token as a query parameter (which is why only paths are ever logged).
    let streams = Router::new()
        .route("/sync/{app_id}/stream", get(live::stream))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_user_header_or_query,
        ));
    // Sockets authenticate in-band, with their first message.
    let sockets = Router::new()
        .route("/ws", get(live::socket_all_apps))
        .route("/ws/{app_id}", get(live::socket_one_app));
    let open = Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(crate::openapi::serve));
    sync.merge(streams)
        .merge(sockets)
        .merge(open)
        .merge(dev::routes(dev_secret))
        // Every other path is the web app's (or a JSON 404), see `app`.
        .fallback_service(
            axum::routing::get(app::serve)
                .with_state(app::WebApp::new(config.web_dir.as_deref()))
                .fallback(not_found),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_declared_oversize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// The origin a browser would send for `entry` (`scheme://host[:port]`,
/// lowercase, without a default port), or why `entry` is not an origin.
fn normalise_origin(entry: &str) -> Result<String, &'static str> {
    let url = url::Url::parse(entry).map_err(|_| "not scheme://host[:port]")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it has credentials");
    }
    if !matches!(url.path(), "" | "/") {
        return Err("it has a path");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it has a query or fragment");
    }
    let host = url.host_str().ok_or("it has no host")?;
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// `CORS_ORIGINS` entries as origins: trimmed and normalised; an entry
/// that is not an origin is named in a warning and left out.
pub fn allowed_origins(entries: &[String]) -> Vec<String> {
    let mut origins: Vec<String> = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        if entry == "*" {
            origins.push(entry.to_owned());
            continue;
        }
        match normalise_origin(entry) {
            Ok(origin) if !origins.contains(&origin) => origins.push(origin),
            Ok(_) => {}
            Err(why) => tracing::warn!(
                "CORS_ORIGINS: `{entry}` is not an origin ({why}; expected scheme://host[:port]); ignored"
            ),
        }
    }
    origins
}

fn cors(entries: &[String]) -> Result<CorsLayer, StartError> {
    let origins = allowed_origins(entries);
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let origins = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin).map_err(|_| StartError::CorsOrigin(origin.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(origins)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-client-id"),
            // Clients list what they handle (`cursor-expired`).
            header::HeaderName::from_static("x-sync-features"),
        ])
        .max_age(std::time::Duration::from_secs(3600)))
}

/// Most bytes over the limit that are read and discarded after an early 413,
/// so that a client that is already sending sees the answer.
const DRAIN_AFTER_413: u64 = 16 * 1024 * 1024;

/// Answers 413 at once, before anything else and before the body is read,
/// when the declared `Content-Length` is over what the route accepts
/// (`BACKUP_MAX_BYTES` for `POST /backup/import`, 10 MiB elsewhere). Bodies
/// without a declared length are still cut off at the limit while read.
///
/// A client that did not ask `Expect: 100-continue` is already sending its
/// body. Closing on it would reset the connection, and it might never read
/// the 413 (our clients split a refused changeset on a 413). So a body at
/// most [`DRAIN_AFTER_413`] over the limit is read and discarded in the
/// background after the answer (a lingering close); a larger one is not.
async fn refuse_declared_oversize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let backup = request.uri().path() == "/backup/import";
    let limit = if backup {
        state.backup_max_bytes
    } else {
        MAX_BODY_BYTES as u64
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(length) = declared.filter(|length| *length > limit) else {
        return next.run(request).await;
    };
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue && length - limit <= DRAIN_AFTER_413 {
        let mut body = request.into_body().into_data_stream();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            // Ends with the body, or when it stalls (BODY_TIMEOUT_SECS).
            while let Some(Ok(_)) = body.next().await {}
        });
    }
    if backup {
        ApiError::from(BackupError::TooLarge { limit }).into_response()
    } else {
        ApiError::PayloadTooLarge { limit }.into_response()
    }
}

/// The `method` label: the standard methods by name, anything else as
/// `other`, so made-up methods cannot add series without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts requests by method, route and status. Every label comes from a
/// small fixed set: the route is the router's pattern (`/sync/{app_id}`) or
/// `unmatched`, never the path a client sent.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .with_label_values(&[method, route.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::Panic(detail.to_owned()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_trimmed_lowercased_and_without_default_ports_or_slashes() {
        let entries: Vec<String> = [
            " https://a.example ",
            "https://b.example/",
            "HTTPS://C.Example:443",
            "http://localhost:5173",
            "capacitor://localhost",
            "https://d.example/app",
            "d.example",
            "https://user@e.example",
            "https://a.example",
            "",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            allowed_origins(&entries),
            [
                "https://a.example",
                "https://b.example",
                "https://c.example",
                "http://localhost:5173",
                "capacitor://localhost",
            ]
        );
    }
}
