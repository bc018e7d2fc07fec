//! The web app (the Todo pilot, `web/todo`) at `/`: its built files, with a
//! fallback to its `index.html` for the app's own routes, and a
//! Content-Security-Policy that lets the app talk to this server only.
//!
//! The files are those built into the binary at compile time (from
//! `web/todo/dist`, see [`embedded`]), so the binary alone is the whole
//! deployment; or, with `WEB_DIR` set, those of that directory, read at each
//! request (for development: rebuild the app, reload the page).
//!
//! Every path that is not the API's is the app's. The API's paths (`/sync`,
//! `/ws`, `/backup`, `/spaces`, `/health`, `/metrics`, `/dev`,
//! `/openapi.json`) keep their JSON 404s, and so does a
//! missing file that a browser did not ask for as a page (a script, an
//! image): only a `GET` or `HEAD` of `/` or that accepts HTML falls back to
//! `index.html`. Without `index.html` (the app was not built) such a request
//! gets a 404 that says how to build it, never a 5xx.
//!
//! Only regular files inside the directory are served: a path is decoded and
//! resolved here, before the file system is asked anything (see
//! [`resolve`]). Dotfiles, `.`/`..` segments, NUL and other control
//! characters, and anything a symlink leads to outside the directory are
//! treated as missing; the embedded files are looked up by the same rules.

mod embedded;

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
const API_PREFIXES: [&str; 8] = [
    "/sync",
    "/ws",
    "/backup",
    "/spaces",
    "/health",
    "/metrics",
    "/dev",
    "/openapi.json",
];

/// Where the app's files come from.
#[derive(Debug, Clone)]
pub(crate) enum WebApp {
    /// The files of a directory (`WEB_DIR`), read at each request.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Its `index.html`.
        index: PathBuf,
    },
    /// The files built into this binary.
    Embedded,
}

impl WebApp {
    /// Serves the files under `dir`, or without one those built into the binary.
    pub(crate) fn new(dir: Option<&Path>) -> Arc<Self> {
        Arc::new(match dir {
            Some(dir) => Self::Dir {
                dir: dir.to_path_buf(),
                index: dir.join("index.html"),
            },
            None => Self::Embedded,
        })
    }

    /// The file `path` names (the whole response to `request`: ETags,
    /// ranges and `HEAD` included), or `None` when there is none.
    async fn file(&self, path: &str, request: Request) -> Option<Response> {
        match self {
            Self::Dir { dir, .. } => {
                let file = resolve(dir, path).await?;
                let response = match ServeFile::new(file).oneshot(request).await {
                    Ok(response) => response.map(Body::new),
                    Err(never) => match never {},
                };
                (response.status() != StatusCode::NOT_FOUND).then_some(response)
            }
            Self::Embedded => embedded::file(path, &request),
        }
    }

    /// The app's `index.html`, or why there is none.
    async fn index(&self) -> Result<Response, ApiError> {
        match self {
            Self::Dir { dir, index } => {
                if !tokio::fs::metadata(index)
                    .await
                    .is_ok_and(|meta| meta.is_file())
                {
                    return Err(ApiError::WebAppNotBuilt(format!(
                        "there is no index.html in `{}`; build it with `make web`, or point WEB_DIR at a built app",
                        dir.display()
                    )));
                }
                match ServeFile::new(index)
                    .oneshot(Request::new(Body::empty()))
                    .await
                {
                    Ok(response) => Ok(response.map(Body::new)),
                    Err(never) => match never {},
                }
            }
            Self::Embedded => embedded::index().ok_or_else(|| {
                ApiError::WebAppNotBuilt(
                    "this binary was compiled without it (web/todo/dist had no index.html); \
                     build it with `make web` and then the server, or point WEB_DIR at a built app"
                        .to_owned(),
                )
            }),
        }
    }
}

/// Whether one decoded segment of a URL path may name a file of the app.
fn allowed_segment(segment: &str) -> bool {
    !segment.starts_with('.')
        && !segment
            .chars()
            .any(|c| c.is_control() || matches!(c, '\\' | '/' | ':'))
}

/// The decoded segments of `path` (as sent, percent encoded), or `None` if
/// one of them may not name a file of the app.
fn segments(path: &str) -> Option<Vec<String>> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    decoded
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|segment| allowed_segment(segment).then(|| segment.to_owned()))
        .collect()
}

/// The regular file inside `dir` that `path` (as sent, percent encoded)
/// names, with `index.html` for a directory; `None` for anything else.
async fn resolve(dir: &Path, path: &str) -> Option<PathBuf> {
    let mut candidate = dir.to_path_buf();
    candidate.extend(segments(path)?);
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let file = inside(&root, &candidate).await?;
    let meta = tokio::fs::metadata(&file).await.ok()?;
    if meta.is_file() {
        Some(file)
    } else if meta.is_dir() {
        let index = inside(&root, &file.join("index.html")).await?;
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
async fn inside(root: &Path, candidate: &Path) -> Option<PathBuf> {
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
    let response = match app.file(&path, request).await {
        Some(response) => response,
        None if !page => return ApiError::NotFound(path).into_response(),
        // One of the app's own routes (`/some/view`): the app decides.
        None => match app.index().await {
            Ok(response) => response,
            Err(error) => return error.into_response(),
        },
    };
    with_app_headers(response, &path)
}

/// Adds the policy and caching headers to one of the app's files.
fn with_app_headers(mut response: Response, path: &str) -> Response {
    // Vite names the files under /assets/ by their content's hash: they never
    // change. Everything else (index.html above all) is revalidated.
    // A 304 refreshes the browser's copy's headers, so it keeps the policy.
    let served = response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED;
    let cache = if path.starts_with("/assets/") && served {
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
