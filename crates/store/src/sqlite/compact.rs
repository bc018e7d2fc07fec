//! Compaction on SQLite (the algorithm is in [`crate::compaction`]).
//!
//! One compactor per user in this process (a set of users being compacted);
//! each batch is one `BEGIN IMMEDIATE` transaction on the writer thread
//! (between two groups of pushes) that
//! re-reads its records, so another process compacting the same file (an
//! operator's `mana-sync compact`) cannot fold a record twice either.

use mana_sync_protocol::LogId;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{SqliteStore, assemble, database_error, read_row, seq_param};
use crate::compaction::{self, CompactOptions, CompactOutcome, Plan, RecordKey};
use crate::types::encode;
use crate::{StoreResult, StoredChange};

/// Candidate records read per query.
const KEYS_PER_PAGE: i64 = 1000;

/// How long one transaction may hold the writer: SQLite has one, so every
/// push waits for a batch to commit (`make bench-compaction` measures push
/// latency during compaction). A batch stops taking records once it has
/// worked this long.
const BATCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(2);

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
    let mut total = CompactOutcome::default();
    let mut after = (String::new(), String::new(), String::new());
    loop {
        let keys = candidate_keys(store, log, horizon, drop_before, after.clone()).await?;
        let Some(last) = keys.last() else { break };
        after = (
            last.app_id.clone(),
            last.table.clone(),
            last.record_id.clone(),
        );
        let mut keys = std::collections::VecDeque::from(keys);
        while !keys.is_empty() {
            let started = std::time::Instant::now();
            let outcome = compact_batch(store, log, &mut keys, horizon, drop_before).await?;
            total.add(&outcome);
            progress(&total);
            options.pause_after(started.elapsed()).await;
        }
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

/// The next page of records, after `after` in key order, that have changes to
/// fold or a tombstone to drop, up to `horizon`.
async fn candidate_keys(
    store: &SqliteStore,
    log: &LogId,
    horizon: i64,
    drop_before: i64,
    after: (String, String, String),
) -> StoreResult<Vec<RecordKey>> {
    let user = log.as_str().to_owned();
    SqliteStore::with_connection(&store.readers, move |conn| {
        let mut statement = conn
            .prepare_cached(
                "SELECT app_id, table_name, record_id, count(*)
                 FROM mana_changes
                 WHERE user_id = ?1 AND seq <= ?2 AND (app_id, table_name, record_id) > (?3, ?4, ?5)
                 GROUP BY app_id, table_name, record_id
                 HAVING count(*) > 1 OR (max(op = 'delete') AND max(seq) < ?6)
                 ORDER BY app_id, table_name, record_id
                 LIMIT ?7",
            )
            .map_err(database_error)?;
        let rows = statement
            .query_map(
                params![
                    user,
                    horizon,
                    after.0,
                    after.1,
                    after.2,
                    drop_before,
                    KEYS_PER_PAGE
                ],
                |row| {
                    Ok(RecordKey {
                        app_id: row.get(0)?,
                        table: row.get(1)?,
                        record_id: row.get(2)?,
                        changes: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                    })
                },
            )
            .map_err(database_error)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(database_error)
    })
    .await
}

/// Folds or drops records from the front of `keys` in one transaction, for
/// at most [`BATCH_BUDGET`] (at least one record); the rest stay in `keys`.
async fn compact_batch(
    store: &SqliteStore,
    log: &LogId,
    keys: &mut std::collections::VecDeque<RecordKey>,
    horizon: i64,
    drop_before: i64,
) -> StoreResult<CompactOutcome> {
    let user = log.as_str().to_owned();
    let mut pending = std::mem::take(keys);
    let (outcome, rest) = store
        .writer
        .run(move |conn| {
            let started = std::time::Instant::now();
            let mut work = || -> StoreResult<CompactOutcome> {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database_error)?;
                let mut plans = Vec::new();
                {
                    let mut select = tx
                        .prepare_cached(concat!(
                            select_columns!(),
                            " FROM mana_changes WHERE user_id = ?1 AND app_id = ?2 AND table_name = ?3
                          AND record_id = ?4 AND seq <= ?5 ORDER BY seq"
                        ))
                        .map_err(database_error)?;
                    while let Some(key) = pending.pop_front() {
                        let rows = select
                            .query_map(
                                params![user, key.app_id, key.table, key.record_id, horizon],
                                read_row,
                            )
                            .map_err(database_error)?;
                        let mut history: Vec<StoredChange> = Vec::new();
                        for row in rows {
                            let (head, raw) = row.map_err(database_error)?;
                            history.push(assemble(head, raw)?);
                        }
                        let plan =
                            compaction::plan(&history, u64::try_from(drop_before).unwrap_or(0));
                        apply(&tx, &user, std::slice::from_ref(&plan))?;
                        plans.push(plan);
                        if started.elapsed() >= BATCH_BUDGET {
                            break;
                        }
                    }
                }
                let (outcome, dropped_through) = compaction::tally(&plans);
                if dropped_through > 0 {
                    tx.execute(
                        "UPDATE mana_user_seq SET expired_through = max(expired_through, ?2)
                         WHERE user_id = ?1",
                        params![user, seq_param(dropped_through)],
                    )
                    .map_err(database_error)?;
                }
                tx.commit().map_err(database_error)?;
                Ok(outcome)
            };
            let outcome = work();
            (outcome, pending)
        })
        .await?;
    *keys = rest;
    outcome
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
