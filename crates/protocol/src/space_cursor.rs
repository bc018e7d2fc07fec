//! The cursor of a client that follows shared spaces: one position per log.
//!
//! A user's own log and each shared space's log have positions of their
//! own, so a client that follows spaces (it lists `spaces` in
//! `X-Sync-Features`) keeps one cursor per log. On the wire they travel as
//! one opaque string: the own log's cursor, then `~SPACE=CURSOR` for each
//! space, ordered by space id —
//! `2026-11-29T19:20:00.123456789Z~0193…=2026-11-29T19:21:07.000000001Z`.
//! Each part is a [`Resume`] (a cursor, with `!EXPIRY` for clients told
//! about expired cursors). Space ids never contain `~`, `=` or `!`, and
//! cursors never contain `~` or `=`, so the string parses back unambiguously.
//! A space with no part is one the device has not downloaded yet: it is
//! read from the start.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cursor::{CursorError, Resume};
use crate::ident::SpaceId;

/// Separates the parts of a spaces cursor.
const PART_SEPARATOR: char = '~';

/// Separates a space's id from its cursor.
const SPACE_SEPARATOR: char = '=';

/// Most spaces one cursor may name (a request line is at most 8 KiB).
pub const MAX_CURSOR_SPACES: usize = 100;

/// Where a device following spaces resumes each log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpacesCursor {
    /// The user's own log.
    pub own: Resume,
    /// The spaces the device has downloaded, each with its cursor.
    pub spaces: BTreeMap<SpaceId, Resume>,
}

impl SpacesCursor {
    /// Parses what [`format_spaces_cursor`] writes; a plain cursor (or any
    /// `since` a client without spaces sends) is the own log's, with no
    /// space downloaded yet.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let mut parts = text.split(PART_SEPARATOR);
        let own = Resume::parse(parts.next().unwrap_or_default())?;
        let mut spaces = BTreeMap::new();
        for part in parts {
            let refused = || CursorError::new(text);
            let (space, cursor) = part.split_once(SPACE_SEPARATOR).ok_or_else(refused)?;
            let space = SpaceId::new(space).map_err(|_| refused())?;
            if spaces.insert(space, Resume::parse(cursor)?).is_some() {
                return Err(refused());
            }
            if spaces.len() > MAX_CURSOR_SPACES {
                return Err(refused());
            }
        }
        Ok(Self { own, spaces })
    }
}

/// Writes a spaces cursor from the own log's part and each space's part
/// (each already formatted as a cursor, with its expiry if any).
pub fn format_spaces_cursor<'a>(
    own: &str,
    spaces: impl IntoIterator<Item = (&'a SpaceId, &'a str)>,
) -> String {
    let mut text = own.to_owned();
    let mut spaces: Vec<_> = spaces.into_iter().collect();
    spaces.sort_by(|a, b| a.0.cmp(b.0));
    for (space, cursor) in spaces {
        let _ = write!(
            text,
            "{PART_SEPARATOR}{}{SPACE_SEPARATOR}{cursor}",
            space.as_str()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{Cursor, Since, format_with_expiry};
    use proptest::prelude::*;

    fn space(id: &str) -> SpaceId {
        SpaceId::new(id).expect("valid")
    }

    #[test]
    fn a_plain_cursor_is_the_own_log_with_no_space_downloaded() {
        let plain = Cursor::at(1_800_000_000_000_000_000).to_string();
        let parsed = SpacesCursor::parse(&plain).expect("parses");
        assert_eq!(
            parsed.own.since,
            Since::Cursor(Cursor::at(1_800_000_000_000_000_000))
        );
        assert!(parsed.spaces.is_empty());
        assert_eq!(format_spaces_cursor(&plain, []), plain);
    }

    #[test]
    fn malformed_parts_are_refused() {
        let own = Cursor::START.to_string();
        for bad in [
            format!("{own}~"),
            format!("{own}~house"),
            format!("{own}~=2026-01-01T00:00:00Z"),
            format!("{own}~house=yesterday"),
            format!("{own}~house=2026-01-01T00:00:00Z~house=2026-01-01T00:00:00Z"),
        ] {
            assert!(SpacesCursor::parse(&bad).is_err(), "{bad}");
        }
        let many: String = (0..=MAX_CURSOR_SPACES)
            .map(|i| format!("~s{i}={own}"))
            .collect();
        assert!(SpacesCursor::parse(&format!("{own}{many}")).is_err());
    }

    proptest! {
        #[test]
        fn cursors_round_trip(
            own in 1_000_000_u64..i64::MAX as u64,
            own_expiry in prop_oneof![Just(0_u64), 1_000_000_u64..i64::MAX as u64],
            parts in proptest::collection::btree_map(
                "[a-z0-9-]{1,12}",
                (1_000_000_u64..i64::MAX as u64, prop_oneof![Just(0_u64), 1_000_000_u64..i64::MAX as u64]),
                0..5,
            ),
        ) {
            let own_text = format_with_expiry(Cursor::at(own), own_expiry);
            let formatted: Vec<(SpaceId, String)> = parts
                .iter()
                .map(|(id, (at, expiry))| (space(id), format_with_expiry(Cursor::at(*at), *expiry)))
                .collect();
            let text = format_spaces_cursor(
                &own_text,
                formatted.iter().map(|(id, cursor)| (id, cursor.as_str())),
            );
            let parsed = SpacesCursor::parse(&text).expect("parses");
            prop_assert_eq!(parsed.own, Resume::parse(&own_text).expect("parses"));
            prop_assert_eq!(parsed.spaces.len(), parts.len());
            for (id, (at, expiry)) in &parts {
                let resume = parsed.spaces[&space(id)];
                prop_assert_eq!(resume.since, Since::Cursor(Cursor::at(*at)));
                prop_assert_eq!(resume.known_expiry, *expiry);
            }
        }
    }
}
