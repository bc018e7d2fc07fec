//! Backups on SQLite: a user's export (their own log, then each space they
//! belong to, from one read transaction) and an import in one write
//! transaction on the writer.

use std::sync::Arc;

use mana_sync_protocol::backup::ImportedChange;
use mana_sync_protocol::{LogId, SpaceId, UserId};
use rusqlite::{TransactionBehavior, params};

use super::{
    SqliteStore, assemble, database_error, micros, pool_error, read_row, reserve_positions,
};
use crate::notice::StoreEvent;
use crate::spaces::{Role, split_by_log};
use crate::types::{
    ChangeBatches, EXPORT_BATCH, IMPORT_BATCH, ImportError, ImportLogs, ImportOutcome,
    ImportSource, Reserved, encode,
};
use crate::{StoreError, StoreResult};

/// Every change `user` may read: their own log, then each space's they
/// belong to (by id), each oldest first, from one read transaction.
pub(super) async fn export(store: &SqliteStore, user: &UserId) -> StoreResult<ChangeBatches> {
    let (batches, receiver) = tokio::sync::mpsc::channel(2);
    let (started, start) = tokio::sync::oneshot::channel();
    let readers = store.readers.clone();
    let user = user.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = match readers.get() {
            Ok(conn) => conn,
            Err(error) => {
                let _ = started.send(Err(pool_error(error)));
                return;
            }
        };
        // One read transaction: the whole export is one snapshot.
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(error) => {
                let _ = started.send(Err(database_error(error)));
                return;
            }
        };
        let _ = started.send(Ok(()));
        let streamed = (|| -> StoreResult<()> {
            let mut logs = vec![(LogId::of_user(&user), None)];
            let spaces: Vec<String> = tx
                .prepare(
                    "SELECT space_id FROM mana_space_members WHERE user_id = ?1 ORDER BY space_id",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map([user.as_str()], |row| row.get(0))?
                        .collect()
                })
                .map_err(database_error)?;
            for space in spaces {
                let space = SpaceId::new(space)
                    .map_err(|e| StoreError::Corrupt(format!("space id: {e}")))?;
                logs.push((LogId::of_space(&space), Some(space)));
            }
            let mut statement = tx
                .prepare(concat!(
                    select_columns!(),
                    " FROM mana_changes WHERE user_id = ?1 ORDER BY seq"
                ))
                .map_err(database_error)?;
            let mut batch = Vec::with_capacity(EXPORT_BATCH);
            for (log, space) in &logs {
                let mut rows = statement.query([log.as_str()]).map_err(database_error)?;
                while let Some(row) = rows.next().map_err(database_error)? {
                    let (head, raw) = read_row(row).map_err(database_error)?;
                    let mut change = assemble(head, raw)?;
                    change.space_id.clone_from(space);
                    batch.push(change);
                    if batch.len() == EXPORT_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(EXPORT_BATCH));
                        // The reader went away: stop reading.
                        if batches.blocking_send(Ok(full)).is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            if !batch.is_empty() {
                let _ = batches.blocking_send(Ok(batch));
            }
            Ok(())
        })();
        if let Err(error) = streamed {
            let _ = batches.blocking_send(Err(error));
        }
    });
    crate::types::started_batches(start, receiver).await
}

/// Restores `changes` for `user` in one transaction on the writer: each
/// into the log of its space (the user must be allowed to write it) or the
/// user's own.
pub(super) async fn import(
    store: &SqliteStore,
    user: &UserId,
    mut changes: ImportSource,
) -> Result<ImportOutcome, ImportError> {
    let owner = user.clone();
    let events = store.events.clone();
    let runtime = tokio::runtime::Handle::current();
    store
        .writer
        .run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(database_error)?;
            let mut outcome = ImportOutcome::default();
            let mut logs = ImportLogs::default();
            let mut writable: Vec<SpaceId> = Vec::new();
            let mut batch = Vec::with_capacity(IMPORT_BATCH);
            loop {
                // The source is async; this thread is one of Tokio's blocking
                // ones, where waiting on it is allowed. (The source is a local
                // spool of validated lines, so the writer is not held waiting
                // on a client.)
                let next = runtime.block_on(futures::StreamExt::next(&mut changes));
                let done = match next {
                    Some(Ok(change)) => {
                        batch.push(change);
                        false
                    }
                    // Returning drops `tx`: everything is rolled back.
                    Some(Err(error)) => return Err(ImportError::Source(error)),
                    None => true,
                };
                if batch.len() == IMPORT_BATCH || (done && !batch.is_empty()) {
                    for group in split_by_log(&owner, &batch, |i| i.change.space_id.as_ref()) {
                        if let Some(space) = &group.space
                            && !writable.contains(space)
                        {
                            let role = super::spaces::role_of(&tx, space, &owner)?;
                            if !role.is_some_and(Role::can_write) {
                                return Err(ImportError::Store(StoreError::SpaceForbidden {
                                    space: space.clone(),
                                    write: true,
                                }));
                            }
                            writable.push(space.clone());
                        }
                        let author = group.space.as_ref().map(|_| owner.as_str());
                        let stored =
                            insert_batch(&tx, &group.log, author, &group.changes, &mut logs)?;
                        outcome.imported += stored;
                        outcome.skipped += group.changes.len() as u64 - stored;
                    }
                    batch.clear();
                }
                if done {
                    break;
                }
            }
            tx.commit().map_err(database_error)?;
            for notice in logs.into_notices() {
                let _ = events.send(StoreEvent::Changed(Arc::new(notice)));
            }
            Ok(outcome)
        })
        .await?
}

/// Inserts one batch of restored changes into `log` after its newest
/// position, skipping event ids it already has; returns how many were
/// stored.
fn insert_batch(
    tx: &rusqlite::Transaction<'_>,
    log: &LogId,
    author: Option<&str>,
    batch: &[ImportedChange],
    logs: &mut ImportLogs,
) -> StoreResult<u64> {
    let count = i64::try_from(batch.len()).unwrap_or(i64::MAX);
    let superseding = batch
        .iter()
        .filter(|i| i.change.op != mana_sync_protocol::Op::Insert)
        .count();
    let superseding = i64::try_from(superseding).unwrap_or(i64::MAX);
    let Reserved { after, last, .. } = reserve_positions(tx, log.as_str(), count, superseding)?;
    let notices = logs.of(log);
    notices.reserved(u64::try_from(after).unwrap_or(0));
    let mut insert = tx
        .prepare_cached(concat!(
            insert_change!(),
            " ON CONFLICT (event_id, user_id) DO NOTHING"
        ))
        .map_err(database_error)?;
    let mut stored_count = 0;
    for (offset, imported) in (1_i64..).zip(batch) {
        let seq = last - count + offset;
        let change = &imported.change;
        let encoded = encode(change);
        let stored = insert
            .execute(params![
                log.as_str(),
                seq,
                imported.event_id.to_string(),
                imported.app_id,
                change.table,
                change.id,
                change.op.as_str(),
                encoded.data,
                encoded.fields,
                encoded.deleted_at,
                encoded.actor,
                imported.client_id,
                change.schema_version,
                micros(imported.created_at),
                author,
            ])
            .map_err(database_error)?;
        if stored == 1 {
            stored_count += 1;
            notices.record(
                &imported.app_id,
                &change.table,
                u64::try_from(seq).unwrap_or(0),
            );
        }
    }
    Ok(stored_count)
}
