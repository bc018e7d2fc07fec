//! Group commit on Postgres: the pushes waiting are stored together.
//!
//! Under many small pushes, Postgres spent most of its time on what every
//! transaction and statement costs whatever it holds (starting executors,
//! answering each statement, committing) rather than on the changes. So
//! pushes queue for a collector task; each time a group may start (one at
//! a time while that keeps up, at most [`GROUPS_IN_FLIGHT`]) it takes every
//! push waiting, up to [`MAX_GROUP`], and stores them in one transaction
//! sent in one go:
//! `BEGIN`, the declaration of all their users for row-level security, one
//! statement that records every changeset id, reserves every user's
//! positions and inserts every change ([`WRITE_GROUP`]), one that reads
//! every push's reply (two when some name a collection and others do not,
//! [`REPLIES`]), and `COMMIT`.
//!
//! A group holds at most one push per user: the counter row of a user can
//! be updated once per statement, and a changeset id is new or repeated
//! for one push only. A user's later pushes wait for the next group, in
//! their order. Counter rows are locked in user order in every group, so
//! two groups in flight (or two instances) wait for each other at most,
//! never deadlock; each reply is read after the write, in the group's
//! transaction, so it ends at its push's own position for the reason
//! `pg_push` gives.
//!
//! If Postgres refuses the group, nothing of it is stored, and each push is
//! stored again as a group of its own: one push the database refuses gets
//! its own error and never fails its neighbours. If the commit itself fails, or the
//! connection breaks before Postgres answers, whether it committed is
//! unknown (Postgres may have had every statement, `COMMIT` included):
//! every push gets the error, and a device that sends it again is
//! recognised by its `changesetId`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use mana_sync_protocol::Change;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::pg_push::{Job, WriteRow};
use crate::postgres::{DECLARE_USERS, database_error, describe, pool_error};
use crate::relay::Announcer;
use crate::{PushAnswer, StoreError, StoreResult};
use params::{GroupReplies, GroupWrite};

/// Most pushes stored in one transaction.
pub(crate) const MAX_GROUP: usize = 256;

/// Most changes in one group, and most bytes of their JSON, unless a single
/// push holds more: a group's statement carries all of them at once, and
/// 256 pushes of up to 10 MiB each must not make one statement of 2.5 GiB.
const MAX_GROUP_CHANGES: usize = 4096;
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Most groups being stored at once. A second group starts only while the
/// first cannot keep up: when a whole group's worth of pushes
/// ([`MAX_GROUP`]) is waiting, or when the first has been in flight for
/// [`SECOND_GROUP_AFTER`] (held up by a lock, say a user's counter row held
/// by an import, or a slow disk). Otherwise pushes gather for the next
/// group: a second group started at once was small, and Postgres spent a
/// quarter more CPU per push for the same rate (README, "Small pushes under
/// load").
const GROUPS_IN_FLIGHT: usize = 2;

/// How long one group may be in flight before a second starts beside it:
/// a few times what a group takes under load on the development machine
/// (2–10 ms), and the most a lock held on one push's user delays the others.
const SECOND_GROUP_AFTER: Duration = Duration::from_millis(25);

/// Stores the pushes of a group: `$1`–`$6`, one element per push, sorted
/// by user (`$1`); `$7`, the first position a log may use; `$8`–`$18`, one
/// element per change, `$8` the push it belongs to (1-based) and `$9` its
/// place in that push. Returns, per push, what
/// [`WRITE`](crate::pg_push::WRITE) returns for one, then the push's place
/// in the group (1-based).
///
/// `clock_timestamp()` is read once per push (the CTE is materialized), so
/// a user's positions keep following the clock, as for a push alone.
/// Counter rows are locked in the order of `$1` (sorted by the caller): a
/// sort in the statement would do the same, but a sort planned with
/// `enable_sort = off` (which the replies' reads need) made the statement
/// take a second.
pub(crate) const WRITE_GROUP: &str = r#"
WITH pushes AS MATERIALIZED (
    SELECT p.*,
        GREATEST((EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT, $7::int8) AS base
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
        WITH ORDINALITY AS p(user_id, app_id, client_id, changeset_id, count, superseding, push)
), fresh AS (
    INSERT INTO mana_changesets (user_id, changeset_id)
    SELECT user_id, changeset_id FROM pushes WHERE changeset_id IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING user_id
), reserved AS (
    INSERT INTO mana_user_seq AS s (user_id, prev_seq, last_seq, superseded)
    SELECT p.user_id, 0, p.base + p.count - 1, p.superseding
    FROM pushes p
    WHERE p.count > 0 AND (p.changeset_id IS NULL OR p.user_id IN (SELECT user_id FROM fresh))
    ON CONFLICT (user_id) DO UPDATE SET
        prev_seq = s.last_seq,
        last_seq = GREATEST(
            EXCLUDED.last_seq,
            s.last_seq + (SELECT q.count FROM pushes q WHERE q.user_id = s.user_id)
        ),
        superseded = s.superseded + EXCLUDED.superseded
    RETURNING user_id, prev_seq, last_seq, expired_through
), inserted AS (
    INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id,
        op, data, fields, deleted_at, actor, client_id, schema_version, created_at)
    SELECT r.user_id, r.last_seq - p.count + c.ord, c.event_id, p.app_id, c.table_name,
        c.record_id, c.op, c.data, c.fields, c.deleted_at, c.actor, p.client_id,
        c.schema_version, now()
    FROM reserved r
    JOIN pushes p ON p.user_id = r.user_id
    JOIN UNNEST($8::int8[], $9::int8[], $10::uuid[], $11::text[], $12::text[], $13::text[],
            $14::text[], $15::text[], $16::text[], $17::text[], $18::int4[])
        AS c(push, ord, event_id, table_name, record_id, op, data, fields, deleted_at, actor,
            schema_version)
        ON c.push = p.push
)
SELECT r.prev_seq, r.last_seq,
    p.changeset_id IS NULL OR p.user_id IN (SELECT user_id FROM fresh),
    CASE WHEN r.user_id IS NULL THEN
        COALESCE((SELECT u.last_seq FROM mana_user_seq u WHERE u.user_id = p.user_id), 0)
    END,
    r.expired_through,
    now(),
    p.push
FROM pushes p LEFT JOIN reserved r ON r.user_id = p.user_id"#;

/// The statement of [`REPLIES`] and [`REPLIES_IN_COLLECTION`].
macro_rules! replies {
    ($collection:literal) => {
        concat!(
            "SELECT c.*, q.push
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[],
                     $7::text[])
                 AS q(user_id, app_id, after, wanted, exclude_client, push, collection)
             CROSS JOIN LATERAL (",
            select_columns!(),
            " FROM mana_changes
                 WHERE user_id = q.user_id AND app_id = q.app_id AND seq > q.after",
            $collection,
            " AND (q.exclude_client IS NULL OR client_id <> q.exclude_client)
                 ORDER BY seq LIMIT q.wanted) c"
        )
    };
}

/// Reads the replies of the pushes of a group that name no collection
/// (`$7` all null): per push, the changes of `$2` in log `$1` after `$3`,
/// at most `$4`, none from device `$5` (when given); each row ends with
/// the push's place in the group (`$6`). Each push's rows come in order,
/// from a short range of the primary key.
pub(super) const REPLIES: &str = replies!("");

/// [`REPLIES`] for the pushes that name a collection (`$7`), from a short
/// range of the collection index.
pub(super) const REPLIES_IN_COLLECTION: &str = replies!(" AND table_name = q.collection");

/// A push waiting for its group, and where its answer goes.
struct Queued {
    job: Job,
    /// The bytes of JSON its changes carry.
    bytes: usize,
    done: Done,
}

/// The queue of pushes waiting for a group. The collector task ends when
/// the last handle is dropped; groups in flight finish.
pub(crate) struct PushGroups {
    queue: mpsc::UnboundedSender<Queued>,
    committed: Arc<AtomicU64>,
}

fn gone() -> StoreError {
    StoreError::Unavailable("the Postgres push queue stopped".into())
}

impl PushGroups {
    /// Starts the collector; groups run on `pool` and are announced by
    /// `announcer`.
    pub(crate) fn start(pool: Pool, announcer: Announcer) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let committed = Arc::new(AtomicU64::new(0));
        tokio::spawn(collect(pool, announcer, waiting, committed.clone()));
        Self { queue, committed }
    }

    /// Groups committed so far.
    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Stores `job` with the next group that may hold it.
    pub(crate) async fn push(&self, job: Job) -> StoreResult<PushAnswer> {
        let (done, answer) = oneshot::channel();
        let bytes = job.changes.iter().map(json_bytes).sum();
        self.queue
            .send(Queued { job, bytes, done })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// A group being stored.
struct InFlight {
    started: Instant,
    task: JoinHandle<()>,
}

async fn collect(
    pool: Pool,
    announcer: Announcer,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    committed: Arc<AtomicU64>,
) {
    let mut waiting: VecDeque<Queued> = VecDeque::new();
    // Oldest first.
    let mut in_flight: Vec<InFlight> = Vec::with_capacity(GROUPS_IN_FLIGHT);
    let mut open = true;
    loop {
        in_flight.retain(|group| !group.task.is_finished());
        while open {
            match queue.try_recv() {
                Ok(queued) => waiting.push_back(queued),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if waiting.is_empty() && !open {
            // Groups in flight finish on their own.
            return;
        }
        let second_due = in_flight
            .first()
            .map_or_else(Instant::now, |first| first.started + SECOND_GROUP_AFTER);
        let may_start = match in_flight.len() {
            0 => true,
            n if n < GROUPS_IN_FLIGHT => waiting.len() >= MAX_GROUP || Instant::now() >= second_due,
            _ => false,
        };
        if may_start && !waiting.is_empty() {
            let group = take_group(&mut waiting);
            let (pool, announcer, committed) = (pool.clone(), announcer.clone(), committed.clone());
            in_flight.push(InFlight {
                started: Instant::now(),
                task: tokio::spawn(async move {
                    store_group(pool, announcer, group, &committed).await;
                }),
            });
            continue;
        }
        // Something that may let a group start: a push, a group done, or
        // the first group in flight for too long.
        tokio::select! {
            queued = queue.recv(), if open => match queued {
                Some(queued) => waiting.push_back(queued),
                None => open = false,
            },
            () = one_done(&mut in_flight) => {}
            () = tokio::time::sleep_until(second_due),
                if in_flight.len() == 1 && !waiting.is_empty() => {}
        }
    }
}

/// Returns when one of the groups `in_flight` is done; never when none is.
async fn one_done(in_flight: &mut [InFlight]) {
    if in_flight.is_empty() {
        std::future::pending::<()>().await;
    }
    // A panicking group answers nobody, but frees its place all the same.
    let _ = futures::future::select_all(in_flight.iter_mut().map(|group| &mut group.task)).await;
}

/// The JSON a change carries (its record and its actor; field values are
/// bounded by the record's size in practice).
fn json_bytes(change: &Change) -> usize {
    let raw = |value: &Option<Box<serde_json::value::RawValue>>| {
        value.as_ref().map_or(0, |value| value.get().len())
    };
    raw(&change.data) + raw(&change.actor)
}

/// The first pushes of `waiting` by different users that fit in a group
/// ([`MAX_GROUP`], [`MAX_GROUP_CHANGES`], [`MAX_GROUP_BYTES`]; the first
/// always fits), sorted by user; the others stay in `waiting`, in their
/// order.
fn take_group(waiting: &mut VecDeque<Queued>) -> Vec<Queued> {
    let mut users = HashSet::new();
    let mut group = Vec::new();
    let (mut changes, mut bytes) = (0, 0);
    let mut rest = VecDeque::new();
    for queued in waiting.drain(..) {
        let fits = group.is_empty()
            || (group.len() < MAX_GROUP
                && changes + queued.job.changes.len() <= MAX_GROUP_CHANGES
                && bytes + queued.bytes <= MAX_GROUP_BYTES);
        if fits && users.insert(queued.job.user.clone()) {
            changes += queued.job.changes.len();
            bytes += queued.bytes;
            group.push(queued);
        } else {
            rest.push_back(queued);
        }
    }
    *waiting = rest;
    group.sort_by(|a, b| a.job.user.as_str().cmp(b.job.user.as_str()));
    group
}

/// How a group's transaction ended, when it did not commit.
enum Failure {
    /// Nothing of the group is stored.
    Refused(StoreError),
    /// Whether the group committed is unknown: the commit failed, or the
    /// connection broke before the database answered (the description).
    Unsure(String, Vec<WriteRow>),
}

/// Where a push's answer goes.
type Done = oneshot::Sender<StoreResult<PushAnswer>>;

async fn store_group(pool: Pool, announcer: Announcer, group: Vec<Queued>, committed: &AtomicU64) {
    let (jobs, answers): (Vec<Job>, Vec<Done>) = group.into_iter().map(|q| (q.job, q.done)).unzip();
    let Err((answers, error)) = commit(&pool, &announcer, &jobs, answers, committed).await else {
        return;
    };
    if jobs.len() == 1 {
        answer_refused(answers, error);
        return;
    }
    tracing::warn!(
        pushes = jobs.len(),
        %error,
        "a group of pushes failed; storing each on its own"
    );
    let alone = jobs.iter().zip(answers).map(|(job, done)| async {
        let alone = std::slice::from_ref(job);
        if let Err((answers, error)) = commit(&pool, &announcer, alone, vec![done], committed).await
        {
            answer_refused(answers, error);
        }
    });
    futures::future::join_all(alone).await;
}

/// Answers the one push of a group Postgres refused with the cause.
fn answer_refused(answers: Vec<Done>, error: StoreError) {
    if let Some(done) = answers.into_iter().next() {
        let _ = done.send(Err(error));
    }
}

/// Stores `jobs` in one transaction, announces them and sends each its
/// answer; when Postgres refused the group (nothing is stored), gives the
/// answers back with the cause.
async fn commit(
    pool: &Pool,
    announcer: &Announcer,
    jobs: &[Job],
    answers: Vec<Done>,
    committed: &AtomicU64,
) -> Result<(), (Vec<Done>, StoreError)> {
    let write = GroupWrite::new(jobs);
    match write_group(pool, jobs, &write).await {
        Ok(results) => {
            committed.fetch_add(1, Ordering::Relaxed);
            for (index, ((job, done), (written, rows))) in
                jobs.iter().zip(answers).zip(results).enumerate()
            {
                if let Some(notice) = written.notice(job, write.event_ids_of(index)) {
                    announcer.announce(notice);
                }
                let _ = done.send(written.answer(job, rows));
            }
            Ok(())
        }
        Err(Failure::Unsure(error, written)) => {
            tracing::error!(pushes = jobs.len(), %error, "a group of pushes may not be stored");
            for (index, (job, done)) in jobs.iter().zip(answers).enumerate() {
                // A notice for nothing is harmless, as long as subscribers
                // read the log rather than trust the write: it carries no
                // changes.
                let notice = written
                    .get(index)
                    .and_then(|written| written.notice(job, write.event_ids_of(index)));
                if let Some(mut notice) = notice {
                    notice.written = None;
                    announcer.announce(notice);
                }
                let _ = done.send(Err(StoreError::Unavailable(error.clone())));
            }
            Ok(())
        }
        Err(Failure::Refused(error)) => Err((answers, error)),
    }
}

/// Runs the group's transaction: per push, what the write returned and its
/// reply's rows (when it asked for a reply).
async fn write_group(
    pool: &Pool,
    jobs: &[Job],
    write: &GroupWrite<'_>,
) -> Result<Vec<(WriteRow, Option<Vec<Row>>)>, Failure> {
    let refused = |error: StoreError| Failure::Refused(error);
    let client = pool.get().await.map_err(pool_error).map_err(refused)?;
    let prepare = |sql: String| {
        let client = &client;
        async move { client.prepare_cached(&sql).await.map_err(database_error) }
    };
    let begin = prepare("BEGIN".into()).await.map_err(refused)?;
    let declare = prepare(DECLARE_USERS.into()).await.map_err(refused)?;
    let write_statement = prepare(WRITE_GROUP.into()).await.map_err(refused)?;
    let replies = [
        GroupReplies::of(jobs, false).map(|reads| (REPLIES, reads)),
        GroupReplies::of(jobs, true).map(|reads| (REPLIES_IN_COLLECTION, reads)),
    ];
    let mut reads = Vec::with_capacity(replies.len());
    for (sql, replies) in replies.iter().flatten() {
        reads.push((
            prepare((*sql).into()).await.map_err(refused)?,
            replies.params(),
        ));
    }
    let commit = prepare("COMMIT".into()).await.map_err(refused)?;

    let declare_params: [&(dyn ToSql + Sync); 1] = [&write.users];
    let write_params = write.params();
    // Sent in this order in one go: `join!` and `join_all` poll each future
    // in turn, and each sends its statement on its first poll.
    let replies = reads
        .iter()
        .map(|(read, params)| client.query(read, params));
    let (begun, declared, written, rows, committed) = futures::join!(
        client.execute(&begin, &[]),
        client.query_one(&declare, &declare_params),
        client.query(&write_statement, &write_params),
        futures::future::join_all(replies),
        client.execute(&commit, &[]),
    );
    // The first failure is the cause; the statements after it were refused.
    // Postgres answered it, so `COMMIT` came after and rolled back: nothing
    // is stored. Without an answer (the connection broke), the `COMMIT` may
    // have been carried out all the same: storing each push again could
    // store twice those without a changeset id, so every push gets the
    // error instead.
    let failed = |error: tokio_postgres::Error| match error.as_db_error() {
        Some(_) => Failure::Refused(database_error(error)),
        None => Failure::Unsure(describe(&error), Vec::new()),
    };
    begun.map_err(failed)?;
    declared.map_err(failed)?;
    // The commit went out with the write: from here on, the group may be
    // stored even if its answer cannot be read.
    let written = in_push_order(&written.map_err(failed)?, jobs.len())
        .map_err(|error| Failure::Unsure(error.to_string(), Vec::new()))?;
    let mut replies: Vec<Option<Vec<Row>>> = jobs
        .iter()
        .map(|job| job.reply.as_ref().map(|_| Vec::new()))
        .collect();
    for rows in rows {
        for row in rows.map_err(failed)? {
            let push: i64 = row
                .try_get(REPLY_PUSH_COLUMN)
                .map_err(|e| Failure::Unsure(describe(&e), Vec::new()))?;
            let reply = usize::try_from(push - 1)
                .ok()
                .and_then(|index| replies.get_mut(index))
                .and_then(Option::as_mut);
            if let Some(reply) = reply {
                reply.push(row);
            }
        }
    }
    if let Err(error) = committed {
        return Err(Failure::Unsure(describe(&error), written));
    }
    Ok(written.into_iter().zip(replies).collect())
}

/// The column of a [`REPLIES`] row that holds its push's place in the
/// group, after the change's columns.
const REPLY_PUSH_COLUMN: usize = 13;

/// The rows of [`WRITE_GROUP`], one for each of the `pushes`, in push order.
fn in_push_order(rows: &[Row], pushes: usize) -> StoreResult<Vec<WriteRow>> {
    let mut written: Vec<Option<WriteRow>> = (0..pushes).map(|_| None).collect();
    for row in rows {
        let push: i64 = row.try_get(6).map_err(database_error)?;
        let slot = usize::try_from(push - 1)
            .ok()
            .and_then(|index| written.get_mut(index));
        if let Some(slot) = slot {
            *slot = Some(WriteRow::of(row)?);
        }
    }
    written
        .into_iter()
        .map(|row| {
            row.ok_or_else(|| {
                StoreError::Database(format!(
                    "the group's write answered {} rows for {pushes} pushes",
                    rows.len()
                ))
            })
        })
        .collect()
}

mod params;
#[cfg(test)]
mod tests;
