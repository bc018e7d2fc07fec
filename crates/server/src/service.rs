//! The sync core: validated, typed operations on the store, with no HTTP in
//! sight. Handlers call these; tests and other front ends could too.

use std::sync::Arc;

use mana_sync_protocol::change::ChangeProblem;
use mana_sync_protocol::cursor::CursorError;
use mana_sync_protocol::cursor::format_with_expiry;
use mana_sync_protocol::ident::{IdentError, MAX_ID_LEN, MAX_NAME_LEN, check_identifier};
use mana_sync_protocol::schema::{self, DEFAULT_SCHEMA_VERSION, SchemaVersionError};
use mana_sync_protocol::{
    PullResponse, PushRequest, PushResponse, Resume, Since, Timestamp, UserId,
};
use mana_sync_store::{
    ChangePage, ChangeQuery, ExpiredCursor, MAX_PAGE, NewChangeset, PushOutcome, Store, StoreError,
};

use crate::live::StreamRequest;
use crate::metrics::Metrics;

/// Why the core refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A parameter has an invalid value.
    #[error("{0}")]
    InvalidRequest(String),
    /// A required parameter is missing.
    #[error("`{0}` is required")]
    MissingParameter(&'static str),
    /// `since` cannot be parsed.
    #[error("invalid `since`: {0}")]
    InvalidCursor(#[from] CursorError),
    /// The changeset's schema version is not supported.
    #[error(transparent)]
    SchemaVersion(#[from] SchemaVersionError),
    /// One change of the changeset is invalid; nothing was stored.
    #[error("changes[{index}] is invalid, nothing was stored: {problem}")]
    InvalidChange {
        /// Position of the change in `changes`.
        index: usize,
        /// What is wrong with it.
        problem: ChangeProblem,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check(what: &str, value: &str, max_len: usize) -> Result<(), ServiceError> {
    check_identifier(value, max_len)
        .map_err(|error: IdentError| ServiceError::InvalidRequest(format!("`{what}` {error}")))
}

/// How a client reads and writes cursors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CursorDialect {
    /// Plain positions, and no `cursor_expired` answers: the seed's clients,
    /// and any client that does not list `cursor-expired`.
    #[default]
    Plain,
    /// Clients told about expired cursors: their cursors carry the expiry
    /// they were handed out with (`mana_sync_protocol::cursor::format_with_expiry`).
    ToldExpiry,
}

impl CursorDialect {
    /// Reads a `since`, and what to do if it turns out expired.
    fn parse(self, text: &str) -> Result<(Since, ExpiredCursor), ServiceError> {
        Ok(match self {
            CursorDialect::Plain => (Since::parse(text)?, ExpiredCursor::Serve),
            CursorDialect::ToldExpiry => {
                let resume = Resume::parse(text)?;
                (
                    resume.since,
                    ExpiredCursor::Refuse {
                        known: resume.known_expiry,
                    },
                )
            }
        })
    }

    /// The cursor after `page`, as this client reads it.
    pub fn format(self, page: &ChangePage) -> String {
        match self {
            CursorDialect::Plain => page.next.to_string(),
            CursorDialect::ToldExpiry => format_with_expiry(page.next, page.expired_through),
        }
    }

    /// The `since` every read needs: required, and never silently "from zero".
    fn required(self, value: Option<&str>) -> Result<(Since, ExpiredCursor), ServiceError> {
        self.parse(value.ok_or(ServiceError::MissingParameter("since"))?)
    }
}

/// Most collections one stream may follow.
pub const MAX_STREAM_COLLECTIONS: usize = 100;

/// Parameters of a stream, as they arrive.
#[derive(Debug, Default)]
pub struct StreamParams {
    /// Required: the collections, comma-separated.
    pub collections: Option<String>,
    /// Where every collection starts; absent means from the start of the
    /// log (the seed's streams did the same).
    pub since: Option<String>,
    /// The device asking; its own changes are left out.
    pub client_id: Option<String>,
    /// How the client reads and writes cursors.
    pub dialect: CursorDialect,
}

/// Parameters of a pull, as they arrive.
#[derive(Debug, Default)]
pub struct PullParams {
    /// Required: the collection.
    pub collection: Option<String>,
    /// Required: the cursor.
    pub since: Option<String>,
    /// Page size, 1 to 1000 (larger values are capped).
    pub limit: Option<String>,
    /// The device asking; its own changes are left out.
    pub client_id: Option<String>,
    /// How the client reads and writes cursors.
    pub dialect: CursorDialect,
}

/// The sync operations.
pub struct SyncService {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl SyncService {
    /// A core over `store`, recording into `metrics`.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    /// The store (for health checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Validates and stores a device's changeset atomically, then returns the
    /// user's other devices' changes of this app after `since`.
    ///
    /// A `since` older than dropped history fails with
    /// [`StoreError::CursorExpired`] for [`CursorDialect::ToldExpiry`] clients
    /// after the changeset was stored: the device downloads the current
    /// state and sends it again, and its `changesetId` makes that a no-op.
    pub async fn push(
        &self,
        user: &UserId,
        app_id: &str,
        header_client_id: Option<String>,
        dialect: CursorDialect,
        request: PushRequest,
    ) -> Result<PushResponse, ServiceError> {
        let started = std::time::Instant::now();
        check("appId", app_id, MAX_NAME_LEN)?;
        let client_id = header_client_id
            .or(request.client_id)
            .ok_or(ServiceError::MissingParameter("clientId"))?;
        check("clientId", &client_id, MAX_ID_LEN)?;
        let (since, expired) = dialect.required(request.since.as_deref())?;
        if let Some(changeset_id) = &request.changeset_id {
            check("changesetId", changeset_id, MAX_ID_LEN)?;
        }
        let default_version =
            schema::check(request.schema_version.unwrap_or(DEFAULT_SCHEMA_VERSION))?;
        let now = Timestamp::from_instant(time::OffsetDateTime::now_utc());
        let changes = request
            .changes
            .into_iter()
            .enumerate()
            .map(|(index, mut change)| {
                change.stamp_missing_deletion(&now);
                change
                    .validate(default_version)
                    .map_err(|problem| ServiceError::InvalidChange { index, problem })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (outcome, page) = self
            .store
            .push_and_read(
                user,
                NewChangeset {
                    app_id,
                    client_id: &client_id,
                    changeset_id: request.changeset_id.as_deref(),
                    changes: &changes,
                },
                &ChangeQuery {
                    app_id,
                    collection: None,
                    since,
                    exclude_client: Some(&client_id),
                    limit: MAX_PAGE,
                    expired,
                },
            )
            .await?;
        match outcome {
            PushOutcome::Stored { count, .. } => self.metrics.changes_stored.inc_by(count as u64),
            PushOutcome::Duplicate => self.metrics.duplicate_changesets.inc(),
        }
        let response = self.reply(page, dialect);
        self.metrics
            .push_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(response)
    }

    /// One page of one collection's changes after `since`.
    pub async fn pull(
        &self,
        user: &UserId,
        app_id: &str,
        params: PullParams,
    ) -> Result<PullResponse, ServiceError> {
        let started = std::time::Instant::now();
        check("appId", app_id, MAX_NAME_LEN)?;
        let collection = params
            .collection
            .ok_or(ServiceError::MissingParameter("collection"))?;
        check("collection", &collection, MAX_NAME_LEN)?;
        let (since, expired) = params.dialect.required(params.since.as_deref())?;
        let limit = match params.limit.as_deref() {
            None => MAX_PAGE,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if limit >= 1 => limit.min(MAX_PAGE),
                _ => {
                    return Err(ServiceError::InvalidRequest(format!(
                        "`limit` must be a whole number from 1 to {MAX_PAGE}"
                    )));
                }
            },
        };
        if let Some(client_id) = &params.client_id {
            check("clientId", client_id, MAX_ID_LEN)?;
        }
        let page = self
            .page(
                user,
                app_id,
                &collection,
                since,
                params.client_id.as_deref(),
                limit,
                expired,
            )
            .await?;
        let response = self.reply(page, params.dialect);
        self.metrics
            .pull_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(response)
    }

    /// Validates the parameters of a change stream.
    pub fn stream_request(
        &self,
        user: UserId,
        app_id: String,
        params: StreamParams,
    ) -> Result<StreamRequest, ServiceError> {
        check("appId", &app_id, MAX_NAME_LEN)?;
        let listed = params
            .collections
            .ok_or(ServiceError::MissingParameter("collections"))?;
        let mut collections: Vec<String> = Vec::new();
        for name in listed
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            check_identifier(name, MAX_NAME_LEN).map_err(|error| {
                ServiceError::InvalidRequest(format!("collection `{name}` {error}"))
            })?;
            if !collections.iter().any(|known| known == name) {
                collections.push(name.to_owned());
            }
        }
        if collections.is_empty() {
            return Err(ServiceError::MissingParameter("collections"));
        }
        if collections.len() > MAX_STREAM_COLLECTIONS {
            return Err(ServiceError::InvalidRequest(format!(
                "at most {MAX_STREAM_COLLECTIONS} collections per stream"
            )));
        }
        let (since, expired) = match params.since.as_deref() {
            None => (Since::START, ExpiredCursor::Serve),
            Some(text) => params.dialect.parse(text)?,
        };
        if let Some(client_id) = &params.client_id {
            check("clientId", client_id, MAX_ID_LEN)?;
        }
        Ok(StreamRequest {
            user,
            app_id,
            collections,
            since,
            client_id: params.client_id,
            expired,
            dialect: params.dialect,
        })
    }

    /// One page of one collection after `since`, leaving out `exclude_client`'s
    /// own changes (validated arguments; used by pulls and streams).
    #[allow(clippy::too_many_arguments)] // each is one parameter of the read
    pub async fn page(
        &self,
        user: &UserId,
        app_id: &str,
        collection: &str,
        since: Since,
        exclude_client: Option<&str>,
        limit: usize,
        expired: ExpiredCursor,
    ) -> Result<ChangePage, ServiceError> {
        Ok(self
            .store
            .changes_after(
                user,
                &ChangeQuery {
                    app_id,
                    collection: Some(collection),
                    since,
                    exclude_client,
                    limit,
                    expired,
                },
            )
            .await?)
    }

    /// Counts changes handed to devices by any route.
    pub fn count_sent(&self, changes: usize) {
        self.metrics.changes_sent.inc_by(changes as u64);
    }

    fn reply(&self, page: ChangePage, dialect: CursorDialect) -> PushResponse {
        self.count_sent(page.changes.len());
        let synced_until = dialect.format(&page);
        PushResponse {
            server_changes: page
                .changes
                .into_iter()
                .map(|change| change.into_sync_change())
                .collect(),
            conflicts: Vec::new(),
            synced_until,
            has_more: page.has_more,
        }
    }
}
