//! The local store: collections of JSON records in one SQLite file, with the
//! outbox, the sync cursors and the clock beside them.
//!
//! Every local write is one `BEGIN IMMEDIATE` transaction that reads the
//! clock, merges the write into the record's state, appends the change to the
//! outbox and saves the clock. So a write is durable with its outbox row or
//! not at all, and two processes on one store never hand out the same
//! timestamp.
//!
//! Tables:
//! - `records (collection, id, state, deleted, space_id)`: the merge state
//!   of each record (`mana_sync_protocol::merge::RecordState` as JSON: every
//!   field's value, timestamp and actor, and the tombstone), and the shared
//!   space it is in (`NULL`: the user's personal space), fixed when the
//!   record is first written;
//! - `outbox (seq, change, changeset_id, space_id)`: local changes not yet
//!   acknowledged by the server, in write order, as the JSON pushed;
//!   `changeset_id` is set (and committed) before a push is sent, so a retry
//!   reuses it; a changeset holds the changes of one space only;
//! - `rejected (seq, change, reason, rejected_at, space_id)`: changes the
//!   server refused, set aside so the outbox never wedges (see `crate::sync`);
//! - `cursors (collection, cursor)`: how far each collection was pulled (a
//!   composite cursor naming each downloaded space);
//! - `spaces (space_id, name, role)`: the shared spaces the user belongs to,
//!   as of the last refresh;
//! - `redownload_seen (collection, id)`: records that came back during a
//!   re-download after `cursor_expired` (see `redownload`);
//! - `meta (key, value)`: client id, clock, account, app cursor, last error,
//!   the re-download marker.
//!
//! The code follows the tables: this file opens the store and holds what
//! every part shares; `records` (local writes, reads, queries), `outbox`
//! (changesets, refused changes), `cursors`, `incoming` (merging what the
//! server sends), `spaces` (shared spaces: the local list, dropping a space
//! left), `redownload` (starting over after `cursor_expired`) and `meta`
//! (clock, status, account).

mod cursors;
mod incoming;
mod meta;
mod outbox;
mod records;
mod redownload;
mod spaces;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use mana_sync_protocol::ident::{MAX_ID_LEN, MAX_NAME_LEN, check_identifier};
use rusqlite::{Connection, TransactionBehavior};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::clock::{PhysicalClock, SystemClock};
use crate::error::{ClientError, Result};
use crate::status::SyncStatus;
use meta::{get_meta, set_meta};

pub use meta::Account;
pub(crate) use outbox::PendingChangeset;
pub use outbox::RejectedChange;
pub use records::Record;
pub use spaces::LocalSpace;

/// The schema version of changes this client writes (timestamps named `at`).
pub const SCHEMA_VERSION: u32 = 2;

/// The current layout of the local database (`PRAGMA user_version`).
/// Version 2 added shared spaces (`space_id` columns, `spaces`);
/// [`UPGRADE_TO_2`] brings a version 1 file up to it.
const DB_VERSION: i64 = 2;

/// Layout 1 to 2: records, outbox rows and refused changes know their space
/// (every existing one is in the personal space: `NULL`).
const UPGRADE_TO_2: &str = "
ALTER TABLE records ADD COLUMN space_id TEXT;
ALTER TABLE outbox ADD COLUMN space_id TEXT;
ALTER TABLE rejected ADD COLUMN space_id TEXT;
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    space_id TEXT,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    change TEXT NOT NULL,
    changeset_id TEXT,
    space_id TEXT
);
CREATE INDEX IF NOT EXISTS outbox_changeset ON outbox (changeset_id) WHERE changeset_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    change TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL,
    space_id TEXT
);
CREATE TABLE IF NOT EXISTS redownload_seen (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    collection TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_space ON records (space_id) WHERE space_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS spaces (
    space_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL
) WITHOUT ROWID;
";

/// A record to write when a store is created (onboarding content).
#[derive(Debug, Clone)]
pub struct SeedRecord {
    /// The collection.
    pub collection: String,
    /// A fixed id, the same on every device, so that the seeds of several
    /// devices of one account merge into one record instead of duplicating.
    pub id: String,
    /// The record's fields.
    pub data: Map<String, Value>,
}

/// How to open a store.
pub struct StoreOptions {
    /// The app whose data this is (the `{appId}` of the sync endpoints).
    pub app_id: String,
    /// The collections this app syncs (pulled and streamed). Records of other
    /// collections that arrive are stored too.
    pub collections: Vec<String>,
    /// Records written when the store is created. They are ordinary inserts
    /// (pushed at the first sign-in), timestamped with the lowest timestamp
    /// so that any real edit, on any device, wins over them.
    pub seed: Vec<SeedRecord>,
    /// The actor stamped on this device's writes (opaque JSON); `None` means
    /// the user.
    pub actor: Option<Value>,
    /// The physical clock (replaceable in tests).
    pub clock: Arc<dyn PhysicalClock>,
}

impl StoreOptions {
    /// Options for `app_id` syncing `collections`, with no seed and the
    /// system clock.
    pub fn new(app_id: impl Into<String>, collections: &[&str]) -> Self {
        Self {
            app_id: app_id.into(),
            collections: collections.iter().map(|c| (*c).to_owned()).collect(),
            seed: Vec::new(),
            actor: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Per-collection change counters that subscribers watch.
pub(crate) type Versions = HashMap<String, u64>;

struct Shared {
    conn: Mutex<Connection>,
    path: PathBuf,
    app_id: String,
    collections: Vec<String>,
    client_id: String,
    actor: Option<Box<RawValue>>,
    clock: Arc<dyn PhysicalClock>,
    versions: watch::Sender<Versions>,
    outbox: watch::Sender<u64>,
    status: watch::Sender<SyncStatus>,
    /// The last `PRAGMA data_version` seen (`i64::MIN`: not read yet).
    data_version: std::sync::atomic::AtomicI64,
}

/// The local store of one app on one device. Cheap to clone (all clones
/// share one connection); every method is synchronous and local.
#[derive(Clone)]
pub struct LocalStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.shared.path)
            .field("app_id", &self.shared.app_id)
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::InvalidInput(message.into())
}

fn check_name(what: &str, name: &str) -> Result<()> {
    check_identifier(name, MAX_NAME_LEN)
        .map_err(|error| invalid(format!("{what} `{name}` {error}")))
}

fn check_id(id: &str) -> Result<()> {
    check_identifier(id, MAX_ID_LEN).map_err(|error| invalid(format!("id `{id}` {error}")))
}

fn check_field(name: &str) -> Result<()> {
    check_name("field", name)?;
    if name.starts_with("__") {
        return Err(invalid(format!(
            "field `{name}`: names starting with `__` are reserved for metadata"
        )));
    }
    // The server reads `data.spaceId` and `fields.spaceId` as the record's
    // space: as a field, it would move the record into another space.
    if name == "spaceId" {
        return Err(invalid(
            "field `spaceId` is reserved: a record's space is chosen when it is inserted (`insert_in`)",
        ));
    }
    Ok(())
}

fn raw(value: &Value) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|error| invalid(format!("value: {error}")))
}

fn now_rfc3339() -> String {
    mana_sync_protocol::timestamp::format_millis(time::OffsetDateTime::now_utc())
}

fn corrupt(error: impl std::fmt::Display) -> ClientError {
    ClientError::Corrupt(error.to_string())
}

impl LocalStore {
    /// Opens (or creates) the store at `path`. A new store gets a fresh client
    /// id and the seed records; it starts local-only (guest).
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        check_name("app id", &options.app_id)?;
        for collection in &options.collections {
            check_name("collection", collection)?;
        }
        let open_error = |reason: String| ClientError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| open_error(error.to_string()))?;
        }
        let mut conn = Connection::open(&path).map_err(|error| open_error(error.to_string()))?;
        // WAL: readers never block the writer. FULL: a write that returned is
        // on disk, outbox row included, even after a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Another process (a second `mana-todo`) may hold the write lock briefly.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);

        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > DB_VERSION {
            return Err(open_error(format!(
                "it was written by a newer version (layout {version}, this build knows {DB_VERSION})"
            )));
        }
        let created = version == 0;
        if version == 1 {
            tx.execute_batch(UPGRADE_TO_2)?;
        }
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", DB_VERSION)?;
        let client_id = match get_meta(&tx, "client_id")? {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                set_meta(&tx, "client_id", &id)?;
                set_meta(&tx, "app_id", &options.app_id)?;
                id
            }
        };
        if let Some(app) = get_meta(&tx, "app_id")?
            && app != options.app_id
        {
            return Err(open_error(format!(
                "it holds the data of app `{app}`, not `{}`",
                options.app_id
            )));
        }
        let actor = options.actor.as_ref().map(raw).transpose()?;
        if created {
            Self::write_seed(&tx, &options.seed, actor.as_deref())?;
        }
        let status = Self::initial_status(&tx)?;
        tx.commit()?;

        let shared = Shared {
            conn: Mutex::new(conn),
            path,
            app_id: options.app_id,
            collections: options.collections,
            client_id,
            actor,
            clock: options.clock,
            versions: watch::Sender::new(Versions::new()),
            outbox: watch::Sender::new(0),
            status: watch::Sender::new(status),
            data_version: std::sync::atomic::AtomicI64::new(i64::MIN),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        // A panic while holding the lock cannot leave a transaction half
        // applied (rusqlite rolls back on drop), so a poisoned lock is safe to
        // take over.
        Ok(self
            .shared
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The app this store belongs to.
    pub fn app_id(&self) -> &str {
        &self.shared.app_id
    }

    /// The collections this app syncs.
    pub fn collections(&self) -> &[String] {
        &self.shared.collections
    }

    /// This device's id (`X-Client-Id`), generated once per store.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn notify(&self, collections: &[&str], outbox: bool) {
        if !collections.is_empty() {
            self.shared.versions.send_modify(|versions| {
                for collection in collections {
                    *versions.entry((*collection).to_owned()).or_insert(0) += 1;
                }
            });
        }
        if outbox {
            self.shared.outbox.send_modify(|n| *n += 1);
        }
    }
}
