//! Pushes that reach shared spaces, on Postgres.
//!
//! Such a push is one transaction acting for the pusher: the changeset id is
//! recorded once, then each log the changes go to (the pusher's own, then
//! each space's by id) is written with the same statement as a personal push
//! ([`WRITE`]). Writing a space needs the `editor` or `owner` role: read in
//! the same transaction, to refuse with the space's name, and enforced again
//! by row-level security on the insert (the `mana_log_isolation` policy), so
//! a bug here cannot let a viewer or a stranger write. Any refusal rolls back
//! the whole changeset.
//!
//! The statements are pipelined like a personal push's: `BEGIN`, the user's
//! declaration, the changeset id, every role check and every log's write go
//! in one round trip; `COMMIT` (or `ROLLBACK`, for a repeated changeset or a
//! refusal) in a second, since it depends on the answers.

use deadpool_postgres::Pool;
use futures::future::join_all;
use mana_sync_protocol::{Change, Cursor, UserId};
use tokio_postgres::types::ToSql;

use super::spaces::ROLE_IN;
use super::{database_error, pool_error, seq_value};
use crate::notice::ChangeNotice;
use crate::pg_push::{DECLARE_USER, LogWrite, WRITE};
use crate::relay::Announcer;
use crate::spaces::{LogChanges, Role, split_by_log};
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
    let client = pool.get().await.map_err(pool_error)?;
    let prepare = |sql: &'static str| {
        let client = &client;
        async move { client.prepare_cached(sql).await.map_err(database_error) }
    };
    let begin = prepare("BEGIN").await?;
    let declare = prepare(DECLARE_USER).await?;
    let record = prepare(RECORD_CHANGESET).await?;
    let role_in = prepare(ROLE_IN).await?;
    let write = prepare(WRITE).await?;
    let commit = prepare("COMMIT").await?;
    let rollback = prepare("ROLLBACK").await?;

    let user_id = job.user.as_str();
    let groups = split_by_log(&job.user, &job.changes, |c| c.space_id.as_ref());
    let declare_params: [&(dyn ToSql + Sync); 1] = [&user_id];
    let spaces: Vec<&str> = groups
        .iter()
        .filter_map(|group| group.space.as_ref().map(|space| space.as_str()))
        .collect();
    let role_params: Vec<[&(dyn ToSql + Sync); 2]> = spaces
        .iter()
        .map(|space| -> [&(dyn ToSql + Sync); 2] { [space, &user_id] })
        .collect();
    let writes: Vec<LogWrite<'_>> = groups
        .iter()
        .map(|group| {
            let author = group.space.as_ref().map(|_| user_id);
            LogWrite::new(
                group.log.as_str(),
                &job.app_id,
                &job.client_id,
                None,
                &group.changes,
                author,
            )
        })
        .collect();
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = writes.iter().map(LogWrite::params).collect();

    // Sent in this order in one go (`join!` and `join_all` poll in order,
    // and each statement is sent on its first poll): the changeset id, the
    // pusher's role in each space, then each log's write. Whether to commit
    // depends on the answers, so that is a second round trip.
    let (begun, declared, recorded, roles, written) = futures::join!(
        client.execute(&begin, &[]),
        client.query_one(&declare, &declare_params),
        async {
            match &job.changeset_id {
                Some(id) => client.execute(&record, &[&user_id, id]).await.map(Some),
                None => Ok(None),
            }
        },
        join_all(
            role_params
                .iter()
                .map(|params| client.query_opt(&role_in, params))
        ),
        join_all(params.iter().map(|params| client.query_one(&write, params))),
    );
    let checked = check(begun, declared, recorded, &groups, roles, written);
    let reservations = match checked {
        Ok(Some(reservations)) => reservations,
        other => {
            // A repeated changeset or a refusal: nothing of it may stay.
            if let Err(error) = client.execute(&rollback, &[]).await {
                // A connection that could not roll back serves nobody else.
                drop(deadpool_postgres::Object::take(client));
                other?;
                return Err(database_error(error));
            }
            return other.map(|_| PushOutcome::Duplicate);
        }
    };
    let committed = client.execute(&commit, &[]).await;
    // Whether a failed commit committed is unknown; a notice for nothing is
    // harmless.
    for (group, (prev, last)) in groups.iter().zip(&reservations) {
        announcer.announce(ChangeNotice::for_changeset(
            &group.log,
            &NewChangeset {
                app_id: &job.app_id,
                client_id: &job.client_id,
                changeset_id: None,
                changes: &group.changes,
            },
            *prev,
            *last,
        ));
    }
    committed.map_err(database_error)?;
    Ok(PushOutcome::Stored {
        count: job.changes.len(),
        // The last log's, as before pipelining (logs are written in order).
        last: Cursor::at(reservations.last().map_or(0, |(_, last)| *last)),
    })
}

/// Records the changeset id; nothing when it is known (a repeated push).
const RECORD_CHANGESET: &str = "INSERT INTO mana_changesets (user_id, changeset_id) VALUES ($1, $2)
     ON CONFLICT DO NOTHING";

type Answer<T> = Result<T, tokio_postgres::Error>;

/// The pipeline's answers in the order they were sent: the first failure is
/// the cause (Postgres refused the statements after it). `Ok(None)`: a
/// repeated changeset. Otherwise each log's reserved positions (previous,
/// last), in the order of `groups`. A space the pusher may not write is
/// refused by its role, before its write's answer is looked at (on Postgres
/// row-level security refused that write too, unless the server's role
/// bypasses it).
fn check(
    begun: Answer<u64>,
    declared: Answer<tokio_postgres::Row>,
    recorded: Answer<Option<u64>>,
    groups: &[LogChanges<Change>],
    roles: Vec<Answer<Option<tokio_postgres::Row>>>,
    written: Vec<Answer<tokio_postgres::Row>>,
) -> StoreResult<Option<Vec<(u64, u64)>>> {
    begun.map_err(database_error)?;
    declared.map_err(database_error)?;
    if recorded.map_err(database_error)? == Some(0) {
        return Ok(None);
    }
    let spaces = groups.iter().filter_map(|group| group.space.as_ref());
    for (space, role) in spaces.zip(roles) {
        let role = role
            .map_err(database_error)?
            .map(|row| super::spaces::role(row.get(0)))
            .transpose()?;
        if !role.is_some_and(Role::can_write) {
            return Err(StoreError::SpaceForbidden {
                space: space.clone(),
                write: true,
            });
        }
    }
    let mut reservations = Vec::with_capacity(written.len());
    for (group, row) in groups.iter().zip(written) {
        let row = row.map_err(database_error)?;
        let (Some(prev), Some(last)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1))
        else {
            return Err(StoreError::Unavailable(format!(
                "no positions were reserved in log `{}`",
                group.log.as_str()
            )));
        };
        reservations.push((seq_value(prev), seq_value(last)));
    }
    Ok(Some(reservations))
}
