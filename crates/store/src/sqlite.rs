//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through a single connection owned by one thread
//! (`sqlite_writer.rs`), so SQLite's one-writer rule never makes a push wait
//! on a busy lock held in this process (another process's is waited for in
//! short steps: `sqlite/busy.rs`) and commit order is simply write order;
//! the pushes waiting for it are committed together (group commit).
//! Reads use a small pool of read-only connections that see consistent WAL
//! snapshots while writes continue. rusqlite is synchronous, so every read
//! runs on Tokio's blocking pool, except a push's short reply, which the
//! writer reads right after its commit (`sqlite/read.rs`).

use std::path::Path;
use std::time::Duration;

use crate::spaces::{Member, MemberChange, Membership, SpaceError};
use async_trait::async_trait;
use mana_sync_protocol::{Cursor, LogId, SpaceId, UserId};
use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use uuid::Uuid;

use tokio::sync::broadcast;

use crate::compaction::{CompactOptions, CompactOutcome};
use crate::migrations::{Migration, SQLITE};
use crate::notice::{EVENT_CAPACITY, StoreEvent};
use crate::sqlite_writer::Writer;
use crate::types::{
    ChangeBatches, ImportError, ImportOutcome, ImportSource, LogState, RawColumns, Reserved,
};
use crate::{
    ChangePage, ChangeQuery, NewChangeset, PushOutcome, Store, StoreError, StoreKind, StoreOptions,
    StoreResult, StoredChange,
};
use read::LogRead;

/// The path in `sqlite://PATH` (or `sqlite:PATH`), if `url` is a SQLite URL.
pub fn path_from_url(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .filter(|path| !path.is_empty())
}

/// The columns of a stored change, in the order `read_row` reads them.
macro_rules! select_columns {
    () => {
        "SELECT seq, event_id, app_id, table_name, record_id, op, data, fields, deleted_at, actor,
                client_id, schema_version, created_at"
    };
}

/// Inserts one change (`?1` log … `?14` created_at, `?15` author in a
/// space's log).
macro_rules! insert_change {
    () => {
        "INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id, op, data,
             fields, deleted_at, actor, client_id, schema_version, created_at, author_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    };
}

pub(crate) const INSERT_CHANGE: &str = insert_change!();

/// Reserves the next `count` positions of `user`.
///
/// Positions are this process's clock in nanoseconds, `max(now, last + 1)`,
/// so they are unique, increasing, and close to the wall clock. SQLite has
/// one writer, so they follow commit order.
///
/// `superseding` of the changes may supersede earlier ones (see
/// [`compaction::superseding`](crate::compaction::superseding)).
pub(crate) fn reserve_positions(
    tx: &Connection,
    user: &str,
    count: i64,
    superseding: i64,
) -> StoreResult<Reserved> {
    let now = seq_param(Cursor::from_instant(OffsetDateTime::now_utc()).position())
        .max(seq_param(Cursor::START.position() + 1));
    // Written, then read back, rather than `RETURNING`: SQLite collects a
    // `RETURNING` statement's rows in a temporary B-tree, opened and closed
    // for every push (the writer's CPU per small push went from about 55 to
    // 48 µs without it).
    tx.prepare_cached(
        "INSERT INTO mana_user_seq (user_id, prev_seq, last_seq, superseded)
         VALUES (?1, 0, ?2 + ?3 - 1, ?4)
         ON CONFLICT (user_id) DO UPDATE SET
             prev_seq = last_seq,
             last_seq = max(?2, last_seq + 1) + ?3 - 1,
             superseded = superseded + ?4",
    )
    .and_then(|mut statement| statement.execute(params![user, now, count, superseding]))
    .and_then(|_| {
        tx.prepare_cached(
            "SELECT prev_seq, last_seq, expired_through FROM mana_user_seq WHERE user_id = ?1",
        )?
        .query_row([user], |row| {
            Ok(Reserved {
                after: row.get(0)?,
                last: row.get(1)?,
                expired_through: row.get(2)?,
            })
        })
    })
    .map_err(database_error)
}

mod backup;
mod busy;
pub(crate) mod checkpoint;
mod compact;
pub(crate) mod read;
pub(crate) mod spaces;

/// The change log in a SQLite file.
pub struct SqliteStore {
    writer: Writer,
    readers: Pool<SqliteConnectionManager>,
    events: broadcast::Sender<StoreEvent>,
    /// Users being compacted by this process (one compactor per user).
    compacting: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

pub(crate) fn database_error(error: rusqlite::Error) -> StoreError {
    // Another process (an operator's `mana-sync import`) holding the write
    // lock longer than the busy timeout is a reason to retry, not a fault.
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(error.to_string())
        }
        _ => StoreError::Database(error.to_string()),
    }
}

/// The writer's own settings.
///
/// Every push of a group under load touches a leaf page of the change
/// log's index keyed by its user (by position, the only one since
/// migration 9), so the pages the writer keeps going back to grow with the
/// users pushing: past SQLite's default 2 MiB cache they were read again
/// from the file or the WAL on every group. 16 MiB (4,096 pages) was sized
/// for four such pages per user and about a thousand users pushing at once;
/// with one, it holds about four times as many.
/// A push stored under a savepoint (a group stored again after one of its
/// pushes failed) keeps the pages it changes in a statement journal, which
/// is a temporary file unless temporary storage is in memory; it only ever
/// holds the pages of the one push being stored. Temporary tables and
/// sorts of this connection are in memory too, which is safe because its
/// statements are bounded (a push, a reply page, a compaction window); set
/// after the migrations, whose whole-table rewrites may sort the log.
const WRITER_PRAGMAS: &str = "PRAGMA cache_size = -16384;
     PRAGMA temp_store = MEMORY;";

/// What every connection to the file needs, the writer and the readers.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    busy::wait_when_busy(conn)?;
    // Plans are made once per statement (`prepare_cached`), never again for
    // the values bound to it: once the file has been analysed (`ANALYZE`, by
    // an operator or a tool), SQLite would otherwise re-parse and re-plan a
    // statement with a range on a bound position (`seq > ?`) every time it
    // runs with new values, which took most of compaction's time.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

pub(crate) fn pool_error(error: r2d2::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

pub(crate) fn micros(instant: OffsetDateTime) -> i64 {
    i64::try_from(instant.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(value: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(value) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &str, options: &StoreOptions) -> StoreResult<Self> {
        let path = path.to_owned();
        let readers = options.pool_size.clamp(1, 8);
        tokio::task::spawn_blocking(move || Self::open_blocking(Path::new(&path), readers, SQLITE))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    pub(crate) fn open_blocking(
        path: &Path,
        readers: usize,
        migrations: &[Migration],
    ) -> StoreResult<Self> {
        // FULL: a push acknowledged to a device survives a power cut; the
        // device drops it from its outbox on our word.
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;",
            )?;
            configure(&conn)?;
            Ok(conn)
        };
        let cannot_open = |e: &dyn std::fmt::Display| {
            StoreError::Config(format!("cannot open {}: {e}", path.display()))
        };
        // Migrated on a connection of its own: one that edited a table's
        // definition in place would keep compiling statements from the
        // definition it read before.
        migrate(&mut open().map_err(|e| cannot_open(&e))?, migrations)?;
        let conn = open().map_err(|e| cannot_open(&e))?;
        conn.execute_batch(WRITER_PRAGMAS)
            .map_err(|e| cannot_open(&e))?;
        let reader_manager = SqliteConnectionManager::file(path).with_init(|conn| {
            configure(conn)?;
            conn.execute_batch("PRAGMA query_only = ON;")
        });
        let readers = Pool::builder()
            .max_size(u32::try_from(readers).unwrap_or(4))
            .connection_timeout(Duration::from_secs(30))
            .build(reader_manager)
            .map_err(|e| cannot_open(&e))?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        checkpoint::leave_to_checkpointer(&conn).map_err(|e| cannot_open(&e))?;
        let checkpointer = open().map_err(|e| cannot_open(&e))?;
        let checkpoints = checkpoint::start(checkpointer)
            .map_err(|e| cannot_open(&format!("starting the checkpointer: {e}")))?;
        let writer = Writer::start(conn, events.clone(), checkpoints)?;
        Ok(Self {
            writer,
            readers,
            events,
            compacting: std::sync::Arc::default(),
        })
    }

    /// Reads `log`: the changes after `query.since`, in commit order. With
    /// `member`, a user reads a space's log and must belong to it.
    async fn read(
        &self,
        member: Option<(SpaceId, UserId)>,
        log: LogId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage> {
        let read = LogRead::new(member, log, query);
        Self::with_connection(&self.readers, move |conn| read.page(conn)).await
    }

    async fn with_connection<R: Send + 'static>(
        pool: &Pool<SqliteConnectionManager>,
        work: impl FnOnce(&mut PooledConnection<SqliteConnectionManager>) -> StoreResult<R>
        + Send
        + 'static,
    ) -> StoreResult<R> {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(pool_error)?;
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

pub(crate) fn migrate(conn: &mut Connection, migrations: &[Migration]) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database_error)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS mana_schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(database_error)?;
    let applied: u32 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM mana_schema_migrations",
            [],
            |row| row.get(0),
        )
        .map_err(database_error)?;
    for migration in migrations.iter().filter(|m| m.version > applied) {
        let failed = |e: rusqlite::Error| StoreError::Migration {
            version: migration.version,
            message: e.to_string(),
        };
        tx.execute_batch(migration.sql).map_err(failed)?;
        // A migration that edited a definition in sqlite_schema (SQLite's
        // procedure for changing a CHECK in place) leaves writable_schema
        // on: moving schema_version makes every connection read the new
        // definition, as the procedure requires.
        let edited_schema: bool = tx
            .query_row("PRAGMA writable_schema", [], |row| row.get(0))
            .map_err(failed)?;
        if edited_schema {
            let version: i64 = tx
                .query_row("PRAGMA schema_version", [], |row| row.get(0))
                .map_err(failed)?;
            tx.execute_batch(&format!(
                "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF;",
                version + 1
            ))
            .map_err(failed)?;
        }
        tx.execute(
            "INSERT INTO mana_schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![
                migration.version,
                migration.name,
                micros(OffsetDateTime::now_utc())
            ],
        )
        .map_err(database_error)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    tx.commit().map_err(database_error)
}

/// The user's newest position and the last position dropped by compaction.
pub(crate) fn log_state(conn: &Connection, user: &str) -> rusqlite::Result<LogState> {
    // Cached: every read and every push asks (parsing it each time showed
    // under load).
    let state: Option<(i64, i64)> = conn
        .prepare_cached("SELECT last_seq, expired_through FROM mana_user_seq WHERE user_id = ?1")?
        .query_row([user], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(
        state.map_or(LogState::default(), |(newest, expired_through)| LogState {
            newest: u64::try_from(newest).unwrap_or(0),
            expired_through: u64::try_from(expired_through).unwrap_or(0),
        }),
    )
}

pub(crate) fn read_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(StoredChangeHead, RawColumns)> {
    Ok((
        StoredChangeHead {
            seq: row.get(0)?,
            event_id: row.get(1)?,
            app_id: row.get(2)?,
            table: row.get(3)?,
            record_id: row.get(4)?,
            client_id: row.get(10)?,
            schema_version: row.get(11)?,
            created_at: row.get(12)?,
        },
        RawColumns {
            op: row.get(5)?,
            data: row.get(6)?,
            fields: row.get(7)?,
            deleted_at: row.get(8)?,
            actor: row.get(9)?,
        },
    ))
}

pub(crate) struct StoredChangeHead {
    seq: i64,
    event_id: String,
    app_id: String,
    table: String,
    record_id: String,
    client_id: String,
    schema_version: u32,
    created_at: i64,
}

pub(crate) fn assemble(head: StoredChangeHead, raw: RawColumns) -> StoreResult<StoredChange> {
    let columns = raw.decode()?;
    let event_id = Uuid::parse_str(&head.event_id)
        .map_err(|e| StoreError::Corrupt(format!("event_id: {e}")))?;
    Ok(StoredChange {
        seq: u64::try_from(head.seq).unwrap_or(0),
        event_id,
        app_id: head.app_id,
        table: head.table,
        record_id: head.record_id,
        op: columns.op,
        data: columns.data,
        fields: columns.fields,
        deleted_at: columns.deleted_at,
        actor: columns.actor,
        client_id: head.client_id,
        schema_version: head.schema_version,
        created_at: from_micros(head.created_at),
        space_id: None,
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn push_transactions(&self) -> u64 {
        self.writer.groups()
    }

    fn kind(&self) -> StoreKind {
        StoreKind::Sqlite
    }

    fn events(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn ping(&self) -> StoreResult<()> {
        Self::with_connection(&self.readers, |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(database_error)
        })
        .await
    }

    async fn push(&self, user: &UserId, changeset: NewChangeset<'_>) -> StoreResult<PushOutcome> {
        self.writer.push(user, changeset).await
    }

    async fn push_and_read(
        &self,
        user: &UserId,
        changeset: NewChangeset<'_>,
        reply: &ChangeQuery<'_>,
    ) -> StoreResult<(PushOutcome, ChangePage)> {
        // A space's log is read with its membership check, by `changes_after`.
        let inline = reply
            .space
            .is_none()
            .then(|| Box::new(LogRead::new(None, LogId::of_user(user), reply)));
        let (outcome, page) = self.writer.push_and_read(user, changeset, inline).await?;
        match page {
            Some(page) => Ok((outcome, page)),
            None => Ok((outcome, self.changes_after(user, reply).await?)),
        }
    }

    async fn changes_after(
        &self,
        user: &UserId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage> {
        let reader = query.space.map(|space| (space.clone(), user.clone()));
        self.read(reader, query.log_of(user), query).await
    }

    async fn log_changes_after(
        &self,
        log: &LogId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage> {
        self.read(None, log.clone(), query).await
    }

    async fn log_readers(&self, log: &LogId) -> StoreResult<Vec<UserId>> {
        let Some(space) = log.space() else {
            return Ok(log.user().into_iter().collect());
        };
        Self::with_connection(&self.readers, move |conn| spaces::members_of(conn, &space)).await
    }

    async fn export(&self, user: &UserId) -> StoreResult<ChangeBatches> {
        backup::export(self, user).await
    }

    async fn import(
        &self,
        user: &UserId,
        changes: ImportSource,
    ) -> Result<ImportOutcome, ImportError> {
        backup::import(self, user, changes).await
    }

    async fn compaction_candidates(
        &self,
        threshold: u64,
        limit: usize,
    ) -> StoreResult<Vec<(LogId, u64)>> {
        compact::candidates(self, threshold, limit).await
    }

    async fn compact(
        &self,
        log: &LogId,
        options: &CompactOptions,
        progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
    ) -> StoreResult<CompactOutcome> {
        compact::compact(self, log, options, progress).await
    }

    async fn create_space(&self, owner: &UserId, name: &str) -> StoreResult<Membership> {
        spaces::create_space(self, owner, name).await
    }

    async fn spaces_of(&self, user: &UserId) -> StoreResult<Vec<Membership>> {
        spaces::spaces_of(self, user).await
    }

    async fn members(&self, user: &UserId, space: &SpaceId) -> StoreResult<Option<Vec<Member>>> {
        spaces::members(self, user, space).await
    }

    async fn change_membership(
        &self,
        actor: &UserId,
        space: &SpaceId,
        change: &MemberChange,
    ) -> Result<(), SpaceError> {
        spaces::change_membership(self, actor, space, change).await
    }

    async fn setting_or_insert(
        &self,
        name: &str,
        make: &(dyn Fn() -> String + Sync),
    ) -> StoreResult<String> {
        let name = name.to_owned();
        let candidate = make();
        self.writer.run(move |conn| {
            conn.execute(
                "INSERT INTO mana_server_settings (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![name, candidate],
            )
            .map_err(database_error)?;
            conn.query_row(
                "SELECT value FROM mana_server_settings WHERE name = ?1",
                [&name],
                |row| row.get(0),
            )
            .map_err(database_error)
        })
        .await?
    }
}
