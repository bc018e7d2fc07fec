//! An HTTP proxy between the devices and the real server that injects
//! faults: lost replies, refusals, cut streams.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use tokio::sync::watch;

use super::DEADLINE;

/// What the proxy does to the traffic.
#[derive(Debug, Default)]
pub struct Faults {
    /// Forward this many more pushes to the server, but answer each with a
    /// 503 as if the reply was lost (the server stored the changeset).
    pub lose_push_replies: usize,
    /// After this many more pull requests, answer pulls with 503.
    pub pulls_before_failure: Option<usize>,
    /// Answer pushes whose body contains this text with a 400 of this code
    /// (without forwarding them), as a server that refuses a change would.
    pub refuse_pushes_containing: Option<(String, String)>,
    /// Answer every request with 503 (a server that is down).
    pub down: bool,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    faults: Arc<Mutex<Faults>>,
    pushes: Arc<AtomicUsize>,
    pulls: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
    hold: watch::Sender<bool>,
    held: watch::Sender<usize>,
}

/// An HTTP proxy in front of the server that injects faults.
pub struct Proxy {
    pub url: String,
    pub faults: Arc<Mutex<Faults>>,
    pushes: Arc<AtomicUsize>,
    pulls: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
    hold: watch::Sender<bool>,
    held: watch::Sender<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let pushes = Arc::new(AtomicUsize::new(0));
        let pulls = Arc::new(AtomicUsize::new(0));
        let (cut, _) = watch::channel(0);
        let (hold, _) = watch::channel(false);
        let (held, _) = watch::channel(0);
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: mana_sync_testkit::http_client(),
            faults: faults.clone(),
            pushes: pushes.clone(),
            pulls: pulls.clone(),
            cut: cut.clone(),
            hold: hold.clone(),
            held: held.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy serves");
        });
        Self {
            url,
            faults,
            pushes,
            pulls,
            cut,
            hold,
            held,
            task,
        }
    }

    /// Holds new stream requests (`GET …/stream`) before they reach the
    /// server, until [`Proxy::release_streams`]: a device that has pulled and
    /// is about to follow the stream, frozen at that point.
    pub fn hold_streams(&self) {
        self.hold.send_replace(true);
    }

    /// Lets held stream requests (and new ones) through.
    pub fn release_streams(&self) {
        self.hold.send_replace(false);
    }

    /// Waits until a stream request is held; panics after the deadline.
    pub async fn wait_for_held_stream(&self) {
        let mut held = self.held.subscribe();
        tokio::time::timeout(DEADLINE, held.wait_for(|n| *n > 0))
            .await
            .expect("a stream request reaches the proxy")
            .expect("proxy alive");
    }

    pub fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().unwrap());
    }

    /// Pushes that reached the proxy.
    pub fn pushes(&self) -> usize {
        self.pushes.load(Ordering::SeqCst)
    }

    /// Pull requests that reached the proxy.
    pub fn pulls(&self) -> usize {
        self.pulls.load(Ordering::SeqCst)
    }

    /// Ends every open streamed response (a dropped connection).
    pub fn cut_streams(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

fn unavailable(message: &str) -> Response {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"error":{{"code":"unavailable","message":"{message}"}}}}"#
        )))
        .unwrap()
}

async fn forward(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let is_push = method == Method::POST && path.starts_with("/sync/");
    let is_pull = path.ends_with("/pull");
    let mut lose_reply = false;
    {
        let mut faults = state.faults.lock().unwrap();
        if faults.down {
            return unavailable("proxy: server down");
        }
        if is_push {
            state.pushes.fetch_add(1, Ordering::SeqCst);
            if let Some((needle, code)) = &faults.refuse_pushes_containing
                && String::from_utf8_lossy(&body).contains(needle.as_str())
            {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("content-type", "application/json")
                    .body(Body::from(format!(
                        r#"{{"error":{{"code":"{code}","message":"proxy refuses {needle}"}}}}"#
                    )))
                    .unwrap();
            }
            if faults.lose_push_replies > 0 {
                faults.lose_push_replies -= 1;
                lose_reply = true;
            }
        }
        if is_pull {
            state.pulls.fetch_add(1, Ordering::SeqCst);
            match &mut faults.pulls_before_failure {
                Some(0) => return unavailable("proxy: pull failed"),
                Some(n) => *n -= 1,
                None => {}
            }
        }
    }
    if method == Method::GET && path.ends_with("/stream") && *state.hold.borrow() {
        let mut hold = state.hold.subscribe();
        state.held.send_modify(|n| *n += 1);
        let _ = hold.wait_for(|hold| !*hold).await;
        state.held.send_modify(|n| *n -= 1);
    }
    let url = format!(
        "{}{}",
        state.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = state.http.request(method, url).body(body);
    for name in [
        "authorization",
        "x-client-id",
        "x-sync-features",
        "content-type",
        "accept",
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let upstream = match request.send().await {
        Ok(response) => response,
        Err(error) => return unavailable(&format!("proxy: {error}")),
    };
    if lose_reply {
        // The server has stored the changeset; the device never hears of it.
        let _ = upstream.bytes().await;
        return unavailable("proxy: reply lost");
    }
    let mut response = Response::builder().status(upstream.status().as_u16());
    if let Some(value) = upstream.headers().get("content-type") {
        response = response.header("content-type", value);
    }
    let mut cut = state.cut.subscribe();
    cut.borrow_and_update();
    // Stream the body through, ending it early when the test cuts streams.
    let body = upstream
        .bytes_stream()
        .take_until(async move {
            let _ = cut.changed().await;
        })
        .map(|chunk| chunk.map_err(std::io::Error::other));
    response.body(Body::from_stream(body)).unwrap()
}
