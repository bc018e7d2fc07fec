//! A push on Postgres: what the pusher's task hands to the groups
//! ([`PushGroups`]), the statement that writes one log's part of a push (for
//! pushes into shared spaces, `postgres/space_push.rs`), and what a write
//! returned, turned into the push's notice and answer.
//!
//! **Why the reply may be read inside the push transaction.** A reply ends
//! at `newest` only if every position up to `newest` is visible in the
//! reply's snapshot. The read is a statement of its own after the write, so
//! (in `READ COMMITTED`) its snapshot is taken after the write took the
//! user's counter row lock. Every other transaction that reserved positions
//! of this user before us held that lock and released it only after its
//! commit became visible; so every earlier position is visible to the read,
//! and no later one can exist until we commit: the page may end at our own
//! last position. When nothing was reserved (a repeated changeset, no
//! changes), no lock was held and the read proves nothing; the reply is then
//! read afterwards by `changes_after`, which reads the newest position and
//! the rows in one snapshot.

use deadpool_postgres::Pool;
use mana_sync_protocol::{Change, Cursor, LogId, Since, UserId};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::notice::{ChangeNotice, Written};
use crate::postgres::push_group::PushGroups;
use crate::postgres::{ChangeColumns, database_error, page_of, seq_param, seq_value};
use crate::relay::Announcer;
use crate::{
    ChangeQuery, ExpiredCursor, MAX_PAGE, NewChangeset, PushAnswer, PushOutcome, StoreError,
    StoreResult,
};

/// Records the changeset id (if any), reserves `count` positions of log `$1`
/// if it was new (counting the `$16` changes that may supersede earlier
/// ones for compaction), and inserts the changes after them (`$17`: their
/// author, in a space's log). Returns the reservation
/// (null when nothing was reserved), whether the changeset was new, the
/// user's newest position as this statement's snapshot saw it, the last
/// position compaction dropped (for the reply's expiry check), and the
/// changes' `created_at` (the transaction's time). It is
/// planned once per connection (generic plan, see [`DECLARE_USER`]).
pub(crate) const WRITE: &str = "
WITH fresh AS (
    INSERT INTO mana_changesets (user_id, changeset_id)
    SELECT $1, $4::text WHERE $4::text IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING 1
), reserved AS (
    INSERT INTO mana_user_seq AS s (user_id, prev_seq, last_seq, superseded)
    SELECT $1, 0,
        GREATEST((EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT, $6::int8) + $5::int8 - 1,
        $16::int8
    WHERE $5::int8 > 0 AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM fresh))
    ON CONFLICT (user_id) DO UPDATE SET
        prev_seq = s.last_seq,
        last_seq = GREATEST(
            (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT,
            s.last_seq + 1,
            $6::int8
        ) + $5::int8 - 1,
        superseded = s.superseded + $16::int8
    RETURNING prev_seq, last_seq, expired_through
), inserted AS (
    INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id,
        op, data, fields, deleted_at, actor, client_id, schema_version, created_at, author_id)
    SELECT $1, r.last_seq - $5::int8 + u.ord, u.event_id, $2, u.table_name, u.record_id, u.op,
        u.data, u.fields, u.deleted_at, u.actor, $3, u.schema_version, now(), $17::text
    FROM reserved r,
        UNNEST($7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::text[], $14::text[], $15::int4[])
        WITH ORDINALITY AS u(event_id, table_name, record_id, op, data, fields,
            deleted_at, actor, schema_version, ord)
)
SELECT (SELECT prev_seq FROM reserved), (SELECT last_seq FROM reserved),
    $4::text IS NULL OR EXISTS (SELECT 1 FROM fresh),
    COALESCE((SELECT last_seq FROM mana_user_seq WHERE user_id = $1), 0),
    (SELECT expired_through FROM reserved),
    now()";

/// The parameters of one [`WRITE`]: one log's part of a push, in the
/// statement's order.
pub(crate) struct LogWrite<'a> {
    log: &'a str,
    app_id: &'a str,
    client_id: &'a str,
    changeset_id: Option<&'a str>,
    count: i64,
    first_possible: i64,
    /// The changes' event ids, in order.
    pub(crate) event_ids: Vec<Uuid>,
    columns: ChangeColumns<'a>,
    superseding: i64,
    author: Option<&'a str>,
}

impl<'a> LogWrite<'a> {
    /// `changes` into `log` (`author`: the pusher, in a space's log), new
    /// event ids for each.
    pub(crate) fn new(
        log: &'a str,
        app_id: &'a str,
        client_id: &'a str,
        changeset_id: Option<&'a str>,
        changes: &'a [Change],
        author: Option<&'a str>,
    ) -> Self {
        Self {
            log,
            app_id,
            client_id,
            changeset_id,
            count: i64::try_from(changes.len()).unwrap_or(i64::MAX),
            first_possible: seq_param(Cursor::START.position() + 1),
            event_ids: changes.iter().map(|_| Uuid::now_v7()).collect(),
            columns: ChangeColumns::new(changes.iter()),
            superseding: crate::compaction::superseding(changes),
            author,
        }
    }

    /// `$1` to `$17` of [`WRITE`].
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.log,
            &self.app_id,
            &self.client_id,
            &self.changeset_id,
            &self.count,
            &self.first_possible,
            &self.event_ids,
        ];
        params.extend(self.columns.params());
        params.extend([&self.superseding as &(dyn ToSql + Sync), &self.author]);
        params
    }
}

/// Declares the pushing user for row-level security, and plans the
/// transaction's statements once per connection, as
/// [`DECLARE_LOG_READER`](crate::postgres::DECLARE_LOG_READER) does for reads
/// (the reply is such a read).
pub(crate) const DECLARE_USER: &str = crate::postgres::DECLARE_LOG_READER;

/// An owned copy of the push, for the task that stores it.
pub(crate) struct Job {
    pub(crate) user: UserId,
    pub(crate) app_id: String,
    pub(crate) client_id: String,
    pub(crate) changeset_id: Option<String>,
    pub(crate) changes: Vec<Change>,
    pub(crate) reply: Option<Reply>,
}

/// The read that answers a push: the changes of the pusher's log after the
/// device's position.
pub(crate) struct Reply {
    pub(crate) app_id: String,
    pub(crate) collection: Option<String>,
    pub(crate) after: u64,
    pub(crate) exclude_client: Option<String>,
    pub(crate) limit: usize,
    expired: ExpiredCursor,
}

/// Stores `changeset` and, with `reply`, reads it, in one transaction sent
/// in one go with the other pushes waiting ([`PushGroups`]); announces the
/// push once committed. `reply.since` must be a position (the caller
/// resolves `c1.<n>` cursors). The page is `None` when nothing was
/// reserved, or the changeset reaches shared spaces (those take
/// [`space_push`](crate::postgres::space_push)): the caller must read the
/// reply itself.
pub(crate) async fn push(
    pool: Pool,
    announcer: Announcer,
    groups: &PushGroups,
    user: &UserId,
    changeset: NewChangeset<'_>,
    reply: Option<&ChangeQuery<'_>>,
) -> StoreResult<PushAnswer> {
    if crate::spaces::reaches_spaces(changeset.changes) {
        let outcome = crate::postgres::space_push::push(pool, announcer, user, changeset).await?;
        return Ok((outcome, None));
    }
    let job = Job {
        user: user.clone(),
        app_id: changeset.app_id.to_owned(),
        client_id: changeset.client_id.to_owned(),
        changeset_id: changeset.changeset_id.map(str::to_owned),
        changes: changeset.changes.to_vec(),
        reply: reply.map(|query| Reply {
            app_id: query.app_id.to_owned(),
            collection: query.collection.map(str::to_owned),
            after: match query.since {
                Since::Cursor(cursor) => cursor.position(),
                Since::Legacy(_) => Cursor::START.position(),
            },
            exclude_client: query.exclude_client.map(str::to_owned),
            limit: query.limit.clamp(1, MAX_PAGE),
            expired: query.expired,
        }),
    };
    groups.push(job).await
}

/// What [`WRITE`] (or the group's write) returned for one push.
pub(crate) struct WriteRow {
    prev: Option<i64>,
    last: Option<i64>,
    fresh: bool,
    newest_seen: i64,
    expired_through: u64,
    created_at: OffsetDateTime,
}

impl WriteRow {
    pub(crate) fn of(row: &Row) -> StoreResult<Self> {
        Ok(Self {
            prev: row.try_get(0).map_err(database_error)?,
            last: row.try_get(1).map_err(database_error)?,
            fresh: row.try_get(2).map_err(database_error)?,
            newest_seen: row
                .try_get::<_, Option<i64>>(3)
                .map_err(database_error)?
                .unwrap_or(0),
            expired_through: row
                .try_get::<_, Option<i64>>(4)
                .map_err(database_error)?
                .map_or(0, seq_value),
            created_at: row.try_get(5).map_err(database_error)?,
        })
    }

    /// The notice of `job`'s changes (stored with `event_ids`), when
    /// positions were reserved for them.
    pub(crate) fn notice(&self, job: &Job, event_ids: &[Uuid]) -> Option<ChangeNotice> {
        let (prev, last) = (seq_value(self.prev?), seq_value(self.last?));
        let mut notice = ChangeNotice::for_changeset(
            &LogId::of_user(&job.user),
            &NewChangeset {
                app_id: &job.app_id,
                client_id: &job.client_id,
                changeset_id: None,
                changes: &job.changes,
            },
            prev,
            last,
        );
        let count = u64::try_from(job.changes.len()).unwrap_or(u64::MAX);
        notice.written = Written::of(
            &job.changes,
            event_ids,
            (last + 1).saturating_sub(count),
            &job.app_id,
            &job.client_id,
            self.created_at,
            self.expired_through,
        );
        Some(notice)
    }

    /// The push's answer, with the reply `rows` read after the write in the
    /// same transaction.
    ///
    /// That read ends at the push's own last position. Without a
    /// reservation it proves nothing about the log's newest position; the
    /// caller reads again (repeated changesets and empty pushes are rare).
    pub(crate) fn answer(&self, job: &Job, rows: Option<Vec<Row>>) -> StoreResult<PushAnswer> {
        let last = self.last.map(seq_value);
        let outcome = match (self.fresh, last) {
            (false, _) => PushOutcome::Duplicate,
            (true, Some(last)) => PushOutcome::Stored {
                count: job.changes.len(),
                last: Cursor::at(last),
            },
            (true, None) => PushOutcome::Stored {
                count: 0,
                last: Cursor::at(seq_value(self.newest_seen)),
            },
        };
        let page = match (rows, &job.reply, last.filter(|_| self.fresh)) {
            (Some(rows), Some(reply), Some(newest)) => {
                // The push is stored either way; a device whose cursor
                // expired downloads again and sends it once more, which is
                // recognised.
                if crate::compaction::is_expired(reply.after, self.expired_through, reply.expired) {
                    return Err(StoreError::CursorExpired {
                        expired_through: Cursor::at(self.expired_through),
                    });
                }
                Some(page_of(&rows, reply.limit, newest, self.expired_through)?)
            }
            _ => None,
        };
        Ok((outcome, page))
    }
}
