//! Reading a log on Postgres: one page of changes after a cursor, from one
//! snapshot, acting for the reader so that row-level security applies.

use deadpool_postgres::{GenericClient, Transaction};
use mana_sync_protocol::{Cursor, LogId, Since};
use tokio_postgres::Row;

use super::{PostgresStore, database_error, pool_error, seq_param, seq_value, spaces};
use crate::compaction;
use crate::types::{LogState, RawColumns};
use crate::{ChangePage, ChangeQuery, MAX_PAGE, StoreError, StoreResult, StoredChange, page_end};

impl PostgresStore {
    /// Reads `log` acting for `actor` (row-level security decides what it
    /// may see): the changes after `query.since`, in commit order.
    pub(super) async fn read(
        &self,
        actor: &str,
        log: &LogId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let mut client = self.pool.get().await.map_err(pool_error)?;
        // Repeatable read: the newest position and the rows are read from
        // one snapshot, so every position up to `newest` is visible here.
        let tx = Self::begin_acting(&mut client, actor, true).await?;
        // A user reading a space's log must belong to it (row-level
        // security would show such a reader nothing; say why instead).
        let space = log.space();
        if let Some(space) = space.as_ref().filter(|_| actor != log.as_str())
            && spaces::role_in(&tx, space, actor).await?.is_none()
        {
            return Err(StoreError::SpaceForbidden {
                space: space.clone(),
                write: false,
            });
        }
        let log_id = log.as_str();
        let LogState {
            newest,
            expired_through,
        } = log_state(&tx, log_id).await?;
        let after = resume_after(&tx, log_id, query.since).await?;
        if compaction::is_expired(after, expired_through, query.expired) {
            return Err(StoreError::CursorExpired {
                expired_through: Cursor::at(expired_through),
            });
        }
        let sql = select_changes_sql(query.collection.is_some(), query.exclude_client.is_some());
        let statement = tx.prepare_cached(&sql).await.map_err(database_error)?;
        let after = seq_param(after);
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&log_id, &query.app_id, &after, &fetch];
        if let Some(collection) = &query.collection {
            params.push(collection);
        }
        if let Some(client_id) = &query.exclude_client {
            params.push(client_id);
        }
        let rows = tx
            .query(&statement, &params)
            .await
            .map_err(database_error)?;
        tx.commit().await.map_err(database_error)?;
        let mut changes = rows
            .iter()
            .map(stored_change)
            .collect::<StoreResult<Vec<_>>>()?;
        let has_more = changes.len() > limit;
        changes.truncate(limit);
        if let Some(space) = space {
            for change in &mut changes {
                change.space_id = Some(space.clone());
            }
        }
        let next = page_end(&changes, has_more, newest);
        Ok(ChangePage {
            changes,
            next,
            has_more,
            expired_through,
        })
    }
}

/// Where a `since` resumes: a position as it is, a `c1.<n>` cursor of the
/// previous format at the position its sequence number was migrated to.
async fn resume_after(tx: &Transaction<'_>, log: &str, since: Since) -> StoreResult<u64> {
    let legacy = match since {
        Since::Cursor(cursor) => return Ok(cursor.position()),
        Since::Legacy(legacy) => legacy,
    };
    let statement = tx
        .prepare_cached(
            "SELECT seq FROM mana_legacy_cursors WHERE user_id = $1 AND legacy_seq <= $2
             ORDER BY legacy_seq DESC LIMIT 1",
        )
        .await
        .map_err(database_error)?;
    let row = tx
        .query_opt(&statement, &[&log, &seq_param(legacy)])
        .await
        .map_err(database_error)?;
    Ok(row.map_or(Cursor::START.position(), |row| seq_value(row.get(0))))
}

/// The user's newest position and the last position dropped by compaction,
/// as of the transaction's snapshot.
async fn log_state(tx: &Transaction<'_>, log: &str) -> StoreResult<LogState> {
    let statement = tx
        .prepare_cached("SELECT last_seq, expired_through FROM mana_user_seq WHERE user_id = $1")
        .await
        .map_err(database_error)?;
    let row = tx
        .query_opt(&statement, &[&log])
        .await
        .map_err(database_error)?;
    Ok(row.map_or(LogState::default(), |row| LogState {
        newest: seq_value(row.get(0)),
        expired_through: seq_value(row.get(1)),
    }))
}

pub(crate) fn select_changes_sql(collection: bool, exclude: bool) -> String {
    let mut sql = String::from(concat!(
        select_columns!(),
        " FROM mana_changes WHERE user_id = $1 AND app_id = $2 AND seq > $3"
    ));
    let mut next_param = 5;
    if collection {
        sql.push_str(&format!(" AND table_name = ${next_param}"));
        next_param += 1;
    }
    if exclude {
        sql.push_str(&format!(" AND client_id <> ${next_param}"));
    }
    sql.push_str(" ORDER BY seq LIMIT $4");
    sql
}

pub(crate) fn stored_change(row: &Row) -> StoreResult<StoredChange> {
    let columns = RawColumns {
        op: row.get(5),
        data: row.get(6),
        fields: row.get(7),
        deleted_at: row.get(8),
        actor: row.get(9),
    }
    .decode()?;
    let schema_version: i32 = row.get(11);
    Ok(StoredChange {
        seq: seq_value(row.get(0)),
        event_id: row.get(1),
        app_id: row.get(2),
        table: row.get(3),
        record_id: row.get(4),
        op: columns.op,
        data: columns.data,
        fields: columns.fields,
        deleted_at: columns.deleted_at,
        actor: columns.actor,
        client_id: row.get(10),
        schema_version: u32::try_from(schema_version).unwrap_or(1),
        created_at: row.get(12),
        space_id: None,
    })
}
