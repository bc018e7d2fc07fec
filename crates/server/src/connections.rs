//! Accepting and serving HTTP connections.
//!
//! This is `axum::serve` with what a server facing the open internet needs:
//!
//! - **A connection budget** ([`ConnectionLimits::max_connections`], below
//!   the open-file limit). A connection that has not yet sent a whole
//!   request head is *waiting*; when the budget is used up, a new connection
//!   closes the oldest waiting one instead of being refused, so silent
//!   connections can never lock out health checks or new users. Only when
//!   every connection has sent a request is the newcomer turned away.
//! - **Timeouts for silent and slow clients.** A connection must send its
//!   first request head within [`ConnectionLimits::header_timeout`] (hyper's
//!   own header timeout does not cover the first bytes, which the HTTP/1 vs
//!   HTTP/2 detection reads), and later ones within the same time (hyper's
//!   `header_read_timeout`, which also ends idle kept-alive connections). A
//!   request body that pauses longer than [`ConnectionLimits::body_timeout`]
//!   fails with 408 (tower-http's `TimeoutBody`).
//! - hyper's HTTP/1 read buffer capped at its minimum, [`MAX_READ_BUFFER`]:
//!   by default it grows towards 400 KiB and an idle stream keeps 16 KiB of
//!   it, which was most of the memory an open stream cost (see README, Live
//!   delivery). Bodies are still read in full, just in chunks of that size.
//! - A WebSocket keeps its place in the budget for as long as it is open
//!   (its request carries a [`ConnectionSlot`]), and counts as waiting again
//!   until it has authenticated.
//! - The peer address on every request ([`ConnectInfo`]) for dev-mode
//!   sign-in, TCP_NODELAY for live writes, and graceful shutdown through
//!   hyper-util's `GracefulShutdown`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutBody;

/// Largest HTTP/1 read buffer per connection (hyper's minimum): request heads
/// must fit in it, and bodies are read through it in chunks of this size.
pub const MAX_READ_BUFFER: usize = 8192;

/// Shortest time between two warnings about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many connections to serve, and how long clients may be silent.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most open connections (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Time to send a request head (`HEADER_TIMEOUT_SECS`).
    pub header_timeout: Duration,
    /// Longest pause while a request body arrives (`BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
}

/// The open connections, and which of them are still waiting for their
/// first request head (oldest first: ids grow with every accept).
struct Budget {
    max: usize,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    open: usize,
    next_id: u64,
    waiting: BTreeMap<u64, CancellationToken>,
}

/// One admitted connection; dropping it gives its place back.
struct Admitted {
    budget: Arc<Budget>,
    id: u64,
    evicted: CancellationToken,
    proven: AtomicBool,
}

impl Budget {
    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        // Every update is a counter or one map entry: never left half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection, closing the oldest waiting one if the budget
    /// is used up; `None` when every open connection is busy.
    fn admit(self: &Arc<Self>) -> Option<Arc<Admitted>> {
        let mut state = self.lock();
        if state.open >= self.max {
            let (_, oldest) = state.waiting.pop_first()?;
            // Its task ends at once and gives its place back.
            oldest.cancel();
        }
        state.open += 1;
        state.next_id += 1;
        let id = state.next_id;
        let evicted = CancellationToken::new();
        state.waiting.insert(id, evicted.clone());
        Some(Arc::new(Admitted {
            budget: self.clone(),
            id,
            evicted,
            proven: AtomicBool::new(false),
        }))
    }
}

impl Admitted {
    /// The connection sent a request head: it is no longer a silent one.
    fn proven(&self) {
        if !self.proven.swap(true, Ordering::Relaxed) {
            self.budget.lock().waiting.remove(&self.id);
        }
    }
}

/// A connection's place in the budget, in every request's extensions. A
/// WebSocket holds it while it is open (the HTTP connection ends with the
/// upgrade), so open sockets count against `MAX_CONNECTIONS` too.
#[derive(Clone)]
pub struct ConnectionSlot(Arc<Admitted>);

impl ConnectionSlot {
    /// Marks the connection as waiting again (a socket that has not
    /// authenticated yet): it may be closed to make room for a newcomer,
    /// which cancels the returned token.
    pub fn waiting(&self) -> CancellationToken {
        if self.0.proven.swap(false, Ordering::Relaxed) {
            self.0
                .budget
                .lock()
                .waiting
                .insert(self.0.id, self.0.evicted.clone());
        }
        self.0.evicted.clone()
    }

    /// The connection proved itself (the socket authenticated).
    pub fn proven(&self) {
        self.0.proven();
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        state.open -= 1;
        state.waiting.remove(&self.id);
    }
}

/// Serves `service` on `listener` until `shutdown` completes; then stops
/// accepting, runs `stopping` (which ends streams and sockets), and waits for
/// every connection to finish what it is doing.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: impl FnOnce(),
) -> std::io::Result<()>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    builder.http2().timer(TokioTimer::new());
    let budget = Arc::new(Budget {
        max: limits.max_connections.max(1),
        state: Mutex::new(BudgetState::default()),
    });
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let (mut refused, mut last_warning) = (0_u64, None::<std::time::Instant>);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors despite the budget (another
                    // part of the process holds them): the condition passes
                    // when files close; spinning would not help.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = budget.admit() else {
            refused += 1;
            // Once per ten seconds at most: a flood must not flood the log.
            if last_warning.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                tracing::warn!(
                    %peer,
                    refused,
                    max_connections = budget.max,
                    "refused connections: every connection is busy (MAX_CONNECTIONS)"
                );
                last_warning = Some(std::time::Instant::now());
                refused = 0;
            }
            continue;
        };
        // Live changes are small writes that must leave at once.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let on_request = admitted.clone();
        let body_timeout = limits.body_timeout;
        let service = service
            .clone()
            .map_request(move |request: Request<Incoming>| {
                on_request.proven();
                let mut request =
                    request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
                request.extensions_mut().insert(ConnectInfo(peer));
                request
                    .extensions_mut()
                    .insert(ConnectionSlot(on_request.clone()));
                request
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let silent_too_long = async {
                tokio::time::sleep(header_timeout).await;
                if admitted.proven.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                }
                () = admitted.evicted.cancelled() => {
                    tracing::debug!(%peer, "closed a silent connection to make room");
                }
                () = silent_too_long => {
                    tracing::debug!(%peer, "closed a connection that sent no request in time");
                }
            }
            drop(admitted);
        });
    }
    drop(listener);
    stopping();
    graceful.shutdown().await;
    Ok(())
}
