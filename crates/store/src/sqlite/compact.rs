//! Compaction on SQLite (the algorithm is in [`crate::compaction`]).
//!
//! One compactor per user in this process (a set of users being compacted).
//! SQLite has one writer, so every push waits for a compaction transaction
//! to commit (on the store's writer thread, or for the file lock when an
//! operator's `mana-sync compact` runs in another process): transactions
//! must be short, and write few pages, since the checkpoint that copies their
//! pages into the database is I/O that a push's `fsync` queues behind. Their
//! commits do not wait for the disk (see [`without_fsync`]).
//!
//! So the log is swept in position order, in windows of consecutive
//! changes: each window is one `BEGIN IMMEDIATE` transaction that reads,
//! for every record with a change in the window, its history up to the
//! window's end (what the windows before it left of the record, usually the
//! one change they folded it into, plus the window's changes), folds it at
//! its latest position and deletes the rest. Folding a record's changes up
//! to any position at the latest of them is safe (see `compaction.rs`); a
//! record is dropped (a tombstone past its retention) only in the window
//! that holds its last change up to the horizon. The changes a window
//! deletes lie side by side (in the window, and in the one before it), so a
//! transaction dirties a few pages per hundred changes, where folding one
//! record at a time dirtied a page of the table and of each index for every
//! change. The window grows or shrinks so that a transaction works about
//! [`BATCH_BUDGET`].
//!
//! The log has one index keyed by user, by position: an index of records
//! would cost every push a page (`0009_one_user_index.sql`). So a run first
//! asks a reader for the last position up to the horizon of each record
//! with more than one change, and the sweep remembers, for each record it
//! has not finished, the positions the windows left of it ([`Sweep`]):
//! memory for one entry per such record (after a compaction, about those
//! changed since), for the length of the run. Another process compacting
//! the same file works under the same lock and only ever moves a record's
//! history to a later position of that record, so a remembered position it
//! deleted is skipped, and no record is folded twice.

use std::collections::HashMap;

use mana_sync_protocol::LogId;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{SqliteStore, assemble, database_error, read_row, seq_param};
use crate::compaction::{self, CompactOptions, CompactOutcome, Plan};
use crate::types::encode;
use crate::{StoreResult, StoredChange};

/// About how long one transaction works. A push waits for at most one
/// transaction, and its p99 grows by about this much: with 100,000 changes
/// (`mana-sync-bench compaction --records 1000 --backend sqlite`), push p99
/// during compaction was 3.5 ms at 2 ms, 2.9 ms at 1 ms and 2.4 ms at 0.5 ms,
/// against 1.3–1.4 ms idle, while folding 7,900, 3,500 and 2,200 changes/s.
/// The goal is a push p99 at most twice the idle one.
const BATCH_BUDGET: std::time::Duration = std::time::Duration::from_micros(500);

/// Changes in the first window, and the bounds of any window.
const FIRST_WINDOW: usize = 64;
const MIN_WINDOW: usize = 8;
const MAX_WINDOW: usize = 8192;

pub(super) async fn candidates(
    store: &SqliteStore,
    threshold: u64,
    limit: usize,
) -> StoreResult<Vec<(LogId, u64)>> {
    let threshold = seq_param(threshold);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<(String, i64)> = SqliteStore::with_connection(&store.readers, move |conn| {
        let mut statement = conn
            .prepare(
                "SELECT user_id, superseded FROM mana_user_seq WHERE superseded >= ?1
                 ORDER BY superseded DESC LIMIT ?2",
            )
            .map_err(database_error)?;
        let rows = statement
            .query_map(params![threshold, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(database_error)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(database_error)
    })
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(user, superseded)| {
            Some((
                LogId::parse(&user).ok()?,
                u64::try_from(superseded).unwrap_or(0),
            ))
        })
        .collect())
}

/// Removes the user from the set of users being compacted when dropped.
struct Busy<'a> {
    store: &'a SqliteStore,
    user: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.store
            .compacting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.user);
    }
}

pub(super) async fn compact(
    store: &SqliteStore,
    log: &LogId,
    options: &CompactOptions,
    progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
) -> StoreResult<CompactOutcome> {
    let claimed = store
        .compacting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(log.as_str().to_owned());
    if !claimed {
        return Ok(CompactOutcome {
            busy: true,
            ..CompactOutcome::default()
        });
    }
    let _busy = Busy {
        store,
        user: log.as_str().to_owned(),
    };
    let name = log.as_str().to_owned();
    let state: Option<(i64, i64)> = SqliteStore::with_connection(&store.readers, move |conn| {
        conn.query_row(
            "SELECT last_seq, superseded FROM mana_user_seq WHERE user_id = ?1",
            [&name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(database_error)
    })
    .await?;
    let Some((horizon, superseded)) = state else {
        return Ok(CompactOutcome::default());
    };
    let drop_before = seq_param(options.drop_before(OffsetDateTime::now_utc()));
    let mut sweep = Sweep::scan(store, log, horizon).await?;
    let mut total = CompactOutcome::default();
    let mut window = Window {
        after: 0,
        size: FIRST_WINDOW,
    };
    loop {
        let started = std::time::Instant::now();
        let (outcome, swept, advanced) =
            compact_window(store, log, window, horizon, drop_before, sweep).await?;
        sweep = advanced;
        total.add(&outcome);
        progress(&total);
        let Some(swept) = swept else { break };
        window = window.next(swept);
        options.pause_after(started.elapsed()).await;
    }
    // What was pushed while we worked stays counted for the next time.
    let name = log.as_str().to_owned();
    store
        .writer
        .run(move |conn| {
            conn.execute(
                "UPDATE mana_user_seq SET superseded = max(superseded - ?2, 0) WHERE user_id = ?1",
                params![name, superseded],
            )
            .map_err(database_error)
        })
        .await??;
    Ok(total)
}

/// The next changes to sweep: `size` of them after position `after`.
#[derive(Debug, Clone, Copy)]
struct Window {
    after: i64,
    size: usize,
}

/// What one window's transaction swept.
#[derive(Debug, Clone, Copy)]
struct Swept {
    /// The window's last position.
    through: i64,
    /// How long the transaction held the lock, its commit included (the
    /// commit writes the pages it changed: the longer part, for a window
    /// that folded much).
    worked: std::time::Duration,
}

impl Window {
    /// The window after `swept`, sized to work about [`BATCH_BUDGET`] at the
    /// rate this one did.
    fn next(self, swept: Swept) -> Self {
        let worked = swept.worked.as_secs_f64().max(1e-6);
        let scaled = self.size as f64 * BATCH_BUDGET.as_secs_f64() / worked;
        // At most doubling: one fast window (pages in cache) says little.
        let size = (scaled as usize).clamp(MIN_WINDOW, (self.size * 2).min(MAX_WINDOW));
        Self {
            after: swept.through,
            size,
        }
    }
}

/// A record: its app, collection and id.
type Record = (String, String, String);

/// What the sweep knows of a record it has yet to finish.
#[derive(Debug)]
struct Track {
    /// Its last position up to the horizon, when the sweep began.
    last: i64,
    /// Its positions before the next window: what the windows swept so far
    /// left of it (usually the one change they folded it into).
    left: Vec<i64>,
}

/// The records of a log with more than one change up to the horizon that
/// the sweep has not finished, so that a window finds a record's earlier
/// changes by position: the log has no index of records, which every push
/// would pay for (see `0009_one_user_index.sql`). A record that is not here
/// has one change up to the horizon, in the window that meets it. After a
/// compaction most records have one, so this holds about the records
/// changed since; each entry is dropped by the window that holds the
/// record's last change.
#[derive(Debug)]
struct Sweep {
    records: HashMap<Record, Track>,
}

impl Sweep {
    /// Reads the last position up to `horizon` of each record with more
    /// than one change, on a reader (the writer, and the pushes waiting for
    /// it, go on). SQLite groups them, spilling to a temporary file when
    /// there are many, rather than this process holding every record.
    async fn scan(store: &SqliteStore, log: &LogId, horizon: i64) -> StoreResult<Self> {
        let user = log.as_str().to_owned();
        SqliteStore::with_connection(&store.readers, move |conn| {
            let mut statement = conn
                .prepare(
                    "SELECT max(seq), app_id, table_name, record_id FROM mana_changes
                     WHERE user_id = ?1 AND seq <= ?2
                     GROUP BY app_id, table_name, record_id HAVING count(*) > 1",
                )
                .map_err(database_error)?;
            let mut rows = statement
                .query(params![user, horizon])
                .map_err(database_error)?;
            let mut records: HashMap<Record, Track> = HashMap::new();
            while let Some(row) = rows.next().map_err(database_error)? {
                let (last, record) = position_and_record(row)?;
                records.insert(
                    record,
                    Track {
                        last,
                        left: Vec::new(),
                    },
                );
            }
            Ok(Self { records })
        })
        .await
    }
}

fn position_and_record(row: &rusqlite::Row<'_>) -> StoreResult<(i64, Record)> {
    let column = |index| row.get::<_, String>(index).map_err(database_error);
    let seq = row.get::<_, i64>(0).map_err(database_error)?;
    Ok((seq, (column(1)?, column(2)?, column(3)?)))
}

/// Folds or drops, in one transaction, the records that have a change in
/// `window`; `None` once there is nothing left up to `horizon`. The sweep
/// goes in and comes back, advanced past the window.
async fn compact_window(
    store: &SqliteStore,
    log: &LogId,
    window: Window,
    horizon: i64,
    drop_before: i64,
    mut sweep: Sweep,
) -> StoreResult<(CompactOutcome, Option<Swept>, Sweep)> {
    let user = log.as_str().to_owned();
    store
        .writer
        .run(move |conn| {
            without_fsync(conn, |conn| {
                fold_window(conn, &user, window, horizon, drop_before, &mut sweep)
            })
            .map(|(outcome, swept)| (outcome, swept, sweep))
        })
        .await?
}

/// Runs `work` with commits that do not wait for the disk (`synchronous =
/// NORMAL`), then makes the connection's commits durable again.
///
/// A window's `fsync` waits for every page it wrote to reach the disk, and
/// a push waited that long for the lock. A compaction transaction that a
/// crash loses is done again by the next run, and the log it leaves is the
/// same (folding is idempotent). In WAL mode a commit's `fsync` covers every
/// frame before it, so the next push's durable commit (or the next
/// checkpoint) also makes the compaction before it durable; what a crash can
/// lose is only the last compaction windows, never a push that was
/// acknowledged.
fn without_fsync<R>(
    conn: &mut rusqlite::Connection,
    work: impl FnOnce(&mut rusqlite::Connection) -> StoreResult<R>,
) -> StoreResult<R> {
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .map_err(database_error)?;
    let result = work(conn);
    // Never leave the writer with commits that are not durable: the pushes
    // after this one rely on it.
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(database_error)?;
    result
}

/// One window's transaction (see [`compact_window`]).
fn fold_window(
    conn: &mut rusqlite::Connection,
    user: &str,
    window: Window,
    horizon: i64,
    drop_before: i64,
    sweep: &mut Sweep,
) -> StoreResult<(CompactOutcome, Option<Swept>)> {
    let started = std::time::Instant::now();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database_error)?;
    // The records with a change in the window, each once, in the order of
    // their first change there, with their changes in it; and the window's
    // end.
    let mut records: Vec<(Record, Vec<StoredChange>)> = Vec::new();
    let mut through = None;
    {
        let mut changes = tx
            .prepare_cached(concat!(
                select_columns!(),
                " FROM mana_changes WHERE user_id = ?1 AND seq > ?2 AND seq <= ?3
                  ORDER BY seq LIMIT ?4"
            ))
            .map_err(database_error)?;
        let limit = i64::try_from(window.size).unwrap_or(i64::MAX);
        let rows = changes
            .query_map(params![user, window.after, horizon, limit], read_row)
            .map_err(database_error)?;
        let mut index: HashMap<Record, usize> = HashMap::new();
        for row in rows {
            let (head, raw) = row.map_err(database_error)?;
            let change = assemble(head, raw)?;
            through = Some(seq_param(change.seq));
            let record = (
                change.app_id.clone(),
                change.table.clone(),
                change.record_id.clone(),
            );
            match index.get(&record) {
                Some(&at) => records[at].1.push(change),
                None => {
                    index.insert(record.clone(), records.len());
                    records.push((record, vec![change]));
                }
            }
        }
    }
    let Some(through) = through else {
        return Ok((CompactOutcome::default(), None));
    };
    let mut plans = Vec::with_capacity(records.len());
    // Records folded here that a later window folds again: counted
    // there, so that each record is counted once.
    let mut unfinished = 0;
    {
        let mut change_at = tx
            .prepare_cached(concat!(
                select_columns!(),
                " FROM mana_changes WHERE user_id = ?1 AND seq = ?2"
            ))
            .map_err(database_error)?;
        for (record, in_window) in records {
            // A record the scan did not keep had one change up to the
            // horizon, and it is in this window: changes up to the horizon
            // are never added after it (a push or an import takes later
            // positions), only folded away.
            let track = sweep.records.remove(&record).unwrap_or(Track {
                last: through,
                left: Vec::new(),
            });
            // Its history up to the window's end: what earlier windows left
            // of it, then the window's changes. Another process compacting
            // the same file may have folded some of what was left into a
            // later change of the record; those are gone and skipped.
            let mut history: Vec<StoredChange> = Vec::with_capacity(track.left.len());
            for seq in &track.left {
                let row = change_at
                    .query_row(params![user, seq], read_row)
                    .optional()
                    .map_err(database_error)?;
                if let Some((head, raw)) = row {
                    history.push(assemble(head, raw)?);
                }
            }
            history.extend(in_window);
            // A record with changes after this window is folded, never
            // dropped: its last change decides that.
            let continues = track.last > through;
            let drop_before = if continues { 0 } else { drop_before };
            let plan = compaction::plan(&history, u64::try_from(drop_before).unwrap_or(0));
            if continues {
                if matches!(plan, Plan::Fold { .. }) {
                    unfinished += 1;
                }
                let left = match &plan {
                    Plan::Fold { keep, .. } => vec![seq_param(*keep)],
                    Plan::Keep => history.iter().map(|c| seq_param(c.seq)).collect(),
                    Plan::Drop { .. } => Vec::new(),
                };
                sweep.records.insert(
                    record,
                    Track {
                        last: track.last,
                        left,
                    },
                );
            }
            apply(&tx, user, std::slice::from_ref(&plan))?;
            plans.push(plan);
        }
    }
    let (mut outcome, dropped_through) = compaction::tally(&plans);
    outcome.records_folded -= unfinished;
    if dropped_through > 0 {
        tx.execute(
            "UPDATE mana_user_seq SET expired_through = max(expired_through, ?2)
                     WHERE user_id = ?1",
            params![user, seq_param(dropped_through)],
        )
        .map_err(database_error)?;
    }
    tx.commit().map_err(database_error)?;
    let worked = started.elapsed();
    Ok((outcome, Some(Swept { through, worked })))
}

fn apply(tx: &rusqlite::Transaction<'_>, user: &str, plans: &[Plan]) -> StoreResult<()> {
    let mut delete = tx
        .prepare_cached("DELETE FROM mana_changes WHERE user_id = ?1 AND seq = ?2")
        .map_err(database_error)?;
    let mut update = tx
        .prepare_cached(
            "UPDATE mana_changes SET op = ?3, data = ?4, fields = ?5, deleted_at = ?6, actor = ?7,
                 client_id = ?8, schema_version = ?9
             WHERE user_id = ?1 AND seq = ?2",
        )
        .map_err(database_error)?;
    for plan in plans {
        let remove = match plan {
            Plan::Fold {
                keep,
                change,
                client_id,
                remove,
            } => {
                let encoded = encode(change);
                update
                    .execute(params![
                        user,
                        seq_param(*keep),
                        change.op.as_str(),
                        encoded.data,
                        encoded.fields,
                        encoded.deleted_at,
                        encoded.actor,
                        client_id,
                        change.schema_version,
                    ])
                    .map_err(database_error)?;
                remove
            }
            Plan::Drop { remove } => remove,
            Plan::Keep => continue,
        };
        for seq in remove {
            delete
                .execute(params![user, seq_param(*seq)])
                .map_err(database_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    fn synchronous(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("reads the setting")
    }

    /// Compaction's commits skip the `fsync`, and the writer's next commit,
    /// a push's, is durable again, also when the compaction failed.
    #[test]
    fn only_compaction_commits_without_waiting_for_the_disk() {
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        let mut conn = rusqlite::Connection::open_in_memory().expect("opens");
        conn.execute_batch("PRAGMA synchronous = FULL")
            .expect("durable");
        let inside = without_fsync(&mut conn, |conn| Ok(synchronous(conn))).expect("works");
        assert_eq!(inside, NORMAL);
        assert_eq!(synchronous(&conn), FULL);
        let failed = without_fsync(&mut conn, |_| -> StoreResult<()> {
            Err(StoreError::Unavailable("a window failed".into()))
        });
        assert!(failed.is_err());
        assert_eq!(synchronous(&conn), FULL);
    }
}
