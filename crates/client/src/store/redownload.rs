//! Downloading everything again after the server said `cursor_expired`.
//!
//! The server dropped deleted records past its tombstone retention, and this
//! device's cursor is older than that: it may hold records whose deletion it
//! can no longer be told about. So it forgets every cursor and pulls every
//! synced collection from the start, with its own changes included (no
//! client id), noting each record that comes back (`redownload_seen`). When
//! every collection is complete, the records of synced collections that did
//! not come back, and that no unsent or refused local change touches, are
//! removed: they were deleted, and their tombstones dropped. The outbox is
//! kept throughout and pushed afterwards.
//!
//! Crash safety: the marker (`meta.redownload`) is set in the transaction
//! that forgets the cursors, seen records are noted in the transaction of the
//! page that brought them, and the marker is cleared in the transaction that
//! removes what did not come back and sets the app cursor. A re-download
//! interrupted anywhere resumes at the next sync: collections already
//! complete keep the cursor their last page set; the others start over.

use std::collections::HashSet;

use rusqlite::{Connection, TransactionBehavior};
use serde::Deserialize;

use super::LocalStore;
use super::meta::{delete_meta, get_meta, set_meta};
use crate::error::Result;

/// The `meta` key of the marker; its value is when the re-download started.
const MARKER: &str = "redownload";

/// Whether a re-download is in progress (inside a transaction).
pub(super) fn in_progress(conn: &Connection) -> Result<bool> {
    Ok(get_meta(conn, MARKER)?.is_some())
}

/// Notes that `(collection, id)` came back during the re-download.
pub(super) fn note_seen(conn: &Connection, collection: &str, id: &str) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO redownload_seen (collection, id) VALUES (?1, ?2)")?
        .execute([collection, id])?;
    Ok(())
}

/// Ends a re-download without removing anything (the store moves to another
/// server, whose log says nothing about this one's records).
pub(super) fn abandon(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM redownload_seen", [])?;
    delete_meta(conn, MARKER)?;
    Ok(())
}

/// The record a queued change is about.
#[derive(Deserialize)]
struct Target {
    table: String,
    id: String,
}

impl LocalStore {
    /// Starts a re-download: forgets every cursor and sets the marker, in one
    /// transaction. The outbox is untouched.
    pub(crate) fn start_redownload(&self) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM cursors", [])?;
        delete_meta(&tx, "app_cursor")?;
        tx.execute("DELETE FROM redownload_seen", [])?;
        set_meta(&tx, MARKER, &super::now_rfc3339())?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a re-download was started and not finished (perhaps by a
    /// process that crashed).
    pub(crate) fn redownload_pending(&self) -> Result<bool> {
        let conn = self.conn()?;
        in_progress(&conn)
    }

    /// Finishes a complete re-download, in one transaction: removes the
    /// records of synced collections that did not come back and that no
    /// queued or refused local change touches, sets the app cursor, clears
    /// the marker. Returns how many records were removed (0 when no
    /// re-download was in progress).
    pub(crate) fn finish_redownload(&self, app_cursor: Option<&str>) -> Result<usize> {
        let removed = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !in_progress(&tx)? {
                return Ok(0);
            }
            let mut pending: HashSet<(String, String)> = HashSet::new();
            for table in ["outbox", "rejected"] {
                let mut statement = tx.prepare(&format!("SELECT change FROM {table}"))?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                for row in rows {
                    // A row that cannot be read keeps nothing; it is the
                    // change the app wrote, so it always can.
                    if let Ok(target) = serde_json::from_str::<Target>(&row?) {
                        pending.insert((target.table, target.id));
                    }
                }
            }
            let mut gone: Vec<(String, String)> = Vec::new();
            for collection in &self.shared.collections {
                let mut statement = tx.prepare_cached(
                    "SELECT id FROM records r WHERE collection = ?1 AND NOT EXISTS
                       (SELECT 1 FROM redownload_seen s WHERE s.collection = r.collection AND s.id = r.id)",
                )?;
                let ids = statement
                    .query_map([collection], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                gone.extend(
                    ids.into_iter()
                        .map(|id| (collection.clone(), id))
                        .filter(|key| !pending.contains(key)),
                );
            }
            for (collection, id) in &gone {
                tx.prepare_cached("DELETE FROM records WHERE collection = ?1 AND id = ?2")?
                    .execute([collection, id])?;
            }
            abandon(&tx)?;
            if let Some(cursor) = app_cursor {
                set_meta(&tx, "app_cursor", cursor)?;
            }
            tx.commit()?;
            gone
        };
        if !removed.is_empty() {
            tracing::info!(
                removed = removed.len(),
                "re-download complete: removed records deleted on the server"
            );
        }
        self.notify_touched(&removed);
        Ok(removed.len())
    }
}
