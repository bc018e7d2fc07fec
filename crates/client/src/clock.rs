//! The hybrid logical clock that timestamps every local write.
//!
//! A reading is physical milliseconds since the Unix epoch plus a logical
//! counter, written as fixed-width RFC 3339 UTC text with nine fractional
//! digits: `2026-11-25T10:00:00.123004567Z` is millisecond `.123` with counter
//! `4567`. Text order is therefore time order (what the merge compares), and
//! the server accepts the text as an ordinary RFC 3339 timestamp.
//!
//! Rules:
//! - a local write takes `max(physical now, last + 1 tick)`, so readings
//!   strictly increase even if the wall clock stalls or steps back;
//! - a remote timestamp moves the clock forward (`max(last, remote)`), so a
//!   device that has seen a write always writes after it — **unless** it is
//!   more than [`MAX_DRIFT`] ahead of this device's wall clock: such a remote
//!   clock is wrong, and following it would drag every later local write into
//!   the future for good. It still merges normally; it just does not move the
//!   clock. (Editing that very field still wins, see `LocalStore::update`:
//!   a local write to a field is always stamped after the field's current
//!   timestamp.)
//! - the last reading is persisted with every write (in the same
//!   transaction), so the clock never goes backwards across restarts, and
//!   two processes on one store share it.

use std::cmp::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mana_sync_protocol::Timestamp;

/// How far ahead of this device's wall clock a remote timestamp may be and
/// still advance the local clock.
pub const MAX_DRIFT: Duration = Duration::from_secs(5 * 60);

/// Logical ticks per millisecond (six decimal digits).
pub const TICKS_PER_MILLI: u32 = 1_000_000;

/// The latest instant the text format can hold (9999-12-31T23:59:59.999Z).
const MAX_MILLIS: i64 = 253_402_300_799_999;
/// The earliest (0000-01-01T00:00:00.000Z).
const MIN_MILLIS: i64 = -62_167_219_200_000;

/// A source of physical time, replaceable in tests.
pub trait PhysicalClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_millis(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_millis()).unwrap_or(MAX_MILLIS),
            // A clock set before 1970: the persisted reading keeps us monotonic.
            Err(_) => 0,
        }
    }
}

/// One reading of the hybrid logical clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HlcTime {
    millis: i64,
    counter: u32,
}

impl HlcTime {
    /// The reading at `millis` with counter 0.
    pub fn from_millis(millis: i64) -> Self {
        Self {
            millis: millis.clamp(MIN_MILLIS, MAX_MILLIS),
            counter: 0,
        }
    }

    /// Physical milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.millis
    }

    /// The logical counter within the millisecond.
    pub fn counter(self) -> u32 {
        self.counter
    }

    /// The reading of any RFC 3339 timestamp: its milliseconds, and its
    /// sub-millisecond nanoseconds as the counter.
    pub fn of(timestamp: &Timestamp) -> Self {
        let nanos = timestamp.instant().unix_timestamp_nanos();
        let millis = i64::try_from(nanos.div_euclid(1_000_000)).unwrap_or(MAX_MILLIS);
        let counter = u32::try_from(nanos.rem_euclid(1_000_000)).unwrap_or(0);
        if millis > MAX_MILLIS {
            return Self::from_millis(MAX_MILLIS);
        }
        Self { millis, counter }
    }

    /// The next reading after this one.
    pub fn next(self) -> Self {
        if self.counter + 1 < TICKS_PER_MILLI {
            Self {
                millis: self.millis,
                counter: self.counter + 1,
            }
        } else {
            Self::from_millis(self.millis + 1)
        }
    }

    /// The reading as canonical RFC 3339 text.
    pub fn to_text(self) -> String {
        let instant =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.millis) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{:06}Z",
            instant.year(),
            u8::from(instant.month()),
            instant.day(),
            instant.hour(),
            instant.minute(),
            instant.second(),
            instant.millisecond(),
            self.counter
        )
    }

    /// The reading as a [`Timestamp`].
    pub fn to_timestamp(self) -> Timestamp {
        // The format above is always valid RFC 3339; the fallback is for
        // completeness only.
        Timestamp::parse(self.to_text())
            .unwrap_or_else(|_| mana_sync_protocol::merge::lowest_timestamp())
    }

    /// Parses text written by [`HlcTime::to_text`] (or any RFC 3339 text).
    pub fn parse(text: &str) -> Option<Self> {
        Timestamp::parse(text).ok().map(|t| Self::of(&t))
    }
}

/// The next reading for a local write: after `last`, and at least `now`.
pub fn tick(last: HlcTime, physical_millis: i64) -> HlcTime {
    let physical = HlcTime::from_millis(physical_millis);
    match physical.cmp(&last) {
        Ordering::Greater => physical,
        _ => last.next(),
    }
}

/// The clock after seeing a remote write at `remote`: it moves forward to
/// `remote` unless `remote` is more than [`MAX_DRIFT`] ahead of `now`.
pub fn observe(last: HlcTime, remote: HlcTime, physical_millis: i64) -> HlcTime {
    let limit = physical_millis.saturating_add(i64::try_from(MAX_DRIFT.as_millis()).unwrap_or(0));
    if remote.millis > limit {
        last
    } else {
        last.max(remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mana_sync_protocol::merge::{compare_timestamps, is_canonical};

    const NOW: i64 = 1_795_600_800_123; // 2026-11-25T10:00:00.123Z

    #[test]
    fn text_is_fixed_width_canonical_rfc3339() {
        let reading = HlcTime {
            millis: NOW,
            counter: 4567,
        };
        assert_eq!(reading.to_text(), "2026-11-25T10:00:00.123004567Z");
        assert!(is_canonical(&reading.to_text()));
        assert_eq!(HlcTime::parse(&reading.to_text()), Some(reading));
        assert!(Timestamp::parse(reading.to_text()).is_ok());
    }

    #[test]
    fn readings_strictly_increase_when_the_wall_clock_stalls_or_steps_back() {
        let mut last = HlcTime::from_millis(0);
        let mut previous_text = String::new();
        for physical in [NOW, NOW, NOW, NOW - 60_000, NOW + 1, NOW + 1] {
            let next = tick(last, physical);
            assert!(next > last);
            let text = next.to_text();
            assert!(text > previous_text, "{text} after {previous_text}");
            previous_text = text;
            last = next;
        }
        assert_eq!(tick(last, NOW + 10), HlcTime::from_millis(NOW + 10));
    }

    #[test]
    fn the_counter_carries_into_the_next_millisecond() {
        let full = HlcTime {
            millis: NOW,
            counter: TICKS_PER_MILLI - 1,
        };
        assert_eq!(full.next(), HlcTime::from_millis(NOW + 1));
        assert!(full.next().to_text() > full.to_text());
    }

    #[test]
    fn remote_readings_advance_the_clock_within_the_drift_bound() {
        let last = HlcTime::from_millis(NOW);
        let near = HlcTime::from_millis(NOW + 60_000);
        assert_eq!(observe(last, near, NOW), near);
        assert!(tick(observe(last, near, NOW), NOW) > near);
        let far = HlcTime::from_millis(NOW + 24 * 3600 * 1000);
        assert_eq!(
            observe(last, far, NOW),
            last,
            "a far-future clock is not followed"
        );
        let older = HlcTime::from_millis(NOW - 5);
        assert_eq!(observe(last, older, NOW), last);
    }

    #[test]
    fn readings_of_other_formats_keep_their_order() {
        let old = Timestamp::parse("2026-11-25T11:00:00.5+01:00").expect("valid");
        let reading = HlcTime::of(&old);
        assert_eq!(reading.to_text(), "2026-11-25T10:00:00.500000000Z");
        assert_eq!(
            compare_timestamps(&reading.next().to_timestamp(), &old),
            Ordering::Greater
        );
        let lowest = mana_sync_protocol::merge::lowest_timestamp();
        assert_eq!(HlcTime::of(&lowest).to_text(), lowest.as_str());
    }
}
