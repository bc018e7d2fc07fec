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

pub(super) fn load_state(
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<RecordState>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT state FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row([collection, id], |row| row.get(0))
        .optional()?;
    text.map(|text| serde_json::from_str(&text).map_err(corrupt))
        .transpose()
}

pub(super) fn save_state(
    conn: &Connection,
    collection: &str,
    id: &str,
    state: &RecordState,
) -> Result<()> {
    let text = serde_json::to_string(state).map_err(corrupt)?;
    conn.prepare_cached(
        "INSERT INTO records (collection, id, state, deleted) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (collection, id) DO UPDATE SET state = excluded.state, deleted = excluded.deleted",
    )?
    .execute(params![collection, id, text, state.is_deleted()])?;
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
            let change = insert_change(&record.collection, &record.id, &state, actor)?;
            save_state(tx, &record.collection, &record.id, &state)?;
            append_outbox(tx, &change)?;
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
