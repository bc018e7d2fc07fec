//! Dev-mode sign-in, for trying the web app on one machine: `GET /dev/config`
//! tells the app that dev mode is on, and `POST /dev/token {"user": NAME}`
//! mints a token for any user with the dev-mode secret (what
//! `mana-sync token --user NAME` does on the command line).
//!
//! These routes exist only in dev mode (neither `JWT_SECRET` nor `JWKS_URL`
//! configured); otherwise they are the API's ordinary JSON 404. Because
//! `/dev/token` hands out any user's token, it answers only requests that
//! come from this machine and were meant for it:
//! - the peer address is a loopback address;
//! - no `Forwarded`/`X-Forwarded-For`/`X-Real-IP` header (a reverse proxy on
//!   this machine would make every remote caller look local);
//! - the `Host` is a loopback name or address (`localhost`, `127.0.0.1`,
//!   `[::1]`, `*.localhost`), which defeats DNS rebinding;
//! - an `Origin`, if sent, is this very host (a page of another site cannot
//!   use it from the user's browser).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mana_sync_protocol::UserId;
use mana_sync_protocol::messages::ErrorBody;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::service::ServiceError;

/// How long a dev-mode token is valid (as `mana-sync token`'s default).
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Mints dev-mode tokens.
#[derive(Debug)]
pub(crate) struct DevSignIn {
    secret: String,
}

impl DevSignIn {
    /// A token for `user`, signed with the dev-mode secret.
    fn mint(&self, user: &str) -> Result<String, ApiError> {
        let user = UserId::new(user).map_err(|error| {
            ApiError::from(ServiceError::InvalidRequest(format!("user: {error}")))
        })?;
        mana_sync_auth::mint_token(&self.secret, &user, DEV_TOKEN_TTL)
            .map_err(|error| ApiError::Internal(error.to_string()))
    }
}

/// The dev-mode routes; none unless the server runs in dev mode.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(dev_secret: Option<&str>) -> Router<S> {
    let Some(secret) = dev_secret else {
        return Router::new();
    };
    Router::new()
        .route("/dev/config", get(config))
        .route("/dev/token", post(token))
        .with_state(Arc::new(DevSignIn {
            secret: secret.to_owned(),
        }))
}

/// The reply of `GET /dev/config`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DevConfig {
    /// Always `true`: the route exists only in dev mode.
    dev_mode: bool,
}

/// `{"devMode": true}`: the app may offer sign-in by user name.
#[utoipa::path(
    get,
    path = "/dev/config",
    tag = "dev",
    responses((status = 200, description = "Dev mode is on.", body = DevConfig)),
)]
pub(crate) async fn config() -> Json<DevConfig> {
    Json(DevConfig { dev_mode: true })
}

/// The body of `POST /dev/token`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    /// The user to sign in as (a token's `sub`).
    user: String,
}

/// The reply of `POST /dev/token`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DevToken {
    /// A bearer token for `user`, signed with the dev-mode secret.
    token: String,
    /// The user.
    user: String,
    /// Seconds until it expires.
    expires_in: u64,
}

/// `POST /dev/token {"user": NAME}` → `{"token", "user", "expiresIn"}`.
///
/// Answered only to this machine: a loopback peer, no forwarding header, a
/// loopback `Host`, and an `Origin` (if any) of this host.
#[utoipa::path(
    post,
    path = "/dev/token",
    tag = "dev",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "A token for the user.", body = DevToken),
        (status = 400, description = "`invalid_json`: not `{\"user\": NAME}`; `invalid_request`: not a valid user id.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not from this machine, forwarded by a proxy, another `Host`, or a page of another site.", body = ErrorBody),
    ),
)]
pub(crate) async fn token(State(dev): State<Arc<DevSignIn>>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    if let Err(reason) = check_local(peer, request.headers()) {
        return ApiError::Forbidden(format!(
            "dev sign-in is only answered to this machine: {reason}"
        ))
        .into_response();
    }
    let body = match JsonBody::<TokenRequest>::from_request(request, &()).await {
        Ok(JsonBody(body)) => body,
        Err(error) => return error.into_response(),
    };
    match dev.mint(&body.user) {
        Ok(token) => Json(DevToken {
            token,
            user: body.user,
            expires_in: DEV_TOKEN_TTL.as_secs(),
        })
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// Whether a request comes from this machine and was meant for it; the
/// reason when not.
fn check_local(peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), String> {
    let Some(peer) = peer else {
        return Err("the peer address is unknown".into());
    };
    if !peer.ip().to_canonical().is_loopback() {
        return Err(format!("{} is not a loopback address", peer.ip()));
    }
    for forwarded in ["forwarded", "x-forwarded-for", "x-real-ip"] {
        if headers.contains_key(forwarded) {
            return Err(format!("the request was forwarded (`{forwarded}`)"));
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .ok_or("the request names no host")?;
    if !is_loopback_host(host) {
        return Err(format!("`{host}` is not a loopback host"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !origin_host.is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host)) {
            return Err(format!("a page of `{origin}` may not sign in here"));
        }
    }
    Ok(())
}

/// Whether a `Host` header (`name[:port]`, `[v6][:port]`) is this machine.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((address, port)) if port.is_empty() || port.starts_with(':') => address,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn peer(address: &str) -> Option<SocketAddr> {
        address.parse().ok()
    }

    #[test]
    fn loopback_peers_naming_a_loopback_host_are_local() {
        let host = headers(&[("host", "localhost:3050")]);
        assert_eq!(check_local(peer("127.0.0.1:5000"), &host), Ok(()));
        assert_eq!(check_local(peer("[::1]:5000"), &host), Ok(()));
        assert_eq!(check_local(peer("[::ffff:127.0.0.1]:5000"), &host), Ok(()));
        let same_origin = headers(&[
            ("host", "127.0.0.1:3050"),
            ("origin", "http://127.0.0.1:3050"),
        ]);
        assert_eq!(check_local(peer("127.0.0.1:5000"), &same_origin), Ok(()));
    }

    #[test]
    fn anything_else_is_refused() {
        let host = headers(&[("host", "localhost:3050")]);
        assert!(check_local(None, &host).is_err());
        assert!(check_local(peer("192.0.2.7:5000"), &host).is_err());
        assert!(check_local(peer("[2001:db8::1]:5000"), &host).is_err());
        for forwarded in ["forwarded", "x-forwarded-for", "x-real-ip"] {
            let proxied = headers(&[("host", "localhost:3050"), (forwarded, "192.0.2.7")]);
            assert!(
                check_local(peer("127.0.0.1:5000"), &proxied).is_err(),
                "{forwarded}"
            );
        }
        let rebound = headers(&[("host", "evil.example:3050")]);
        assert!(check_local(peer("127.0.0.1:5000"), &rebound).is_err());
        assert!(check_local(peer("127.0.0.1:5000"), &HeaderMap::new()).is_err());
        let cross_site = headers(&[
            ("host", "localhost:3050"),
            ("origin", "https://evil.example"),
        ]);
        assert!(check_local(peer("127.0.0.1:5000"), &cross_site).is_err());
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:80",
            "app.localhost:3050",
            "127.0.0.1",
            "127.1.2.3:9",
            "[::1]:3050",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "localhost.example.com",
            "10.0.0.1:3050",
            "[::1",
            "[::2]:1",
            "localhost:x",
            "::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
