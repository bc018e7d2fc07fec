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
//! - `records (collection, id, state, deleted)`: the merge state of each
//!   record (`mana_sync_protocol::merge::RecordState` as JSON: every field's
//!   value, timestamp and actor, and the tombstone);
//! - `outbox (seq, change, changeset_id)`: local changes not yet acknowledged
//!   by the server, in write order, as the JSON pushed; `changeset_id` is set
//!   (and committed) before a push is sent, so a retry reuses it;
//! - `rejected (seq, change, reason, rejected_at)`: changes the server
//!   refused, set aside so the outbox never wedges (see `crate::sync`);
//! - `cursors (collection, cursor)`: how far each collection was pulled;
//! - `meta (key, value)`: client id, clock, account, app cursor, last error.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use mana_sync_protocol::ident::{MAX_ID_LEN, MAX_NAME_LEN, check_identifier};
use mana_sync_protocol::merge::{FieldState, RecordState, Tombstone, compare_timestamps};
use mana_sync_protocol::{PushResponse, SyncChange, Timestamp};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::clock::{self, HlcTime, PhysicalClock, SystemClock};
use crate::error::{ClientError, Result};
use crate::query::{Query, Subscription};
use crate::status::SyncStatus;
use crate::token;

/// The schema version of changes this client writes (timestamps named `at`).
pub const SCHEMA_VERSION: u32 = 2;

/// The current layout of the local database (`PRAGMA user_version`).
const DB_VERSION: i64 = 1;

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
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    change TEXT NOT NULL,
    changeset_id TEXT
);
CREATE INDEX IF NOT EXISTS outbox_changeset ON outbox (changeset_id) WHERE changeset_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    change TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    collection TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
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

/// A record as the app sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The collection.
    pub collection: String,
    /// The record's id.
    pub id: String,
    /// Its fields (including `id`).
    pub data: Map<String, Value>,
    /// The actor of its latest write, if that write had one (`__lastActor`).
    pub last_actor: Option<Value>,
    /// The actor of each field's latest write, for fields whose latest write
    /// had one (`__fieldActors`).
    pub field_actors: BTreeMap<String, Value>,
}

impl Record {
    fn from_state(collection: &str, id: &str, state: &RecordState) -> Self {
        let mut data = Map::new();
        for (name, field) in &state.fields {
            data.insert(name.clone(), parse_raw(field.value.get()));
        }
        data.entry("id")
            .or_insert_with(|| Value::String(id.to_owned()));
        Record {
            collection: collection.to_owned(),
            id: id.to_owned(),
            data,
            last_actor: state.last_actor().map(|actor| parse_raw(actor.get())),
            field_actors: state
                .field_actors()
                .into_iter()
                .map(|(name, actor)| (name.to_owned(), parse_raw(actor.get())))
                .collect(),
        }
    }

    /// One field's value.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.data.get(field)
    }

    /// The record as one JSON object: its fields, plus `__lastActor` and
    /// `__fieldActors` when there are actors to report (the keys the seed's
    /// web client stamps on records).
    pub fn to_json(&self) -> Value {
        let mut object = self.data.clone();
        if let Some(actor) = &self.last_actor {
            object.insert("__lastActor".into(), actor.clone());
        }
        if !self.field_actors.is_empty() {
            let actors = self
                .field_actors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            object.insert("__fieldActors".into(), Value::Object(actors));
        }
        Value::Object(object)
    }
}

fn parse_raw(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The account a store is signed in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user (the token's `sub`).
    pub user: String,
    /// The sync server's URL.
    pub server: String,
}

/// A change the server refused, set aside (see [`LocalStore::rejected`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedChange {
    /// The change as it was pushed.
    pub change: Value,
    /// What the server said.
    pub reason: String,
    /// When (RFC 3339).
    pub rejected_at: String,
}

/// Outbox rows sent together under one changeset id.
#[derive(Debug, Clone)]
pub(crate) struct PendingChangeset {
    pub id: String,
    /// The changes' JSON texts, in write order.
    pub changes: Vec<String>,
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

/// The JSON a change is pushed as.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutChange<'a> {
    table: &'a str,
    id: &'a str,
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<BTreeMap<&'a str, OutField<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a RawValue>,
    schema_version: u32,
}

#[derive(Serialize)]
struct OutField<'a> {
    value: &'a RawValue,
    at: &'a str,
}

fn get_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

fn delete_meta(conn: &Connection, key: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM meta WHERE key = ?1")?
        .execute([key])?;
    Ok(())
}

fn load_state(conn: &Connection, collection: &str, id: &str) -> Result<Option<RecordState>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT state FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row([collection, id], |row| row.get(0))
        .optional()?;
    text.map(|text| serde_json::from_str(&text).map_err(corrupt))
        .transpose()
}

fn save_state(conn: &Connection, collection: &str, id: &str, state: &RecordState) -> Result<()> {
    let text = serde_json::to_string(state).map_err(corrupt)?;
    conn.prepare_cached(
        "INSERT INTO records (collection, id, state, deleted) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (collection, id) DO UPDATE SET state = excluded.state, deleted = excluded.deleted",
    )?
    .execute(params![collection, id, text, state.is_deleted()])?;
    Ok(())
}

fn read_clock(conn: &Connection) -> Result<HlcTime> {
    Ok(get_meta(conn, "hlc")?
        .and_then(|text| HlcTime::parse(&text))
        .unwrap_or_else(|| HlcTime::from_millis(0)))
}

fn append_outbox(conn: &Connection, change: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO outbox (change) VALUES (?1)")?
        .execute([change])?;
    Ok(())
}

/// The clock for the duration of one transaction.
struct TxClock {
    last: HlcTime,
    physical: i64,
}

impl TxClock {
    fn tick(&mut self) -> HlcTime {
        self.last = clock::tick(self.last, self.physical);
        self.last
    }
}

/// What one local write did, for notifications.
struct Written<T> {
    value: T,
    collection: String,
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

    fn write_seed(
        tx: &Transaction<'_>,
        seed: &[SeedRecord],
        actor: Option<&RawValue>,
    ) -> Result<()> {
        let lowest = mana_sync_protocol::merge::lowest_timestamp();
        for record in seed {
            check_name("collection", &record.collection)?;
            check_id(&record.id)?;
            let mut data = record.data.clone();
            data.insert("id".into(), Value::String(record.id.clone()));
            let mut state = RecordState::default();
            for (name, value) in &data {
                check_field(name)?;
                state.merge_field(
                    name,
                    FieldState {
                        value: raw(value)?,
                        at: lowest.clone(),
                        actor: actor.map(RawValue::to_owned),
                    },
                );
            }
            let change = insert_change(&record.collection, &record.id, &state, actor)?;
            save_state(tx, &record.collection, &record.id, &state)?;
            append_outbox(tx, &change)?;
        }
        Ok(())
    }

    fn initial_status(conn: &Connection) -> Result<SyncStatus> {
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

    /// Runs one local write: clock in, clock out, one transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut TxClock) -> Result<Written<T>>,
    ) -> Result<T> {
        let written = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut clock = TxClock {
                last: read_clock(&tx)?,
                physical: self.shared.clock.now_millis(),
            };
            let written = f(&tx, &mut clock)?;
            set_meta(&tx, "hlc", &clock.last.to_text())?;
            tx.commit()?;
            written
        };
        self.notify(&[written.collection.as_str()], true);
        Ok(written.value)
    }

    /// Adds a record to `collection`. `data` must be a JSON object; its `id`
    /// (a string) is used if present, otherwise a new UUIDv7 is made. Returns
    /// the id. Ids of deleted records cannot be reused (tombstones are sticky).
    pub fn insert(&self, collection: &str, data: Value) -> Result<String> {
        check_name("collection", collection)?;
        let Value::Object(mut data) = data else {
            return Err(invalid("a record must be a JSON object"));
        };
        let id = match data.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(invalid("`id` must be a string")),
            None => uuid::Uuid::now_v7().to_string(),
        };
        check_id(&id)?;
        data.insert("id".into(), Value::String(id.clone()));
        let mut values = Vec::with_capacity(data.len());
        for (name, value) in &data {
            check_field(name)?;
            values.push((name.as_str(), raw(value)?));
        }
        let actor = self.shared.actor.as_deref();
        self.write(|tx, clock| {
            if load_state(tx, collection, &id)?.is_some() {
                return Err(ClientError::AlreadyExists {
                    collection: collection.to_owned(),
                    id: id.clone(),
                });
            }
            let at = clock.tick().to_timestamp();
            let mut state = RecordState::default();
            for (name, value) in values {
                state.merge_field(
                    name,
                    FieldState {
                        value,
                        at: at.clone(),
                        actor: actor.map(RawValue::to_owned),
                    },
                );
            }
            let change = insert_change(collection, &id, &state, actor)?;
            save_state(tx, collection, &id, &state)?;
            append_outbox(tx, &change)?;
            Ok(Written {
                value: id.clone(),
                collection: collection.to_owned(),
            })
        })
    }

    /// Sets some fields of a record. Each written field is stamped after both
    /// the clock and the field's current timestamp, so an edit always wins
    /// over what the device showed, even a remote write from a clock that
    /// runs far ahead.
    pub fn update(&self, collection: &str, id: &str, fields: Map<String, Value>) -> Result<()> {
        check_name("collection", collection)?;
        check_id(id)?;
        let mut values = Vec::with_capacity(fields.len());
        for (name, value) in &fields {
            check_field(name)?;
            if name == "id" && value.as_str() != Some(id) {
                return Err(invalid("`id` cannot be changed"));
            }
            values.push((name.as_str(), raw(value)?));
        }
        let actor = self.shared.actor.as_deref();
        self.write(|tx, clock| {
            let mut state = match load_state(tx, collection, id)? {
                Some(state) if !state.is_deleted() => state,
                _ => {
                    return Err(ClientError::NotFound {
                        collection: collection.to_owned(),
                        id: id.to_owned(),
                    });
                }
            };
            let now = clock.tick();
            let mut out = BTreeMap::new();
            let mut stamps = Vec::with_capacity(values.len());
            for (name, value) in values {
                let at = match state.fields.get(name) {
                    Some(current) if HlcTime::of(&current.at) >= now => {
                        HlcTime::of(&current.at).next()
                    }
                    _ => now,
                }
                .to_timestamp();
                state.merge_field(
                    name,
                    FieldState {
                        value: value.clone(),
                        at: at.clone(),
                        actor: actor.map(RawValue::to_owned),
                    },
                );
                stamps.push((name, value, at));
            }
            if stamps.is_empty() {
                return Ok(Written {
                    value: (),
                    collection: collection.to_owned(),
                });
            }
            for (name, value, at) in &stamps {
                out.insert(
                    *name,
                    OutField {
                        value,
                        at: at.as_str(),
                    },
                );
            }
            let change = serde_json::to_string(&OutChange {
                table: collection,
                id,
                op: "update",
                data: None,
                fields: Some(out),
                deleted_at: None,
                actor,
                schema_version: SCHEMA_VERSION,
            })
            .map_err(corrupt)?;
            save_state(tx, collection, id, &state)?;
            append_outbox(tx, &change)?;
            Ok(Written {
                value: (),
                collection: collection.to_owned(),
            })
        })
    }

    /// Deletes a record (a tombstone: it stays deleted on every device).
    pub fn delete(&self, collection: &str, id: &str) -> Result<()> {
        check_name("collection", collection)?;
        check_id(id)?;
        let actor = self.shared.actor.as_deref();
        self.write(|tx, clock| {
            let mut state = match load_state(tx, collection, id)? {
                Some(state) if !state.is_deleted() => state,
                _ => {
                    return Err(ClientError::NotFound {
                        collection: collection.to_owned(),
                        id: id.to_owned(),
                    });
                }
            };
            let at = clock.tick().to_timestamp();
            state.merge_delete(Tombstone {
                at: at.clone(),
                actor: actor.map(RawValue::to_owned),
            });
            let change = serde_json::to_string(&OutChange {
                table: collection,
                id,
                op: "delete",
                data: None,
                fields: None,
                deleted_at: Some(at.as_str()),
                actor,
                schema_version: SCHEMA_VERSION,
            })
            .map_err(corrupt)?;
            save_state(tx, collection, id, &state)?;
            append_outbox(tx, &change)?;
            Ok(Written {
                value: (),
                collection: collection.to_owned(),
            })
        })
    }

    /// One record, or `None` if it does not exist or was deleted.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        let conn = self.conn()?;
        Ok(load_state(&conn, collection, id)?
            .filter(|state| !state.is_deleted())
            .map(|state| Record::from_state(collection, id, &state)))
    }

    /// The merge state of a record (deleted ones included), for inspection
    /// and tests.
    pub fn record_state(&self, collection: &str, id: &str) -> Result<Option<RecordState>> {
        let conn = self.conn()?;
        load_state(&conn, collection, id)
    }

    /// Every live record of `collection`, by id.
    pub fn list(&self, collection: &str) -> Result<Vec<Record>> {
        self.query(&Query::new(collection))
    }

    /// The records a query selects, in its order.
    pub fn query(&self, query: &Query) -> Result<Vec<Record>> {
        let mut records = {
            let conn = self.conn()?;
            let mut statement = conn.prepare_cached(
                "SELECT id, state FROM records WHERE collection = ?1 AND deleted = 0 ORDER BY id",
            )?;
            let rows = statement.query_map([query.collection()], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?;
            let mut records = Vec::new();
            for row in rows {
                let (id, text) = row?;
                let state: RecordState = serde_json::from_str(&text).map_err(corrupt)?;
                let record = Record::from_state(query.collection(), &id, &state);
                if query.matches(&record) {
                    records.push(record);
                }
            }
            records
        };
        query.sort(&mut records);
        Ok(records)
    }

    /// A stream of a query's results: the current result first, then a new
    /// one whenever a write (local or from sync) changes it.
    pub fn subscribe(&self, query: Query) -> Subscription {
        Subscription::new(self.clone(), query, self.shared.versions.subscribe())
    }

    /// Every record state of every collection (deleted ones included), for
    /// comparing devices in tests and tools.
    pub fn dump(&self) -> Result<BTreeMap<(String, String), RecordState>> {
        let conn = self.conn()?;
        let mut statement = conn.prepare("SELECT collection, id, state FROM records")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (collection, id, text) = row?;
            let state = serde_json::from_str(&text).map_err(corrupt)?;
            out.insert((collection, id), state);
        }
        Ok(out)
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

    // ---- outbox ------------------------------------------------------------

    /// How many local changes wait to be pushed.
    pub fn pending_count(&self) -> Result<u64> {
        let conn = self.conn()?;
        let count: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM outbox")?
            .query_row([], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// A receiver that changes whenever a local write adds to the outbox.
    pub(crate) fn watch_outbox(&self) -> watch::Receiver<u64> {
        self.shared.outbox.subscribe()
    }

    /// The next changeset to push: rows already assigned to a changeset (a
    /// push that failed or whose reply was lost) first, with the same id;
    /// otherwise up to `max` new rows, whose new id is committed before this
    /// returns, so that a crash or a timeout after sending resends the same id.
    pub(crate) fn next_changeset(&self, max: usize) -> Result<Option<PendingChangeset>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let assigned: Option<String> = tx
            .prepare_cached(
                "SELECT changeset_id FROM outbox WHERE changeset_id IS NOT NULL ORDER BY seq LIMIT 1",
            )?
            .query_row([], |row| row.get(0))
            .optional()?;
        let id = match assigned {
            Some(id) => id,
            None => {
                let last: Option<i64> = tx
                    .prepare_cached(
                        "SELECT MAX(seq) FROM (SELECT seq FROM outbox ORDER BY seq LIMIT ?1)",
                    )?
                    .query_row([i64::try_from(max.max(1)).unwrap_or(500)], |row| row.get(0))?;
                let Some(last) = last else {
                    return Ok(None);
                };
                let id = uuid::Uuid::now_v7().to_string();
                tx.prepare_cached(
                    "UPDATE outbox SET changeset_id = ?1 WHERE changeset_id IS NULL AND seq <= ?2",
                )?
                .execute(params![id, last])?;
                id
            }
        };
        let changes = {
            let mut statement = tx
                .prepare_cached("SELECT change FROM outbox WHERE changeset_id = ?1 ORDER BY seq")?;
            statement
                .query_map([&id], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        Ok(Some(PendingChangeset { id, changes }))
    }

    /// The server stored changeset `id` (or had stored it before): drop its
    /// rows and apply the reply, in one transaction. The reply holds every
    /// change of the app after the `since` that was sent (the app cursor);
    /// when it holds all of them (`hasMore` false), every collection's cursor
    /// moves to its `syncedUntil` in the same transaction.
    pub(crate) fn finish_changeset(&self, id: &str, reply: &PushResponse) -> Result<()> {
        let touched = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("DELETE FROM outbox WHERE changeset_id = ?1")?
                .execute([id])?;
            let touched = self.apply_in(&tx, &reply.server_changes)?;
            if !reply.has_more {
                for collection in &self.shared.collections {
                    set_cursor(&tx, collection, &reply.synced_until)?;
                }
                set_meta(&tx, "app_cursor", &reply.synced_until)?;
            }
            tx.commit()?;
            touched
        };
        self.notify_touched(&touched);
        Ok(())
    }

    /// Splits changeset `id` into two halves with new ids (the server refused
    /// it as a whole, so none of it was stored and new ids are safe). Returns
    /// `false` if it has a single row and cannot be split.
    pub(crate) fn split_changeset(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seqs = tx
            .prepare_cached("SELECT seq FROM outbox WHERE changeset_id = ?1 ORDER BY seq")?
            .query_map([id], |row| row.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if seqs.len() < 2 {
            return Ok(false);
        }
        let (first, second) = seqs.split_at(seqs.len() / 2);
        for half in [first, second] {
            let new_id = uuid::Uuid::now_v7().to_string();
            let (low, high) = (half[0], half[half.len() - 1]);
            tx.prepare_cached(
                "UPDATE outbox SET changeset_id = ?1 WHERE changeset_id = ?2 AND seq BETWEEN ?3 AND ?4",
            )?
            .execute(params![new_id, id, low, high])?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Moves the rows of changeset `id` out of the outbox into `rejected`,
    /// with the server's reason. Local data is untouched.
    pub(crate) fn reject_changeset(&self, id: &str, reason: &str) -> Result<usize> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let moved = tx
            .prepare_cached(
                "INSERT INTO rejected (seq, change, reason, rejected_at)
                 SELECT seq, change, ?2, ?3 FROM outbox WHERE changeset_id = ?1",
            )?
            .execute(params![id, reason, now_rfc3339()])?;
        tx.prepare_cached("DELETE FROM outbox WHERE changeset_id = ?1")?
            .execute([id])?;
        tx.commit()?;
        Ok(moved)
    }

    /// Changes the server refused, kept aside with its reason.
    pub fn rejected(&self) -> Result<Vec<RejectedChange>> {
        let conn = self.conn()?;
        let mut statement =
            conn.prepare("SELECT change, reason, rejected_at FROM rejected ORDER BY seq")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (change, reason, rejected_at) = row?;
            out.push(RejectedChange {
                change: serde_json::from_str(&change).map_err(corrupt)?,
                reason,
                rejected_at,
            });
        }
        Ok(out)
    }

    /// Puts refused changes back into the outbox (after the server was fixed
    /// or upgraded); returns how many.
    pub fn retry_rejected(&self) -> Result<usize> {
        let moved = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let moved = tx.execute(
                "INSERT INTO outbox (change) SELECT change FROM rejected ORDER BY seq",
                [],
            )?;
            tx.execute("DELETE FROM rejected", [])?;
            tx.commit()?;
            moved
        };
        self.notify(&[], true);
        Ok(moved)
    }

    /// Forgets refused changes; returns how many.
    pub fn discard_rejected(&self) -> Result<usize> {
        let conn = self.conn()?;
        Ok(conn.execute("DELETE FROM rejected", [])?)
    }

    // ---- cursors and incoming changes --------------------------------------

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
        if !all {
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

    /// Applies changes received from the server (or any other transport):
    /// each is merged into its record, in one transaction. Returns how many
    /// records changed.
    pub fn apply_remote(&self, changes: &[SyncChange]) -> Result<usize> {
        self.apply_page(changes, None)
    }

    /// Applies one page of changes and, if given, moves `(collection, cursor)`
    /// in the same transaction (the last page of a pull, a stream event).
    pub(crate) fn apply_page(
        &self,
        changes: &[SyncChange],
        cursor: Option<(&str, &str)>,
    ) -> Result<usize> {
        let touched = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let touched = self.apply_in(&tx, changes)?;
            if let Some((collection, cursor)) = cursor {
                set_cursor(&tx, collection, cursor)?;
            }
            tx.commit()?;
            touched
        };
        let count = touched.len();
        self.notify_touched(&touched);
        Ok(count)
    }

    fn notify_touched(&self, touched: &[(String, String)]) {
        let mut collections: Vec<&str> = touched.iter().map(|(c, _)| c.as_str()).collect();
        collections.sort_unstable();
        collections.dedup();
        self.notify(&collections, false);
    }

    /// Merges `changes` inside `tx`; returns the records that changed.
    fn apply_in(
        &self,
        tx: &Transaction<'_>,
        changes: &[SyncChange],
    ) -> Result<Vec<(String, String)>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // Each record is read and written once per page, however many of the
        // page's changes touch it.
        let mut cache: HashMap<(String, String), (RecordState, bool)> = HashMap::new();
        let mut newest: Option<&Timestamp> = None;
        for change in changes {
            let key = (change.table.clone(), change.id.clone());
            let entry = match cache.entry(key) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let (collection, id) = entry.key();
                    let state = load_state(tx, collection, id)?.unwrap_or_default();
                    entry.insert((state, false))
                }
            };
            match entry.0.apply(change.into()) {
                Ok(changed) => entry.1 |= changed,
                Err(error) => {
                    // The server validates every change; one that still
                    // cannot be merged is skipped rather than blocking sync.
                    tracing::warn!(table = %change.table, id = %change.id, %error, "skipping an unmergeable change");
                }
            }
            let stamps = change
                .fields
                .iter()
                .flat_map(|fields| fields.values().map(|f| &f.at))
                .chain(change.deleted_at.as_ref());
            for at in stamps {
                if newest.is_none_or(|n| compare_timestamps(at, n) == std::cmp::Ordering::Greater) {
                    newest = Some(at);
                }
            }
        }
        let mut touched = Vec::new();
        for ((collection, id), (state, dirty)) in cache {
            if dirty {
                save_state(tx, &collection, &id, &state)?;
                touched.push((collection, id));
            }
        }
        if let Some(newest) = newest {
            let last = read_clock(tx)?;
            let next = clock::observe(last, HlcTime::of(newest), self.shared.clock.now_millis());
            if next != last {
                set_meta(tx, "hlc", &next.to_text())?;
            }
        }
        Ok(touched)
    }

    /// Whether another process wrote to the store since the last call; if so,
    /// subscribers of every synced collection are told, and so is the live
    /// sync (which pushes that process's outbox rows). SQLite's
    /// `data_version` changes only for commits made by other connections.
    pub fn check_external_changes(&self) -> Result<bool> {
        let version: i64 = {
            let conn = self.conn()?;
            conn.query_row("PRAGMA data_version", [], |row| row.get(0))?
        };
        let previous = self
            .shared
            .data_version
            .swap(version, std::sync::atomic::Ordering::SeqCst);
        let changed = previous != version && previous != i64::MIN;
        if changed {
            let collections: Vec<&str> =
                self.shared.collections.iter().map(String::as_str).collect();
            self.notify(&collections, true);
        }
        Ok(changed)
    }
}

fn set_cursor(conn: &Connection, collection: &str, cursor: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO cursors (collection, cursor) VALUES (?1, ?2)
         ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor",
    )?
    .execute([collection, cursor])?;
    Ok(())
}

/// The JSON of an insert of `state`: `data` with every field and `fields`
/// with every field's timestamp (so other devices merge it exactly).
fn insert_change(
    collection: &str,
    id: &str,
    state: &RecordState,
    actor: Option<&RawValue>,
) -> Result<String> {
    let data = RawValue::from_string(state.data_json()).map_err(corrupt)?;
    let fields = state
        .fields
        .iter()
        .map(|(name, field)| {
            (
                name.as_str(),
                OutField {
                    value: &field.value,
                    at: field.at.as_str(),
                },
            )
        })
        .collect();
    serde_json::to_string(&OutChange {
        table: collection,
        id,
        op: "insert",
        data: Some(&data),
        fields: Some(fields),
        deleted_at: None,
        actor,
        schema_version: SCHEMA_VERSION,
    })
    .map_err(corrupt)
}
