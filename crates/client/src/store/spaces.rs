//! Shared spaces on the device: the list of the user's spaces (as of the
//! last refresh), the space of each record, and dropping a space the user
//! left.
//!
//! **Dropping.** When the server says the user no longer belongs to a space
//! (`removedSpaces` in a pull or push reply, the stream's `space-removed`,
//! or leaving it through the API), one transaction removes every local
//! record of the space, its unsent and refused changes (the server would
//! refuse them: the user may no longer write there), its part of every
//! cursor, and its entry in the list.
//!
//! **Re-joining.** Without its part in a cursor, the server reads a space
//! from its start: a device that joins a space again downloads it whole.
//! The server sends a space's changes with the device's own among them, so
//! the device's own earlier changes in it come back too.
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
    }
}
