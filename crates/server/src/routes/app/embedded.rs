//! The web app built into the binary: whatever `web/todo/dist` held when
//! the server was compiled (`make web` builds it; `build.rs` compiles the
//! server again whenever it changes). Every build embeds it, debug builds
//! too (rust-embed's `debug-embed`), so the binary the tests start serves
//! exactly what a release serves. Without a built app the set is empty and
//! pages answer `web_app_not_built`.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use super::segments;

/// The built app's files, by path relative to `web/todo/dist`.
#[derive(rust_embed::Embed)]
#[folder = "../../web/todo/dist"]
#[allow_missing = true]
struct Built;

/// The embedded file `path` (as sent, percent encoded) names, with
/// `index.html` for a directory, answered to `request`; `None` if there is
/// none. Paths are checked segment by segment as for a directory: no
/// dotfiles, no `..`, no control characters.
pub(super) fn file(path: &str, request: &Request) -> Option<Response> {
    let key = segments(path)?.join("/");
    let (name, file) = if key.is_empty() {
        ("index.html".to_owned(), Built::get("index.html")?)
    } else if let Some(file) = Built::get(&key) {
        (key, file)
    } else {
        let index = format!("{key}/index.html");
        let file = Built::get(&index)?;
        (index, file)
    };
    Some(respond(&name, file, request.method(), request.headers()))
}

/// The app's `index.html`, or `None` when no app was built into the binary.
pub(super) fn index() -> Option<Response> {
    let file = Built::get("index.html")?;
    Some(respond(
        "index.html",
        file,
        &Method::GET,
        &axum::http::HeaderMap::new(),
    ))
}

/// The response for one file: its type (guessed from its name, as for a
/// directory), an ETag of its content's hash, and a 304 when the client
/// already has it.
fn respond(
    name: &str,
    file: rust_embed::EmbeddedFile,
    method: &Method,
    headers: &axum::http::HeaderMap,
) -> Response {
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let content_type = mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let length = file.data.len();
    let (status, body) = if unchanged {
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else if *method == Method::HEAD {
        (StatusCode::OK, Body::empty())
    } else {
        let bytes = match file.data {
            Cow::Borrowed(bytes) => Bytes::from_static(bytes),
            Cow::Owned(bytes) => Bytes::from(bytes),
        };
        (StatusCode::OK, Body::from(bytes))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    if status == StatusCode::OK {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}
