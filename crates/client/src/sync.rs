//! Sync with a mana-sync server: push the outbox, pull every collection to
//! the end. (Following the live stream is in `crate::live`.)
//!
//! **Push.** The outbox goes out in changesets of at most
//! [`SyncOptions::changeset_size`] changes. A changeset's id is committed with
//! its rows before it is sent, and rows leave the outbox only in the
//! transaction that applies the server's 200 reply; so a crash, a timeout or
//! a lost reply is followed by a resend of the same id, which the server
//! stores once. The `since` of a push is the app cursor, and the reply's
//! changes (other devices', every collection) are applied with the
//! acknowledgement; when the reply is complete (`hasMore` false) every
//! collection's cursor moves to its `syncedUntil` too.
//!
//! **Refused changesets.** A 400 `invalid_change`/`invalid_json` or a 413 for
//! a changeset means the server stored none of it. The changeset is split in
//! halves under new ids and retried, down to single changes; a single change
//! the server still refuses is moved out of the outbox into the store's
//! `rejected` list with the server's reason (the local record keeps its
//! value), and the status becomes an error naming it until the app retries
//! (`LocalStore::retry_rejected`) or discards them. So one bad change never
//! wedges the outbox. A `schema_version_too_new` (an older server) refuses
//! every change alike: nothing is set aside; the outbox waits for the
//! upgrade and the status says so. An `invalid_cursor` (a server whose
//! database was replaced) makes the client forget the cursor and start over;
//! merging makes re-applying changes harmless.
//!
//! **Expired cursors.** Every request lists the `cursor-expired` feature
//! (`X-Sync-Features`). When the server dropped deleted records past its
//! tombstone retention and a cursor is older than that, it answers 410
//! `cursor_expired` (a push is stored first) or, on the stream, the event
//! `cursor-expired`. The client then re-downloads (see
//! `crate::store::redownload`): it forgets every cursor, pulls every synced
//! collection from the start without its client id (so its own earlier
//! changes come back too), removes the local records that did not come back
//! and that no unsent change touches, and only then pushes the outbox, whose
//! resent changeset the server recognises. A re-download interrupted by a
//! crash or a failure resumes at the next sync (`LocalStore` keeps a marker);
//! no push is sent while one is unfinished.
//!
//! **Shared spaces.** Every request lists the `spaces` feature too: the
//! server then follows every space of the user, and each collection's
//! cursor is a composite one (stored and sent back as it came). A changeset
//! holds the changes of one space only, so when the server refuses a space
//! (403 `space_forbidden`: the user is a viewer there, or no longer a
//! member), only that space's queued changes are set aside (`rejected`,
//! with the reason; the status becomes an error naming it) and the other
//! spaces' changes still go through. Spaces a reply lists in
//! `removedSpaces` are dropped from the device: their records, unsent and
//! refused changes, and cursor parts (see `crate::store` on spaces), so a
//! space joined again is downloaded whole, this device's own earlier
//! changes in it included (the server sends a space's log with them). Each
//! sync ends by refreshing the list of the user's spaces (names and
//! roles; a write into a space where the user is a viewer is refused
//! locally).
//!
//! **Pull.** Each synced collection is pulled from its cursor, page by page
//! while `hasMore`. Each page is applied in its own transaction; the cursor
//! is saved only in the transaction of the last page, so an interrupted pull
//! resumes from the old cursor and re-applies (harmlessly) what it had.

use std::sync::Arc;
use std::time::Duration;

use mana_sync_protocol::{ErrorBody, PullResponse, PushResponse};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::error::{ClientError, Result};
use crate::status::SyncStatus;
use crate::store::{Account, LocalStore, PendingChangeset, SCHEMA_VERSION};

/// `since` meaning "from the start".
pub const START: &str = "1970-01-01T00:00:00.000Z";

/// The request header listing the protocol features this client handles.
pub(crate) const FEATURES_HEADER: &str = "x-sync-features";
/// The features it lists: told `cursor_expired` rather than served from the
/// start when its cursor is older than history the server dropped; and
/// following shared spaces (a composite cursor, `removedSpaces`, the
/// stream's `space-added`/`space-removed`).
pub(crate) const FEATURES: &str = "cursor-expired,spaces";
/// The error code of a push into a space the user may not write.
pub(crate) const SPACE_FORBIDDEN: &str = "space_forbidden";
/// The error code (and, with a dash, the stream event) of an expired cursor.
pub(crate) const CURSOR_EXPIRED: &str = "cursor_expired";

/// Re-downloads one sync may start before giving up (each starts over only
/// when the server dropped history again while it ran).
const MAX_REDOWNLOADS: usize = 3;

/// Tuning of the sync client.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Changes per pushed changeset.
    pub changeset_size: usize,
    /// Changes per pulled page (the server caps it at 1000).
    pub page_size: usize,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one push or pull request, reply included.
    pub request_timeout: Duration,
    /// Silence after which the live stream is considered dead (the server
    /// sends heartbeats, every 30 s by default).
    pub stream_idle_timeout: Duration,
    /// First delay before reconnecting; doubles on each failure.
    pub min_backoff: Duration,
    /// Longest delay before reconnecting.
    pub max_backoff: Duration,
    /// How often the live loop looks for writes made by another process on
    /// the same store (a second `mana-todo`).
    pub external_check_interval: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            changeset_size: 500,
            page_size: 1000,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(90),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            external_check_interval: Duration::from_secs(1),
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Local changes the server acknowledged.
    pub pushed: usize,
    /// Changes received from other devices (push replies and pulls).
    pub received: usize,
    /// Local changes the server refused in this sync (set aside).
    pub rejected: usize,
}

pub(crate) struct Inner {
    pub store: LocalStore,
    pub http: reqwest::Client,
    pub server: Url,
    pub token: String,
    pub options: SyncOptions,
    pub account: Account,
}

/// A store connected to a server. Cheap to clone.
#[derive(Clone)]
pub struct SyncClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("server", &self.inner.server.as_str())
            .field("user", &self.inner.account.user)
            .finish_non_exhaustive()
    }
}

/// Installs the TLS crypto provider reqwest needs (once per process; another
/// component may have installed one already, which is fine).
fn install_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A readable account of a network error: its whole source chain.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "the request timed out".into();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    // The outer parts repeat the URL and the layers ("error sending request
    // for url (…)", "client error (Connect)"); the last two say what happened.
    let keep = parts.len().saturating_sub(2);
    parts.drain(..keep);
    parts.join(": ")
}

impl SyncClient {
    /// Connects `store` to the server at `server` with a bearer `token`,
    /// signing the store in (see [`LocalStore::sign_in`]): a guest store
    /// becomes the token user's, and its data is pushed by the next sync.
    pub fn new(store: LocalStore, server: &str, token: &str) -> Result<Self> {
        Self::with_options(store, server, token, SyncOptions::default())
    }

    /// [`SyncClient::new`] with tuning.
    pub fn with_options(
        store: LocalStore,
        server: &str,
        token: &str,
        options: SyncOptions,
    ) -> Result<Self> {
        let url = Url::parse(server.trim_end_matches('/'))
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .ok_or_else(|| ClientError::InvalidServerUrl(server.to_owned()))?;
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|error| ClientError::Protocol(format!("HTTP client: {error}")))?;
        let account = store.sign_in(url.as_str(), token)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                http,
                server: url,
                token: token.trim().to_owned(),
                options,
                account,
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &LocalStore {
        &self.inner.store
    }

    /// The account the store is signed in to.
    pub fn account(&self) -> &Account {
        &self.inner.account
    }

    /// Pushes the outbox, then pulls every collection to the end. Sets the
    /// status: syncing, then synced, offline (network or 5xx: retry later) or
    /// error (with the reason). Local writes are kept whatever happens.
    pub async fn sync(&self) -> Result<SyncReport> {
        let store = &self.inner.store;
        store.set_status(SyncStatus::Syncing)?;
        let result = self.sync_once().await;
        self.settle(&result).await?;
        result
    }

    /// Sets the status after a sync attempt.
    pub(crate) async fn settle<T>(&self, result: &Result<T>) -> Result<()> {
        let status = match result {
            Ok(_) => self.rejected_status().await?.unwrap_or(SyncStatus::Synced),
            Err(error) if error.is_transient() => SyncStatus::Offline {
                reason: error.to_string(),
            },
            Err(error) => SyncStatus::Error {
                reason: error.to_string(),
            },
        };
        self.inner.store.set_status(status)
    }

    /// An error status while refused changes are set aside.
    async fn rejected_status(&self) -> Result<Option<SyncStatus>> {
        let rejected = self.blocking(|store| store.rejected()).await?;
        Ok(rejected.first().map(|first| SyncStatus::Error {
            reason: format!(
                "{} change(s) refused by the server and set aside (first: {})",
                rejected.len(),
                first.reason
            ),
        }))
    }

    pub(crate) async fn sync_once(&self) -> Result<SyncReport> {
        let mut report = self.push().await?;
        report.received += self.pull().await?;
        self.refresh_spaces().await?;
        Ok(report)
    }

    /// Runs `f` on the store off the async threads (SQLite calls block).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|error| ClientError::Protocol(format!("store task failed: {error}")))?
    }

    pub(crate) fn endpoint(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.inner.server.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidServerUrl(self.inner.server.to_string()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    pub(crate) fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            server: self.inner.server.as_str().trim_end_matches('/').to_owned(),
            reason: describe(error),
        }
    }

    /// Reads a reply: the body on 2xx, the mapped error otherwise.
    pub(crate) async fn read_reply<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T> {
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.unreachable(&error))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|error| ClientError::Protocol(format!("{error} in a {status} reply")));
        }
        Err(error_from(status, &body))
    }

    /// Pushes the whole outbox. Returns what was pushed, received and refused.
    pub async fn push(&self) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut cursor_reset = false;
        let mut redownloaded = false;
        let size = self.inner.options.changeset_size;
        // An unfinished re-download (a crash, a failed page) completes first:
        // a push's reply would otherwise move the cursors past it.
        if self.blocking(|store| store.redownload_pending()).await? {
            report.received += self.pull().await?;
        }
        loop {
            let Some(changeset) = self
                .blocking(move |store| store.next_changeset(size))
                .await?
            else {
                return Ok(report);
            };
            let since = self
                .blocking(|store| store.app_cursor())
                .await?
                .unwrap_or_else(|| START.to_owned());
            match self.post_changeset(&changeset, &since).await {
                Ok(reply) => {
                    report.pushed += changeset.changes.len();
                    report.received += reply.server_changes.len();
                    let id = changeset.id.clone();
                    self.blocking(move |store| store.finish_changeset(&id, &reply))
                        .await?;
                }
                Err(ClientError::CursorExpired(message)) if !redownloaded => {
                    // The server stored the changeset before answering; it
                    // is resent after the re-download, under the same id.
                    redownloaded = true;
                    tracing::info!(%message, "cursor expired on push; downloading everything again");
                    self.blocking(|store| store.start_redownload()).await?;
                    report.received += self.pull().await?;
                }
                Err(ClientError::Server { code, .. })
                    if code == "invalid_cursor" && !cursor_reset =>
                {
                    cursor_reset = true;
                    self.blocking(|store| store.forget_cursors()).await?;
                }
                Err(ClientError::Server {
                    status: 403,
                    code,
                    message,
                }) if code == SPACE_FORBIDDEN && changeset.space.is_some() => {
                    // A viewer's (or a former member's) changes: the server
                    // stored nothing of the changeset. This space's changes
                    // are set aside; the other spaces' go on.
                    let space = changeset.space.clone().unwrap_or_default();
                    let reason = format!("{code}: {message}");
                    tracing::warn!(%space, %reason, "the server refused writing a shared space; its changes are set aside");
                    report.rejected += self
                        .blocking(move |store| store.reject_space(&space, &reason))
                        .await?;
                }
                Err(ClientError::Server {
                    status,
                    code,
                    message,
                }) if refuses_the_changes(status, &code) => {
                    let id = changeset.id.clone();
                    let split = self
                        .blocking(move |store| store.split_changeset(&id))
                        .await?;
                    if !split {
                        let id = changeset.id.clone();
                        let reason = format!("{code}: {message}");
                        tracing::warn!(%reason, "the server refused a change; set aside");
                        report.rejected += self
                            .blocking(move |store| store.reject_changeset(&id, &reason))
                            .await?;
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn post_changeset(
        &self,
        changeset: &PendingChangeset,
        since: &str,
    ) -> Result<PushResponse> {
        let store = &self.inner.store;
        let json = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
        // The changes are stored as the exact JSON to send: join, don't re-encode.
        let mut body = String::with_capacity(
            128 + changeset.changes.iter().map(|c| c.len() + 1).sum::<usize>(),
        );
        body.push_str(&format!(
            r#"{{"clientId":{},"since":{},"changesetId":{},"schemaVersion":{SCHEMA_VERSION},"changes":["#,
            json(store.client_id()),
            json(since),
            json(&changeset.id),
        ));
        for (i, change) in changeset.changes.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(change);
        }
        body.push_str("]}");
        let response = self
            .inner
            .http
            .post(self.endpoint(&["sync", store.app_id()])?)
            .bearer_auth(&self.inner.token)
            .header("x-client-id", store.client_id())
            .header(FEATURES_HEADER, FEATURES)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.inner.options.request_timeout)
            .body(body)
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        self.read_reply(response).await
    }

    /// Pulls every synced collection to the end. Returns how many changes
    /// arrived. On `cursor_expired`, downloads everything again (and a
    /// re-download left unfinished is completed).
    pub async fn pull(&self) -> Result<usize> {
        let mut received = 0;
        let mut restarts = 0;
        loop {
            match self.pull_round(&mut received).await {
                Ok(()) => return Ok(received),
                Err(ClientError::CursorExpired(message)) if restarts < MAX_REDOWNLOADS => {
                    restarts += 1;
                    tracing::info!(%message, "cursor expired on pull; downloading everything again");
                    self.blocking(|store| store.start_redownload()).await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Pulls every synced collection from its cursor to the end; then sets
    /// the app cursor, or finishes the re-download in progress.
    async fn pull_round(&self, received: &mut usize) -> Result<()> {
        let redownload = self.blocking(|store| store.redownload_pending()).await?;
        let mut first_cursor = None;
        for collection in self.inner.store.collections().to_vec() {
            let cursor = self
                .pull_collection(&collection, redownload, received)
                .await?;
            // Pulls end at the server's newest position at the time, so the
            // first collection's final cursor is at or before every other's:
            // every change up to it, of every collection, is now applied.
            first_cursor.get_or_insert(cursor);
        }
        if redownload {
            self.blocking(move |store| store.finish_redownload(first_cursor.as_deref()))
                .await?;
        } else if let Some(cursor) = first_cursor {
            self.blocking(move |store| store.set_app_cursor(&cursor))
                .await?;
        }
        Ok(())
    }

    /// Pulls one collection from its cursor to the end, counting the changes
    /// in `received`; returns the final cursor. A re-download pulls without
    /// the client id, so that this device's own changes come back too.
    async fn pull_collection(
        &self,
        collection: &str,
        redownload: bool,
        received: &mut usize,
    ) -> Result<String> {
        let stored = {
            let collection = collection.to_owned();
            self.blocking(move |store| store.cursor(&collection))
                .await?
        };
        let mut since = stored.unwrap_or_else(|| START.to_owned());
        let mut restarted = false;
        loop {
            let page = match self.pull_page(collection, &since, !redownload).await {
                Ok(page) => page,
                Err(ClientError::Server { code, .. }) if code == "invalid_cursor" && !restarted => {
                    // Not this server's cursor (its database was replaced):
                    // start over; re-applying changes is harmless.
                    restarted = true;
                    since = START.to_owned();
                    continue;
                }
                Err(error) => return Err(error),
            };
            *received += page.server_changes.len();
            let last = !page.has_more;
            let next = page.synced_until.clone();
            let owned = collection.to_owned();
            let cursor = next.clone();
            self.blocking(move |store| {
                let cursor = last.then_some((owned.as_str(), cursor.as_str()));
                store.apply_page(&page.server_changes, cursor, &page.removed_spaces)
            })
            .await?;
            if last {
                return Ok(next);
            }
            since = next;
        }
    }

    async fn pull_page(
        &self,
        collection: &str,
        since: &str,
        as_this_client: bool,
    ) -> Result<PullResponse> {
        let store = &self.inner.store;
        let mut url = self.endpoint(&["sync", store.app_id(), "pull"])?;
        url.query_pairs_mut()
            .append_pair("collection", collection)
            .append_pair("since", since)
            .append_pair("limit", &self.inner.options.page_size.to_string());
        let mut request = self
            .inner
            .http
            .get(url)
            .bearer_auth(&self.inner.token)
            .header(FEATURES_HEADER, FEATURES)
            .timeout(self.inner.options.request_timeout);
        if as_this_client {
            request = request.header("x-client-id", store.client_id());
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        self.read_reply(response).await
    }
}

/// Whether a refusal is about the changes themselves (so splitting and
/// setting aside can help), rather than about the request or the server.
fn refuses_the_changes(status: u16, code: &str) -> bool {
    status == 413 || (status == 400 && matches!(code, "invalid_change" | "invalid_json"))
}

/// The error of a non-2xx reply.
pub(crate) fn error_from(status: StatusCode, body: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            "http_error".to_owned(),
            String::from_utf8_lossy(body).chars().take(300).collect(),
        ),
    };
    if status == StatusCode::UNAUTHORIZED {
        return ClientError::Unauthorized(message);
    }
    if code == CURSOR_EXPIRED {
        return ClientError::CursorExpired(message);
    }
    ClientError::Server {
        status: status.as_u16(),
        code,
        message,
    }
}
