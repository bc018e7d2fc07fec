//! Backups on Postgres: a user's export (their own log, then each space
//! they belong to, from one snapshot) and an import in one transaction.

use deadpool_postgres::Transaction;
use mana_sync_protocol::backup::ImportedChange;
use mana_sync_protocol::{LogId, SpaceId, UserId};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    ChangeColumns, PostgresStore, database_error, pool_error, reserve_positions, seq_value,
    stored_change,
};
use crate::spaces::{Role, split_by_log};
use crate::types::{
    ChangeBatches, EXPORT_BATCH, IMPORT_BATCH, ImportError, ImportLogs, ImportOutcome,
    ImportSource, Reserved,
};
use crate::{StoreError, StoreResult};

/// Every change `user` may read: their own log, then each space's they
/// belong to (by id), each oldest first, from one repeatable-read snapshot
/// fetched a batch at a time through a portal.
pub(super) async fn export(store: &PostgresStore, user: &UserId) -> StoreResult<ChangeBatches> {
    let (batches, receiver) = mpsc::channel(2);
    let (started, start) = tokio::sync::oneshot::channel();
    let pool = store.pool.clone();
    let user = user.clone();
    tokio::spawn(async move {
        let mut client = match pool.get().await {
            Ok(client) => client,
            Err(error) => {
                let _ = started.send(Err(pool_error(error)));
                return;
            }
        };
        let tx = match PostgresStore::begin_as(&mut client, &user, true).await {
            Ok(tx) => tx,
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        let _ = started.send(Ok(()));
        let streamed = async {
            let spaces = tx
                .query(
                    "SELECT space_id FROM mana_space_members WHERE user_id = $1 ORDER BY space_id",
                    &[&user.as_str()],
                )
                .await
                .map_err(database_error)?;
            let mut logs = vec![(LogId::of_user(&user), None)];
            for row in &spaces {
                let space = SpaceId::new(row.get::<_, String>(0))
                    .map_err(|e| StoreError::Corrupt(format!("space id: {e}")))?;
                logs.push((LogId::of_space(&space), Some(space)));
            }
            let statement = tx
                .prepare_cached(concat!(
                    select_columns!(),
                    " FROM mana_changes WHERE user_id = $1 ORDER BY seq"
                ))
                .await
                .map_err(database_error)?;
            let fetch = i32::try_from(EXPORT_BATCH).unwrap_or(i32::MAX);
            for (log, space) in logs {
                let portal = tx
                    .bind(&statement, &[&log.as_str()])
                    .await
                    .map_err(database_error)?;
                loop {
                    let rows = tx
                        .query_portal(&portal, fetch)
                        .await
                        .map_err(database_error)?;
                    let last = rows.len() < EXPORT_BATCH;
                    let mut batch = rows
                        .iter()
                        .map(stored_change)
                        .collect::<StoreResult<Vec<_>>>()?;
                    for change in &mut batch {
                        change.space_id.clone_from(&space);
                    }
                    // The reader went away: stop reading.
                    if !batch.is_empty() && batches.send(Ok(batch)).await.is_err() {
                        return Ok(());
                    }
                    if last {
                        break;
                    }
                }
            }
            Ok(())
        };
        if let Err(error) = streamed.await {
            let _ = batches.send(Err(error)).await;
        }
        let _ = tx.commit().await;
    });
    crate::types::started_batches(start, receiver).await
}

/// Restores `changes` for `user` in one transaction: each into the log of
/// its space (the user must be allowed to write it) or the user's own.
pub(super) async fn import(
    store: &PostgresStore,
    user: &UserId,
    mut changes: ImportSource,
) -> Result<ImportOutcome, ImportError> {
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_as(&mut client, user, false).await?;
    let mut outcome = ImportOutcome::default();
    let mut logs = ImportLogs::default();
    let mut writable: Vec<SpaceId> = Vec::new();
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    loop {
        let next = futures::StreamExt::next(&mut changes).await;
        let done = match next {
            Some(Ok(change)) => {
                batch.push(change);
                false
            }
            Some(Err(error)) => {
                let _ = tx.rollback().await;
                return Err(ImportError::Source(error));
            }
            None => true,
        };
        if batch.len() == IMPORT_BATCH || (done && !batch.is_empty()) {
            for group in split_by_log(user, &batch, |i| i.change.space_id.as_ref()) {
                if let Some(space) = &group.space
                    && !writable.contains(space)
                {
                    let role = super::spaces::role_in(&tx, space, user.as_str()).await?;
                    if !role.is_some_and(Role::can_write) {
                        return Err(ImportError::Store(StoreError::SpaceForbidden {
                            space: space.clone(),
                            write: true,
                        }));
                    }
                    writable.push(space.clone());
                }
                let author = group.space.as_ref().map(|_| user.as_str());
                let stored =
                    insert_batch(&tx, &group.log, author, &group.changes, &mut logs).await?;
                outcome.imported += stored;
                outcome.skipped += group.changes.len() as u64 - stored;
            }
            batch.clear();
        }
        if done {
            break;
        }
    }
    tx.commit().await.map_err(database_error)?;
    for notice in logs.into_notices() {
        store.announcer.announce(notice);
    }
    Ok(outcome)
}

/// Inserts one batch of restored changes into `log` after its newest
/// position, skipping event ids it already has; returns how many were
/// stored.
async fn insert_batch(
    tx: &Transaction<'_>,
    log: &LogId,
    author: Option<&str>,
    batch: &[ImportedChange],
    logs: &mut ImportLogs,
) -> StoreResult<u64> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id,
                 op, data, fields, deleted_at, actor, client_id, schema_version, created_at,
                 author_id)
             SELECT $1, $2 + u.ord, u.event_id, u.app_id, u.table_name, u.record_id, u.op, u.data,
                 u.fields, u.deleted_at, u.actor, u.client_id, u.schema_version, u.created_at, $15
             FROM UNNEST($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                 $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[], $14::timestamptz[])
                 WITH ORDINALITY AS u(event_id, app_id, table_name, record_id, op, data, fields,
                     deleted_at, actor, client_id, schema_version, created_at, ord)
             ON CONFLICT (user_id, event_id) DO NOTHING
             RETURNING seq, app_id, table_name",
        )
        .await
        .map_err(database_error)?;
    let count = i64::try_from(batch.len()).unwrap_or(i64::MAX);
    // The counter row stays locked until commit: the log's pushes wait, so
    // cursor order holds for restored changes too.
    let superseding = batch
        .iter()
        .filter(|i| i.change.op != mana_sync_protocol::Op::Insert)
        .count();
    let superseding = i64::try_from(superseding).unwrap_or(i64::MAX);
    let Reserved { after, last, .. } =
        reserve_positions(tx, log.as_str(), count, superseding).await?;
    let notices = logs.of(log);
    notices.reserved(seq_value(after));
    let before_first = last - count;
    let columns = ImportColumns::new(batch);
    let stored = tx
        .query(
            &insert,
            &[
                &log.as_str(),
                &before_first,
                &columns.event_ids,
                &columns.app_ids,
                &columns.changes.tables,
                &columns.changes.record_ids,
                &columns.changes.ops,
                &columns.changes.data,
                &columns.changes.fields,
                &columns.changes.deleted_at,
                &columns.changes.actors,
                &columns.client_ids,
                &columns.changes.schema_versions,
                &columns.created_at,
                &author,
            ],
        )
        .await
        .map_err(database_error)?;
    for row in &stored {
        let app: &str = row.get(1);
        let table: &str = row.get(2);
        notices.record(app, table, seq_value(row.get(0)));
    }
    Ok(stored.len() as u64)
}

/// The columns of restored changes, for one `UNNEST` insert.
struct ImportColumns<'a> {
    event_ids: Vec<Uuid>,
    app_ids: Vec<&'a str>,
    client_ids: Vec<&'a str>,
    created_at: Vec<time::OffsetDateTime>,
    changes: ChangeColumns<'a>,
}

impl<'a> ImportColumns<'a> {
    fn new(batch: &'a [ImportedChange]) -> Self {
        Self {
            event_ids: batch.iter().map(|i| i.event_id).collect(),
            app_ids: batch.iter().map(|i| i.app_id.as_str()).collect(),
            client_ids: batch.iter().map(|i| i.client_id.as_str()).collect(),
            created_at: batch.iter().map(|i| i.created_at).collect(),
            changes: ChangeColumns::new(batch.iter().map(|i| &i.change)),
        }
    }
}
