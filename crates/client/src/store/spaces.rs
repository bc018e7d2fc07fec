//! Shared spaces on the device: the list of the user's spaces (as of the
//! last refresh), the space of each record, and dropping a space the user
//! left.
//!
//! **Dropping.** When the server says the user no longer belongs to a space
//! (`removedSpaces` in a pull or push reply, the stream's `space-removed`,
//! or leaving it through the API), one transaction removes every local
//! record of the space, its unsent and refused changes (the server would
//! refuse them: the user may no longer write there), its part of every
//! cursor, and its entry in the list, and notes the space in
//! `dropped_spaces`.
//!
//! **Re-joining.** The server leaves a device's own changes out of what it
//! sends that device, also when it downloads a space the device joins. A
//! device that dropped a space and joins it again needs its own earlier
//! changes back, so while a space is in `dropped_spaces`:
//! - cursors from replies that leave out the device's own changes (push
//!   replies, the stream, pulls with the client id) are saved without that
//!   space's part, so it is never marked downloaded by them;
//! - pulls are made without the client id (`SyncClient::pull`); a complete
//!   round of them downloads the space from its start, own changes
//!   included, and only then is the space taken off `dropped_spaces`
//!   ([`clear_downloaded`]).
//!
//! Cursors are composite (`OWN~SPACE=CURSOR~…`, see
//! `mana_sync_protocol::space_cursor`): the client only ever removes a
//! space's part from one, never reads a position out of it.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::LocalStore;
use super::meta::{get_meta, set_meta};
use crate::error::{ClientError, Result};

/// A shared space the user belongs to, as the device last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSpace {
    /// The space's id (what records and changes carry as `spaceId`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The user's role: `owner`, `editor` or `viewer`.
    pub role: String,
}

impl LocalSpace {
    /// Whether the user may change the space's records (owners and editors).
    pub fn can_write(&self) -> bool {
        self.role != "viewer"
    }
}

/// Refuses a space id the server could never have made.
pub(super) fn check_space_id(space: &str) -> Result<()> {
    mana_sync_protocol::SpaceId::new(space)
        .map(|_| ())
        .map_err(|error| ClientError::InvalidInput(format!("space id `{space}` {error}")))
}

/// Refuses a write into a space where the user is a viewer (as far as the
/// device knows; the server checks again).
pub(super) fn check_writable(conn: &Connection, space: &str) -> Result<()> {
    match known_space(conn, space)? {
        Some(known) if !known.can_write() => Err(ClientError::ReadOnlySpace {
            space: known.id,
            name: known.name,
        }),
        _ => Ok(()),
    }
}

fn known_space(conn: &Connection, space: &str) -> Result<Option<LocalSpace>> {
    Ok(conn
        .prepare_cached("SELECT space_id, name, role FROM spaces WHERE space_id = ?1")?
        .query_row([space], |row| {
            Ok(LocalSpace {
                id: row.get(0)?,
                name: row.get(1)?,
                role: row.get(2)?,
            })
        })
        .optional()?)
}

/// The spaces a composite cursor has a part for.
fn cursor_spaces(cursor: &str) -> impl Iterator<Item = &str> {
    cursor
        .split('~')
        .skip(1)
        .filter_map(|part| part.split_once('=').map(|(space, _)| space))
}

/// `cursor` without the parts of the spaces `drop` selects.
fn without_spaces(cursor: &str, drop: impl Fn(&str) -> bool) -> String {
    let mut parts = cursor.split('~');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        let space = part.split_once('=').map_or(part, |(space, _)| space);
        if !drop(space) {
            out.push('~');
            out.push_str(part);
        }
    }
    out
}

fn dropped(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT space_id FROM dropped_spaces")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?)
}

/// The cursor to save from a reply: as it is when the reply included this
/// device's own changes; otherwise without the parts of dropped spaces (see
/// the module's documentation).
pub(super) fn cursor_for_saving(
    conn: &Connection,
    cursor: &str,
    includes_own: bool,
) -> Result<String> {
    if includes_own {
        return Ok(cursor.to_owned());
    }
    let dropped = dropped(conn)?;
    if dropped.is_empty() {
        return Ok(cursor.to_owned());
    }
    Ok(without_spaces(cursor, |space| {
        dropped.iter().any(|d| d == space)
    }))
}

/// After a complete round of pulls that included this device's own
/// changes: every dropped space that every collection's cursor now names
/// was downloaded whole, and is no longer dropped.
pub(super) fn clear_downloaded(conn: &Connection, collections: &[String]) -> Result<()> {
    for space in dropped(conn)? {
        let mut everywhere = true;
        for collection in collections {
            let cursor: Option<String> = conn
                .prepare_cached("SELECT cursor FROM cursors WHERE collection = ?1")?
                .query_row([collection], |row| row.get(0))
                .optional()?;
            everywhere &= cursor.is_some_and(|c| cursor_spaces(&c).any(|s| s == space));
        }
        if everywhere {
            conn.prepare_cached("DELETE FROM dropped_spaces WHERE space_id = ?1")?
                .execute([&space])?;
        }
    }
    Ok(())
}

/// Drops `space` (see the module's documentation), inside a transaction;
/// returns the records removed.
pub(super) fn drop_space(conn: &Connection, space: &str) -> Result<Vec<(String, String)>> {
    let removed = conn
        .prepare_cached("SELECT collection, id FROM records WHERE space_id = ?1")?
        .query_map([space], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    for table in ["records", "outbox", "rejected", "spaces"] {
        conn.execute(&format!("DELETE FROM {table} WHERE space_id = ?1"), [space])?;
    }
    let cursors = conn
        .prepare_cached("SELECT collection, cursor FROM cursors")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    for (collection, cursor) in cursors {
        conn.prepare_cached("UPDATE cursors SET cursor = ?2 WHERE collection = ?1")?
            .execute(params![collection, without_spaces(&cursor, |s| s == space)])?;
    }
    if let Some(cursor) = get_meta(conn, "app_cursor")? {
        set_meta(conn, "app_cursor", &without_spaces(&cursor, |s| s == space))?;
    }
    conn.prepare_cached("INSERT OR IGNORE INTO dropped_spaces (space_id) VALUES (?1)")?
        .execute([space])?;
    if !removed.is_empty() {
        tracing::info!(
            %space,
            records = removed.len(),
            "left a shared space: dropped its records"
        );
    }
    Ok(removed)
}

impl LocalStore {
    /// The shared spaces the user belongs to, by name, as of the last
    /// refresh (every sync, and [`crate::SyncClient::refresh_spaces`]).
    pub fn spaces(&self) -> Result<Vec<LocalSpace>> {
        let conn = self.conn()?;
        let mut statement =
            conn.prepare_cached("SELECT space_id, name, role FROM spaces ORDER BY name, space_id")?;
        let spaces = statement
            .query_map([], |row| {
                Ok(LocalSpace {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    role: row.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(spaces)
    }

    /// One of [`LocalStore::spaces`].
    pub fn space(&self, id: &str) -> Result<Option<LocalSpace>> {
        let conn = self.conn()?;
        known_space(&conn, id)
    }

    /// Replaces the list of spaces with what the server listed.
    pub(crate) fn replace_spaces(&self, spaces: &[LocalSpace]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM spaces", [])?;
        for space in spaces {
            upsert(&tx, space)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds a space to the list, or updates its name and role.
    pub(crate) fn remember_space(&self, space: &LocalSpace) -> Result<()> {
        let conn = self.conn()?;
        upsert(&conn, space)
    }

    /// Drops spaces the user left (see the module's documentation); returns
    /// how many records were removed.
    pub(crate) fn drop_spaces(&self, spaces: &[String]) -> Result<usize> {
        let removed = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut removed = Vec::new();
            for space in spaces {
                removed.extend(drop_space(&tx, space)?);
            }
            tx.commit()?;
            removed
        };
        self.notify_touched(&removed);
        self.notify(&[], true);
        Ok(removed.len())
    }

    /// Whether some dropped space waits to be downloaded again with this
    /// device's own changes (pulls then leave out the client id).
    pub(crate) fn has_dropped_spaces(&self) -> Result<bool> {
        let conn = self.conn()?;
        Ok(!dropped(&conn)?.is_empty())
    }

    /// Whether `cursor` names a dropped space: the server began sending it
    /// again (the user re-joined), without this device's own changes.
    pub(crate) fn names_dropped_space(&self, cursor: &str) -> Result<bool> {
        let conn = self.conn()?;
        let dropped = dropped(&conn)?;
        Ok(cursor_spaces(cursor).any(|space| dropped.iter().any(|d| d == space)))
    }
}

fn upsert(conn: &Connection, space: &LocalSpace) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO spaces (space_id, name, role) VALUES (?1, ?2, ?3)
         ON CONFLICT (space_id) DO UPDATE SET name = excluded.name, role = excluded.role",
    )?
    .execute(params![space.id, space.name, space.role])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_part_is_removed_and_the_rest_kept() {
        let cursor = "2026-11-29T19:20:00.123456789Z!5~a=2026-11-29T19:21:00.000000001Z~b=2026-11-29T19:22:00.000000001Z!7";
        assert_eq!(cursor_spaces(cursor).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            without_spaces(cursor, |s| s == "a"),
            "2026-11-29T19:20:00.123456789Z!5~b=2026-11-29T19:22:00.000000001Z!7"
        );
        assert_eq!(
            without_spaces(cursor, |_| true),
            "2026-11-29T19:20:00.123456789Z!5"
        );
        let plain = "2026-11-29T19:20:00.123456789Z";
        assert_eq!(without_spaces(plain, |_| true), plain);
        assert_eq!(cursor_spaces(plain).count(), 0);
    }
}
