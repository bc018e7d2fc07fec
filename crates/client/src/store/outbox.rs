//! The outbox: local changes waiting for the server, grouped into
//! changesets whose ids are committed before they are sent; and the changes
//! the server refused, set aside.

use mana_sync_protocol::PushResponse;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use tokio::sync::watch;

use super::cursors::set_cursor;
use super::meta::set_meta;
use super::redownload;
use super::spaces;
use super::{LocalStore, corrupt, now_rfc3339};
use crate::error::Result;

/// A change the server refused, set aside (see [`LocalStore::rejected`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedChange {
    /// The change as it was pushed.
    pub change: Value,
    /// What the server said.
    pub reason: String,
    /// When (RFC 3339).
    pub rejected_at: String,
    /// The shared space of the change's record (`None`: personal).
    pub space_id: Option<String>,
}

/// Outbox rows sent together under one changeset id: changes of one space.
#[derive(Debug, Clone)]
pub(crate) struct PendingChangeset {
    pub id: String,
    /// The changes' JSON texts, in write order.
    pub changes: Vec<String>,
    /// The shared space they are in (`None`: the personal space).
    pub space: Option<String>,
}

pub(super) fn append_outbox(conn: &Connection, change: &str, space: Option<&str>) -> Result<()> {
    conn.prepare_cached("INSERT INTO outbox (change, space_id) VALUES (?1, ?2)")?
        .execute(params![change, space])?;
    Ok(())
}

impl LocalStore {
    /// How many local changes wait to be pushed.
    pub fn pending_count(&self) -> Result<u64> {
        let conn = self.conn()?;
        let count: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM outbox")?
            .query_row([], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// A receiver that changes whenever a local write adds to the outbox.
    pub(crate) fn watch_outbox(&self) -> watch::Receiver<u64> {
        self.shared.outbox.subscribe()
    }

    /// The next changeset to push: rows already assigned to a changeset (a
    /// push that failed or whose reply was lost) first, with the same id;
    /// otherwise up to `max` new rows of the space of the oldest row, whose
    /// new id is committed before this returns, so that a crash or a timeout
    /// after sending resends the same id. A changeset holds one space's
    /// changes, because the server refuses a whole changeset when one space
    /// of it may not be written: the other spaces' changes still go through.
    pub(crate) fn next_changeset(&self, max: usize) -> Result<Option<PendingChangeset>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let assigned: Option<String> = tx
            .prepare_cached(
                "SELECT changeset_id FROM outbox WHERE changeset_id IS NOT NULL ORDER BY seq LIMIT 1",
            )?
            .query_row([], |row| row.get(0))
            .optional()?;
        let id = match assigned {
            Some(id) => id,
            None => {
                let oldest: Option<Option<String>> = tx
                    .prepare_cached("SELECT space_id FROM outbox ORDER BY seq LIMIT 1")?
                    .query_row([], |row| row.get(0))
                    .optional()?;
                let Some(space) = oldest else {
                    return Ok(None);
                };
                let id = uuid::Uuid::now_v7().to_string();
                tx.prepare_cached(
                    "UPDATE outbox SET changeset_id = ?1 WHERE seq IN
                       (SELECT seq FROM outbox WHERE changeset_id IS NULL AND space_id IS ?2
                        ORDER BY seq LIMIT ?3)",
                )?
                .execute(params![
                    id,
                    space,
                    i64::try_from(max.max(1)).unwrap_or(500)
                ])?;
                id
            }
        };
        let space: Option<String> = tx
            .prepare_cached("SELECT space_id FROM outbox WHERE changeset_id = ?1 LIMIT 1")?
            .query_row([&id], |row| row.get(0))?;
        let changes = {
            let mut statement = tx
                .prepare_cached("SELECT change FROM outbox WHERE changeset_id = ?1 ORDER BY seq")?;
            statement
                .query_map([&id], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        Ok(Some(PendingChangeset { id, changes, space }))
    }

    /// The server stored changeset `id` (or had stored it before): drop its
    /// rows and apply the reply, in one transaction. The reply holds every
    /// change of the app after the `since` that was sent (the app cursor);
    /// when it holds all of them (`hasMore` false), every collection's cursor
    /// moves to its `syncedUntil` in the same transaction. Spaces the reply
    /// says the user left are dropped in it too.
    pub(crate) fn finish_changeset(&self, id: &str, reply: &PushResponse) -> Result<()> {
        let touched = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("DELETE FROM outbox WHERE changeset_id = ?1")?
                .execute([id])?;
            let mut touched = self.apply_in(&tx, &reply.server_changes)?;
            // During a re-download only its pulls set cursors (sync pushes
            // after it; this is another process on the same store).
            if !reply.has_more && !redownload::in_progress(&tx)? {
                for collection in &self.shared.collections {
                    set_cursor(&tx, collection, &reply.synced_until)?;
                }
                set_meta(&tx, "app_cursor", &reply.synced_until)?;
            }
            for space in &reply.removed_spaces {
                touched.extend(spaces::drop_space(&tx, space)?);
            }
            tx.commit()?;
            touched
        };
        self.notify_touched(&touched);
        Ok(())
    }

    /// The server refused to let the user write `space` (403
    /// `space_forbidden`: a viewer, or no longer a member): every queued
    /// change of that space moves out of the outbox into `rejected`, with
    /// the server's reason, so the other spaces' changes keep flowing.
    /// Returns how many.
    pub(crate) fn reject_space(&self, space: &str, reason: &str) -> Result<usize> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let moved = tx
            .prepare_cached(
                "INSERT INTO rejected (seq, change, reason, rejected_at, space_id)
                 SELECT seq, change, ?2, ?3, space_id FROM outbox WHERE space_id = ?1",
            )?
            .execute(params![space, reason, now_rfc3339()])?;
        tx.prepare_cached("DELETE FROM outbox WHERE space_id = ?1")?
            .execute([space])?;
        tx.commit()?;
        Ok(moved)
    }

    /// Splits changeset `id` into two halves with new ids (the server refused
    /// it as a whole, so none of it was stored and new ids are safe). Returns
    /// `false` if it has a single row and cannot be split.
    pub(crate) fn split_changeset(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seqs = tx
            .prepare_cached("SELECT seq FROM outbox WHERE changeset_id = ?1 ORDER BY seq")?
            .query_map([id], |row| row.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if seqs.len() < 2 {
            return Ok(false);
        }
        let (first, second) = seqs.split_at(seqs.len() / 2);
        for half in [first, second] {
            let new_id = uuid::Uuid::now_v7().to_string();
            let (low, high) = (half[0], half[half.len() - 1]);
            tx.prepare_cached(
                "UPDATE outbox SET changeset_id = ?1 WHERE changeset_id = ?2 AND seq BETWEEN ?3 AND ?4",
            )?
            .execute(params![new_id, id, low, high])?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Moves the rows of changeset `id` out of the outbox into `rejected`,
    /// with the server's reason. Local data is untouched.
    pub(crate) fn reject_changeset(&self, id: &str, reason: &str) -> Result<usize> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let moved = tx
            .prepare_cached(
                "INSERT INTO rejected (seq, change, reason, rejected_at, space_id)
                 SELECT seq, change, ?2, ?3, space_id FROM outbox WHERE changeset_id = ?1",
            )?
            .execute(params![id, reason, now_rfc3339()])?;
        tx.prepare_cached("DELETE FROM outbox WHERE changeset_id = ?1")?
            .execute([id])?;
        tx.commit()?;
        Ok(moved)
    }

    /// Changes the server refused, kept aside with its reason.
    pub fn rejected(&self) -> Result<Vec<RejectedChange>> {
        let conn = self.conn()?;
        let mut statement = conn
            .prepare("SELECT change, reason, rejected_at, space_id FROM rejected ORDER BY seq")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (change, reason, rejected_at, space_id) = row?;
            out.push(RejectedChange {
                change: serde_json::from_str(&change).map_err(corrupt)?,
                reason,
                rejected_at,
                space_id,
            });
        }
        Ok(out)
    }

    /// Puts refused changes back into the outbox (after the server was fixed
    /// or upgraded); returns how many.
    pub fn retry_rejected(&self) -> Result<usize> {
        let moved = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let moved = tx.execute(
                "INSERT INTO outbox (change, space_id) SELECT change, space_id FROM rejected ORDER BY seq",
                [],
            )?;
            tx.execute("DELETE FROM rejected", [])?;
            tx.commit()?;
            moved
        };
        self.notify(&[], true);
        Ok(moved)
    }

    /// Forgets refused changes; returns how many.
    pub fn discard_rejected(&self) -> Result<usize> {
        let conn = self.conn()?;
        Ok(conn.execute("DELETE FROM rejected", [])?)
    }
}
