//! Compaction on Postgres (the algorithm is in [`crate::compaction`]).
//!
//! One compactor per user across every instance: a session advisory lock,
//! taken with `pg_try_advisory_lock` on a connection held for the whole
//! compaction (a crashed instance's lock goes with its connection). Each
//! batch is one transaction that re-reads its records `FOR UPDATE`.

use deadpool_postgres::GenericClient;
use mana_sync_protocol::LogId;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use super::{PostgresStore, database_error, pool_error, seq_param, seq_value, stored_change};
use crate::compaction::{self, CompactOptions, CompactOutcome, Plan, RecordKey};
use crate::types::encode;
use crate::{StoreResult, StoredChange};

/// Candidate records read per query.
const KEYS_PER_PAGE: i64 = 1000;

pub(super) async fn candidates(
    store: &PostgresStore,
    threshold: u64,
    limit: usize,
) -> StoreResult<Vec<(LogId, u64)>> {
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(database_error)?;
    // The one policy that lets a transaction read every user's counter row
    // (and nothing else: `0005_compaction.sql`).
    tx.execute("SELECT set_config('mana.scan_users', 'on', true)", &[])
        .await
        .map_err(database_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = tx
        .query(
            "SELECT user_id, superseded FROM mana_user_seq WHERE superseded >= $1
             ORDER BY superseded DESC LIMIT $2",
            &[&seq_param(threshold), &limit],
        )
        .await
        .map_err(database_error)?;
    tx.commit().await.map_err(database_error)?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let log = LogId::parse(&row.get::<_, String>(0)).ok()?;
            Some((log, seq_value(row.get(1))))
        })
        .collect())
}

pub(super) async fn compact(
    store: &PostgresStore,
    log: &LogId,
    options: &CompactOptions,
    progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
) -> StoreResult<CompactOutcome> {
    let lock = store.pool.get().await.map_err(pool_error)?;
    let key = format!("mana-sync compaction {}", log.as_str());
    let locked: bool = lock
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .await
        .map_err(database_error)?
        .get(0);
    if !locked {
        return Ok(CompactOutcome {
            busy: true,
            ..CompactOutcome::default()
        });
    }
    let result = compact_locked(store, log, options, progress).await;
    let unlocked = lock
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
            &[&key],
        )
        .await;
    if unlocked.is_err() {
        // Never hand a connection that may still hold the lock back to the
        // pool: closing it releases the lock.
        drop(deadpool_postgres::Object::take(lock));
    }
    result
}

async fn compact_locked(
    store: &PostgresStore,
    log: &LogId,
    options: &CompactOptions,
    progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
) -> StoreResult<CompactOutcome> {
    let (horizon, superseded) = {
        let mut client = store.pool.get().await.map_err(pool_error)?;
        let tx = PostgresStore::begin_acting(&mut client, log.as_str(), true).await?;
        let row = tx
            .query_opt(
                "SELECT last_seq, superseded FROM mana_user_seq WHERE user_id = $1",
                &[&log.as_str()],
            )
            .await
            .map_err(database_error)?;
        tx.commit().await.map_err(database_error)?;
        match row {
            Some(row) => (row.get::<_, i64>(0), row.get::<_, i64>(1)),
            None => return Ok(CompactOutcome::default()),
        }
    };
    let drop_before = seq_param(options.drop_before(OffsetDateTime::now_utc()));
    let mut total = CompactOutcome::default();
    let mut after = (String::new(), String::new(), String::new());
    loop {
        let keys = candidate_keys(store, log, horizon, drop_before, &after).await?;
        let Some(last) = keys.last() else { break };
        after = (
            last.app_id.clone(),
            last.table.clone(),
            last.record_id.clone(),
        );
        for batch in compaction::batches(keys, options.batch_changes) {
            let started = std::time::Instant::now();
            let outcome = compact_batch(store, log, &batch, horizon, drop_before).await?;
            total.add(&outcome);
            progress(&total);
            options.pause_after(started.elapsed()).await;
        }
    }
    // What was pushed while we worked stays counted for the next time.
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_acting(&mut client, log.as_str(), false).await?;
    tx.execute(
        "UPDATE mana_user_seq SET superseded = GREATEST(superseded - $2, 0) WHERE user_id = $1",
        &[&log.as_str(), &superseded],
    )
    .await
    .map_err(database_error)?;
    tx.commit().await.map_err(database_error)?;
    Ok(total)
}

/// The next page of records, after `after` in key order, that have changes to
/// fold or a tombstone to drop, up to `horizon`.
async fn candidate_keys(
    store: &PostgresStore,
    log: &LogId,
    horizon: i64,
    drop_before: i64,
    after: &(String, String, String),
) -> StoreResult<Vec<RecordKey>> {
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_acting(&mut client, log.as_str(), true).await?;
    let statement = tx
        .prepare_cached(
            "SELECT app_id, table_name, record_id, count(*)
             FROM mana_changes
             WHERE user_id = $1 AND seq <= $2 AND (app_id, table_name, record_id) > ($3, $4, $5)
             GROUP BY app_id, table_name, record_id
             HAVING count(*) > 1 OR (bool_or(op = 'delete') AND max(seq) < $6)
             ORDER BY app_id, table_name, record_id
             LIMIT $7",
        )
        .await
        .map_err(database_error)?;
    let rows = tx
        .query(
            &statement,
            &[
                &log.as_str(),
                &horizon,
                &after.0,
                &after.1,
                &after.2,
                &drop_before,
                &KEYS_PER_PAGE,
            ],
        )
        .await
        .map_err(database_error)?;
    tx.commit().await.map_err(database_error)?;
    Ok(rows
        .iter()
        .map(|row| RecordKey {
            app_id: row.get(0),
            table: row.get(1),
            record_id: row.get(2),
            changes: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        })
        .collect())
}

/// Folds or drops one batch of records in one transaction.
async fn compact_batch(
    store: &PostgresStore,
    log: &LogId,
    keys: &[RecordKey],
    horizon: i64,
    drop_before: i64,
) -> StoreResult<CompactOutcome> {
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_acting(&mut client, log.as_str(), false).await?;
    let apps: Vec<&str> = keys.iter().map(|k| k.app_id.as_str()).collect();
    let tables: Vec<&str> = keys.iter().map(|k| k.table.as_str()).collect();
    let records: Vec<&str> = keys.iter().map(|k| k.record_id.as_str()).collect();
    // Under the row locks, so a concurrent compactor of the same record
    // waits and then finds it folded.
    let rows = tx
        .query(
            "SELECT c.seq, c.event_id, c.app_id, c.table_name, c.record_id, c.op, c.data,
                    c.fields, c.deleted_at, c.actor, c.client_id, c.schema_version, c.created_at
             FROM mana_changes c
             JOIN UNNEST($2::text[], $3::text[], $4::text[]) AS k(app_id, table_name, record_id)
               ON c.app_id = k.app_id AND c.table_name = k.table_name AND c.record_id = k.record_id
             WHERE c.user_id = $1 AND c.seq <= $5
             ORDER BY c.app_id, c.table_name, c.record_id, c.seq
             FOR UPDATE OF c",
            &[&log.as_str(), &apps, &tables, &records, &horizon],
        )
        .await
        .map_err(database_error)?;
    let changes = rows
        .iter()
        .map(stored_change)
        .collect::<StoreResult<Vec<StoredChange>>>()?;
    let plans: Vec<Plan> = changes
        .chunk_by(|a, b| (&a.app_id, &a.table, &a.record_id) == (&b.app_id, &b.table, &b.record_id))
        .map(|history| compaction::plan(history, seq_value(drop_before)))
        .collect();
    apply(&tx, log, &plans).await?;
    let (outcome, dropped_through) = compaction::tally(&plans);
    if dropped_through > 0 {
        tx.execute(
            "UPDATE mana_user_seq SET expired_through = GREATEST(expired_through, $2)
             WHERE user_id = $1",
            &[&log.as_str(), &seq_param(dropped_through)],
        )
        .await
        .map_err(database_error)?;
    }
    tx.commit().await.map_err(database_error)?;
    Ok(outcome)
}

/// Carries out the plans: one `DELETE` for every removed change, one
/// `UPDATE` for every folded one.
async fn apply(tx: &impl GenericClient, log: &LogId, plans: &[Plan]) -> StoreResult<()> {
    let mut removed: Vec<i64> = Vec::new();
    let mut kept: Vec<i64> = Vec::new();
    let mut ops: Vec<&str> = Vec::new();
    let mut data: Vec<Option<&str>> = Vec::new();
    let mut fields: Vec<Option<String>> = Vec::new();
    let mut deleted_at: Vec<Option<&str>> = Vec::new();
    let mut actors: Vec<Option<&str>> = Vec::new();
    let mut clients: Vec<&str> = Vec::new();
    let mut versions: Vec<i32> = Vec::new();
    for plan in plans {
        match plan {
            Plan::Fold {
                keep,
                change,
                client_id,
                remove,
            } => {
                removed.extend(remove.iter().map(|&seq| seq_param(seq)));
                let encoded = encode(change);
                kept.push(seq_param(*keep));
                ops.push(change.op.as_str());
                data.push(encoded.data);
                fields.push(encoded.fields);
                deleted_at.push(encoded.deleted_at);
                actors.push(encoded.actor);
                clients.push(client_id);
                versions.push(i32::try_from(change.schema_version).unwrap_or(i32::MAX));
            }
            Plan::Drop { remove } => removed.extend(remove.iter().map(|&seq| seq_param(seq))),
            Plan::Keep => {}
        }
    }
    if !removed.is_empty() {
        tx.execute(
            "DELETE FROM mana_changes WHERE user_id = $1 AND seq = ANY($2::int8[])",
            &[&log.as_str(), &removed],
        )
        .await
        .map_err(database_error)?;
    }
    if !kept.is_empty() {
        let params: [&(dyn ToSql + Sync); 9] = [
            &log.as_str(),
            &kept,
            &ops,
            &data,
            &fields,
            &deleted_at,
            &actors,
            &clients,
            &versions,
        ];
        tx.execute(
            "UPDATE mana_changes c SET op = u.op, data = u.data, fields = u.fields,
                 deleted_at = u.deleted_at, actor = u.actor, client_id = u.client_id,
                 schema_version = u.schema_version
             FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                 $8::text[], $9::int4[]) AS u(seq, op, data, fields, deleted_at, actor, client_id,
                 schema_version)
             WHERE c.user_id = $1 AND c.seq = u.seq",
            &params,
        )
        .await
        .map_err(database_error)?;
    }
    Ok(())
}
