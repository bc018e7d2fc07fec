//! The change log of mana-sync, behind one [`Store`] trait with an embedded
//! SQLite implementation (the default) and a Postgres one (for production and
//! for several server instances).
//!
//! The log is append-only. Each change gets a per-user sequence number taken
//! under that user's counter row lock inside the pushing transaction, so one
//! user's sequence numbers become visible in increasing order: a reader that
//! remembers "I have seen everything up to N" never misses a change that commits
//! later with a smaller number. That number, wrapped as an opaque
//! [`Cursor`](mana_sync_protocol::Cursor), is what devices resume from.
//!
//! Every operation takes the [`UserId`] it acts for, and no operation reads or
//! writes across users; on Postgres, row-level security enforces the same
//! boundary inside the database.

pub mod compaction;
mod migrations;
mod notice;
mod pg_push;
pub mod postgres;
mod relay;
pub mod spaces;
pub mod sqlite;
mod sqlite_writer;
mod types;
#[cfg(test)]
mod upgrade_tests;

use std::sync::Arc;

use async_trait::async_trait;
use mana_sync_protocol::{Cursor, LogId, SpaceId, UserId};

pub use compaction::{CompactOptions, CompactOutcome};
pub use notice::{ChangeNotice, MemberNotice, NOTIFY_CHANNEL, StoreEvent, Written};
pub use relay::DEFAULT_CATCHUP_INTERVAL;
pub use spaces::{Member, MemberChange, Membership, MembershipError, Role, SpaceError};
pub use types::{
    ChangeBatches, ChangePage, ChangeQuery, ExpiredCursor, ImportError, ImportOutcome,
    ImportSource, NewChangeset, PushOutcome, SourceError, StoredChange,
};

/// The largest page a read returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded SQLite file.
    Sqlite,
    /// Postgres server.
    Postgres,
}

impl StoreKind {
    /// A lowercase name for logs and `/health`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A push's outcome and, when the writer could read it with the push (a
/// group's transaction on Postgres, the writer thread on SQLite), its reply.
pub(crate) type PushAnswer = (PushOutcome, Option<ChangePage>);

/// What went wrong in the store. None of these is caused by a client's input:
/// input is validated before it reaches the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `DATABASE_URL` cannot be used.
    #[error("invalid database URL: {0}")]
    Config(String),
    /// The database cannot be reached or has no free connection in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused or failed a statement.
    #[error("database error: {0}")]
    Database(String),
    /// A stored row cannot be read back (written by something else than this server).
    #[error("stored change is unreadable: {0}")]
    Corrupt(String),
    /// The cursor is older than history that compaction dropped for good
    /// (tombstones past their retention), and the query asked for this
    /// answer ([`ExpiredCursor::Refuse`]). Not a fault: the device must
    /// download the current state again.
    #[error(
        "the cursor is older than history this server no longer keeps (before {expired_through})"
    )]
    CursorExpired {
        /// The last position dropped; cursors from it on are served.
        expired_through: Cursor,
    },
    /// The user may not read (`write: false`) or write the space: not a
    /// member, or a viewer pushing. Nothing was read or stored.
    #[error("no {} access to space `{space}`", if *write { "write" } else { "read" })]
    SpaceForbidden {
        /// The space.
        space: SpaceId,
        /// Whether writing was refused (else reading).
        write: bool,
    },
    /// Bringing the schema up to date failed.
    #[error("migration {version} failed: {message}")]
    Migration {
        /// The migration that failed.
        version: u32,
        /// Why.
        message: String,
    },
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The change log.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The database this store runs on.
    fn kind(&self) -> StoreKind;

    /// Announcements of committed pushes (from every instance, on Postgres).
    fn events(&self) -> tokio::sync::broadcast::Receiver<StoreEvent>;

    /// Answers when the database does (for `/health`).
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a whole changeset in one transaction, or nothing of it.
    ///
    /// A changeset whose `changeset_id` this user already stored is not stored
    /// again and yields [`PushOutcome::Duplicate`].
    async fn push(&self, user: &UserId, changeset: NewChangeset<'_>) -> StoreResult<PushOutcome>;

    /// Stores a changeset like [`Store::push`], then reads `reply` (the
    /// device's other devices' changes) as [`Store::changes_after`] would.
    ///
    /// A store may do both in one transaction (Postgres does, in one round
    /// trip): holding the user's counter lock, every earlier position of the
    /// user is committed or its own, so the page may end at the push's last
    /// position. The default does one after the other.
    async fn push_and_read(
        &self,
        user: &UserId,
        changeset: NewChangeset<'_>,
        reply: &ChangeQuery<'_>,
    ) -> StoreResult<(PushOutcome, ChangePage)> {
        let outcome = self.push(user, changeset).await?;
        let page = self.changes_after(user, reply).await?;
        Ok((outcome, page))
    }

    /// Reads the user's changes after `query.since` (of `query.space` when
    /// set: on Postgres, row-level security shows a space's log only to its
    /// members), in commit order, at most `query.limit` (capped at
    /// [`MAX_PAGE`]).
    async fn changes_after(
        &self,
        user: &UserId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage>;

    /// Reads `log` as the server itself (not as one of its readers): for the
    /// reads the server shares between every reader of a log (live notices'
    /// batches). Callers check who may see the result.
    async fn log_changes_after(
        &self,
        log: &LogId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage>;

    /// Who may read `log` now: its user, or a space's members (read as the
    /// log itself; live delivery checks a shared batch's readers with it).
    async fn log_readers(&self, log: &LogId) -> StoreResult<Vec<UserId>>;

    /// Every change of `user`, all apps, oldest first, in batches: read from
    /// one snapshot and streamed, so memory does not grow with the log. An
    /// error is returned before the first batch if the read cannot start.
    async fn export(&self, user: &UserId) -> StoreResult<ChangeBatches>;

    /// Restores backed-up changes of `user` in one transaction: all of them
    /// or none (an error from `changes` rolls everything back). Changes whose
    /// `eventId` the user already has are skipped. Restored changes get new
    /// sequence numbers in the order given and are announced like a push.
    async fn import(
        &self,
        user: &UserId,
        changes: ImportSource,
    ) -> Result<ImportOutcome, ImportError>;

    /// Logs (users' and shared spaces') with at least `threshold` changes
    /// that may supersede an earlier one since their last compaction, most
    /// first, at most `limit` (with a threshold of 0: every log).
    async fn compaction_candidates(
        &self,
        threshold: u64,
        limit: usize,
    ) -> StoreResult<Vec<(LogId, u64)>>;

    /// Compacts `log` (a user's or a shared space's) up to its current end
    /// (see [`compaction`]), in bounded transactions; `progress` hears the
    /// running totals after each. Only one compactor works on a log at a
    /// time: another one finds it busy.
    async fn compact(
        &self,
        log: &LogId,
        options: &CompactOptions,
        progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
    ) -> StoreResult<CompactOutcome>;
    /// Sends whatever notices are still pending to the other instances and
    /// tells them this one stops (so they do not take its silence for a
    /// crash). Call before the process exits.
    async fn close(&self) {}

    /// Transactions that committed pushes so far. Both databases commit
    /// the pushes waiting together (group commit), so under load this
    /// grows slower than the pushes.
    fn push_transactions(&self) -> u64;

    /// Creates a shared space named `name`, with `owner` as its owner.
    async fn create_space(&self, owner: &UserId, name: &str) -> StoreResult<Membership>;

    /// The shared spaces `user` belongs to, with their roles, by name.
    async fn spaces_of(&self, user: &UserId) -> StoreResult<Vec<Membership>>;

    /// The members of `space` as `user` sees them: `None` unless `user` is one.
    async fn members(&self, user: &UserId, space: &SpaceId) -> StoreResult<Option<Vec<Member>>>;

    /// Changes a membership as `actor`: checked by [`spaces::check`] in the
    /// transaction that makes it, with the space's members locked.
    async fn change_membership(
        &self,
        actor: &UserId,
        space: &SpaceId,
        change: &MemberChange,
    ) -> Result<(), SpaceError>;

    /// Returns the server-wide setting `name`, storing `make()` first if it has none.
    /// Instances sharing a database thus agree on the value.
    async fn setting_or_insert(
        &self,
        name: &str,
        make: &(dyn Fn() -> String + Sync),
    ) -> StoreResult<String>;
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections to hold open (Postgres) or reader connections (SQLite).
    pub pool_size: usize,
    /// How often an idle instance tells the others it is alive, and checks
    /// that it still hears them (Postgres): a notice that was lost is made
    /// up for by a resync within a few of these.
    pub catchup_interval: std::time::Duration,
    /// Relay notices between instances through this NATS server instead of
    /// Postgres `LISTEN/NOTIFY` (Postgres only).
    pub nats_url: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            catchup_interval: DEFAULT_CATCHUP_INTERVAL,
            nats_url: None,
        }
    }
}

/// Opens the store `url` names (`sqlite://PATH` or `postgres://…`) and brings
/// its schema up to date.
pub async fn open(url: &str, options: &StoreOptions) -> StoreResult<Arc<dyn Store>> {
    if let Some(path) = sqlite::path_from_url(url) {
        Ok(Arc::new(sqlite::SqliteStore::open(path, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url, options).await?))
    } else {
        Err(StoreError::Config(format!(
            "`{}` is neither sqlite://PATH nor postgres://…",
            redact_url(url)
        )))
    }
}

/// Brings the schema of the database `url` names up to date, connected as
/// that URL's role (on Postgres: the role that owns the tables), and lets
/// `grant_to` read and write the rows of every table, now and of tables
/// added later (Postgres only). Returns the versions applied.
///
/// This is the first half of the split setup: the server then connects as
/// `grant_to`, which cannot change the schema or lift row-level security.
pub async fn migrate(url: &str, grant_to: Option<&str>) -> StoreResult<Vec<u32>> {
    if let Some(path) = sqlite::path_from_url(url) {
        if grant_to.is_some() {
            return Err(StoreError::Config(
                "SQLite has no roles to grant to; migrate without one".into(),
            ));
        }
        sqlite::SqliteStore::open(
            path,
            &StoreOptions {
                pool_size: 1,
                ..StoreOptions::default()
            },
        )
        .await?;
        Ok(Vec::new())
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        postgres::migrate_as_owner(url, grant_to).await
    } else {
        Err(StoreError::Config(format!(
            "`{}` is neither sqlite://PATH nor postgres://…",
            redact_url(url)
        )))
    }
}

/// `url` without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
