//! `mana-sync-seed` has one job: copy the change log of the seed's Go server
//! (its one Postgres table, `sync_changes`) into a mana-sync [`Store`], for
//! `mana-sync import-seed`.
//!
//! The seed's table:
//!
//! ```sql
//! sync_changes (id UUID PRIMARY KEY, app_id TEXT, table_name TEXT, record_id TEXT,
//!               user_id TEXT, op TEXT, data JSONB, field_timestamps JSONB,
//!               client_id TEXT, created_at TIMESTAMPTZ, schema_version INT DEFAULT 1,
//!               actor JSONB)
//! ```
//!
//! Every row is read once, in one read-only snapshot, through a portal (a
//! batch of rows at a time, never the whole table in memory), ordered by user,
//! then `created_at`, then `id`. Each row is written as the line the seed's
//! own backup export would have written (`eventId` = the row's id, `data`,
//! `fieldTimestamps`, `actor`, `clientId`, `createdAt`, …) and read with
//! [`parse_line`], so a row goes through exactly the rewriting and validation
//! of a line of a seed backup file. Each user's rows are restored with
//! [`Store::import`] in one transaction, in that order: all of a user's rows
//! or none. Changes keep their event ids, so a second run skips everything
//! the first one stored.

use std::collections::VecDeque;

use mana_sync_protocol::UserId;
use mana_sync_protocol::backup::{ImportedChange, parse_line};
use mana_sync_store::{ImportError, SourceError, Store, StoreError};
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_postgres::{IsolationLevel, Portal, Row, Transaction};

/// Rows fetched from the seed per round trip.
const FETCH_ROWS: i32 = 500;

/// Converted rows buffered between the reader and the store's transaction.
const IN_FLIGHT: usize = 1000;

/// Every row of the seed, each user's rows together, oldest first. Text
/// casts keep the JSON columns as Postgres prints them (no re-rendering).
const SELECT_ROWS: &str = "SELECT id::text, user_id::text, app_id::text, table_name::text,
        record_id::text, op::text, data::text, field_timestamps::text, client_id::text,
        created_at::timestamptz, schema_version::int8, actor::text
   FROM sync_changes
  ORDER BY user_id, created_at, id";

/// What a run did (and, while it runs, has done so far).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Users whose rows were read.
    pub users: u64,
    /// Rows read from the seed.
    pub rows_read: u64,
    /// Changes stored.
    pub imported: u64,
    /// Changes skipped: the user already had their event id.
    pub skipped: u64,
}

/// Where a run is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Rows in the seed's table (in the snapshot being copied).
    pub rows_total: u64,
    /// Done so far; `imported` and `skipped` move when a user's transaction commits.
    pub so_far: SeedReport,
}

/// Why a run stopped. Users whose import had committed before stay imported
/// (a re-run skips them); the user it stopped at has nothing stored.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The seed's URL cannot be used (its TLS settings included).
    #[error("seed database: {0}")]
    Config(String),
    /// The seed database cannot be reached.
    #[error("connecting to the seed database {url}: {}", with_causes(.source))]
    Connect {
        /// The seed's URL, without its password.
        url: String,
        /// Why.
        source: tokio_postgres::Error,
    },
    /// Reading the seed database failed.
    #[error("reading the seed database: {}", with_causes(.0))]
    Read(#[from] tokio_postgres::Error),
    /// A row cannot be read as a change.
    #[error("seed row {row_id} (user {user}): {problem}; nothing of user {user} was imported")]
    Row {
        /// The row's `id`.
        row_id: String,
        /// The row's `user_id`.
        user: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Storing a user's changes failed.
    #[error("importing user {user}: {source}; nothing of user {user} was imported")]
    Store {
        /// The user.
        user: String,
        /// Why.
        source: StoreError,
    },
}

/// An error and its causes on one line (a driver error alone says just
/// "db error").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// One row of the seed, as the line its backup export would have written.
struct SeedRow {
    id: String,
    user: Option<String>,
    line: Result<String, String>,
}

impl SeedRow {
    fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("(none)")
    }

    fn problem(&self, problem: impl Into<String>) -> SeedError {
        SeedError::Row {
            row_id: self.id.clone(),
            user: self.user_name().to_owned(),
            problem: problem.into(),
        }
    }

    /// The row as a validated change, through the same path as a backup line.
    fn to_change(&self, number: u64) -> Result<ImportedChange, SeedError> {
        let line = self
            .line
            .as_ref()
            .map_err(|problem| self.problem(problem))?;
        parse_line(number, line).map_err(|error| self.problem(error.problem.to_string()))
    }
}

/// The line of the seed's backup export: `{eventId, schemaVersion, appId,
/// table, id, op, data, fieldTimestamps, actor, clientId, createdAt}`, NULL
/// columns left out.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SeedLine<'a> {
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field_timestamps: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
}

fn json_column<'a>(text: Option<&'a str>, column: &str) -> Result<Option<&'a RawValue>, String> {
    text.map(|text| {
        serde_json::from_str(text).map_err(|error| format!("`{column}` is not JSON: {error}"))
    })
    .transpose()
}

/// Writes a seed row as a line of the seed's backup export.
fn seed_line(row: &Row) -> Result<String, String> {
    let text = |index: usize| row.try_get::<_, Option<&str>>(index);
    let created_at = row
        .try_get::<_, Option<OffsetDateTime>>(9)
        .map_err(|error| format!("`created_at`: {error}"))?
        .map(|at| at.format(&Rfc3339))
        .transpose()
        .map_err(|error| format!("`created_at` cannot be written as RFC 3339: {error}"))?;
    let columns = (|| {
        Ok::<_, tokio_postgres::Error>((
            text(0)?,
            text(2)?,
            text(3)?,
            text(4)?,
            text(5)?,
            text(6)?,
            text(7)?,
            text(8)?,
            row.try_get::<_, Option<i64>>(10)?,
            text(11)?,
        ))
    })();
    let (id, app_id, table, record_id, op, data, field_timestamps, client_id, version, actor) =
        columns.map_err(|error| error.to_string())?;
    let line = SeedLine {
        event_id: id.unwrap_or_default(),
        schema_version: version,
        app_id,
        table,
        id: record_id,
        op,
        data: json_column(data, "data")?,
        field_timestamps: json_column(field_timestamps, "field_timestamps")?,
        actor: json_column(actor, "actor")?,
        client_id,
        created_at,
    };
    serde_json::to_string(&line).map_err(|error| error.to_string())
}

/// The seed's rows through a portal, a batch at a time.
struct SeedRows<'a> {
    transaction: &'a Transaction<'a>,
    portal: Portal,
    batch: VecDeque<Row>,
    exhausted: bool,
}

impl<'a> SeedRows<'a> {
    async fn open(transaction: &'a Transaction<'a>) -> Result<Self, tokio_postgres::Error> {
        let portal = transaction.bind(SELECT_ROWS, &[]).await?;
        Ok(Self {
            transaction,
            portal,
            batch: VecDeque::new(),
            exhausted: false,
        })
    }

    async fn next(&mut self) -> Result<Option<SeedRow>, tokio_postgres::Error> {
        if self.batch.is_empty() && !self.exhausted {
            let rows = self
                .transaction
                .query_portal(&self.portal, FETCH_ROWS)
                .await?;
            self.exhausted = rows.len() < FETCH_ROWS as usize;
            self.batch.extend(rows);
        }
        let Some(row) = self.batch.pop_front() else {
            return Ok(None);
        };
        Ok(Some(SeedRow {
            id: row.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
            user: row.try_get(1)?,
            line: seed_line(&row),
        }))
    }
}

/// Tells the store's transaction that the rows stopped coming because of an
/// error (the real error is returned by [`import_seed`]), so it rolls back.
#[derive(Debug, thiserror::Error)]
#[error("reading the seed stopped: {0}")]
struct Aborted(String);

/// Copies every row of the seed database at `seed_url` into `store`, each
/// user in one transaction, and reports what it did. `progress` is called as
/// rows are read and as users are stored.
pub async fn import_seed(
    seed_url: &str,
    store: &dyn Store,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<SeedReport, SeedError> {
    let connect_error = |source| SeedError::Connect {
        url: mana_sync_store::redact_url(seed_url),
        source,
    };
    // The seed's URL takes the same TLS settings as DATABASE_URL.
    let connector = mana_sync_store::postgres::PgConnector::from_url(seed_url)
        .map_err(|error| SeedError::Config(error.to_string()))?;
    let (mut client, connection) = connector.connect().await.map_err(connect_error)?;
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.await {
            let error = with_causes(&error);
            tracing::warn!(%error, "the seed database connection failed");
        }
    });
    let result = copy(&mut client, store, progress).await;
    drop(client);
    let _ = connection.await;
    result
}

async fn copy(
    client: &mut tokio_postgres::Client,
    store: &dyn Store,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<SeedReport, SeedError> {
    // One snapshot: the count and every row agree, whatever the seed does meanwhile.
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let rows_total: i64 = transaction
        .query_one("SELECT count(*) FROM sync_changes", &[])
        .await?
        .try_get(0)?;
    let mut at = Progress {
        rows_total: u64::try_from(rows_total).unwrap_or_default(),
        so_far: SeedReport::default(),
    };
    progress(&at);
    let mut rows = SeedRows::open(&transaction).await?;
    let mut next = rows.next().await?;
    while let Some(first) = next.take() {
        let user = match first.user.as_deref().map(UserId::new) {
            Some(Ok(user)) => user,
            Some(Err(error)) => return Err(first.problem(format!("`user_id` {error}"))),
            None => return Err(first.problem("`user_id` is NULL")),
        };
        at.so_far.users += 1;
        let (sender, receiver) = mpsc::channel::<Result<ImportedChange, SourceError>>(IN_FLIGHT);
        let source = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let feeding = async {
            let fed = feed(first, &user, &mut rows, &sender, &mut at, progress).await;
            if let Err(error) = &fed {
                // Roll the user's transaction back rather than end it early.
                let _ = sender.send(Err(Box::new(Aborted(error.to_string())))).await;
            }
            drop(sender);
            fed
        };
        let (imported, fed) = tokio::join!(store.import(&user, Box::pin(source)), feeding);
        let outcome = match (imported, fed) {
            (_, Err(error)) => return Err(error),
            (Err(ImportError::Store(source)), _) => {
                return Err(SeedError::Store {
                    user: user.as_str().to_owned(),
                    source,
                });
            }
            // Only `feed` makes the source fail, and its error is handled above.
            (Err(ImportError::Source(source)), _) => {
                return Err(SeedError::Store {
                    user: user.as_str().to_owned(),
                    source: StoreError::Database(source.to_string()),
                });
            }
            (Ok(outcome), Ok(pending)) => {
                next = pending;
                outcome
            }
        };
        at.so_far.imported += outcome.imported;
        at.so_far.skipped += outcome.skipped;
        progress(&at);
    }
    transaction.commit().await?;
    Ok(at.so_far)
}

/// Sends `first` and the rows after it that belong to `user` into the
/// user's import; returns the first row of the next user, if any.
async fn feed(
    first: SeedRow,
    user: &UserId,
    rows: &mut SeedRows<'_>,
    sender: &mpsc::Sender<Result<ImportedChange, SourceError>>,
    at: &mut Progress,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Option<SeedRow>, SeedError> {
    let mut row = first;
    loop {
        at.so_far.rows_read += 1;
        progress(at);
        let change = row.to_change(at.so_far.rows_read)?;
        if sender.send(Ok(change)).await.is_err() {
            // The import stopped (its error is what the caller reports).
            return Ok(None);
        }
        match rows.next().await? {
            Some(next) if next.user.as_deref() == Some(user.as_str()) => row = next,
            other => return Ok(other),
        }
    }
}
