//! RFC 3339 timestamps as devices write them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an RFC 3339 timestamp")]
pub struct TimestampError {
    text: String,
}

/// An RFC 3339 timestamp, kept exactly as the device wrote it.
///
/// The text is preserved verbatim rather than re-rendered: clients encode their
/// hybrid-logical-clock counter in the sub-second digits, and field-level
/// last-writer-wins compares these strings, so the server must not change a
/// single digit of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Timestamp(String);

impl Timestamp {
    /// Validates `text` as RFC 3339.
    pub fn parse(text: impl Into<String>) -> Result<Self, TimestampError> {
        let text = text.into();
        match OffsetDateTime::parse(&text, &Rfc3339) {
            Ok(_) => Ok(Self(text)),
            Err(_) => Err(TimestampError { text }),
        }
    }

    /// Wraps text already known to be RFC 3339 (constants of this crate).
    pub(crate) fn trusted(text: String) -> Self {
        debug_assert!(OffsetDateTime::parse(&text, &Rfc3339).is_ok(), "{text}");
        Self(text)
    }

    /// The timestamp's text, as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The instant the timestamp denotes.
    pub fn instant(&self) -> OffsetDateTime {
        // Construction guarantees the text parses; the fallback is unreachable
        // but keeps this total without a panic path.
        OffsetDateTime::parse(&self.0, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(text).map_err(serde::de::Error::custom)
    }
}

/// Formats an instant as RFC 3339 with millisecond precision in UTC, the way
/// JavaScript's `Date.prototype.toISOString` does (what the seed's clients send).
pub fn format_millis(instant: OffsetDateTime) -> String {
    let utc = instant.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.millisecond()
    )
}

/// Formats an instant as RFC 3339 in UTC with nanosecond precision and a
/// fixed width (`2026-11-29T19:20:00.123456789Z`, 30 characters for years
/// 1000 to 9999), so that the string order of two such texts is their time
/// order. Cursors and the timestamps the server stamps itself use it.
pub fn format_nanos(instant: OffsetDateTime) -> String {
    let utc = instant.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.nanosecond()
    )
}

impl Timestamp {
    /// The timestamp of `instant`, as [`format_nanos`] writes it (for
    /// timestamps the server sets itself).
    pub fn from_instant(instant: OffsetDateTime) -> Self {
        Self(format_nanos(instant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_text_verbatim() {
        let text = "2026-11-25T10:00:00.123000042Z";
        assert_eq!(Timestamp::parse(text).map(|t| t.0), Ok(text.to_owned()));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in ["", "yesterday", "2026-11-25", "2026-13-01T00:00:00Z"] {
            assert!(Timestamp::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn formats_like_to_iso_string() {
        let instant =
            OffsetDateTime::from_unix_timestamp_nanos(1_764_064_800_123_456_789).expect("in range");
        assert_eq!(format_millis(instant), "2025-11-25T10:00:00.123Z");
        assert_eq!(format_nanos(instant), "2025-11-25T10:00:00.123456789Z");
        assert_eq!(
            Timestamp::from_instant(instant).instant(),
            instant,
            "a stamped timestamp parses back"
        );
    }
}
