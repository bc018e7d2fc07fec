//! The cursor a device keeps to resume where it stopped (`syncedUntil` in
//! replies, `since` in requests).
//!
//! A cursor is an opaque string over a server-assigned, per-user sequence
//! number that follows commit order (see the store crate for how that order is
//! kept). Devices must not interpret it. Older clients send RFC 3339 timestamps
//! (`1970-01-01T00:00:00.000Z` meaning "from the start"); those are still
//! accepted and answered with an opaque cursor they then carry on with.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const PREFIX: &str = "c1.";

/// A position in one user's change log: "everything up to and including
/// sequence number N has been seen".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(u64);

impl Cursor {
    /// Before the first change.
    pub const START: Cursor = Cursor(0);

    /// The cursor just after sequence number `seq`.
    pub fn at(seq: u64) -> Self {
        Self(seq)
    }

    /// The last sequence number this cursor covers.
    pub fn seq(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.0)
    }
}

/// Why a `since` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is neither a cursor returned as `syncedUntil` nor an RFC 3339 timestamp")]
pub struct CursorError {
    text: String,
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.strip_prefix(PREFIX)
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .map(Cursor)
            .ok_or_else(|| CursorError {
                text: text.chars().take(80).collect(),
            })
    }
}

/// Where a device wants to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// An opaque cursor this server handed out.
    Cursor(Cursor),
    /// A legacy timestamp: changes stored after this instant.
    Timestamp(OffsetDateTime),
}

impl Since {
    /// Parses a `since` parameter: an opaque cursor, or a legacy RFC 3339 timestamp.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        if let Ok(cursor) = text.parse::<Cursor>() {
            return Ok(Since::Cursor(cursor));
        }
        // A `+hh:mm` offset that reached us through an unescaped query string
        // has become a space; put it back rather than refuse an old client.
        let repaired = text.replace(' ', "+");
        match OffsetDateTime::parse(&repaired, &Rfc3339) {
            Ok(instant) if instant <= OffsetDateTime::UNIX_EPOCH => {
                Ok(Since::Cursor(Cursor::START))
            }
            Ok(instant) => Ok(Since::Timestamp(instant)),
            Err(_) => Err(CursorError {
                text: text.chars().take(80).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_epoch_means_from_the_start() {
        assert_eq!(
            Since::parse("1970-01-01T00:00:00.000Z"),
            Ok(Since::Cursor(Cursor::START))
        );
    }

    #[test]
    fn legacy_timestamps_are_accepted_with_repaired_offsets() {
        let expected = OffsetDateTime::parse("2026-11-25T10:00:00+01:00", &Rfc3339).expect("valid");
        assert_eq!(
            Since::parse("2026-11-25T10:00:00+01:00"),
            Ok(Since::Timestamp(expected))
        );
        assert_eq!(
            Since::parse("2026-11-25T10:00:00 01:00"),
            Ok(Since::Timestamp(expected))
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "0",
            "c1.",
            "c1.-3",
            "c1.1x",
            "c2.5",
            "c1.99999999999999999999999",
            "now",
        ] {
            assert!(Since::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn cursors_round_trip(seq in any::<u64>()) {
            let cursor = Cursor::at(seq);
            prop_assert_eq!(Since::parse(&cursor.to_string()), Ok(Since::Cursor(cursor)));
        }
    }
}
