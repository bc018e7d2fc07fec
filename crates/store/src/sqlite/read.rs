//! Reading one log's page on SQLite, on whichever connection is at hand: a
//! reader from the pool, or the writer itself right after a push, whose
//! reply it then reads without another thread hop (see
//! [`LogRead::page_at_most`]).

use mana_sync_protocol::{Cursor, LogId, Since, SpaceId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{assemble, database_error, log_state, read_row, seq_param, spaces};
use crate::types::LogState;
use crate::{
    ChangeNotice, ChangePage, ChangeQuery, ExpiredCursor, MAX_PAGE, StoreError, StoreResult,
    compaction,
};

/// A read of one log, owned so it can run on another thread.
pub(crate) struct LogRead {
    /// A user reading a space's log, who must belong to it.
    member: Option<(SpaceId, UserId)>,
    log: LogId,
    app_id: String,
    collection: Option<String>,
    exclude: Option<String>,
    since: Since,
    expired: ExpiredCursor,
    limit: usize,
}

impl LogRead {
    pub(crate) fn new(
        member: Option<(SpaceId, UserId)>,
        log: LogId,
        query: &ChangeQuery<'_>,
    ) -> Self {
        Self {
            member,
            log,
            app_id: query.app_id.to_owned(),
            collection: query.collection.map(str::to_owned),
            exclude: query.exclude_client.map(str::to_owned),
            since: query.since,
            expired: query.expired,
            limit: query.limit.clamp(1, MAX_PAGE),
        }
    }

    /// The page, read in one transaction: the membership, the newest
    /// position and the rows come from the same snapshot.
    pub(crate) fn page(&self, conn: &mut Connection) -> StoreResult<ChangePage> {
        self.read(conn, self.limit)
    }

    /// The page if it holds at most `most` changes, `None` if it would hold
    /// more. A page cut at `most` that has nothing after it is the whole
    /// page: it ends at the log's newest position either way.
    pub(crate) fn page_at_most(
        &self,
        conn: &mut Connection,
        most: usize,
    ) -> StoreResult<Option<ChangePage>> {
        if self.limit <= most {
            return self.page(conn).map(Some);
        }
        let page = self.read(conn, most)?;
        Ok((!page.has_more).then_some(page))
    }

    /// The reply of the push that `notice` announces, without reading, when
    /// that push is all this read could find after `since`: `since` is at or
    /// past the log's newest position before the push (`notice.after`), and
    /// the read leaves the pushing device's own changes out. The page then
    /// ends at the push's last position; changes that later pushes of the
    /// same group stored after it are found from there. `None`: read.
    pub(crate) fn push_reply_unread(&self, notice: &ChangeNotice) -> Option<ChangePage> {
        let Since::Cursor(since) = self.since else {
            return None;
        };
        let written = notice.written.as_ref()?;
        let since = since.position();
        let only_the_push = self.member.is_none()
            && notice.log == self.log
            && self.exclude.as_deref() == Some(notice.client_id.as_str())
            && since >= notice.after
            && !compaction::is_expired(since, written.expired_through, self.expired);
        only_the_push
            .then(|| ChangePage::of(Vec::new(), self.limit, notice.last, written.expired_through))
    }

    fn read(&self, conn: &mut Connection, limit: usize) -> StoreResult<ChangePage> {
        let tx = conn.transaction().map_err(database_error)?;
        if let Some((space, user)) = &self.member
            && spaces::role_of(&tx, space, user)?.is_none()
        {
            return Err(StoreError::SpaceForbidden {
                space: space.clone(),
                write: false,
            });
        }
        let log = self.log.as_str();
        let LogState {
            newest,
            expired_through,
        } = log_state(&tx, log).map_err(database_error)?;
        let after = resume_after(&tx, log, self.since)?;
        if compaction::is_expired(after, expired_through, self.expired) {
            return Err(StoreError::CursorExpired {
                expired_through: Cursor::at(expired_through),
            });
        }
        let sql = select_changes_sql(self.collection.is_some(), self.exclude.is_some());
        let mut statement = tx.prepare_cached(&sql).map_err(database_error)?;
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let after = seq_param(after);
        let mut named: Vec<(&str, &dyn rusqlite::ToSql)> = vec![
            (":user", &log),
            (":app", &self.app_id),
            (":after", &after),
            (":limit", &fetch),
        ];
        if let Some(collection) = &self.collection {
            named.push((":collection", collection));
        }
        if let Some(exclude) = &self.exclude {
            named.push((":exclude", exclude));
        }
        let rows = statement
            .query_map(named.as_slice(), read_row)
            .map_err(database_error)?;
        let mut fetched = Vec::with_capacity(limit.min(64));
        for row in rows {
            let (head, raw) = row.map_err(database_error)?;
            fetched.push(assemble(head, raw)?);
        }
        Ok(ChangePage::of(fetched, limit, newest, expired_through)
            .in_space(self.log.space().as_ref()))
    }
}

/// Where a `since` resumes: a position as it is, a `c1.<n>` cursor of the
/// previous format at the position its sequence number was migrated to.
fn resume_after(conn: &Connection, user: &str, since: Since) -> StoreResult<u64> {
    let legacy = match since {
        Since::Cursor(cursor) => return Ok(cursor.position()),
        Since::Legacy(legacy) => legacy,
    };
    let position: Option<i64> = conn
        .query_row(
            "SELECT seq FROM mana_legacy_cursors WHERE user_id = ?1 AND legacy_seq <= ?2
             ORDER BY legacy_seq DESC LIMIT 1",
            params![user, seq_param(legacy)],
            |row| row.get(0),
        )
        .optional()
        .map_err(database_error)?;
    Ok(position.map_or(Cursor::START.position(), |p| u64::try_from(p).unwrap_or(0)))
}

fn select_changes_sql(collection: bool, exclude: bool) -> String {
    let mut sql = String::from(concat!(
        select_columns!(),
        " FROM mana_changes WHERE user_id = :user AND app_id = :app AND seq > :after"
    ));
    if collection {
        sql.push_str(" AND table_name = :collection");
    }
    if exclude {
        sql.push_str(" AND client_id <> :exclude");
    }
    sql.push_str(" ORDER BY seq LIMIT :limit");
    sql
}
