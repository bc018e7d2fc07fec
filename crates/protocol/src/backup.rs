//! Backups: one change per line of NDJSON, as `GET /backup/export` and
//! `mana-sync export` write them and `POST /backup/import` and
//! `mana-sync import` read them.
//!
//! A line is a change with everything needed to restore it exactly:
//! `eventId, schemaVersion, appId, table, id, op, data|fields|deletedAt,
//! actor (only if present), clientId, createdAt`, and `spaceId` for a change
//! of a shared space (an export holds every log its user may read; an
//! import writes each line into its space, which the importer must be
//! allowed to write). Lines without a
//! `schemaVersion` are version 1. Older lines are carried forward with
//! [`schema::migrate`] before they are validated like any pushed change.
//!
//! Lines exported by the seed's Go server (updates as `data` plus
//! `fieldTimestamps`, deletes as `data: {deletedAt}` or no `data`) are read
//! too: [`seed_line_to_ours`] rewrites them into the equivalent changes
//! before the migration chain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::change::{Change, ChangeProblem, FieldChanges, Op, WireChange};
use crate::ident::{MAX_ID_LEN, MAX_NAME_LEN, check_identifier};
use crate::schema::{self, MAX_SCHEMA_VERSION, MigrationError, RawChange, SchemaVersionError};
use crate::timestamp::Timestamp;

/// A change written as a backup line.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BackupLine<'a> {
    /// The change's id, kept across restores (duplicates are skipped by it).
    pub event_id: Uuid,
    /// The version the change was written under.
    pub schema_version: u32,
    /// The app.
    pub app_id: &'a str,
    /// The collection.
    pub table: &'a str,
    /// The record id.
    pub id: &'a str,
    /// What the change does.
    pub op: Op,
    /// The record (inserts).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Option<&'a RawValue>,
    /// Field values with timestamps (updates).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::field_changes))]
    pub fields: Option<&'a FieldChanges>,
    /// Deletion time (deletes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<&'a Timestamp>,
    /// Opaque actor, only if the change had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub actor: Option<&'a RawValue>,
    /// The device that pushed it.
    pub client_id: &'a str,
    /// When the server first stored it (RFC 3339).
    pub created_at: &'a str,
    /// The shared space whose log holds it; absent for the user's own log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space_id: Option<&'a str>,
}

/// A change read from a backup, validated and ready to be restored.
#[derive(Debug, Clone)]
pub struct ImportedChange {
    /// Its original event id.
    pub event_id: Uuid,
    /// The app.
    pub app_id: String,
    /// The device that originally pushed it.
    pub client_id: String,
    /// When the server originally stored it.
    pub created_at: OffsetDateTime,
    /// The change itself, in the current shape.
    pub change: Change,
}

/// What is wrong with one line of a backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    Json(String),
    /// A `schemaVersion` this server cannot read.
    #[error(transparent)]
    SchemaVersion(#[from] SchemaVersionError),
    /// An older version could not be carried forward.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// A required field is missing, or a value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A line in the seed's shape that cannot be read (see [`seed_line_to_ours`]).
    #[error("`{field}` {problem}")]
    SeedShape {
        /// The key at fault (`fieldTimestamps.title`, `data.deletedAt`, …).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A refused backup line, named by its number (the first line is 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}; nothing was imported")]
pub struct LineError {
    /// The line number.
    pub line: u64,
    /// What is wrong with it.
    pub problem: LineProblem,
}

impl LineError {
    /// Whether the line is refused for a schema version above the maximum.
    pub fn is_too_new(&self) -> bool {
        matches!(
            self.problem,
            LineProblem::SchemaVersion(SchemaVersionError::TooNew { .. })
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    event_id: Uuid,
    app_id: String,
    client_id: String,
    created_at: Timestamp,
    table: String,
    id: String,
    op: Op,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    fields: Option<FieldChanges>,
    #[serde(default)]
    deleted_at: Option<Timestamp>,
    #[serde(default)]
    actor: Option<Box<RawValue>>,
    #[serde(default)]
    space_id: Option<String>,
}

/// A JSON object with its members' values kept as raw text.
type RawObject = BTreeMap<String, Box<RawValue>>;

fn seed_problem(field: &str, problem: impl Into<String>) -> LineProblem {
    LineProblem::SeedShape {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// The value of `key`, unless it is absent or `null` (the seed omits what is empty).
fn present<'a>(line: &'a RawChange, key: &str) -> Option<&'a RawValue> {
    line.get(key)
        .map(|value| &**value)
        .filter(|value| value.get() != "null")
}

fn object_at(value: &RawValue, field: &str) -> Result<RawObject, LineProblem> {
    serde_json::from_str(value.get()).map_err(|_| seed_problem(field, "must be a JSON object"))
}

fn timestamp_at(value: &RawValue, field: &str) -> Result<(), LineProblem> {
    serde_json::from_str::<Timestamp>(value.get())
        .map(drop)
        .map_err(|_| {
            let text: String = value.get().chars().take(64).collect();
            seed_problem(field, format!("must be an RFC 3339 timestamp, not {text}"))
        })
}

/// Rewrites a line exported by the seed's Go server into our own shape, in
/// place, before the schema migration chain runs; our own lines are left
/// exactly as they are. Returns whether anything was rewritten.
///
/// The seed writes an update as `data` (the values) plus `fieldTimestamps`
/// (field name → RFC 3339 timestamp), an insert as `data` (sometimes with
/// `fieldTimestamps`), a delete as `data: {deletedAt}` or no `data` at all,
/// and omits empty maps. Those lines become the equivalent changes:
///
/// - an **update** without `fields`: `fields: {name: {value, updatedAt}}`
///   for every key of `data`, stamped with its `fieldTimestamps` entry, or
///   with the line's `createdAt` when it has none; `data` and
///   `fieldTimestamps` go (a timestamp of a field not in `data` sets nothing);
/// - an **insert** with `fieldTimestamps`: `data` stays, and every key of
///   `data` that has a timestamp also goes into `fields`, so it merges with
///   that timestamp (as one of our inserts with `fields` does);
/// - a **delete** without `deletedAt`: `deletedAt` is `data.deletedAt`, else
///   `createdAt`; a `data` that held nothing but `deletedAt` goes.
///
/// Only the rewritten keys are re-serialised: values and timestamps keep
/// their exact JSON text. A malformed seed line (`fieldTimestamps` or `data`
/// not an object, a timestamp that is not RFC 3339, both `fields` and
/// `fieldTimestamps`) is a [`LineProblem::SeedShape`] naming the field.
pub fn seed_line_to_ours(line: &mut RawChange) -> Result<bool, LineProblem> {
    // An unknown or missing op is left for `parse_line` to name.
    let Some(op) = line
        .get("op")
        .and_then(|op| serde_json::from_str::<Op>(op.get()).ok())
    else {
        return Ok(false);
    };
    let has_fields = present(line, "fields").is_some();
    let stamps = match present(line, "fieldTimestamps") {
        None => None,
        Some(_) if has_fields => {
            return Err(seed_problem(
                "fieldTimestamps",
                "cannot come with `fields`: a line has either `fields` (ours) or `data` and `fieldTimestamps` (the seed's)",
            ));
        }
        Some(stamps) => {
            let stamps = object_at(stamps, "fieldTimestamps")?;
            for (name, at) in &stamps {
                let name: String = name.chars().take(64).collect();
                timestamp_at(at, &format!("fieldTimestamps.{name}"))?;
            }
            Some(stamps)
        }
    };
    let created_at = || -> Result<Box<RawValue>, LineProblem> {
        let value = present(line, "createdAt").ok_or_else(|| {
            seed_problem(
                "createdAt",
                "is missing (a seed line without its own timestamps takes them from it)",
            )
        })?;
        timestamp_at(value, "createdAt")?;
        Ok(value.to_owned())
    };
    let reshaped: RawChange = match op {
        Op::Update if !has_fields => {
            let Some(data) = present(line, "data") else {
                // Nothing to turn into fields: validation names what is missing.
                return Ok(false);
            };
            let values = object_at(data, "data")?;
            let mut stamps = stamps.unwrap_or_default();
            let mut fields = RawObject::new();
            for (name, value) in values {
                let at = match stamps.remove(&name) {
                    Some(at) => at,
                    None => created_at()?,
                };
                fields.insert(name, field_json(&value, &at)?);
            }
            let mut reshaped = RawChange::new();
            reshaped.insert("fields".to_owned(), raw_json(&fields)?);
            line.remove("data");
            reshaped
        }
        Op::Insert if !has_fields => {
            let Some(stamps) = stamps else {
                return Ok(false);
            };
            let Some(data) = present(line, "data") else {
                return Ok(false);
            };
            let values = object_at(data, "data")?;
            let mut fields = RawObject::new();
            for (name, value) in values {
                if let Some(at) = stamps.get(&name) {
                    fields.insert(name, field_json(&value, at)?);
                }
            }
            let mut reshaped = RawChange::new();
            if !fields.is_empty() {
                reshaped.insert("fields".to_owned(), raw_json(&fields)?);
            }
            reshaped
        }
        Op::Delete if present(line, "deletedAt").is_none() => {
            let data = present(line, "data")
                .map(|data| object_at(data, "data"))
                .transpose()?;
            let deleted_at = match data.as_ref().and_then(|data| data.get("deletedAt")) {
                Some(at) => {
                    timestamp_at(at, "data.deletedAt")?;
                    at.clone()
                }
                None => created_at()?,
            };
            if data.is_some_and(|data| data.keys().all(|key| key == "deletedAt")) {
                line.remove("data");
            }
            let mut reshaped = RawChange::new();
            reshaped.insert("deletedAt".to_owned(), deleted_at);
            reshaped
        }
        _ => return Ok(false),
    };
    line.remove("fieldTimestamps");
    line.extend(reshaped);
    Ok(true)
}

/// `{"value": <value>, "updatedAt": <at>}`, both kept as their raw text.
fn field_json(value: &RawValue, at: &RawValue) -> Result<Box<RawValue>, LineProblem> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Field<'a> {
        value: &'a RawValue,
        updated_at: &'a RawValue,
    }
    raw_json(&Field {
        value,
        updated_at: at,
    })
}

fn raw_json(value: &impl Serialize) -> Result<Box<RawValue>, LineProblem> {
    serde_json::to_string(value)
        .and_then(RawValue::from_string)
        .map_err(|e| LineProblem::Json(e.to_string()))
}

/// Parses, migrates and validates one backup line.
pub fn parse_line(line: u64, text: &str) -> Result<ImportedChange, LineError> {
    let fail = |problem: LineProblem| LineError { line, problem };
    let mut raw: RawChange =
        serde_json::from_str(text).map_err(|e| fail(LineProblem::Json(e.to_string())))?;
    let version = match raw.get("schemaVersion") {
        None => schema::DEFAULT_SCHEMA_VERSION,
        Some(value) => serde_json::from_str::<u32>(value.get()).map_err(|_| {
            fail(LineProblem::Invalid(format!(
                "`schemaVersion` must be a whole number from 1 to {MAX_SCHEMA_VERSION}, not {}",
                value.get()
            )))
        })?,
    };
    schema::check(version).map_err(|e| fail(e.into()))?;
    let reshaped = seed_line_to_ours(&mut raw).map_err(fail)?;
    // Current lines of ours are read as they are; seed lines and older ones
    // are rewritten first (which re-serialises only the keys that changed).
    let migrated;
    let text = if reshaped || version < MAX_SCHEMA_VERSION {
        schema::migrate(&mut raw, version).map_err(|e| fail(e.into()))?;
        migrated =
            serde_json::to_string(&raw).map_err(|e| fail(LineProblem::Json(e.to_string())))?;
        migrated.as_str()
    } else {
        text
    };
    let parsed: Line =
        crate::json::parse(text.as_bytes()).map_err(|e| fail(LineProblem::Invalid(e.message)))?;
    let ident = |what: &str, value: &str, max: usize| {
        check_identifier(value, max)
            .map_err(|e| fail(LineProblem::Invalid(format!("`{what}` {e}"))))
    };
    ident("appId", &parsed.app_id, MAX_NAME_LEN)?;
    // Empty: no one device (a change compaction folded from several).
    if !parsed.client_id.is_empty() {
        ident("clientId", &parsed.client_id, MAX_ID_LEN)?;
    }
    let change = WireChange {
        table: parsed.table,
        id: parsed.id,
        op: parsed.op,
        data: parsed.data,
        fields: parsed.fields,
        deleted_at: parsed.deleted_at,
        actor: parsed.actor,
        schema_version: Some(version),
        space_id: parsed.space_id,
    }
    .validate(version)
    .map_err(|problem: ChangeProblem| fail(LineProblem::Invalid(problem.to_string())))?;
    Ok(ImportedChange {
        event_id: parsed.event_id,
        app_id: parsed.app_id,
        client_id: parsed.client_id,
        created_at: parsed.created_at.instant(),
        change,
    })
}

#[cfg(test)]
mod tests;
