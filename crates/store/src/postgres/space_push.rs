//! Pushes that reach shared spaces, on Postgres.
//!
//! Such a push is one transaction acting for the pusher: the changeset id is
//! recorded once, then each log the changes go to (the pusher's own, then
//! each space's by id) is checked and written with the same statement as a
//! personal push ([`WRITE`](crate::pg_push::WRITE)). Writing a space needs
//! the `editor` or `owner` role: checked here, to refuse with the space's
//! name, and again by row-level security on the insert (the
//! `mana_log_isolation` policy), so a bug here cannot let a viewer or a
//! stranger write. Any refusal rolls back the whole changeset. These pushes
//! are not pipelined like personal ones: they are rarer, and each log
//! needs its check first.

use deadpool_postgres::Pool;
use mana_sync_protocol::{Change, Cursor, UserId};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{ChangeColumns, PostgresStore, database_error, pool_error, seq_param, seq_value};
use crate::notice::ChangeNotice;
use crate::relay::Announcer;
use crate::spaces::{Role, split_by_log};
use crate::{NewChangeset, PushOutcome, StoreError, StoreResult};

/// An owned copy of the push, for the task that runs it.
struct Job {
    user: UserId,
    app_id: String,
    client_id: String,
    changeset_id: Option<String>,
    changes: Vec<Change>,
}

/// Stores `changeset` in every log it reaches, or nothing of it; announces
/// each log's part once committed.
pub(crate) async fn push(
    pool: Pool,
    announcer: Announcer,
    user: &UserId,
    changeset: NewChangeset<'_>,
) -> StoreResult<PushOutcome> {
    let job = Job {
        user: user.clone(),
        app_id: changeset.app_id.to_owned(),
        client_id: changeset.client_id.to_owned(),
        changeset_id: changeset.changeset_id.map(str::to_owned),
        changes: changeset.changes.to_vec(),
    };
    // On a task of its own: a device that hangs up cannot cancel it between
    // the commit and the notices.
    tokio::spawn(run(pool, announcer, job))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

async fn run(pool: Pool, announcer: Announcer, job: Job) -> StoreResult<PushOutcome> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_acting(&mut client, job.user.as_str(), false).await?;
    if let Some(changeset_id) = &job.changeset_id {
        let record = tx
            .prepare_cached(
                "INSERT INTO mana_changesets (user_id, changeset_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(database_error)?;
        let inserted = tx
            .execute(&record, &[&job.user.as_str(), changeset_id])
            .await
            .map_err(database_error)?;
        if inserted == 0 {
            return Ok(PushOutcome::Duplicate);
        }
    }
    let write = tx
        .prepare_cached(crate::pg_push::WRITE)
        .await
        .map_err(database_error)?;
    let first_possible = seq_param(Cursor::START.position() + 1);
    let no_changeset: Option<&str> = None;
    let mut notices = Vec::new();
    let mut last_stored = 0;
    for group in split_by_log(&job.user, &job.changes, |c| c.space_id.as_ref()) {
        if let Some(space) = &group.space {
            let role = super::spaces::role_in(&tx, space, job.user.as_str()).await?;
            if !role.is_some_and(Role::can_write) {
                return Err(StoreError::SpaceForbidden {
                    space: space.clone(),
                    write: true,
                });
            }
        }
        let log = group.log.as_str();
        let author = group.space.as_ref().map(|_| job.user.as_str());
        let count = i64::try_from(group.changes.len()).unwrap_or(i64::MAX);
        let superseding = crate::compaction::superseding(&group.changes);
        let columns = ChangeColumns::new(group.changes.iter());
        let event_ids: Vec<Uuid> = group.changes.iter().map(|_| Uuid::now_v7()).collect();
        let params: [&(dyn ToSql + Sync); 17] = [
            &log,
            &job.app_id,
            &job.client_id,
            &no_changeset,
            &count,
            &first_possible,
            &event_ids,
            &columns.tables,
            &columns.record_ids,
            &columns.ops,
            &columns.data,
            &columns.fields,
            &columns.deleted_at,
            &columns.actors,
            &columns.schema_versions,
            &superseding,
            &author,
        ];
        let written = tx
            .query_one(&write, &params)
            .await
            .map_err(database_error)?;
        let (Some(prev), Some(last)) = (
            written.get::<_, Option<i64>>(0),
            written.get::<_, Option<i64>>(1),
        ) else {
            return Err(StoreError::Unavailable(format!(
                "no positions were reserved in log `{log}`"
            )));
        };
        last_stored = seq_value(last);
        notices.push(ChangeNotice::for_changeset(
            &group.log,
            &NewChangeset {
                app_id: &job.app_id,
                client_id: &job.client_id,
                changeset_id: None,
                changes: &group.changes,
            },
            seq_value(prev),
            last_stored,
        ));
    }
    let committed = tx.commit().await;
    // Whether a failed commit committed is unknown; a notice for nothing is
    // harmless.
    for notice in notices {
        announcer.announce(notice);
    }
    committed.map_err(database_error)?;
    Ok(PushOutcome::Stored {
        count: job.changes.len(),
        last: Cursor::at(last_stored),
    })
}
