//! What a device follows, and where it stands in each log.
//!
//! A client of the seed's protocol follows its user's own log, with one
//! cursor. A client that lists `spaces` in `X-Sync-Features` follows its
//! own log and the log of every shared space its user belongs to, with a
//! cursor each ([`SpacesCursor`] on the wire). Reads go log by log — the
//! own log first, then spaces by id — until a page is full, so one request
//! still returns at most one page, and a log that was not reached keeps its
//! cursor for the next request.

use std::collections::BTreeMap;

use mana_sync_protocol::cursor::format_with_expiry;
use mana_sync_protocol::space_cursor::format_spaces_cursor;
use mana_sync_protocol::{Cursor, LogId, Resume, Since, SpaceId, SpacesCursor, UserId};
use mana_sync_store::{ChangePage, ExpiredCursor};

use crate::service::ServiceError;

/// How a client reads and writes cursors, from the features it lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CursorDialect {
    /// It is told about expired cursors (`cursor-expired`): its cursors
    /// carry the expiry they were handed out with
    /// ([`format_with_expiry`]), and an expired one is refused with
    /// `cursor_expired`. Otherwise (the seed's clients) it is served from
    /// its cursor.
    pub told_expiry: bool,
    /// It follows shared spaces (`spaces`): its cursor names a position per
    /// log ([`SpacesCursor`]), and changes from spaces reach it.
    pub follows_spaces: bool,
}

/// Where a device resumes one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    /// Where to resume.
    pub since: Since,
    /// The last dropped position the server had when the cursor was handed
    /// out (0: none).
    pub known_expiry: u64,
}

impl LogCursor {
    /// From the start of the log.
    pub const START: LogCursor = LogCursor {
        since: Since::START,
        known_expiry: 0,
    };

    /// After `page`.
    pub fn after(page: &ChangePage) -> Self {
        Self {
            since: Since::Cursor(page.next),
            known_expiry: page.expired_through,
        }
    }

    /// The position reached (legacy cursors have not been resolved yet: the
    /// start).
    pub fn position(self) -> u64 {
        match self.since {
            Since::Cursor(cursor) => cursor.position(),
            Since::Legacy(_) => Cursor::START.position(),
        }
    }

    /// What a read does if this cursor turns out older than dropped history.
    pub fn expired(self, dialect: CursorDialect) -> ExpiredCursor {
        if dialect.told_expiry {
            ExpiredCursor::Refuse {
                known: self.known_expiry,
            }
        } else {
            ExpiredCursor::Serve
        }
    }

    fn format(self, dialect: CursorDialect) -> String {
        let cursor = Cursor::at(self.position());
        if dialect.told_expiry {
            format_with_expiry(cursor, self.known_expiry)
        } else {
            cursor.to_string()
        }
    }
}

impl From<Resume> for LogCursor {
    fn from(resume: Resume) -> Self {
        Self {
            since: resume.since,
            known_expiry: resume.known_expiry,
        }
    }
}

/// Where a device stands in each log it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursors {
    /// The user's own log.
    pub own: LogCursor,
    /// The spaces the device downloaded (only for clients that follow
    /// spaces).
    pub spaces: BTreeMap<SpaceId, LogCursor>,
}

impl LogCursors {
    /// Every log from its start.
    pub fn start() -> Self {
        Self {
            own: LogCursor::START,
            spaces: BTreeMap::new(),
        }
    }

    /// Parses a `since` in `dialect`.
    pub fn parse(text: &str, dialect: CursorDialect) -> Result<Self, ServiceError> {
        if dialect.follows_spaces {
            let cursor = SpacesCursor::parse(text)?;
            return Ok(Self {
                own: cursor.own.into(),
                spaces: cursor
                    .spaces
                    .into_iter()
                    .map(|(space, resume)| (space, resume.into()))
                    .collect(),
            });
        }
        let own = if dialect.told_expiry {
            Resume::parse(text)?.into()
        } else {
            LogCursor {
                since: Since::parse(text)?,
                known_expiry: 0,
            }
        };
        Ok(Self {
            own,
            spaces: BTreeMap::new(),
        })
    }

    /// The cursor as `dialect` writes it.
    pub fn format(&self, dialect: CursorDialect) -> String {
        let own = self.own.format(dialect);
        if !dialect.follows_spaces {
            return own;
        }
        let spaces: Vec<(&SpaceId, String)> = self
            .spaces
            .iter()
            .map(|(space, cursor)| (space, cursor.format(dialect)))
            .collect();
        format_spaces_cursor(
            &own,
            spaces
                .iter()
                .map(|(space, cursor)| (*space, cursor.as_str())),
        )
    }

    /// The cursor of `log` (`None`: a space not downloaded yet).
    pub fn get(&self, log: &LogRef<'_>) -> Option<LogCursor> {
        match log {
            LogRef::Own => Some(self.own),
            LogRef::Space(space) => self.spaces.get(*space).copied(),
        }
    }

    /// Sets the cursor of `log`.
    pub fn set(&mut self, log: &LogRef<'_>, cursor: LogCursor) {
        match log {
            LogRef::Own => self.own = cursor,
            LogRef::Space(space) => {
                self.spaces.insert((*space).clone(), cursor);
            }
        }
    }
}

/// One log a device follows, as a read names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRef<'a> {
    /// The user's own log.
    Own,
    /// A shared space's log.
    Space(&'a SpaceId),
}

impl LogRef<'_> {
    /// The space, for a read's query.
    pub fn space(&self) -> Option<&SpaceId> {
        match self {
            LogRef::Own => None,
            LogRef::Space(space) => Some(space),
        }
    }

    /// The log's id, for `user`.
    pub fn id(&self, user: &UserId) -> LogId {
        match self {
            LogRef::Own => LogId::of_user(user),
            LogRef::Space(space) => LogId::of_space(space),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(id: &str) -> SpaceId {
        SpaceId::new(id).expect("valid")
    }

    #[test]
    fn each_dialect_reads_back_what_it_writes() {
        let mut cursors = LogCursors::start();
        cursors.own = LogCursor {
            since: Since::Cursor(Cursor::at(5_000_000_000)),
            known_expiry: 2_000_000_000,
        };
        cursors.set(
            &LogRef::Space(&space("house")),
            LogCursor {
                since: Since::Cursor(Cursor::at(7_000_000_000)),
                known_expiry: 0,
            },
        );
        for (told_expiry, follows_spaces) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            let dialect = CursorDialect {
                told_expiry,
                follows_spaces,
            };
            let text = cursors.format(dialect);
            let parsed = LogCursors::parse(&text, dialect).expect("parses");
            assert_eq!(parsed.own.position(), 5_000_000_000, "{text}");
            assert_eq!(
                parsed.own.known_expiry,
                if told_expiry { 2_000_000_000 } else { 0 }
            );
            assert_eq!(parsed.spaces.len(), usize::from(follows_spaces), "{text}");
            if !follows_spaces {
                assert!(
                    !text.contains('~'),
                    "a client without spaces gets a plain cursor: {text}"
                );
            }
        }
    }

    #[test]
    fn a_client_without_spaces_cannot_send_a_spaces_cursor() {
        let text = format!("{}~house={}", Cursor::START, Cursor::START);
        let plain = CursorDialect::default();
        assert!(LogCursors::parse(&text, plain).is_err());
        let spaces = CursorDialect {
            told_expiry: false,
            follows_spaces: true,
        };
        assert_eq!(
            LogCursors::parse(&text, spaces)
                .expect("parses")
                .spaces
                .len(),
            1
        );
    }
}
