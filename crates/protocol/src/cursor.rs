//! The cursor a device keeps to resume where it stopped (`syncedUntil` in
//! replies, `since` in requests).
//!
//! A cursor is a **position** in one user's change log. Positions follow
//! commit order (see the store crate for how that order is kept), and each
//! position is also a server timestamp: the nanoseconds since the Unix epoch
//! at which its change was stored, reserved as `max(now, previous + 1)`. It is
//! printed as a fixed-width RFC 3339 UTC timestamp with nine fractional digits
//! (`2026-11-29T19:20:00.123456789Z`), so that:
//!
//! - the string order of cursors is their numeric order, which is commit
//!   order: the seed's clients compare cursors as strings (they take the
//!   string minimum of their collections' cursors and their own clock) and
//!   lose nothing doing so;
//! - a legacy `since` timestamp (a seed client's clock, or the epoch for
//!   "from the start") and a cursor are the same kind of value: "the changes
//!   stored after this instant".
//!
//! Our own clients treat the cursor as opaque. Cursors of the previous format
//! (`c1.<n>`, a plain sequence number) are still accepted as
//! [`Since::Legacy`]; the store translates them.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The prefix of the previous cursor format, `c1.<sequence number>`.
const LEGACY_PREFIX: &str = "c1.";

/// A position in one user's change log: "everything up to and including
/// position N has been seen". N is nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(u64);

impl Default for Cursor {
    fn default() -> Self {
        Self::START
    }
}

impl Cursor {
    /// Before the first change: one millisecond after the epoch. Every stored
    /// position is later (they are server clock readings), and this cursor
    /// prints as `1970-01-01T00:00:00.001000000Z`, which compares greater than
    /// the seed clients' "never synced" value `1970-01-01T00:00:00.000Z`.
    pub const START: Cursor = Cursor(1_000_000);

    /// The largest position a database column (a signed 64-bit integer) holds:
    /// 2262-04-11T23:47:16.854775807Z.
    pub const MAX: Cursor = Cursor(i64::MAX as u64);

    /// The cursor just after position `position`, clamped to
    /// [`Cursor::START`]`..=`[`Cursor::MAX`].
    pub fn at(position: u64) -> Self {
        Self(position.clamp(Self::START.0, Self::MAX.0))
    }

    /// The last position this cursor covers.
    pub fn position(self) -> u64 {
        self.0
    }

    /// The cursor of an instant: the changes stored after it are the ones
    /// not yet seen. Instants before [`Cursor::START`] mean "from the start".
    pub fn from_instant(instant: OffsetDateTime) -> Self {
        let nanos = instant.unix_timestamp_nanos();
        Self::at(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
    }

    /// The instant this position denotes.
    pub fn instant(self) -> OffsetDateTime {
        // Every u64 ≤ i64::MAX nanoseconds is a valid instant (year 2262).
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Cursor {
    /// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, always 30 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::timestamp::format_nanos(self.instant()))
    }
}

/// Why a `since` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is neither a cursor returned as `syncedUntil` nor an RFC 3339 timestamp")]
pub struct CursorError {
    text: String,
}

impl CursorError {
    /// The error for `text` (quoted in part in the message).
    pub(crate) fn new(text: &str) -> Self {
        Self {
            text: text.chars().take(80).collect(),
        }
    }
}

/// The separator between a cursor and the expiry it was handed out with.
const EXPIRY_SEPARATOR: char = '!';

/// A `since` with the server's expiry at the time the cursor was handed out
/// (see [`format_with_expiry`]): clients that are told about expired cursors
/// get cursors that say which drop of history they already account for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Where to resume.
    pub since: Since,
    /// The last dropped position the server had when it handed the cursor
    /// out (0: none). History dropped up to there cannot have been missed.
    pub known_expiry: u64,
}

impl Resume {
    /// Parses `CURSOR` or `CURSOR!EXPIRY` (what [`format_with_expiry`] writes).
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let (since, expiry) = match text.split_once(EXPIRY_SEPARATOR) {
            None => (text, None),
            Some((since, expiry)) => (since, Some(expiry)),
        };
        let known_expiry = match expiry.map(Since::parse) {
            None => 0,
            Some(Ok(Since::Cursor(cursor))) => cursor.position(),
            Some(_) => {
                return Err(CursorError {
                    text: text.chars().take(80).collect(),
                });
            }
        };
        Ok(Resume {
            since: Since::parse(since)?,
            known_expiry,
        })
    }
}

/// A cursor for a client that is told about expired cursors: the plain
/// cursor while nothing was ever dropped, else `CURSOR!EXPIRY`, so that a
/// download begun after a drop is not mistaken for one from before it.
pub fn format_with_expiry(cursor: Cursor, expiry: u64) -> String {
    if expiry == 0 {
        cursor.to_string()
    } else {
        format!("{cursor}{EXPIRY_SEPARATOR}{}", Cursor::at(expiry))
    }
}

/// Where a device wants to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// A position: a cursor this server handed out, or any RFC 3339
    /// timestamp (the seed's clients send their own clock, and the epoch for
    /// "from the start").
    Cursor(Cursor),
    /// A cursor of the previous format, `c1.<n>`: "everything up to sequence
    /// number n". The store maps it to the position that number was given
    /// when the log was migrated to positions.
    Legacy(u64),
}

impl Since {
    /// From the start of the log.
    pub const START: Since = Since::Cursor(Cursor::START);

    /// Parses a `since` parameter: a cursor or any RFC 3339 timestamp, or a
    /// `c1.<n>` cursor of the previous format.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let refused = || CursorError {
            text: text.chars().take(80).collect(),
        };
        if let Some(digits) = text.strip_prefix(LEGACY_PREFIX) {
            return digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())
                .flatten()
                .map(Since::Legacy)
                .ok_or_else(refused);
        }
        // A `+hh:mm` offset that reached us through an unescaped query string
        // has become a space; put it back rather than refuse an old client.
        let repaired = text.replace(' ', "+");
        OffsetDateTime::parse(&repaired, &Rfc3339)
            .map(|instant| Since::Cursor(Cursor::from_instant(instant)))
            .map_err(|_| refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED_NEVER_SYNCED: &str = "1970-01-01T00:00:00.000Z";

    fn instant(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).expect("valid")
    }

    #[test]
    fn the_epoch_means_from_the_start() {
        assert_eq!(Since::parse(SEED_NEVER_SYNCED), Ok(Since::START));
        assert_eq!(Since::parse("1969-07-20T20:17:00Z"), Ok(Since::START));
        assert_eq!(Cursor::START.to_string(), "1970-01-01T00:00:00.001000000Z");
        assert!(Cursor::START.to_string().as_str() > SEED_NEVER_SYNCED);
    }

    #[test]
    fn a_cursor_prints_as_a_fixed_width_utc_timestamp() {
        let cursor = Cursor::from_instant(instant("2026-11-29T19:20:00.123456789Z"));
        assert_eq!(cursor.to_string(), "2026-11-29T19:20:00.123456789Z");
        let whole_second = Cursor::from_instant(instant("2026-01-02T03:04:05Z"));
        assert_eq!(whole_second.to_string(), "2026-01-02T03:04:05.000000000Z");
        assert_eq!(Cursor::MAX.to_string(), "2262-04-11T23:47:16.854775807Z");
    }

    #[test]
    fn legacy_timestamps_are_positions_with_repaired_offsets() {
        let expected = Since::Cursor(Cursor::from_instant(instant("2026-11-25T09:00:00Z")));
        assert_eq!(Since::parse("2026-11-25T10:00:00+01:00"), Ok(expected));
        assert_eq!(Since::parse("2026-11-25T10:00:00 01:00"), Ok(expected));
        assert_eq!(Since::parse("2026-11-25T09:00:00.000Z"), Ok(expected));
    }

    #[test]
    fn cursors_of_the_previous_format_are_legacy_sequence_numbers() {
        assert_eq!(Since::parse("c1.0"), Ok(Since::Legacy(0)));
        assert_eq!(Since::parse("c1.57"), Ok(Since::Legacy(57)));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "0",
            "c1.",
            "c1.-3",
            "c1.1x",
            "c1.+4",
            "c2.5",
            "c1.99999999999999999999999",
            "now",
            "2026-11-29",
            "2026-11-29T19:20:00",
        ] {
            assert!(Since::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cursors_carry_the_expiry_they_were_handed_out_with() {
        let cursor = Cursor::from_instant(instant("2026-11-29T19:20:00.5Z"));
        assert_eq!(format_with_expiry(cursor, 0), cursor.to_string());
        let expiry = Cursor::from_instant(instant("2026-11-29T20:00:00Z")).position();
        let text = format_with_expiry(cursor, expiry);
        assert_eq!(
            text,
            "2026-11-29T19:20:00.500000000Z!2026-11-29T20:00:00.000000000Z"
        );
        assert_eq!(
            Resume::parse(&text),
            Ok(Resume {
                since: Since::Cursor(cursor),
                known_expiry: expiry
            })
        );
        assert_eq!(
            Resume::parse("c1.4"),
            Ok(Resume {
                since: Since::Legacy(4),
                known_expiry: 0
            })
        );
        for bad in [
            "2026-11-29T19:20:00Z!",
            "2026-11-29T19:20:00Z!c1.3",
            "!2026-11-29T19:20:00Z",
        ] {
            assert!(Resume::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn cursors_round_trip(position in Cursor::START.0..=Cursor::MAX.0) {
            let cursor = Cursor::at(position);
            prop_assert_eq!(cursor.to_string().len(), 30);
            prop_assert_eq!(Since::parse(&cursor.to_string()), Ok(Since::Cursor(cursor)));
        }

        #[test]
        fn string_order_is_position_order(a in Cursor::START.0..=Cursor::MAX.0, b in Cursor::START.0..=Cursor::MAX.0) {
            let (x, y) = (Cursor::at(a), Cursor::at(b));
            prop_assert_eq!(x.to_string().cmp(&y.to_string()), x.cmp(&y));
        }

        #[test]
        fn a_millisecond_timestamp_never_sorts_after_a_later_cursor(
            millis in 1_i64..=9_000_000_000_000,
            extra in 0_u64..1_000_000,
        ) {
            // The seed client compares our cursors with its own
            // `toISOString()` (three digits). A cursor within the same
            // millisecond sorts first, so its string minimum never lands
            // after a position it has not seen.
            let clock = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).expect("in range");
            let iso = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                clock.year(), u8::from(clock.month()), clock.day(),
                clock.hour(), clock.minute(), clock.second(), clock.millisecond()
            );
            let cursor = Cursor::at(u64::try_from(millis).expect("positive") * 1_000_000 + extra);
            prop_assert!(cursor.to_string() < iso, "{} !< {}", cursor, iso);
            let Ok(Since::Cursor(parsed)) = Since::parse(&iso) else { panic!("{iso}") };
            prop_assert!(parsed <= cursor);
        }
    }
}
