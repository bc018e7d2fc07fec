//! The sync core: validated, typed operations on the store, with no HTTP in
//! sight. Handlers call these; tests and other front ends could too.

use std::sync::Arc;

use mana_sync_protocol::change::ChangeProblem;
use mana_sync_protocol::cursor::CursorError;
use mana_sync_protocol::ident::{IdentError, MAX_ID_LEN, MAX_NAME_LEN, check_identifier};
use mana_sync_protocol::schema::{self, DEFAULT_SCHEMA_VERSION, SchemaVersionError};
use mana_sync_protocol::{PullResponse, PushRequest, PushResponse, SpaceId, Timestamp, UserId};
use mana_sync_store::{
    ChangePage, ChangeQuery, MAX_PAGE, NewChangeset, PushOutcome, Store, StoreError, StoredChange,
};

pub use crate::follow::CursorDialect;
use crate::follow::{LogCursor, LogCursors, LogRef};
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

/// The `since` every read needs: required, and never silently "from zero".
fn required(value: Option<&str>, dialect: CursorDialect) -> Result<LogCursors, ServiceError> {
    LogCursors::parse(
        value.ok_or(ServiceError::MissingParameter("since"))?,
        dialect,
    )
}

/// One page of every log a device follows.
#[derive(Debug)]
pub struct FollowedPage {
    /// The changes: the own log's first, then each space's, each in commit
    /// order.
    pub changes: Vec<StoredChange>,
    /// Where the device stands now.
    pub cursors: LogCursors,
    /// More changes may follow: read again from `cursors`.
    pub has_more: bool,
    /// Spaces the cursor named that the user no longer belongs to.
    pub removed: Vec<SpaceId>,
    /// The spaces the device follows now (their logs were read, or will be
    /// with the next page).
    pub followed: Vec<SpaceId>,
}

/// What to read of the logs a device follows.
#[derive(Debug, Clone, Copy)]
pub struct FollowedQuery<'a> {
    /// The app.
    pub app_id: &'a str,
    /// One collection, or all.
    pub collection: Option<&'a str>,
    /// Leave out this device's own changes.
    pub exclude_client: Option<&'a str>,
    /// Most changes in the page.
    pub limit: usize,
    /// How the device reads cursors (and whether it follows spaces).
    pub dialect: CursorDialect,
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

    /// Validates and stores a device's changeset atomically (into the user's
    /// own log and the spaces its changes name), then returns the changes of
    /// this app after `since` that other devices made, in every log the
    /// device follows.
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
        let cursors = required(request.since.as_deref(), dialect)?;
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
        let changeset = NewChangeset {
            app_id,
            client_id: &client_id,
            changeset_id: request.changeset_id.as_deref(),
            changes: &changes,
        };
        let (outcome, page) = if dialect.follows_spaces {
            let outcome = self.store.push(user, changeset).await?;
            let query = FollowedQuery {
                app_id,
                collection: None,
                exclude_client: Some(&client_id),
                limit: MAX_PAGE,
                dialect,
            };
            (outcome, self.read_followed(user, &query, cursors).await?)
        } else {
            // The device follows its own log only: store and read it in one
            // go (one round trip on Postgres).
            let (outcome, page) = self
                .store
                .push_and_read(
                    user,
                    changeset,
                    &ChangeQuery {
                        space: None,
                        app_id,
                        collection: None,
                        since: cursors.own.since,
                        exclude_client: Some(&client_id),
                        limit: MAX_PAGE,
                        expired: cursors.own.expired(dialect),
                    },
                )
                .await?;
            let followed = FollowedPage {
                cursors: LogCursors {
                    own: LogCursor::after(&page),
                    ..cursors
                },
                changes: page.changes,
                has_more: page.has_more,
                removed: Vec::new(),
                followed: Vec::new(),
            };
            (outcome, followed)
        };
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
        let cursors = required(params.since.as_deref(), params.dialect)?;
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
        let query = FollowedQuery {
            app_id,
            collection: Some(&collection),
            exclude_client: params.client_id.as_deref(),
            limit,
            dialect: params.dialect,
        };
        let page = self.read_followed(user, &query, cursors).await?;
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
        let since = match params.since.as_deref() {
            None => LogCursors::start(),
            Some(text) => LogCursors::parse(text, params.dialect)?,
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
            dialect: params.dialect,
        })
    }

    /// One page of the logs a device follows after `cursors`: its own log,
    /// then (for clients that follow spaces) each space its user belongs
    /// to, by id, from the start for a space it has not downloaded yet.
    /// Spaces the cursors name that the user left are reported in
    /// [`FollowedPage::removed`] and dropped from the cursors.
    pub async fn read_followed(
        &self,
        user: &UserId,
        query: &FollowedQuery<'_>,
        mut cursors: LogCursors,
    ) -> Result<FollowedPage, ServiceError> {
        let mut followed: Vec<SpaceId> = if query.dialect.follows_spaces {
            let spaces = self.store.spaces_of(user).await?;
            spaces.into_iter().map(|m| m.space_id).collect()
        } else {
            Vec::new()
        };
        let mut removed: Vec<SpaceId> = cursors
            .spaces
            .keys()
            .filter(|space| !followed.contains(space))
            .cloned()
            .collect();
        cursors.spaces.retain(|space, _| followed.contains(space));
        let logs = std::iter::once(LogRef::Own).chain(followed.iter().map(LogRef::Space));
        let mut changes: Vec<StoredChange> = Vec::new();
        let mut has_more = false;
        for log in logs {
            let remaining = query.limit.saturating_sub(changes.len());
            if remaining == 0 {
                // Logs not reached keep their cursors for the next read.
                has_more = true;
                break;
            }
            let cursor = cursors.get(&log).unwrap_or(LogCursor::START);
            let query = FollowedQuery {
                limit: remaining,
                ..*query
            };
            let read = self.read_log(user, &query, log.space(), cursor).await;
            match read {
                Ok(page) => {
                    cursors.set(&log, LogCursor::after(&page));
                    changes.extend(page.changes);
                    if page.has_more {
                        has_more = true;
                        break;
                    }
                }
                // Left (or removed) since the list was read.
                Err(ServiceError::Store(StoreError::SpaceForbidden { space, .. })) => {
                    cursors.spaces.remove(&space);
                    removed.push(space);
                }
                Err(error) => return Err(error),
            }
        }
        followed.retain(|space| !removed.contains(space));
        Ok(FollowedPage {
            changes,
            cursors,
            has_more,
            removed,
            followed,
        })
    }

    /// One page of one log a device follows (its own, or `space`'s) after
    /// `cursor`. A user who is not a member of `space` is refused with
    /// [`StoreError::SpaceForbidden`].
    ///
    /// A space's log is read with the device's own changes: a device drops a
    /// space's records when its user leaves, so on joining again it needs its
    /// own earlier edits back, and its cursor cannot tell which of them it
    /// still holds. Receiving a change it already has merges to nothing.
    pub async fn read_log(
        &self,
        user: &UserId,
        query: &FollowedQuery<'_>,
        space: Option<&SpaceId>,
        cursor: LogCursor,
    ) -> Result<ChangePage, ServiceError> {
        Ok(self
            .store
            .changes_after(
                user,
                &ChangeQuery {
                    space,
                    app_id: query.app_id,
                    collection: query.collection,
                    since: cursor.since,
                    exclude_client: match space {
                        Some(_) => None,
                        None => query.exclude_client,
                    },
                    limit: query.limit,
                    expired: cursor.expired(query.dialect),
                },
            )
            .await?)
    }

    /// Counts a page a live stream read from its own cursor.
    pub fn count_catch_up_read(&self) {
        self.metrics.catch_up_reads.inc();
    }

    /// Counts changes handed to devices by any route.
    pub fn count_sent(&self, changes: usize) {
        self.metrics.changes_sent.inc_by(changes as u64);
    }

    fn reply(&self, page: FollowedPage, dialect: CursorDialect) -> PushResponse {
        self.count_sent(page.changes.len());
        PushResponse {
            server_changes: page
                .changes
                .into_iter()
                .map(StoredChange::into_sync_change)
                .collect(),
            conflicts: Vec::new(),
            synced_until: page.cursors.format(dialect),
            has_more: page.has_more,
            removed_spaces: page
                .removed
                .iter()
                .map(|space| space.as_str().to_owned())
                .collect(),
        }
    }
}
