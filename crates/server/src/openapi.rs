//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`
//! and committed as `docs/openapi.json`.
//!
//! It is generated, not written: each operation is the `#[utoipa::path]` on
//! its handler in `routes/`, and the bodies are the wire types themselves
//! (`mana-sync-protocol` with its `openapi` feature, and the server's own
//! reply types). What OpenAPI has no construct for (the events of a stream,
//! the messages of a WebSocket) is said in the operations' descriptions,
//! naming the schemas here that each carries. The error codes each status
//! stands for are the constants below, written next to one another so that
//! they read as the table in `error.rs` does.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The document: every operation of the router, with its schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mana-sync",
        description = API_DESCRIPTION,
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::sync::push,
        routes::sync::pull,
        routes::live::stream,
        routes::live::socket_all_apps,
        routes::live::socket_one_app,
        routes::spaces::list,
        routes::spaces::create,
        routes::spaces::get,
        routes::spaces::set_member,
        routes::spaces::remove_member,
        routes::backup::export,
        routes::backup::import,
        routes::health::health,
        routes::health::metrics,
        routes::dev::config,
        routes::dev::token,
        serve,
    ),
    components(schemas(
        mana_sync_protocol::messages::ErrorBody,
        mana_sync_protocol::messages::StreamChanges,
        mana_sync_protocol::messages::SpaceEvent,
        mana_sync_protocol::messages::SocketRequest,
        mana_sync_protocol::messages::SocketMessage,
        mana_sync_protocol::backup::BackupLine,
    )),
    modifiers(&Security),
    tags(
        (name = "sync", description = "Pushing and pulling changes."),
        (name = "live", description = "Changes the moment they happen: Server-Sent Events and WebSockets."),
        (name = "spaces", description = "Shared spaces and their members."),
        (name = "backup", description = "A user's whole history out and back in."),
        (name = "operations", description = "Health, metrics and this description; no token."),
        (name = "dev", description = "Dev mode only (no `JWT_SECRET`, no `JWKS_URL`): these routes do not exist otherwise."),
    ),
)]
struct ApiDoc;

/// The document's own description (Markdown).
const API_DESCRIPTION: &str = "A local-first sync server: devices push their changes \
to their user's log and follow it with a cursor (`syncedUntil`), in commit order, with \
nothing lost or repeated.\n\n\
Every endpoint but `/health`, `/metrics`, `/openapi.json` and `/dev/*` needs \
`Authorization: Bearer <JWT>`; the token's `sub` is the user.\n\n\
**Errors** are JSON `{\"error\": {\"code\", \"message\"}}` (schema `ErrorBody`); each \
operation lists its statuses and the codes they carry. Any path without a route is a \
404 `not_found`, a route asked with another method a 405 `method_not_allowed`. A 500 \
`internal` is a bug of the server (no input produces one).\n\n\
**Features** a client lists in `X-Sync-Features` (or `?features=` where it cannot send \
headers): `cursor-expired` (it is told 410 `cursor_expired`, or `event: cursor-expired`, \
when its cursor is older than compaction kept), `spaces` (it follows the user's shared \
spaces, with one cursor per log).";

/// Adds the security schemes the operations name.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT whose `sub` is the user: HS256 with `JWT_SECRET`, or a key of \
                         `JWKS_URL` (EdDSA, RS256, ES256); in dev mode, from `POST /dev/token`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "query_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT as a query parameter, for browsers' `EventSource` (streams only).",
            ))),
        );
    }
}

/// The document as pretty-printed JSON, ending in a newline (as committed).
pub fn json() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"));
    json.push('\n');
    json
}

/// Rendered once: it never changes while the server runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(json);

/// This description of the API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1).", content_type = "application/json")),
)]
pub(crate) async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// 401, on every operation that needs a token.
pub(crate) const E401: &str = "`unauthorized`: no token, or one that is not accepted (bad \
signature, `alg: none`, expired, no `sub`, another `aud`/`iss` than configured, a `crit` \
header). Sent with `WWW-Authenticate: Bearer`.";

/// 413, on every operation with a JSON body.
pub(crate) const E413: &str = "`payload_too_large`: the body is over 10 MiB; a declared `Content-Length` over it is \
     answered before the body is read.";

/// 408, on every operation with a body.
pub(crate) const E408: &str = "`request_timeout`: the body paused longer than \
`BODY_TIMEOUT_SECS`; nothing was stored, send it again.";

/// 503 on operations that read or write the database.
pub(crate) const E503: &str = "`unavailable`: the database cannot be reached; retry (pushes are idempotent with \
     `changesetId`).";

/// 400 on a push.
pub(crate) const E400_PUSH: &str = "`invalid_json`: the body is not JSON of the expected \
shape (the message names the path, e.g. `changes[3].op`); `invalid_change`: a change is \
well-formed but invalid (insert without `data`, empty `table`, control characters, too \
long ids, values nested more than 64 levels); `schema_version_too_new`; \
`missing_parameter` (`clientId`); `invalid_cursor` (`since`); `invalid_request` (the app \
id, `X-Client-Id`). Nothing was stored.";

/// 400 on a pull.
pub(crate) const E400_PULL: &str = "`missing_parameter` (`collection`, `since`, \
`clientId`); `invalid_cursor` (`since` is not a cursor or RFC 3339 timestamp); \
`invalid_request` (`limit`, the app id, the collection name, the query string).";

/// 403 when a change names a space the caller may not write.
pub(crate) const E403_SPACE: &str = "`space_forbidden`: a change is in a shared space the \
caller is not a member of, or only a viewer of (the message names it); nothing was \
stored.";

/// 410 to clients that list the `cursor-expired` feature.
pub(crate) const E410: &str = "`cursor_expired`: `since` is older than what compaction \
kept (deleted records past `TOMBSTONE_RETENTION_DAYS`); download the current state again. \
Only to clients that send `X-Sync-Features: cursor-expired`; others are served from their \
cursor.";

/// 429 on streams.
pub(crate) const E429: &str = "`too_many_connections`: the user already has \
`MAX_LIVE_PER_USER` streams and sockets open. Sent with `Retry-After: 5`.";

/// 503 on streams.
pub(crate) const E503_LIVE: &str = "`server_busy`: streams and sockets of all users hold \
their share of `MAX_CONNECTIONS` (`Retry-After: 5`); `unavailable`: the database cannot be \
reached.";

/// 400 on the spaces operations.
pub(crate) const E400_SPACES: &str = "`invalid_json`: the body is not the expected JSON \
(unknown fields included); `invalid_request`: a space id, user id, name or role \
(`owner`, `editor`, `viewer`) is not valid.";

/// 400 on a backup import.
pub(crate) const E400_IMPORT: &str = "`invalid_backup`: a line is malformed, misses a \
required field, nests values more than 64 levels deep or is not UTF-8 (the message names \
the line); `schema_version_too_new`. Nothing was imported.";

/// 403 on a backup import.
pub(crate) const E403_IMPORT: &str = "`space_forbidden`: a line is in a shared space the \
importer may not write (the message names the line); nothing was imported.";

/// 413 on a backup import.
pub(crate) const E413_IMPORT: &str = "`payload_too_large`: the backup is over \
`BACKUP_MAX_BYTES`.";
