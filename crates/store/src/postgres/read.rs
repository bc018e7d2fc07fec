//! Reading a log on Postgres: one page of changes after a cursor, from one
//! snapshot, acting for the reader so that row-level security applies.

use deadpool_postgres::{GenericClient, Transaction};
use mana_sync_protocol::{Cursor, LogId, Since};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PostgresStore, database_error, pool_error, seq_param, seq_value, spaces};
use crate::compaction;
use crate::types::{LogState, RawColumns};
use crate::{ChangePage, ChangeQuery, MAX_PAGE, StoreError, StoreResult, StoredChange};

impl PostgresStore {
    /// Reads `log` acting for `actor` (row-level security decides what it
    /// may see): the changes after `query.since`, in commit order.
    ///
    /// One repeatable-read transaction, so the newest position and the rows
    /// come from one snapshot and every position up to `newest` is visible.
    /// Its statements are pipelined (one round trip): `BEGIN`, the
    /// declaration, the reader's role in a space, the log's state, the rows
    /// and `COMMIT`. The answers are checked in that order; a reader that is
    /// not a member (row-level security showed them nothing) is refused with
    /// the space's name, and an expired cursor is refused whatever rows came
    /// back.
    pub(super) async fn read(
        &self,
        actor: &str,
        log: &LogId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let log_id = log.as_str();
        let after = match query.since {
            Since::Cursor(cursor) => cursor.position(),
            // A `c1.<n>` cursor's position was fixed when the log was
            // renumbered, so it may be looked up before the snapshot.
            Since::Legacy(_) => {
                let mut client = self.pool.get().await.map_err(pool_error)?;
                let tx = Self::begin_acting(&mut client, actor, true).await?;
                let after = resume_after(&tx, log_id, query.since).await?;
                tx.commit().await.map_err(database_error)?;
                after
            }
        };
        let client = self.pool.get().await.map_err(pool_error)?;
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare_cached(&sql).await.map_err(database_error) }
        };
        let begin = prepare("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into()).await?;
        let declare = prepare(super::DECLARE_LOG_READER.into()).await?;
        let role_in = prepare(spaces::ROLE_IN.into()).await?;
        let state = prepare(LOG_STATE.into()).await?;
        let page = PageQuery::new(
            log_id,
            query.app_id,
            after,
            limit,
            query.collection,
            query.exclude_client,
        );
        let select = prepare(page.sql()).await?;
        let commit = prepare("COMMIT".into()).await?;

        // A user reading a space's log must belong to it (row-level
        // security would show such a reader nothing; say why instead).
        let space = log.space();
        let checked_space = space.as_ref().filter(|_| actor != log_id);
        let space_id = checked_space.map(|space| space.as_str());
        let params = page.params();
        let declare_params: [&(dyn ToSql + Sync); 1] = [&actor];
        let role_params: [&(dyn ToSql + Sync); 2] = [&space_id, &actor];
        let state_params: [&(dyn ToSql + Sync); 1] = [&log_id];
        // Sent in this order in one go: `join!` polls each future in turn,
        // and each sends its statement on its first poll.
        let (begun, declared, role, state, rows, committed) = futures::join!(
            client.execute(&begin, &[]),
            client.query_one(&declare, &declare_params),
            async {
                match space_id {
                    Some(_) => client.query_opt(&role_in, &role_params).await.map(Some),
                    None => Ok(None),
                }
            },
            client.query_opt(&state, &state_params),
            client.query(&select, &params),
            client.execute(&commit, &[]),
        );
        // The first failure is the cause; the statements after it were refused.
        begun.map_err(database_error)?;
        declared.map_err(database_error)?;
        if let (Some(space), Some(None)) = (checked_space, role.map_err(database_error)?) {
            return Err(StoreError::SpaceForbidden {
                space: space.clone(),
                write: false,
            });
        }
        let LogState {
            newest,
            expired_through,
        } = state
            .map_err(database_error)?
            .map_or(LogState::default(), |row| LogState {
                newest: seq_value(row.get(0)),
                expired_through: seq_value(row.get(1)),
            });
        if compaction::is_expired(after, expired_through, query.expired) {
            return Err(StoreError::CursorExpired {
                expired_through: Cursor::at(expired_through),
            });
        }
        let rows = rows.map_err(database_error)?;
        committed.map_err(database_error)?;
        Ok(page_of(&rows, limit, newest, expired_through)?.in_space(space.as_ref()))
    }
}

/// The page `rows` make: at most `limit` changes (one more was fetched to
/// tell whether more follow), ending at `newest` when none do.
pub(crate) fn page_of(
    rows: &[Row],
    limit: usize,
    newest: u64,
    expired_through: u64,
) -> StoreResult<ChangePage> {
    let fetched = rows
        .iter()
        .map(stored_change)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(ChangePage::of(fetched, limit, newest, expired_through))
}

/// A log's newest position and the last position compaction dropped.
pub(super) const LOG_STATE: &str =
    "SELECT last_seq, expired_through FROM mana_user_seq WHERE user_id = $1";

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

/// One page of a log, as [`select_changes_sql`] reads it: the statement and
/// its parameters, in order (a read, and a push's reply).
pub(crate) struct PageQuery<'a> {
    log: &'a str,
    app_id: &'a str,
    after: i64,
    /// One row more than the page, to tell whether more wait.
    fetch: i64,
    collection: Option<&'a str>,
    exclude_client: Option<&'a str>,
}

impl<'a> PageQuery<'a> {
    /// At most `limit` changes of `app_id` in `log` after position `after`.
    pub(crate) fn new(
        log: &'a str,
        app_id: &'a str,
        after: u64,
        limit: usize,
        collection: Option<&'a str>,
        exclude_client: Option<&'a str>,
    ) -> Self {
        Self {
            log,
            app_id,
            after: seq_param(after),
            fetch: i64::try_from(limit + 1).unwrap_or(i64::MAX),
            collection,
            exclude_client,
        }
    }

    pub(crate) fn sql(&self) -> String {
        select_changes_sql(self.collection.is_some(), self.exclude_client.is_some())
    }

    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&self.log, &self.app_id, &self.after, &self.fetch];
        if let Some(collection) = &self.collection {
            params.push(collection);
        }
        if let Some(client_id) = &self.exclude_client {
            params.push(client_id);
        }
        params
    }
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
