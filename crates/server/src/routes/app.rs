//! The web app (the Todo pilot, `web/todo`) at `/`: the built files of a
//! directory (`WEB_DIR`), with a fallback to its `index.html` for the app's
//! own routes, and a Content-Security-Policy that lets the app talk to this
//! server only.
//!
//! Every path that is not the API's is the app's. The API's paths (`/sync`,
//! `/ws`, `/backup`, `/health`, `/metrics`, `/dev`) keep their JSON 404s, and so does a
//! missing file that a browser did not ask for as a page (a script, an
//! image): only a `GET` or `HEAD` of `/` or that accepts HTML falls back to
//! `index.html`. Without `index.html` (the app was not built) such a request
//! gets a 404 that says how to build it, never a 5xx.
//!
//! Only regular files inside the directory are served: a path is decoded and
//! resolved here, before the file system is asked anything (see
//! [`WebApp::resolve`]). Dotfiles, `.`/`..` segments, NUL and other control
//! characters, and anything a symlink leads to outside the directory are
//! treated as missing.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;
use tower_http::services::ServeFile;

use crate::error::ApiError;

/// The policy sent with the app's files: scripts, styles and connections only
/// to this server (`'self'`), no plugins, no framing, no foreign forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; \
     object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Path prefixes that belong to the API, never to the app.
const API_PREFIXES: [&str; 7] = [
    "/sync", "/ws", "/backup", "/spaces", "/health", "/metrics", "/dev",
];

/// The directory the app is served from.
#[derive(Debug, Clone)]
pub(crate) struct WebApp {
    dir: PathBuf,
    index: PathBuf,
}

impl WebApp {
    /// Serves the files under `dir`.
    pub(crate) fn new(dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.to_path_buf(),
            index: dir.join("index.html"),
        })
    }
}

/// Whether one decoded segment of a URL path may name a file of the app.
fn allowed_segment(segment: &str) -> bool {
    !segment.starts_with('.')
        && !segment
            .chars()
            .any(|c| c.is_control() || matches!(c, '\\' | '/' | ':'))
}

impl WebApp {
    /// The regular file inside the directory that `path` (as sent, percent
    /// encoded) names, with `index.html` for a directory; `None` for
    /// anything else.
    async fn resolve(&self, path: &str) -> Option<PathBuf> {
        let decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .ok()?;
        let mut candidate = self.dir.clone();
        for segment in decoded.split('/').filter(|s| !s.is_empty()) {
            if !allowed_segment(segment) {
                return None;
            }
            candidate.push(segment);
        }
        let root = tokio::fs::canonicalize(&self.dir).await.ok()?;
        let file = self.inside(&root, &candidate).await?;
        let meta = tokio::fs::metadata(&file).await.ok()?;
        if meta.is_file() {
            Some(file)
        } else if meta.is_dir() {
            let index = self.inside(&root, &file.join("index.html")).await?;
            tokio::fs::metadata(&index)
                .await
                .is_ok_and(|meta| meta.is_file())
                .then_some(index)
        } else {
            None
        }
    }

    /// `candidate` with every symlink followed, if that is still inside
    /// `root` and no part of it (below `root`) is a dotfile.
    async fn inside(&self, root: &Path, candidate: &Path) -> Option<PathBuf> {
        let real = tokio::fs::canonicalize(candidate).await.ok()?;
        let below = real.strip_prefix(root).ok()?;
        below
            .components()
            .all(|part| match part {
                Component::Normal(name) => name.to_str().is_some_and(allowed_segment),
                _ => false,
            })
            .then_some(real)
    }
}

/// Whether `path` is one of the API's (`/sync`, `/sync/…`, but not `/syncing`).
fn is_api_path(path: &str) -> bool {
    API_PREFIXES.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Whether the client asked for a page (a browser navigating), not a file.
fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/html"))
}

/// The fallback of the router: the app's files, its `index.html` for its own
/// routes, or a JSON 404.
pub(crate) async fn serve(State(app): State<Arc<WebApp>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if is_api_path(&path) || !matches!(*request.method(), Method::GET | Method::HEAD) {
        return ApiError::NotFound(path).into_response();
    }
    let page = accepts_html(request.headers()) || path == "/";
    let file = app.resolve(&path).await;
    let served = match file {
        Some(file) => match ServeFile::new(file).oneshot(request).await {
            Ok(response) => Some(response.map(Body::new)),
            Err(never) => match never {},
        },
        None => None,
    };
    let response = if let Some(response) = served.filter(|r| r.status() != StatusCode::NOT_FOUND) {
        response
    } else if !page {
        return ApiError::NotFound(path).into_response();
    } else if !tokio::fs::metadata(&app.index)
        .await
        .is_ok_and(|meta| meta.is_file())
    {
        return ApiError::WebAppNotBuilt {
            dir: app.dir.display().to_string(),
        }
        .into_response();
    } else {
        // One of the app's own routes (`/some/view`): the app decides.
        match ServeFile::new(&app.index)
            .oneshot(Request::new(Body::empty()))
            .await
        {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        }
    };
    with_app_headers(response, &path)
}

/// Adds the policy and caching headers to one of the app's files.
fn with_app_headers(mut response: Response, path: &str) -> Response {
    // Vite names the files under /assets/ by their content's hash: they never
    // change. Everything else (index.html above all) is revalidated.
    let cache = if path.starts_with("/assets/") && response.status().is_success() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_whole_segments() {
        for path in [
            "/sync",
            "/sync/todo",
            "/ws",
            "/ws/todo",
            "/health",
            "/metrics",
            "/dev/token",
            "/backup/export",
        ] {
            assert!(is_api_path(path), "{path}");
        }
        for path in ["/", "/syncing", "/developer", "/assets/app.js", "/healthy"] {
            assert!(!is_api_path(path), "{path}");
        }
    }

    #[test]
    fn dotfiles_control_characters_and_separators_are_not_file_names() {
        for segment in ["index.html", "app-1a2b.js", "é.svg", "a b"] {
            assert!(allowed_segment(segment), "{segment}");
        }
        for segment in [".env", ".", "..", ".git", "a\0b", "a\\b", "c:x", "a\nb"] {
            assert!(!allowed_segment(segment), "{segment:?}");
        }
    }

    #[test]
    fn pages_are_requests_that_accept_html() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_html(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!accepts_html(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        );
        assert!(accepts_html(&headers));
    }
}
