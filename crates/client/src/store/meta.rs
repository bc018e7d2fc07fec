//! The `meta` table: the clock reading, the sync status of the last sync,
//! and the account.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::watch;

use super::redownload;
use super::{LocalStore, now_rfc3339};
use crate::clock::HlcTime;
use crate::error::{ClientError, Result};
use crate::status::SyncStatus;
use crate::token;

/// The account a store is signed in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user (the token's `sub`).
    pub user: String,
    /// The sync server's URL.
    pub server: String,
}

pub(super) fn get_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()
}

pub(super) fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

pub(super) fn delete_meta(conn: &Connection, key: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM meta WHERE key = ?1")?
        .execute([key])?;
    Ok(())
}

pub(super) fn read_clock(conn: &Connection) -> Result<HlcTime> {
    Ok(get_meta(conn, "hlc")?
        .and_then(|text| HlcTime::parse(&text))
        .unwrap_or_else(|| HlcTime::from_millis(0)))
}

impl LocalStore {
    pub(super) fn initial_status(conn: &Connection) -> Result<SyncStatus> {
        if get_meta(conn, "account_user")?.is_none() {
            return Ok(SyncStatus::LocalOnly);
        }
        let reason = get_meta(conn, "last_error")?;
        Ok(
            match (get_meta(conn, "last_error_kind")?.as_deref(), reason) {
                (Some("offline"), Some(reason)) => SyncStatus::Offline { reason },
                (_, Some(reason)) => SyncStatus::Error { reason },
                (_, None) if get_meta(conn, "last_synced_at")?.is_some() => SyncStatus::Synced,
                (_, None) => SyncStatus::Offline {
                    reason: "not synced yet".into(),
                },
            },
        )
    }

    // ---- sync status -------------------------------------------------------

    /// The sync status now.
    pub fn status(&self) -> SyncStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<SyncStatus> {
        self.shared.status.subscribe()
    }

    /// Sets the status, and persists the outcome of a sync (so a later
    /// process, `mana-todo status`, can report it).
    pub(crate) fn set_status(&self, status: SyncStatus) -> Result<()> {
        {
            let conn = self.conn()?;
            match &status {
                SyncStatus::Synced => {
                    delete_meta(&conn, "last_error")?;
                    delete_meta(&conn, "last_error_kind")?;
                    set_meta(&conn, "last_synced_at", &now_rfc3339())?;
                }
                SyncStatus::Offline { reason } => {
                    set_meta(&conn, "last_error", reason)?;
                    set_meta(&conn, "last_error_kind", "offline")?;
                }
                SyncStatus::Error { reason } => {
                    set_meta(&conn, "last_error", reason)?;
                    set_meta(&conn, "last_error_kind", "error")?;
                }
                SyncStatus::LocalOnly | SyncStatus::Syncing => {}
            }
        }
        self.shared.status.send_replace(status);
        Ok(())
    }

    /// The error of the last sync, if it failed.
    pub fn last_error(&self) -> Result<Option<String>> {
        let conn = self.conn()?;
        Ok(get_meta(&conn, "last_error")?)
    }

    /// When the last sync succeeded (RFC 3339), if ever.
    pub fn last_synced_at(&self) -> Result<Option<String>> {
        let conn = self.conn()?;
        Ok(get_meta(&conn, "last_synced_at")?)
    }

    // ---- account -----------------------------------------------------------

    /// The account the store is signed in to; `None` for a guest store.
    pub fn account(&self) -> Result<Option<Account>> {
        let conn = self.conn()?;
        let user = get_meta(&conn, "account_user")?;
        let server = get_meta(&conn, "account_server")?;
        Ok(user.map(|user| Account {
            user,
            server: server.unwrap_or_default(),
        }))
    }

    /// Signs the store in to `server` as the token's user. The first sign-in
    /// makes a guest store the account's: its records and outbox stay, and
    /// are pushed by the next sync. A store never changes account: a token of
    /// another user is refused ([`ClientError::AccountMismatch`]). Moving to
    /// another server URL forgets the cursors (they are that server's), so the
    /// next sync pulls everything again; merging makes that harmless.
    pub fn sign_in(&self, server: &str, token: &str) -> Result<Account> {
        let user = token::subject(token)?;
        let server = server.trim_end_matches('/').to_owned();
        {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match get_meta(&tx, "account_user")? {
                Some(existing) if existing != user => {
                    return Err(ClientError::AccountMismatch {
                        store_user: existing,
                        token_user: user,
                    });
                }
                Some(_) => {}
                None => set_meta(&tx, "account_user", &user)?,
            }
            if get_meta(&tx, "account_server")?.as_deref() != Some(server.as_str()) {
                tx.execute("DELETE FROM cursors", [])?;
                delete_meta(&tx, "app_cursor")?;
                // Another server's spaces are not this one's.
                tx.execute("DELETE FROM spaces", [])?;
                // Another server's log says nothing about this one's records.
                redownload::abandon(&tx)?;
                set_meta(&tx, "account_server", &server)?;
            }
            tx.commit()?;
        }
        if self.status() == SyncStatus::LocalOnly {
            self.shared.status.send_replace(SyncStatus::Offline {
                reason: "not synced yet".into(),
            });
        }
        Ok(Account { user, server })
    }
}
