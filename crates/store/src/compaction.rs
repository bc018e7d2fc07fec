//! Compaction: a user's log keeps each record's merged state, not its whole
//! history.
//!
//! For every record (app, collection, id) with more than one change up to a
//! horizon (the user's newest position when compaction starts), the changes
//! are folded with [`Fold`] into one change stored at the position of the
//! latest of them, and the others are deleted. Because the merge is a join, a
//! device that had everything up to any cursor it was ever given, and then
//! follows the log, still ends in the state of the whole history: if its
//! cursor is before the folded position, it receives the folded change, which
//! holds everything it may have missed; if not, it already had all of it.
//! Pages read while compaction runs are each one snapshot, so a reader in the
//! middle of paginating may see a value again, never lose one.
//!
//! A deleted record whose latest change is older than the tombstone
//! retention is dropped altogether. That is the only thing a device can miss
//! (a record it holds stays alive), so the user's `expired_through` moves to
//! the dropped position, and a cursor before it is answered
//! [`StoreError::CursorExpired`](crate::StoreError::CursorExpired) (or, for
//! clients that cannot understand that, served from the start).
//!
//! Work is done in bounded transactions (Postgres: about 500 changes;
//! SQLite, whose one writer every push waits for: about 0.5 ms each), each
//! re-reading its records under a lock, so pushes, pulls and streams go on
//! meanwhile, and two compactors on one record cannot both fold it.

use mana_sync_protocol::merge::Fold;
use mana_sync_protocol::{Change, Cursor};
use time::OffsetDateTime;

use crate::{ExpiredCursor, StoredChange};

/// How to compact.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Deleted records whose latest change is older than this are dropped.
    pub tombstone_retention: std::time::Duration,
    /// About how many changes one transaction reads and rewrites (Postgres;
    /// SQLite sizes its transactions by time, see `sqlite/compact.rs`).
    /// 500: a push committing beside a compaction transaction also flushes
    /// the WAL that transaction wrote, so its size is what a push's p99
    /// pays; with 5,000 a push's p99 during compaction was 2.2–3.5× its idle
    /// one, with 500 1.7–2.0×, folding 9,000–12,000 changes a second instead
    /// of 21,000–24,000 (`mana-sync-bench compaction --backend postgres`).
    pub batch_changes: usize,
    /// After each transaction, pause this many times as long as it took:
    /// compaction is background work, and pushes, pulls and streams share
    /// the database with it (3: it works at most a quarter of the time).
    pub pause_ratio: u32,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            tombstone_retention: DEFAULT_TOMBSTONE_RETENTION,
            batch_changes: 500,
            pause_ratio: 3,
        }
    }
}

/// Deleted records are kept as tombstones this long (90 days) by default.
pub const DEFAULT_TOMBSTONE_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

impl CompactOptions {
    /// Yields the database to other work after a transaction that took
    /// `worked` (see [`CompactOptions::pause_ratio`]).
    pub(crate) async fn pause_after(&self, worked: std::time::Duration) {
        if self.pause_ratio > 0 {
            tokio::time::sleep(worked * self.pause_ratio).await;
        }
    }

    /// The position before which a deleted record may be dropped.
    pub(crate) fn drop_before(&self, now: OffsetDateTime) -> u64 {
        let retention =
            time::Duration::try_from(self.tombstone_retention).unwrap_or(time::Duration::MAX);
        now.checked_sub(retention)
            .map_or(0, |horizon| Cursor::from_instant(horizon).position())
    }
}

/// What a compaction did (so far, in progress reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactOutcome {
    /// Records whose history was folded into one change.
    pub records_folded: u64,
    /// Changes removed by folding.
    pub changes_folded: u64,
    /// Deleted records dropped after their retention.
    pub records_dropped: u64,
    /// Changes removed with them.
    pub changes_dropped: u64,
    /// Another compactor was working on this user; nothing was done.
    pub busy: bool,
}

impl CompactOutcome {
    /// Adds another compaction's counts to these.
    pub fn add(&mut self, other: &CompactOutcome) {
        self.records_folded += other.records_folded;
        self.changes_folded += other.changes_folded;
        self.records_dropped += other.records_dropped;
        self.changes_dropped += other.changes_dropped;
    }
}

/// A record worth compacting, found by the candidates query.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RecordKey {
    pub app_id: String,
    pub table: String,
    pub record_id: String,
    /// Its changes up to the horizon.
    pub changes: u64,
}

/// What to do with one record's changes.
pub(crate) enum Plan {
    /// Replace the change at `keep` by `change` (attributed to `client_id`)
    /// and delete the changes at `remove`.
    Fold {
        keep: u64,
        change: Change,
        client_id: String,
        remove: Vec<u64>,
    },
    /// Delete every change of the record (a tombstone past its retention).
    Drop { remove: Vec<u64> },
    /// Nothing to do (one change, or a history that cannot be merged).
    Keep,
}

/// Decides what to do with one record's changes up to the horizon, given in
/// position order.
pub(crate) fn plan(changes: &[StoredChange], drop_before: u64) -> Plan {
    let Some(last) = changes.last() else {
        return Plan::Keep;
    };
    let deleted = changes
        .iter()
        .any(|c| c.op == mana_sync_protocol::Op::Delete);
    if deleted && last.seq < drop_before {
        return Plan::Drop {
            remove: changes.iter().map(|c| c.seq).collect(),
        };
    }
    if changes.len() < 2 {
        return Plan::Keep;
    }
    let mut fold = Fold::new();
    for change in changes {
        let merged = fold.add(
            mana_sync_protocol::merge::ChangeRef {
                op: change.op,
                data: change.data.as_deref(),
                fields: change.fields.as_ref(),
                deleted_at: change.deleted_at.as_ref(),
                actor: change.actor.as_deref(),
            },
            change.schema_version,
            &change.client_id,
        );
        if let Err(error) = merged {
            // Validation on the way in makes this unreachable for changes
            // this server stored; leave such a record as it is.
            tracing::warn!(
                app = %last.app_id, table = %last.table, record = %last.record_id, %error,
                "not compacting a record whose history cannot be merged"
            );
            return Plan::Keep;
        }
    }
    let folded = fold.finish(last.table.clone(), last.record_id.clone());
    Plan::Fold {
        keep: last.seq,
        change: folded.change,
        client_id: folded.client_id,
        remove: changes[..changes.len() - 1].iter().map(|c| c.seq).collect(),
    }
}

/// The outcome of carrying out plans, and the newest dropped position.
pub(crate) fn tally(plans: &[Plan]) -> (CompactOutcome, u64) {
    let mut outcome = CompactOutcome::default();
    let mut dropped_through = 0;
    for plan in plans {
        match plan {
            Plan::Fold { remove, .. } => {
                outcome.records_folded += 1;
                outcome.changes_folded += remove.len() as u64;
            }
            Plan::Drop { remove } => {
                outcome.records_dropped += 1;
                outcome.changes_dropped += remove.len() as u64;
                dropped_through = dropped_through.max(remove.iter().copied().max().unwrap_or(0));
            }
            Plan::Keep => {}
        }
    }
    (outcome, dropped_through)
}

/// Splits candidate records into batches of about `batch_changes` changes
/// (a record with more than that is a batch of its own).
pub(crate) fn batches(keys: Vec<RecordKey>, batch_changes: usize) -> Vec<Vec<RecordKey>> {
    let mut batches = Vec::new();
    let mut current: Vec<RecordKey> = Vec::new();
    let mut size = 0;
    for key in keys {
        let changes = usize::try_from(key.changes).unwrap_or(usize::MAX);
        if !current.is_empty() && size + changes > batch_changes {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += changes;
        current.push(key);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Whether a cursor `after` can no longer be served to a client that asked
/// to be told: it is after the start (a device that has nothing misses
/// nothing), before history that was dropped, and was handed out before that
/// drop (a download begun after it never saw the dropped records, whatever
/// its position).
pub(crate) fn is_expired(after: u64, expired_through: u64, mode: ExpiredCursor) -> bool {
    match mode {
        ExpiredCursor::Serve => false,
        ExpiredCursor::Refuse { known } => {
            after > Cursor::START.position() && after < expired_through && known < expired_through
        }
    }
}

/// How many of `changes` may supersede an earlier change (updates and
/// deletes): what the background compactor counts.
pub(crate) fn superseding(changes: &[Change]) -> i64 {
    let count = changes
        .iter()
        .filter(|c| c.op != mana_sync_protocol::Op::Insert)
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}
