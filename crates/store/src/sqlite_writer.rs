//! The SQLite writer: group commit.
//!
//! One thread owns the write connection. Pushes queue for it; each time it
//! is free it takes every push waiting (up to [`MAX_GROUP`]) and stores them
//! in one transaction, so one `fsync` makes a whole group durable instead
//! of one push. A push that fails (a database refusal, say) is answered
//! with its error and its neighbours are stored anyway: the group is stored
//! with no savepoints first, and only when a push of it fails is that
//! transaction rolled back and the group stored again with each push under
//! a `SAVEPOINT` of its own, rolled back to it on failure. Savepoints cost
//! every push (each page a push changes is copied to a statement journal
//! first), and a push fails rarely. A repeated `changesetId` is found
//! whether it was stored before or earlier in the same group. Positions are
//! taken in queue order, and the whole group becomes visible at once, so
//! positions still follow commit order. Notices go out, and devices are
//! answered, only after the commit. A push into shared spaces is checked
//! and stored log by log inside the group's transaction: a space the pusher
//! may not write fails the whole push, which is then left out alone.
//!
//! A push that wants a reply (the changes of its user's log after its
//! cursor) has it read on the write connection right after the commit,
//! when it is small ([`INLINE_REPLY_MAX`]): the device is answered without
//! another hop to a reader thread, and the read sees every commit, since
//! there is no other writer. A larger reply is left to a reader connection,
//! so one device far behind never holds up the next group. A device whose
//! cursor was current (at or past the log's newest position before its
//! push) gets its reply without a read: all that came after its cursor is
//! its own push, which it does not get back.
//!
//! Other writes (imports, settings) run on the same thread, between groups.
//! None of them copies the log into the database file (a checkpoint): the
//! checkpointer thread does (`sqlite/checkpoint.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use mana_sync_protocol::{Change, Cursor, UserId};
use rusqlite::{Connection, params};
use time::OffsetDateTime;
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use crate::notice::{ChangeNotice, StoreEvent, Written};
use crate::spaces::{LogChanges, Role, split_by_log};
use crate::sqlite::checkpoint::Checkpoints;
use crate::sqlite::read::LogRead;
use crate::sqlite::spaces::role_of;
use crate::sqlite::{INSERT_CHANGE, database_error, log_state, micros, reserve_positions};
use crate::types::{Reserved, encode};
use crate::{NewChangeset, PushAnswer, PushOutcome, StoreError, StoreResult};

/// Most pushes committed together.
pub(crate) const MAX_GROUP: usize = 512;

/// Most changes of a reply read on the writer thread.
const INLINE_REPLY_MAX: usize = 64;

/// Work for the writer thread.
enum Job {
    Push(Push),
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// One push waiting for the writer.
struct Push {
    user: UserId,
    app_id: String,
    client_id: String,
    changeset_id: Option<String>,
    changes: Vec<Change>,
    /// Boxed: most jobs on the queue are pushes, and a read is large.
    reply: Option<Box<LogRead>>,
    done: oneshot::Sender<StoreResult<PushAnswer>>,
}

/// The handle of the writer thread; the thread ends when the last handle is
/// dropped.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    groups: Arc<AtomicU64>,
}

fn gone() -> StoreError {
    StoreError::Unavailable("the SQLite writer stopped".into())
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub(crate) fn start(
        conn: Connection,
        events: broadcast::Sender<StoreEvent>,
        checkpoints: Checkpoints,
    ) -> StoreResult<Self> {
        let (jobs, queue) = mpsc::channel();
        let groups = Arc::new(AtomicU64::new(0));
        let counted = groups.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, &queue, &events, &counted, &checkpoints))
            .map_err(|e| StoreError::Unavailable(format!("starting the SQLite writer: {e}")))?;
        Ok(Self { jobs, groups })
    }

    /// Transactions that committed groups of pushes so far.
    pub(crate) fn groups(&self) -> u64 {
        self.groups.load(Ordering::Relaxed)
    }

    /// Stores a changeset with the next group.
    pub(crate) async fn push(
        &self,
        user: &UserId,
        changeset: NewChangeset<'_>,
    ) -> StoreResult<PushOutcome> {
        let (outcome, _) = self.push_and_read(user, changeset, None).await?;
        Ok(outcome)
    }

    /// Stores a changeset with the next group and, with `reply`, reads it
    /// after the commit when it holds at most [`INLINE_REPLY_MAX`] changes
    /// (`None`: the caller reads it).
    pub(crate) async fn push_and_read(
        &self,
        user: &UserId,
        changeset: NewChangeset<'_>,
        reply: Option<Box<LogRead>>,
    ) -> StoreResult<PushAnswer> {
        let (done, outcome) = oneshot::channel();
        self.jobs
            .send(Job::Push(Push {
                user: user.clone(),
                app_id: changeset.app_id.to_owned(),
                client_id: changeset.client_id.to_owned(),
                changeset_id: changeset.changeset_id.map(str::to_owned),
                changes: changeset.changes.to_vec(),
                reply,
                done,
            }))
            .map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }

    /// Runs `work` on the write connection, between groups.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> StoreResult<R> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job::Run(Box::new(move |conn| {
                let _ = done.send(work(conn));
            })))
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())
    }
}

fn run(
    mut conn: Connection,
    queue: &mpsc::Receiver<Job>,
    events: &broadcast::Sender<StoreEvent>,
    groups: &AtomicU64,
    checkpoints: &Checkpoints,
) {
    let mut held: Option<Job> = None;
    loop {
        let job = match held.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Run(work) => work(&mut conn),
            Job::Push(first) => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Job::Push(push)) => group.push(push),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut conn, group, events, groups);
            }
        }
        checkpoints.wrote();
        checkpoints.restart_if_due(&conn);
    }
}

/// A push's outcome and its notices, one per log it reached.
type Stored = (PushOutcome, Vec<ChangeNotice>);

/// Stores `group` in one transaction ([`store_group`]), then announces and
/// answers.
fn commit_group(
    conn: &mut Connection,
    group: Vec<Push>,
    events: &broadcast::Sender<StoreEvent>,
    groups: &AtomicU64,
) {
    let results = store_group(conn, &group, micros(OffsetDateTime::now_utc()));
    // Counted before anyone is answered: a device that counts transactions
    // once answered finds this one.
    if results.iter().any(Result::is_ok) {
        groups.fetch_add(1, Ordering::Relaxed);
    }
    announce_and_answer(conn, group, results, events);
}

/// Stores `group` in one transaction and commits it; one result per push.
///
/// The pushes are first stored one after the other with no savepoint
/// between them, which is what nearly every group needs. If one fails, that
/// transaction is rolled back and the group is stored again with each push
/// under its own savepoint: a push that fails is rolled back to where it
/// began and answered with its error, and its neighbours are stored.
fn store_group(conn: &mut Connection, group: &[Push], now: i64) -> Vec<StoreResult<Stored>> {
    let mut savepoints = false;
    'attempt: loop {
        let mut results: Vec<StoreResult<Stored>> = Vec::with_capacity(group.len());
        if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
            fail_rest(&mut results, group.len(), &database_error(error));
            return results;
        }
        for push in group {
            let result = if savepoints {
                store_in_savepoint(conn, push, now)
            } else {
                store(conn, push, now)
            };
            if result.is_err() && !savepoints {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                savepoints = true;
                continue 'attempt;
            }
            if conn.is_autocommit() {
                // The failure ended the whole transaction (I/O error, disk
                // full): nothing of the group so far is stored.
                let cause = match &result {
                    Err(error) => error.to_string(),
                    Ok(_) => "the transaction ended".to_owned(),
                };
                for earlier in &mut results {
                    *earlier = Err(StoreError::Unavailable(cause.clone()));
                }
                results.push(Err(StoreError::Unavailable(cause)));
                // Go on with the rest in a new transaction.
                if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
                    fail_rest(&mut results, group.len(), &database_error(error));
                    return results;
                }
                continue;
            }
            results.push(result);
        }
        // Nothing is left to commit when a failure ended the transaction.
        if !conn.is_autocommit()
            && let Err(error) = conn.execute_batch("COMMIT")
        {
            let error = database_error(error);
            let _ = conn.execute_batch("ROLLBACK");
            for result in &mut results {
                if result.is_ok() {
                    *result = Err(StoreError::Unavailable(error.to_string()));
                }
            }
        }
        return results;
    }
}

/// Sends the notices of the pushes stored and answers every push of the
/// group, after its commit.
fn announce_and_answer(
    conn: &mut Connection,
    group: Vec<Push>,
    results: Vec<StoreResult<Stored>>,
    events: &broadcast::Sender<StoreEvent>,
) {
    for (push, result) in group.into_iter().zip(results) {
        let answer = result.and_then(|(outcome, notices)| {
            // A device whose cursor was current needs no read: its reply is
            // its own push, which it does not get back.
            let unread = match (&push.reply, notices.as_slice()) {
                (Some(reply), [notice]) => reply.push_reply_unread(notice),
                _ => None,
            };
            for notice in notices {
                // Nobody listening is fine: live delivery is optional.
                let _ = events.send(StoreEvent::Changed(Arc::new(notice)));
            }
            let page = match (&push.reply, unread) {
                (_, Some(page)) => Some(page),
                (Some(reply), None) => reply.page_at_most(conn, INLINE_REPLY_MAX)?,
                (None, None) => None,
            };
            Ok((outcome, page))
        });
        // The device may have gone; the push is stored all the same.
        let _ = push.done.send(answer);
    }
}

fn fail_rest(results: &mut Vec<StoreResult<Stored>>, total: usize, error: &StoreError) {
    while results.len() < total {
        results.push(Err(StoreError::Unavailable(error.to_string())));
    }
}

/// One push under a savepoint: stored, or rolled back to where it began.
fn store_in_savepoint(conn: &Connection, push: &Push, now: i64) -> StoreResult<Stored> {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map_err(database_error)
    };
    run("SAVEPOINT push")?;
    match store(conn, push, now) {
        Ok(stored) => {
            run("RELEASE push")?;
            Ok(stored)
        }
        Err(error) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK TO push; RELEASE push");
            }
            Err(error)
        }
    }
}

fn store(conn: &Connection, push: &Push, now: i64) -> StoreResult<Stored> {
    let user = push.user.as_str();
    if let Some(changeset_id) = &push.changeset_id {
        let inserted = conn
            .prepare_cached(
                "INSERT INTO mana_changesets (user_id, changeset_id, created_at)
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut statement| statement.execute(params![user, changeset_id, now]))
            .map_err(database_error)?;
        if inserted == 0 {
            return Ok((PushOutcome::Duplicate, Vec::new()));
        }
    }
    if push.changes.is_empty() {
        let newest = log_state(conn, user).map_err(database_error)?.newest;
        return Ok((
            PushOutcome::Stored {
                count: 0,
                last: Cursor::at(newest),
            },
            Vec::new(),
        ));
    }
    let mut notices = Vec::new();
    let mut last_stored = 0;
    for group in split_by_log(&push.user, &push.changes, |c| c.space_id.as_ref()) {
        // The pusher must be allowed to write the space, checked in the
        // transaction that stores the changes (memberships change on this
        // same writer, so the answer holds until the commit).
        if let Some(space) = &group.space {
            let role = role_of(conn, space, &push.user)?;
            if !role.is_some_and(Role::can_write) {
                return Err(StoreError::SpaceForbidden {
                    space: space.clone(),
                    write: true,
                });
            }
        }
        let (notice, last) = store_log(conn, push, &group, now)?;
        notices.push(notice);
        last_stored = last;
    }
    Ok((
        PushOutcome::Stored {
            count: push.changes.len(),
            last: Cursor::at(last_stored),
        },
        notices,
    ))
}

/// Stores the changes of one log of a push after that log's newest position.
fn store_log(
    conn: &Connection,
    push: &Push,
    group: &LogChanges<Change>,
    now: i64,
) -> StoreResult<(ChangeNotice, u64)> {
    let count = i64::try_from(group.changes.len()).unwrap_or(i64::MAX);
    let superseding = crate::compaction::superseding(&group.changes);
    let log = group.log.as_str();
    // Who wrote a change into a space's log; a user's own log needs no name.
    let author = group.space.as_ref().map(|_| push.user.as_str());
    let Reserved {
        after,
        last,
        expired_through,
    } = reserve_positions(conn, log, count, superseding)?;
    let mut insert = conn.prepare_cached(INSERT_CHANGE).map_err(database_error)?;
    let first = last - count + 1;
    let mut event_ids = Vec::with_capacity(group.changes.len());
    for (offset, change) in (0_i64..).zip(group.changes.iter()) {
        let encoded = encode(change);
        let event_id = Uuid::now_v7();
        event_ids.push(event_id);
        insert
            .execute(params![
                log,
                first + offset,
                event_id.to_string(),
                push.app_id,
                change.table,
                change.id,
                change.op.as_str(),
                encoded.data,
                encoded.fields,
                encoded.deleted_at,
                encoded.actor,
                push.client_id,
                change.schema_version,
                now,
                author,
            ])
            .map_err(database_error)?;
    }
    let (after, last) = (
        u64::try_from(after).unwrap_or(0),
        u64::try_from(last).unwrap_or(0),
    );
    let mut notice = ChangeNotice::for_changeset(
        &group.log,
        &NewChangeset {
            app_id: &push.app_id,
            client_id: &push.client_id,
            changeset_id: None,
            changes: &group.changes,
        },
        after,
        last,
    );
    // A space's batch is read with its members (see the hub), so only a
    // user's own log carries what was written.
    if group.space.is_none() {
        notice.written = Written::of(
            &group.changes,
            &event_ids,
            u64::try_from(first).unwrap_or(0),
            &push.app_id,
            &push.client_id,
            crate::sqlite::from_micros(now),
            u64::try_from(expired_through).unwrap_or(0),
        );
    }
    Ok((notice, last))
}
