//! Values that go into and come out of a [`Store`](crate::Store).

use mana_sync_protocol::change::fields_from_json;
use mana_sync_protocol::{Change, Cursor, FieldChanges, Op, Since, SyncChange, Timestamp};
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
}

impl StoredChange {
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
