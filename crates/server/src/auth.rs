//! Authentication middleware: every sync route requires a valid bearer
//! token; the verified user (and when its token stops being accepted) is put
//! in the request's extensions for handlers.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use mana_sync_auth::{AuthError, Verified};

use crate::AppState;
use crate::error::ApiError;

/// The token in `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(AuthError::Malformed(
            "expected `Authorization: Bearer <token>`".into(),
        )),
    }
}

/// When the request's token stops being accepted: streams end then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDeadline(pub SystemTime);

fn record(request: &mut Request, verified: Verified) {
    request
        .extensions_mut()
        .insert(TokenDeadline(verified.refused_from));
    request.extensions_mut().insert(verified.user);
}

/// Verifies the bearer token and records its user for the handler.
pub async fn require_user(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let verified = state
        .verifier
        .verify_token(bearer_token(request.headers())?)
        .await?;
    record(&mut request, verified);
    Ok(next.run(request).await)
}

/// The `token` query parameter, for clients that cannot set headers.
fn query_token(uri: &Uri) -> Option<String> {
    let Query(mut query) = Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
    query.remove("token")
}

/// Like [`require_user`], but also accepts `?token=` when there is no
/// `Authorization` header (browsers' `EventSource` cannot send one).
pub async fn require_user_header_or_query(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = match bearer_token(request.headers()) {
        Ok(token) => token.to_owned(),
        Err(AuthError::Missing) => query_token(request.uri()).ok_or(AuthError::Missing)?,
        Err(error) => return Err(error.into()),
    };
    let verified = state.verifier.verify_token(&token).await?;
    record(&mut request, verified);
    Ok(next.run(request).await)
}
