//! Identifiers that arrive in paths, headers and bodies (app, table, record,
//! device, changeset and user ids), and the rules they must follow.
//!
//! The rules exist so that nothing a client sends can fail inside the database
//! (Postgres rejects NUL in text) or blow up an index: every identifier is
//! non-empty, bounded, and free of control characters.

use std::fmt;

/// Longest app id, table name or field name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest record id, device id, changeset id or user id, in bytes.
pub const MAX_ID_LEN: usize = 512;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    /// The identifier is the empty string.
    #[error("must not be empty")]
    Empty,
    /// The identifier is longer than allowed.
    #[error("must be at most {max} bytes long")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The identifier contains a control character (including NUL).
    #[error("must not contain control characters")]
    ControlCharacter,
    /// The identifier contains a character reserved for cursors (space ids:
    /// `~`, `=`, `!`) or starts with `~` (user ids).
    #[error("must not contain `~`, `=` or `!` (user ids: must not start with `~`)")]
    Reserved,
}

/// Checks an identifier against the common rules.
pub fn check_identifier(value: &str, max_len: usize) -> Result<(), IdentError> {
    if value.is_empty() {
        return Err(IdentError::Empty);
    }
    if value.len() > max_len {
        return Err(IdentError::TooLong { max: max_len });
    }
    if value.chars().any(char::is_control) {
        return Err(IdentError::ControlCharacter);
    }
    Ok(())
}

/// The user whose data a request may touch: the `sub` of a verified token, or an
/// operator's explicit choice on the command line.
///
/// Every store operation takes one, and there is no store operation that reads
/// across users; that is how isolation is kept in the queries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Validates and wraps a user id. It must not start with `~`, which
    /// marks the logs of shared spaces ([`LogId`]).
    pub fn new(id: impl Into<String>) -> Result<Self, IdentError> {
        let id = id.into();
        check_identifier(&id, MAX_ID_LEN)?;
        if id.starts_with(SPACE_LOG_PREFIX) {
            return Err(IdentError::Reserved);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What starts the log id of a shared space.
const SPACE_LOG_PREFIX: char = '~';

/// A change log: a user's own (its id is the user id) or a shared space's
/// (`~<spaceId>`). Logs of both kinds live side by side in the store and
/// every operation on a log (push, reads, compaction, notices) is the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId(String);

impl LogId {
    /// The user's own log.
    pub fn of_user(user: &UserId) -> Self {
        Self(user.0.clone())
    }

    /// A shared space's log.
    pub fn of_space(space: &SpaceId) -> Self {
        Self(format!("{SPACE_LOG_PREFIX}{}", space.0))
    }

    /// Reads a log id as stored.
    pub fn parse(text: &str) -> Result<Self, IdentError> {
        match text.strip_prefix(SPACE_LOG_PREFIX) {
            Some(space) => Ok(Self::of_space(&SpaceId::new(space)?)),
            None => Ok(Self::of_user(&UserId::new(text)?)),
        }
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a space's log.
    pub fn is_space(&self) -> bool {
        self.0.starts_with(SPACE_LOG_PREFIX)
    }

    /// The space, when this is a space's log.
    pub fn space(&self) -> Option<SpaceId> {
        self.0
            .strip_prefix(SPACE_LOG_PREFIX)
            .map(|space| SpaceId(space.to_owned()))
    }

    /// The user, when this is a user's own log.
    pub fn user(&self) -> Option<UserId> {
        (!self.is_space()).then(|| UserId(self.0.clone()))
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shared space: a log that several users follow, with members and roles.
/// The server makes the ids (UUIDs); devices send them back on changes
/// (`spaceId`) and in cursors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpaceId(String);

impl SpaceId {
    /// Validates and wraps a space id: an identifier that can also sit in a
    /// cursor (no `~`, `=` or `!`).
    pub fn new(id: impl Into<String>) -> Result<Self, IdentError> {
        let id = id.into();
        check_identifier(&id, MAX_NAME_LEN)?;
        if id.contains(['~', '=', '!']) {
            return Err(IdentError::Reserved);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_space_logs_never_share_an_id() {
        assert_eq!(UserId::new("~s1"), Err(IdentError::Reserved));
        let space = SpaceId::new("s1").expect("valid");
        let log = LogId::of_space(&space);
        assert_eq!(log.as_str(), "~s1");
        assert_eq!(log.space(), Some(space));
        assert_eq!(log.user(), None);
        let alice = UserId::new("alice").expect("valid");
        assert_eq!(LogId::parse("alice").map(|l| l.user()), Ok(Some(alice)));
        assert_eq!(LogId::parse("~s1"), Ok(log));
        assert!(SpaceId::new("a=b").is_err());
    }

    #[test]
    fn identifiers_must_be_printable_bounded_and_present() {
        assert_eq!(check_identifier("tasks", MAX_NAME_LEN), Ok(()));
        assert_eq!(check_identifier("", MAX_NAME_LEN), Err(IdentError::Empty));
        assert_eq!(
            check_identifier(&"x".repeat(MAX_NAME_LEN + 1), MAX_NAME_LEN),
            Err(IdentError::TooLong { max: MAX_NAME_LEN })
        );
        assert_eq!(
            check_identifier("a\0b", MAX_NAME_LEN),
            Err(IdentError::ControlCharacter)
        );
        assert_eq!(check_identifier("ünïcødé ✓", MAX_NAME_LEN), Ok(()));
    }
}
