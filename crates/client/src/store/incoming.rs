//! Incoming changes: merged into their records, with the cursor they move
//! to in the same transaction; writes made by another process.

use std::collections::HashMap;

use mana_sync_protocol::merge::{RecordState, compare_timestamps};
use mana_sync_protocol::{SyncChange, Timestamp};
use rusqlite::{Transaction, TransactionBehavior};

use super::LocalStore;
use super::cursors::set_cursor;
use super::meta::{read_clock, set_meta};
use super::records::{load, save_state};
use super::redownload;
use super::spaces;
use crate::clock::{self, HlcTime};
use crate::error::Result;

impl LocalStore {
    /// Applies changes received from the server (or any other transport):
    /// each is merged into its record, in one transaction. Returns how many
    /// records changed.
    pub fn apply_remote(&self, changes: &[SyncChange]) -> Result<usize> {
        self.apply_page(changes, None, &[])
    }

    /// Applies one page of changes and, if given, moves `(collection, cursor)`
    /// in the same transaction (the last page of a pull, a stream event);
    /// drops the spaces the page says the user left (`removedSpaces`).
    pub(crate) fn apply_page(
        &self,
        changes: &[SyncChange],
        cursor: Option<(&str, &str)>,
        removed_spaces: &[String],
    ) -> Result<usize> {
        let touched = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut touched = self.apply_in(&tx, changes)?;
            if let Some((collection, cursor)) = cursor {
                set_cursor(&tx, collection, cursor)?;
            }
            for space in removed_spaces {
                touched.extend(spaces::drop_space(&tx, space)?);
            }
            tx.commit()?;
            touched
        };
        let count = touched.len();
        self.notify_touched(&touched);
        Ok(count)
    }

    pub(super) fn notify_touched(&self, touched: &[(String, String)]) {
        let mut collections: Vec<&str> = touched.iter().map(|(c, _)| c.as_str()).collect();
        collections.sort_unstable();
        collections.dedup();
        self.notify(&collections, false);
    }

    /// Merges `changes` inside `tx`; returns the records that changed.
    /// During a re-download, notes every record that came back.
    pub(super) fn apply_in(
        &self,
        tx: &Transaction<'_>,
        changes: &[SyncChange],
    ) -> Result<Vec<(String, String)>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // Each record is read and written once per page, however many of the
        // page's changes touch it: its state, whether it changed, its space.
        let mut cache: HashMap<(String, String), (RecordState, bool, Option<String>)> =
            HashMap::new();
        let mut newest: Option<&Timestamp> = None;
        let redownloading = redownload::in_progress(tx)?;
        for change in changes {
            if redownloading {
                redownload::note_seen(tx, &change.table, &change.id)?;
            }
            let key = (change.table.clone(), change.id.clone());
            let entry = match cache.entry(key) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let (collection, id) = entry.key();
                    let (state, space) = match load(tx, collection, id)? {
                        Some(stored) => (stored.state, stored.space),
                        // A new record is in the space of its first change.
                        None => (RecordState::default(), change.space_id.clone()),
                    };
                    entry.insert((state, false, space))
                }
            };
            if entry.2 != change.space_id {
                // A record never moves between spaces: a change naming
                // another space than the record's (another log's record
                // with the same id) must not touch it.
                tracing::warn!(table = %change.table, id = %change.id, space = ?change.space_id, "skipping a change of a record in another space");
                continue;
            }
            match entry.0.apply(change.into()) {
                Ok(changed) => entry.1 |= changed,
                Err(error) => {
                    // The server validates every change; one that still
                    // cannot be merged is skipped rather than blocking sync.
                    tracing::warn!(table = %change.table, id = %change.id, %error, "skipping an unmergeable change");
                }
            }
            let stamps = change
                .fields
                .iter()
                .flat_map(|fields| fields.values().map(|f| &f.at))
                .chain(change.deleted_at.as_ref());
            for at in stamps {
                if newest.is_none_or(|n| compare_timestamps(at, n) == std::cmp::Ordering::Greater) {
                    newest = Some(at);
                }
            }
        }
        let mut touched = Vec::new();
        for ((collection, id), (state, dirty, space)) in cache {
            if dirty {
                save_state(tx, &collection, &id, space.as_deref(), &state)?;
                touched.push((collection, id));
            }
        }
        if let Some(newest) = newest {
            let last = read_clock(tx)?;
            let next = clock::observe(last, HlcTime::of(newest), self.shared.clock.now_millis());
            if next != last {
                set_meta(tx, "hlc", &next.to_text())?;
            }
        }
        Ok(touched)
    }

    /// Whether another process wrote to the store since the last call; if so,
    /// subscribers of every synced collection are told, and so is the live
    /// sync (which pushes that process's outbox rows). SQLite's
    /// `data_version` changes only for commits made by other connections.
    pub fn check_external_changes(&self) -> Result<bool> {
        let version: i64 = {
            let conn = self.conn()?;
            conn.query_row("PRAGMA data_version", [], |row| row.get(0))?
        };
        let previous = self
            .shared
            .data_version
            .swap(version, std::sync::atomic::Ordering::SeqCst);
        let changed = previous != version && previous != i64::MIN;
        if changed {
            let collections: Vec<&str> =
                self.shared.collections.iter().map(String::as_str).collect();
            self.notify(&collections, true);
        }
        Ok(changed)
    }
}
