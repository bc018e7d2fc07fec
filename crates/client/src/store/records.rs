//! Records: local writes (each with its outbox row and the clock, in one
//! transaction), reads and queries, and the JSON a local change is pushed as.

use std::collections::BTreeMap;

use mana_sync_protocol::merge::{FieldState, RecordState, Tombstone};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::meta::{read_clock, set_meta};
use super::outbox::append_outbox;
use super::spaces::{check_space_id, check_writable};
use super::{
    LocalStore, SCHEMA_VERSION, SeedRecord, check_field, check_id, check_name, corrupt, invalid,
    raw,
};
use crate::clock::{self, HlcTime};
use crate::error::{ClientError, Result};
use crate::query::{Query, Subscription};

/// A record as the app sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The collection.
    pub collection: String,
    /// The record's id.
    pub id: String,
    /// The shared space it is in; `None` for the user's personal space.
    /// Fixed when the record is created.
    pub space_id: Option<String>,
    /// Its fields (including `id`).
    pub data: Map<String, Value>,
    /// The actor of its latest write, if that write had one (`__lastActor`).
    pub last_actor: Option<Value>,
    /// The actor of each field's latest write, for fields whose latest write
    /// had one (`__fieldActors`).
    pub field_actors: BTreeMap<String, Value>,
}

impl Record {
    fn from_state(
        collection: &str,
        id: &str,
        space_id: Option<String>,
        state: &RecordState,
    ) -> Self {
        let mut data = Map::new();
        for (name, field) in &state.fields {
            data.insert(name.clone(), parse_raw(field.value.get()));
        }
        data.entry("id")
            .or_insert_with(|| Value::String(id.to_owned()));
        Record {
            collection: collection.to_owned(),
            id: id.to_owned(),
            space_id,
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

    /// The record as one JSON object: its fields, plus `spaceId` for a
    /// record in a shared space, and `__lastActor` and `__fieldActors` when
    /// there are actors to report (the keys the seed's web client stamps on
    /// records).
    pub fn to_json(&self) -> Value {
        let mut object = self.data.clone();
        if let Some(space) = &self.space_id {
            object.insert("spaceId".into(), Value::String(space.clone()));
        }
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
    /// Every change of a record in a shared space names it, so the server
    /// writes it into that space's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    space_id: Option<&'a str>,
}

#[derive(Serialize)]
struct OutField<'a> {
    value: &'a RawValue,
    at: &'a str,
}

/// A record's merge state and the space it is in.
pub(super) struct Stored {
    pub state: RecordState,
    pub space: Option<String>,
}

pub(super) fn load(conn: &Connection, collection: &str, id: &str) -> Result<Option<Stored>> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT state, space_id FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row([collection, id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    row.map(|(text, space)| {
        Ok(Stored {
            state: serde_json::from_str(&text).map_err(corrupt)?,
            space,
        })
    })
    .transpose()
}

pub(super) fn load_state(
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<RecordState>> {
    Ok(load(conn, collection, id)?.map(|stored| stored.state))
}

/// Saves a record's state. `space` is only written when the record is new:
/// a record never moves to another space.
pub(super) fn save_state(
    conn: &Connection,
    collection: &str,
    id: &str,
    space: Option<&str>,
    state: &RecordState,
) -> Result<()> {
    let text = serde_json::to_string(state).map_err(corrupt)?;
    conn.prepare_cached(
        "INSERT INTO records (collection, id, state, deleted, space_id) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (collection, id) DO UPDATE SET state = excluded.state, deleted = excluded.deleted",
    )?
    .execute(params![collection, id, text, state.is_deleted(), space])?;
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
    pub(super) fn write_seed(
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
            let change = insert_change(&record.collection, &record.id, None, &state, actor)?;
            save_state(tx, &record.collection, &record.id, None, &state)?;
            append_outbox(tx, &change, None)?;
        }
        Ok(())
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

    /// Adds a record to `collection`, in the user's personal space. `data`
    /// must be a JSON object; its `id` (a string) is used if present,
    /// otherwise a new UUIDv7 is made. Returns the id. Ids of deleted records
    /// cannot be reused (tombstones are sticky).
    pub fn insert(&self, collection: &str, data: Value) -> Result<String> {
        self.insert_in(None, collection, data)
    }

    /// [`LocalStore::insert`] into a shared space (`None`: the personal
    /// space). The record stays in that space for good: its updates and its
    /// deletion are pushed into it. A space where the user is a viewer (see
    /// [`LocalStore::spaces`]) is refused with [`ClientError::ReadOnlySpace`].
    pub fn insert_in(&self, space: Option<&str>, collection: &str, data: Value) -> Result<String> {
        check_name("collection", collection)?;
        if let Some(space) = space {
            check_space_id(space)?;
        }
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
            if let Some(space) = space {
                check_writable(tx, space)?;
            }
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
            let change = insert_change(collection, &id, space, &state, actor)?;
            save_state(tx, collection, &id, space, &state)?;
            append_outbox(tx, &change, space)?;
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
            let (mut state, space) = live_record(tx, collection, id)?;
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
                space_id: space.as_deref(),
            })
            .map_err(corrupt)?;
            save_state(tx, collection, id, space.as_deref(), &state)?;
            append_outbox(tx, &change, space.as_deref())?;
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
            let (mut state, space) = live_record(tx, collection, id)?;
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
                space_id: space.as_deref(),
            })
            .map_err(corrupt)?;
            save_state(tx, collection, id, space.as_deref(), &state)?;
            append_outbox(tx, &change, space.as_deref())?;
            Ok(Written {
                value: (),
                collection: collection.to_owned(),
            })
        })
    }

    /// One record, or `None` if it does not exist or was deleted.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        let conn = self.conn()?;
        Ok(load(&conn, collection, id)?
            .filter(|stored| !stored.state.is_deleted())
            .map(|stored| Record::from_state(collection, id, stored.space, &stored.state)))
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
                "SELECT id, state, space_id FROM records WHERE collection = ?1 AND deleted = 0 ORDER BY id",
            )?;
            let rows = statement.query_map([query.collection()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            })?;
            let mut records = Vec::new();
            for row in rows {
                let (id, text, space) = row?;
                let state: RecordState = serde_json::from_str(&text).map_err(corrupt)?;
                let record = Record::from_state(query.collection(), &id, space, &state);
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
}

/// The JSON of an insert of `state`: `data` with every field and `fields`
/// with every field's timestamp (so other devices merge it exactly).
fn insert_change(
    collection: &str,
    id: &str,
    space: Option<&str>,
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
        space_id: space,
    })
    .map_err(corrupt)
}

/// A live record to change, and its space (which must be writable).
fn live_record(
    tx: &Transaction<'_>,
    collection: &str,
    id: &str,
) -> Result<(RecordState, Option<String>)> {
    match load(tx, collection, id)? {
        Some(stored) if !stored.state.is_deleted() => {
            if let Some(space) = &stored.space {
                check_writable(tx, space)?;
            }
            Ok((stored.state, stored.space))
        }
        _ => Err(ClientError::NotFound {
            collection: collection.to_owned(),
            id: id.to_owned(),
        }),
    }
}
