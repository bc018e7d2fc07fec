//! Values that go into and come out of a [`Store`](crate::Store).

use std::pin::Pin;

use futures::Stream;
use mana_sync_protocol::backup::ImportedChange;
use mana_sync_protocol::change::fields_from_json;
use mana_sync_protocol::{
    Change, Cursor, FieldChanges, LogId, Op, Since, SpaceId, SyncChange, Timestamp, UserId,
};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// A validated changeset from one device, to be stored atomically.
#[derive(Debug, Clone, Copy)]
pub struct NewChangeset<'a> {
    /// The app the changes belong to.
    pub app_id: &'a str,
    /// The device that made them.
    pub client_id: &'a str,
    /// The device's idempotency key, if it sent one.
    pub changeset_id: Option<&'a str>,
    /// The changes, in the order the device made them.
    pub changes: &'a [Change],
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The changes were stored; `last` covers the newest of them.
    Stored {
        /// How many changes were stored.
        count: usize,
        /// The cursor just after the last stored change.
        last: Cursor,
    },
    /// A changeset with this id was stored before; nothing was stored now.
    Duplicate,
}

/// Which changes to read.
#[derive(Debug, Clone, Copy)]
pub struct ChangeQuery<'a> {
    /// A shared space's log; `None` reads the user's own log.
    pub space: Option<&'a SpaceId>,
    /// Only changes of this app.
    pub app_id: &'a str,
    /// Only this collection; `None` reads every collection of the app.
    pub collection: Option<&'a str>,
    /// Only changes after this point.
    pub since: Since,
    /// Leave out this device's own changes (the cursor still moves past them).
    pub exclude_client: Option<&'a str>,
    /// At most this many changes (capped at [`MAX_PAGE`](crate::MAX_PAGE)).
    pub limit: usize,
    /// What to do with a cursor older than history that compaction dropped.
    pub expired: ExpiredCursor,
}

impl ChangeQuery<'_> {
    /// The log this query reads for `user`.
    pub fn log_of(&self, user: &UserId) -> LogId {
        match self.space {
            Some(space) => LogId::of_space(space),
            None => LogId::of_user(user),
        }
    }
}

/// What a read does with a cursor older than history that compaction
/// dropped (see [`compaction`](crate::compaction)). The default is what a
/// client gets unless it asks otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExpiredCursor {
    /// Fail with [`StoreError::CursorExpired`](crate::StoreError::CursorExpired)
    /// unless the cursor was handed out after the history was dropped:
    /// `known` is the last dropped position the client's cursor accounts for
    /// ([`Resume::known_expiry`](mana_sync_protocol::Resume)). For clients
    /// that download the current state again.
    Refuse {
        /// The expiry the client's cursor was handed out with.
        known: u64,
    },
    /// Serve from the cursor anyway: for clients that cannot understand the
    /// answer (the seed's). They miss only deletions older than the
    /// retention, which reading from the start would not give them either.
    #[default]
    Serve,
}

/// One page of changes.
#[derive(Debug, Clone)]
pub struct ChangePage {
    /// The changes, in commit order.
    pub changes: Vec<StoredChange>,
    /// Where the next read resumes.
    pub next: Cursor,
    /// More changes match after `next`.
    pub has_more: bool,
    /// The last position compaction dropped for good (0: none), for cursors
    /// that say which drop they account for.
    pub expired_through: u64,
}

impl ChangePage {
    /// The page `fetched` makes: at most `limit` changes (one more was
    /// fetched to tell whether more follow). It ends at the last change
    /// returned when more follow, otherwise at the log's newest position in
    /// the same snapshot (so the cursor moves past changes the query filtered
    /// out, and past a cursor from a database that was since restored to an
    /// earlier state).
    pub(crate) fn of(
        mut fetched: Vec<StoredChange>,
        limit: usize,
        newest: u64,
        expired_through: u64,
    ) -> Self {
        let has_more = fetched.len() > limit;
        fetched.truncate(limit);
        let next = match fetched.last() {
            Some(last) if has_more => Cursor::at(last.seq),
            _ => Cursor::at(newest),
        };
        Self {
            changes: fetched,
            next,
            has_more,
            expired_through,
        }
    }

    /// The page, its changes marked as read from `space`'s log (if any).
    pub(crate) fn in_space(mut self, space: Option<&SpaceId>) -> Self {
        if let Some(space) = space {
            for change in &mut self.changes {
                change.space_id = Some(space.clone());
            }
        }
        self
    }
}

/// Batches of changes streamed out of the store (see [`Store::export`](crate::Store::export)).
pub type ChangeBatches = Pin<Box<dyn Stream<Item = Result<Vec<StoredChange>, StoreError>> + Send>>;

/// An error of an import's source (a bad line, an unreadable file).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Validated changes to restore (see [`Store::import`](crate::Store::import)).
pub type ImportSource = Pin<Box<dyn Stream<Item = Result<ImportedChange, SourceError>> + Send>>;

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Changes stored.
    pub imported: u64,
    /// Changes skipped because the user already had their `eventId`.
    pub skipped: u64,
}

/// Why an import stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source failed; everything was rolled back.
    #[error("{0}")]
    Source(SourceError),
    /// The database failed; everything was rolled back.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Positions taken for a push or an import batch: `after + 1 ..= last` may
/// hold its changes (they are `last - count + 1 ..= last`), and nothing lies
/// between `after` and the first of them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reserved {
    /// The user's newest position before this reservation (0 for none).
    pub after: i64,
    /// The last position reserved.
    pub last: i64,
    /// The last position compaction dropped (0: none).
    pub expired_through: i64,
}

/// Where a user's log stands, read in one snapshot with the changes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogState {
    /// The newest position reserved (0: none yet).
    pub newest: u64,
    /// The last position compaction dropped for good (0: none).
    pub expired_through: u64,
}

/// Changes written per statement when importing.
pub(crate) const IMPORT_BATCH: usize = 1000;

/// Changes read per batch when exporting.
pub(crate) const EXPORT_BATCH: usize = 500;

/// The notices of an import: one per app, from the user's newest position
/// before the import (`after`, set by its first reservation) to the last
/// position stored for the app.
#[derive(Default)]
pub(crate) struct ImportNotices {
    after: Option<u64>,
    apps: Vec<(String, Vec<String>, u64)>,
}

impl ImportNotices {
    /// Notes a reservation of positions after `after`; only the first counts.
    pub(crate) fn reserved(&mut self, after: u64) {
        self.after.get_or_insert(after);
    }

    pub(crate) fn record(&mut self, app_id: &str, table: &str, position: u64) {
        let index = match self.apps.iter().position(|(app, ..)| app == app_id) {
            Some(index) => index,
            None => {
                self.apps.push((app_id.to_owned(), Vec::new(), position));
                self.apps.len() - 1
            }
        };
        let (_, tables, last) = &mut self.apps[index];
        if !tables.iter().any(|t| t == table) {
            tables.push(table.to_owned());
        }
        *last = (*last).max(position);
    }

    pub(crate) fn into_notices(self, log: &LogId) -> Vec<crate::ChangeNotice> {
        let after = self.after.unwrap_or_default();
        self.apps
            .into_iter()
            .map(|(app_id, tables, last)| crate::ChangeNotice {
                log: log.clone(),
                app_id,
                tables: Some(tables),
                after,
                last,
                // No device is the author of a restore: every device hears it.
                client_id: String::new(),
                member: None,
                written: None,
            })
            .collect()
    }
}

/// The notices of an import, one set per log it wrote to (the importer's
/// own, and spaces').
#[derive(Default)]
pub(crate) struct ImportLogs {
    logs: Vec<(LogId, ImportNotices)>,
}

impl ImportLogs {
    /// The notices of `log`.
    pub(crate) fn of(&mut self, log: &LogId) -> &mut ImportNotices {
        let index = match self.logs.iter().position(|(known, _)| known == log) {
            Some(index) => index,
            None => {
                self.logs.push((log.clone(), ImportNotices::default()));
                self.logs.len() - 1
            }
        };
        &mut self.logs[index].1
    }

    pub(crate) fn into_notices(self) -> Vec<crate::ChangeNotice> {
        self.logs
            .into_iter()
            .flat_map(|(log, notices)| notices.into_notices(&log))
            .collect()
    }
}

/// A change as it sits in the log.
#[derive(Debug, Clone)]
pub struct StoredChange {
    /// Position in the user's log.
    pub seq: u64,
    /// Server-assigned id, kept across backups.
    pub event_id: Uuid,
    /// The app.
    pub app_id: String,
    /// The collection.
    pub table: String,
    /// The record id.
    pub record_id: String,
    /// What the change does.
    pub op: Op,
    /// The record (inserts).
    pub data: Option<Box<RawValue>>,
    /// Fields with timestamps (updates).
    pub fields: Option<FieldChanges>,
    /// Deletion time (deletes).
    pub deleted_at: Option<Timestamp>,
    /// Opaque actor.
    pub actor: Option<Box<RawValue>>,
    /// The device that pushed it.
    pub client_id: String,
    /// Schema version it was written under.
    pub schema_version: u32,
    /// When the server stored it.
    pub created_at: OffsetDateTime,
    /// The shared space whose log holds it; `None` in a user's own log.
    pub space_id: Option<SpaceId>,
}

impl StoredChange {
    /// `change` as a read of its log will return it once stored at `seq`:
    /// its columns are encoded as they are stored and decoded as they are
    /// read, so the two can never differ.
    pub(crate) fn as_written(
        change: &Change,
        seq: u64,
        event_id: Uuid,
        app_id: &str,
        client_id: &str,
        created_at: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        let encoded = encode(change);
        let columns = RawColumns {
            op: change.op.as_str().to_owned(),
            data: encoded.data.map(str::to_owned),
            fields: encoded.fields,
            deleted_at: encoded.deleted_at.map(str::to_owned),
            actor: encoded.actor.map(str::to_owned),
        }
        .decode()?;
        Ok(Self {
            seq,
            event_id,
            app_id: app_id.to_owned(),
            table: change.table.clone(),
            record_id: change.id.clone(),
            op: columns.op,
            data: columns.data,
            fields: columns.fields,
            deleted_at: columns.deleted_at,
            actor: columns.actor,
            client_id: client_id.to_owned(),
            schema_version: change.schema_version,
            created_at,
            space_id: None,
        })
    }

    /// The change as devices receive it.
    pub fn into_sync_change(self) -> SyncChange {
        SyncChange {
            table: self.table,
            id: self.record_id,
            op: self.op,
            data: self.data,
            fields: self.fields,
            deleted_at: self.deleted_at,
            actor: self.actor,
            event_id: self.event_id,
            schema_version: self.schema_version,
            space_id: self.space_id.map(|space| space.as_str().to_owned()),
        }
    }
}

/// The text columns of a stored change, decoded; shared by both databases.
pub(crate) struct RawColumns {
    pub op: String,
    pub data: Option<String>,
    pub fields: Option<String>,
    pub deleted_at: Option<String>,
    pub actor: Option<String>,
}

pub(crate) struct DecodedColumns {
    pub op: Op,
    pub data: Option<Box<RawValue>>,
    pub fields: Option<FieldChanges>,
    pub deleted_at: Option<Timestamp>,
    pub actor: Option<Box<RawValue>>,
}

impl RawColumns {
    pub(crate) fn decode(self) -> Result<DecodedColumns, StoreError> {
        let corrupt = |what: &str, error: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{what}: {error}"))
        };
        let op = Op::from_name(&self.op).ok_or_else(|| corrupt("op", &self.op))?;
        let data = self
            .data
            .map(RawValue::from_string)
            .transpose()
            .map_err(|e| corrupt("data", &e))?;
        let fields = self
            .fields
            .as_deref()
            .map(fields_from_json)
            .transpose()
            .map_err(|e| corrupt("fields", &e))?;
        let deleted_at = self
            .deleted_at
            .map(Timestamp::parse)
            .transpose()
            .map_err(|e| corrupt("deleted_at", &e))?;
        let actor = self
            .actor
            .map(RawValue::from_string)
            .transpose()
            .map_err(|e| corrupt("actor", &e))?;
        Ok(DecodedColumns {
            op,
            data,
            fields,
            deleted_at,
            actor,
        })
    }
}

/// The text columns of a change to store.
pub(crate) struct EncodedChange<'a> {
    pub data: Option<&'a str>,
    pub fields: Option<String>,
    pub deleted_at: Option<&'a str>,
    pub actor: Option<&'a str>,
}

pub(crate) fn encode(change: &Change) -> EncodedChange<'_> {
    EncodedChange {
        data: change.data.as_deref().map(RawValue::get),
        fields: change
            .fields
            .as_ref()
            .map(mana_sync_protocol::change::fields_to_stored_json),
        deleted_at: change.deleted_at.as_ref().map(Timestamp::as_str),
        actor: change.actor.as_deref().map(RawValue::get),
    }
}

/// The stream of an export whose reader task reports on `start` whether it
/// could begin, then sends batches on `receiver`.
pub(crate) async fn started_batches(
    start: tokio::sync::oneshot::Receiver<Result<(), StoreError>>,
    receiver: tokio::sync::mpsc::Receiver<Result<Vec<StoredChange>, StoreError>>,
) -> Result<ChangeBatches, StoreError> {
    start
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
        receiver,
    )))
}
