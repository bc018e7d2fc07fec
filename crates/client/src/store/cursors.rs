//! Cursors: how far each collection was pulled, and the app cursor.

use rusqlite::{Connection, OptionalExtension};

use super::LocalStore;
use super::meta::{delete_meta, get_meta, set_meta};
use super::redownload;
use crate::error::Result;

impl LocalStore {
    /// How far `collection` was pulled (`None`: never).
    pub fn cursor(&self, collection: &str) -> Result<Option<String>> {
        let conn = self.conn()?;
        Ok(conn
            .prepare_cached("SELECT cursor FROM cursors WHERE collection = ?1")?
            .query_row([collection], |row| row.get(0))
            .optional()?)
    }

    /// A cursor before which every change of every synced collection is
    /// applied (`None`: from the start). It is the `since` of pushes and of
    /// the stream. It is only trusted when every synced collection has been
    /// pulled at least once since (a newly added collection has not).
    pub(crate) fn app_cursor(&self) -> Result<Option<String>> {
        let conn = self.conn()?;
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM cursors", [], |row| row.get(0))?;
        let mut all = usize::try_from(count).unwrap_or(0) >= self.shared.collections.len();
        if all {
            for collection in &self.shared.collections {
                let has: Option<i64> = conn
                    .prepare_cached("SELECT 1 FROM cursors WHERE collection = ?1")?
                    .query_row([collection], |row| row.get(0))
                    .optional()?;
                all &= has.is_some();
            }
        }
        if !all || redownload::in_progress(&conn)? {
            return Ok(None);
        }
        Ok(get_meta(&conn, "app_cursor")?)
    }

    /// Forgets every cursor (the server does not know them): the next pull
    /// starts from the beginning.
    pub(crate) fn forget_cursors(&self) -> Result<()> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM cursors", [])?;
        delete_meta(&conn, "app_cursor")?;
        Ok(())
    }

    /// Records the app cursor after a full pull round.
    pub(crate) fn set_app_cursor(&self, cursor: &str) -> Result<()> {
        let conn = self.conn()?;
        set_meta(&conn, "app_cursor", cursor)?;
        Ok(())
    }
}

pub(super) fn set_cursor(conn: &Connection, collection: &str, cursor: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO cursors (collection, cursor) VALUES (?1, ?2)
         ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor",
    )?
    .execute([collection, cursor])?;
    Ok(())
}
