//! The mana-sync server as a library: a typed sync core ([`service`]), the
//! HTTP layer that translates requests into calls of it ([`routes`]), bearer
//! authentication as middleware ([`auth`]), the one mapping from errors to HTTP
//! statuses ([`error`]), Prometheus metrics ([`metrics`]), and the OpenAPI
//! description generated from the handlers ([`openapi`]).
//!
//! The `mana-sync` binary only parses configuration and calls [`App::build`]
//! and [`App::serve`].

pub mod auth;
pub mod backup;
pub mod compactor;
pub mod connections;
pub mod error;
mod extract;
pub mod follow;
pub mod hub;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod service;
pub mod spaces;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mana_sync_auth::{AuthConfig, Verifier};
use mana_sync_store::{Store, StoreError, StoreOptions};
use tokio::net::TcpListener;

use crate::connections::ConnectionLimits;
use crate::hub::{Hub, LiveLimits};
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::service::SyncService;

/// Largest request body accepted (larger ones get 413).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Name of the server setting that holds the dev-mode signing secret.
pub const DEV_SECRET_SETTING: &str = "dev_jwt_secret";

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// Connections to the database (Postgres) or readers (SQLite).
    pub pool_size: usize,
    /// How tokens are verified; with neither a secret nor a JWKS URL the
    /// server runs in dev mode with a secret stored in its database.
    pub auth: AuthConfig,
    /// Origins allowed by CORS (`*` for any); empty for same-origin only.
    pub cors_origins: Vec<String>,
    /// Interval between SSE heartbeats.
    pub sse_heartbeat: Duration,
    /// How long a new WebSocket may take to send its auth message.
    pub socket_auth_timeout: Duration,
    /// Largest backup `POST /backup/import` accepts.
    pub backup_max_bytes: u64,
    /// A directory to serve the web app at `/` from (`WEB_DIR`), instead
    /// of the app built into the binary.
    pub web_dir: Option<std::path::PathBuf>,
    /// Background compaction of the change log.
    pub compaction: compactor::CompactionConfig,
    /// Connections served at once, and how long clients may be silent.
    pub connections: ConnectionLimits,
    /// Open streams and sockets one user may have (`MAX_LIVE_PER_USER`).
    pub max_live_per_user: usize,
    /// Heartbeats between instances and the check that none fell silent:
    /// a lost notice is made up for within a few of these (`CATCHUP_INTERVAL_MS`).
    pub catchup_interval: Duration,
    /// Relay notices between instances through NATS instead of Postgres
    /// `LISTEN/NOTIFY` (`NATS_URL`).
    pub nats_url: Option<String>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Token verification could not be set up.
    #[error(transparent)]
    Auth(#[from] mana_sync_auth::AuthSetupError),
    /// The dev-mode secret could not be created.
    #[error(transparent)]
    DevSecret(#[from] mana_sync_auth::MintError),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A CORS origin is not a valid header value.
    #[error("invalid CORS origin `{0}`")]
    CorsOrigin(String),
}

/// State shared by every request, behind one `Arc`: axum clones the state
/// for every extractor and middleware of every request, and a struct of
/// several `Arc`s cost one contended atomic count per part each time
/// (dropping the clones took 1.9% of the server's CPU under
/// `mana-sync-bench load`, 1.0% behind one `Arc`).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct SharedState {
    /// The typed sync core.
    pub service: Arc<SyncService>,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Live delivery to streams and sockets.
    pub hub: Arc<Hub>,
    /// Timing of live connections.
    pub live: LiveConfig,
    /// Largest backup accepted for import.
    pub backup_max_bytes: u64,
    /// Shared spaces and their members.
    pub spaces: Arc<spaces::Spaces>,
}

/// A configured server, ready to serve.
pub struct App {
    state: AppState,
    config: ServerConfig,
    dev_secret: Option<String>,
}

impl App {
    /// Opens the store, migrates it and sets up authentication.
    pub async fn build(config: ServerConfig) -> Result<Self, StartError> {
        let store = mana_sync_store::open(
            &config.database_url,
            &StoreOptions {
                pool_size: config.pool_size,
                catchup_interval: config.catchup_interval,
                nats_url: config.nats_url.clone(),
            },
        )
        .await?;
        let (auth, dev_secret) =
            if config.auth.jwt_secret.is_none() && config.auth.jwks_url.is_none() {
                let secret = dev_secret(&*store).await?;
                let auth = AuthConfig {
                    jwt_secret: Some(secret.clone()),
                    ..config.auth.clone()
                };
                (auth, Some(secret))
            } else {
                (config.auth.clone(), None)
            };
        let verifier = Arc::new(Verifier::new(&auth).await?);
        let metrics = Arc::new(Metrics::new()?);
        let hub = Arc::new(Hub::with_counters(
            metrics.open_streams.clone(),
            metrics.open_sockets.clone(),
            metrics.live_overflows.clone(),
            metrics.notices.clone(),
            metrics.resyncs.clone(),
            metrics.live_reads.clone(),
            LiveLimits::for_connections(
                config.connections.max_connections,
                config.max_live_per_user,
            ),
        ));
        tokio::spawn(hub.clone().run(store.events()));
        let spaces = Arc::new(spaces::Spaces::new(store.clone()));
        let service = Arc::new(SyncService::new(store, metrics.clone()));
        let live = LiveConfig {
            heartbeat: config.sse_heartbeat,
            socket_auth_timeout: config.socket_auth_timeout,
        };
        Ok(Self {
            state: AppState(Arc::new(SharedState {
                service,
                verifier,
                metrics,
                hub,
                live,
                backup_max_bytes: config.backup_max_bytes,
                spaces,
            })),
            config,
            dev_secret,
        })
    }

    /// The dev-mode secret, when no auth is configured.
    pub fn dev_secret(&self) -> Option<&str> {
        self.dev_secret.as_deref()
    }

    /// Serves on `listener` until `shutdown` completes. Then it stops
    /// accepting, ends every stream and closes every socket, and finishes the
    /// requests in flight (pushes complete and are answered).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let live = self.state.hub.shutdown().clone();
        tokio::spawn(compactor::run(
            self.state.service.store().clone(),
            self.state.metrics.clone(),
            self.config.compaction,
            live.clone(),
        ));
        let store = self.state.service.store().clone();
        let service = routes::service(self.state, &self.config, self.dev_secret.as_deref())
            .map_err(std::io::Error::other)?;
        // Requests carry their peer address: dev-mode sign-in answers
        // loopback callers only.
        let served = connections::serve(
            listener,
            service,
            self.config.connections,
            shutdown,
            move || live.cancel(),
        )
        .await;
        // The last pushes' notices reach the other instances, and they hear
        // that this one stops rather than crashed.
        store.close().await;
        served
    }
}

/// The dev-mode secret stored in the database (created on first use), so
/// every instance and `mana-sync token` agree on it.
pub async fn dev_secret(store: &dyn Store) -> Result<String, StartError> {
    let fresh = mana_sync_auth::random_secret()?;
    Ok(store
        .setting_or_insert(DEV_SECRET_SETTING, &|| fresh.clone())
        .await?)
}
