//! Changes: one insert, update or delete of one record, as devices push it
//! ([`WireChange`], validated into [`Change`]) and as the server sends it
//! ([`SyncChange`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::ident::{IdentError, MAX_ID_LEN, MAX_NAME_LEN, SpaceId, check_identifier};
use crate::json::{MAX_DEPTH, nested_deeper_than};
use crate::schema::{self, SchemaVersionError};
use crate::timestamp::Timestamp;

/// What a change does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Creates the record; the change carries the whole record in `data`.
    Insert,
    /// Sets some fields; the change carries them with their timestamps in `fields`.
    Update,
    /// Deletes the record (a tombstone); the change carries `deletedAt`.
    Delete,
}

impl Op {
    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    /// Parses a name written by [`Op::as_str`].
    pub fn from_name(name: &str) -> Option<Op> {
        match name {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// The new value of one field and when it was written.
///
/// On the wire the timestamp arrives as `updatedAt` (older clients) or `at`
/// (newer ones); both are accepted, `at` wins if both are present and differ.
/// It is sent out under both names so that every client generation reads it.
///
/// A field may carry its own `actor`, which then overrides the change's for
/// this field. Devices do not need it; the server writes it when it folds a
/// record's history into one change (compaction), where each field keeps the
/// actor of its own winning write.
#[derive(Debug, Clone)]
pub struct FieldChange {
    /// The field's value, kept as the exact JSON text the device sent.
    pub value: Box<RawValue>,
    /// When the device wrote the value (its hybrid logical clock for new clients).
    pub at: Timestamp,
    /// Who wrote this field, when it differs from the change's actor.
    pub actor: Option<Box<RawValue>>,
}

impl PartialEq for FieldChange {
    fn eq(&self, other: &Self) -> bool {
        self.value.get() == other.value.get()
            && self.at == other.at
            && self.actor.as_deref().map(RawValue::get) == other.actor.as_deref().map(RawValue::get)
    }
}

/// The fields of an update, by field name.
pub type FieldChanges = BTreeMap<String, FieldChange>;

impl Serialize for FieldChange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            value: &'a RawValue,
            updated_at: &'a Timestamp,
            at: &'a Timestamp,
            #[serde(skip_serializing_if = "Option::is_none")]
            actor: Option<&'a RawValue>,
        }
        Out {
            value: &self.value,
            updated_at: &self.at,
            at: &self.at,
            actor: self.actor.as_deref(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for FieldChange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct In {
            value: Box<RawValue>,
            #[serde(default)]
            updated_at: Option<Timestamp>,
            #[serde(default)]
            at: Option<Timestamp>,
            /// Present (even as `null`, which means "no actor") or absent.
            #[serde(default, deserialize_with = "present")]
            actor: Option<Box<RawValue>>,
        }
        fn present<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Box<RawValue>>, D::Error> {
            Box::<RawValue>::deserialize(deserializer).map(Some)
        }
        let field = In::deserialize(deserializer)?;
        let at = field
            .at
            .or(field.updated_at)
            .ok_or_else(|| serde::de::Error::custom("a field needs `at` or `updatedAt`"))?;
        Ok(FieldChange {
            value: field.value,
            at,
            actor: field.actor,
        })
    }
}

/// Renders fields in the one shape the server stores: `{name: {value, at, actor?}}`.
pub fn fields_to_stored_json(fields: &FieldChanges) -> String {
    #[derive(Serialize)]
    struct Stored<'a> {
        value: &'a RawValue,
        at: &'a Timestamp,
        #[serde(skip_serializing_if = "Option::is_none")]
        actor: Option<&'a RawValue>,
    }
    let stored: BTreeMap<&str, Stored<'_>> = fields
        .iter()
        .map(|(name, field)| {
            (
                name.as_str(),
                Stored {
                    value: &field.value,
                    at: &field.at,
                    actor: field.actor.as_deref(),
                },
            )
        })
        .collect();
    // Serialising maps of strings and raw JSON cannot fail.
    serde_json::to_string(&stored).unwrap_or_else(|_| String::from("{}"))
}

/// Parses fields stored by [`fields_to_stored_json`] (or any wire shape).
pub fn fields_from_json(json: &str) -> Result<FieldChanges, serde_json::Error> {
    serde_json::from_str(json)
}

/// A change exactly as a device pushes it, before validation.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WireChange {
    /// The collection the record belongs to.
    pub table: String,
    /// The record's id within its collection.
    pub id: String,
    /// What the change does.
    pub op: Op,
    /// Insert: the whole record.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Option<Box<RawValue>>,
    /// Update: the changed fields with their timestamps.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::field_changes))]
    pub fields: Option<FieldChanges>,
    /// Delete: when the record was deleted.
    #[serde(default)]
    pub deleted_at: Option<Timestamp>,
    /// Who made the change (user, assistant, system…), opaque to the server.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub actor: Option<Box<RawValue>>,
    /// The change's schema version; absent means the changeset's, or 1.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// The shared space the record belongs to; absent (or `null`) means the
    /// user's personal space. Also read from `data.spaceId` on inserts and
    /// `fields.spaceId.value` on updates, as the seed's later clients send it.
    #[serde(default)]
    pub space_id: Option<String>,
}

/// Why one change of a changeset was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeProblem {
    /// `table` is not a valid name.
    #[error("`table` {0}")]
    Table(IdentError),
    /// `id` is not a valid record id.
    #[error("`id` {0}")]
    Id(IdentError),
    /// An insert without a `data` object.
    #[error("an insert needs a `data` object with the whole record")]
    InsertWithoutData,
    /// An update without fields.
    #[error("an update needs a non-empty `fields` object")]
    UpdateWithoutFields,
    /// A delete without `deletedAt`.
    #[error("a delete needs `deletedAt`")]
    DeleteWithoutTimestamp,
    /// `data` is present but not a JSON object.
    #[error("`data` must be a JSON object")]
    DataNotObject,
    /// A field name in `fields` is not valid.
    #[error("field name `{name}` {problem}")]
    FieldName {
        /// The offending name (truncated).
        name: String,
        /// What is wrong with it.
        problem: IdentError,
    },
    /// The change's schema version is not supported.
    #[error(transparent)]
    SchemaVersion(#[from] SchemaVersionError),
    /// The space id is not valid.
    #[error("`spaceId` {0}")]
    SpaceId(IdentError),
    /// A space id given in `data` or `fields` is not a string.
    #[error("`spaceId` must be a string (or null for the personal space)")]
    SpaceIdNotText,
    /// A value nests arrays and objects deeper than [`MAX_DEPTH`].
    #[error(
        "`{path}` is nested more than {MAX_DEPTH} levels deep; many JSON parsers cannot read deeper values, so it is not stored"
    )]
    TooDeep {
        /// Where in the change: `data`, `fields.<name>.value` or `actor`.
        path: String,
    },
}

/// A change that passed validation, ready to be stored.
#[derive(Debug, Clone)]
pub struct Change {
    /// The collection.
    pub table: String,
    /// The record id.
    pub id: String,
    /// What the change does.
    pub op: Op,
    /// The record (inserts; optional on other ops).
    pub data: Option<Box<RawValue>>,
    /// Field values with timestamps (updates; optional on inserts).
    pub fields: Option<FieldChanges>,
    /// Deletion time (deletes).
    pub deleted_at: Option<Timestamp>,
    /// Opaque actor JSON, stored and sent back verbatim.
    pub actor: Option<Box<RawValue>>,
    /// The schema version the change was written under.
    pub schema_version: u32,
    /// The shared space; `None` for the user's personal space.
    pub space_id: Option<SpaceId>,
}

fn is_json_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

fn too_deep(value: Option<&RawValue>) -> bool {
    value.is_some_and(|value| nested_deeper_than(value.get(), MAX_DEPTH))
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

impl WireChange {
    /// Gives a delete that came without `deletedAt` the server's time `now`.
    /// The seed's server accepted such deletes and stamped its own time, and
    /// its clients rely on it; every other change is left as it is.
    pub fn stamp_missing_deletion(&mut self, now: &Timestamp) {
        if self.op == Op::Delete && self.deleted_at.is_none() {
            self.deleted_at = Some(now.clone());
        }
    }

    /// The space the change names: `spaceId`, else `data.spaceId` (inserts),
    /// else `fields.spaceId.value` (updates); `None` for the personal space.
    fn named_space(&self) -> Result<Option<SpaceId>, ChangeProblem> {
        fn text(raw: &RawValue) -> Result<Option<String>, ChangeProblem> {
            serde_json::from_str::<Option<String>>(raw.get())
                .map_err(|_| ChangeProblem::SpaceIdNotText)
        }
        let named = match (&self.space_id, self.op) {
            (Some(explicit), _) => Some(explicit.clone()),
            (None, Op::Insert) => {
                #[derive(Deserialize)]
                struct Data<'a> {
                    #[serde(rename = "spaceId", borrow, default)]
                    space_id: Option<&'a RawValue>,
                }
                let data = self
                    .data
                    .as_deref()
                    .and_then(|raw| serde_json::from_str::<Data<'_>>(raw.get()).ok());
                match data.and_then(|data| data.space_id) {
                    Some(raw) => text(raw)?,
                    None => None,
                }
            }
            (None, Op::Update) => match self.fields.as_ref().and_then(|f| f.get("spaceId")) {
                Some(field) => text(&field.value)?,
                None => None,
            },
            (None, Op::Delete) => None,
        };
        named
            .filter(|id| !id.is_empty())
            .map(SpaceId::new)
            .transpose()
            .map_err(ChangeProblem::SpaceId)
    }

    /// Validates the change; `default_version` is the changeset's schema version.
    pub fn validate(self, default_version: u32) -> Result<Change, ChangeProblem> {
        check_identifier(&self.table, MAX_NAME_LEN).map_err(ChangeProblem::Table)?;
        check_identifier(&self.id, MAX_ID_LEN).map_err(ChangeProblem::Id)?;
        let schema_version = schema::check(self.schema_version.unwrap_or(default_version))?;
        if self
            .data
            .as_deref()
            .is_some_and(|data| !is_json_object(data))
        {
            return Err(ChangeProblem::DataNotObject);
        }
        if let Some(fields) = &self.fields {
            for (name, field) in fields {
                check_identifier(name, MAX_NAME_LEN).map_err(|problem| {
                    ChangeProblem::FieldName {
                        name: truncated(name),
                        problem,
                    }
                })?;
                if too_deep(Some(&*field.value)) {
                    return Err(ChangeProblem::TooDeep {
                        path: format!("fields.{name}.value"),
                    });
                }
            }
        }
        for (path, value) in [("data", &self.data), ("actor", &self.actor)] {
            if too_deep(value.as_deref()) {
                return Err(ChangeProblem::TooDeep { path: path.into() });
            }
        }
        let space_id = self.named_space()?;
        match self.op {
            Op::Insert if self.data.is_none() => return Err(ChangeProblem::InsertWithoutData),
            Op::Update if self.fields.as_ref().is_none_or(BTreeMap::is_empty) => {
                return Err(ChangeProblem::UpdateWithoutFields);
            }
            Op::Delete if self.deleted_at.is_none() => {
                return Err(ChangeProblem::DeleteWithoutTimestamp);
            }
            _ => {}
        }
        Ok(Change {
            table: self.table,
            id: self.id,
            op: self.op,
            data: self.data,
            fields: self.fields,
            deleted_at: self.deleted_at,
            actor: self.actor,
            schema_version,
            space_id,
        })
    }
}

/// A change as the server sends it to a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SyncChange {
    /// The collection.
    pub table: String,
    /// The record id.
    pub id: String,
    /// What the change does.
    pub op: Op,
    /// The record, for inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Option<Box<RawValue>>,
    /// Field values with timestamps, for updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::field_changes))]
    pub fields: Option<FieldChanges>,
    /// Deletion time, for deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// Opaque actor; absent when the device sent none (consumers read "user").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub actor: Option<Box<RawValue>>,
    /// The server-assigned id of this change, stable across backups.
    pub event_id: Uuid,
    /// The schema version the change was written under.
    pub schema_version: u32,
    /// The shared space, when the record is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(json: &str) -> WireChange {
        match serde_json::from_str(json) {
            Ok(change) => change,
            Err(error) => panic!("{json}: {error}"),
        }
    }

    #[test]
    fn accepts_both_timestamp_names_and_prefers_at() {
        let old: FieldChanges =
            serde_json::from_str(r#"{"t":{"value":"x","updatedAt":"2026-01-01T00:00:00Z"}}"#)
                .expect("old shape parses");
        assert_eq!(old["t"].at.as_str(), "2026-01-01T00:00:00Z");
        let both: FieldChanges = serde_json::from_str(
            r#"{"t":{"value":1,"updatedAt":"2026-01-01T00:00:00Z","at":"2026-01-02T00:00:00Z"}}"#,
        )
        .expect("both names parse");
        assert_eq!(both["t"].at.as_str(), "2026-01-02T00:00:00Z");
        assert!(serde_json::from_str::<FieldChanges>(r#"{"t":{"value":1}}"#).is_err());
    }

    #[test]
    fn stores_one_name_and_emits_both() {
        let fields: FieldChanges = serde_json::from_str(
            r#"{"t":{"value":{"a":[1,2]},"updatedAt":"2026-01-01T00:00:00Z"}}"#,
        )
        .expect("fields parse");
        let stored = fields_to_stored_json(&fields);
        assert_eq!(
            stored,
            r#"{"t":{"value":{"a":[1,2]},"at":"2026-01-01T00:00:00Z"}}"#
        );
        let back = fields_from_json(&stored).expect("stored shape parses");
        assert_eq!(
            serde_json::to_string(&back).expect("serialises"),
            r#"{"t":{"value":{"a":[1,2]},"updatedAt":"2026-01-01T00:00:00Z","at":"2026-01-01T00:00:00Z"}}"#
        );
    }

    #[test]
    fn validation_names_what_is_missing() {
        let insert = wire(r#"{"table":"tasks","id":"1","op":"insert"}"#);
        assert_eq!(
            insert.validate(1).err(),
            Some(ChangeProblem::InsertWithoutData)
        );
        let update = wire(r#"{"table":"tasks","id":"1","op":"update","fields":{}}"#);
        assert_eq!(
            update.validate(1).err(),
            Some(ChangeProblem::UpdateWithoutFields)
        );
        let delete = wire(r#"{"table":"tasks","id":"1","op":"delete"}"#);
        assert_eq!(
            delete.validate(1).err(),
            Some(ChangeProblem::DeleteWithoutTimestamp)
        );
        let array = wire(r#"{"table":"tasks","id":"1","op":"insert","data":[1]}"#);
        assert_eq!(array.validate(1).err(), Some(ChangeProblem::DataNotObject));
        let no_table =
            wire(r#"{"table":"","id":"1","op":"delete","deletedAt":"2026-01-01T00:00:00Z"}"#);
        assert_eq!(
            no_table.validate(1).err(),
            Some(ChangeProblem::Table(IdentError::Empty))
        );
    }

    #[test]
    fn the_space_comes_from_space_id_or_from_data_and_fields_as_the_seed_sends_it() {
        let space = |json: &str| {
            wire(json)
                .validate(1)
                .map(|c| c.space_id.map(|s| s.to_string()))
        };
        assert_eq!(
            space(r#"{"table":"t","id":"1","op":"insert","data":{}}"#),
            Ok(None)
        );
        assert_eq!(
            space(r#"{"table":"t","id":"1","op":"insert","data":{"spaceId":"s1"},"spaceId":"s2"}"#),
            Ok(Some("s2".into())),
            "the explicit one wins"
        );
        assert_eq!(
            space(r#"{"table":"t","id":"1","op":"insert","data":{"spaceId":"s1","x":1}}"#),
            Ok(Some("s1".into()))
        );
        assert_eq!(
            space(r#"{"table":"t","id":"1","op":"insert","data":{"spaceId":null}}"#),
            Ok(None)
        );
        assert_eq!(
            space(
                r#"{"table":"t","id":"1","op":"update","fields":{"spaceId":{"value":"s3","at":"2026-01-01T00:00:00Z"}}}"#
            ),
            Ok(Some("s3".into()))
        );
        assert_eq!(
            space(
                r#"{"table":"t","id":"1","op":"delete","deletedAt":"2026-01-01T00:00:00Z","spaceId":"s4"}"#
            ),
            Ok(Some("s4".into()))
        );
        assert_eq!(
            space(r#"{"table":"t","id":"1","op":"insert","data":{"spaceId":7}}"#),
            Err(ChangeProblem::SpaceIdNotText)
        );
        assert_eq!(
            space(r#"{"table":"t","id":"1","op":"insert","data":{},"spaceId":"a~b"}"#),
            Err(ChangeProblem::SpaceId(IdentError::Reserved))
        );
    }

    #[test]
    fn schema_version_defaults_to_the_changeset_and_is_bounded() {
        let change = wire(r#"{"table":"t","id":"1","op":"insert","data":{}}"#);
        assert_eq!(change.clone().validate(1).map(|c| c.schema_version), Ok(1));
        assert_eq!(change.validate(2).map(|c| c.schema_version), Ok(2));
        let too_new = wire(r#"{"table":"t","id":"1","op":"insert","data":{},"schemaVersion":99}"#);
        assert!(matches!(
            too_new.validate(1),
            Err(ChangeProblem::SchemaVersion(SchemaVersionError::TooNew {
                got: 99,
                ..
            }))
        ));
    }

    #[test]
    fn sync_change_omits_absent_actor_and_keeps_present_one_verbatim() {
        let mut change = SyncChange {
            table: "t".into(),
            id: "1".into(),
            op: Op::Delete,
            data: None,
            fields: None,
            deleted_at: Timestamp::parse("2026-01-01T00:00:00Z").ok(),
            actor: None,
            event_id: Uuid::nil(),
            schema_version: 1,
            space_id: None,
        };
        let json = serde_json::to_string(&change).expect("serialises");
        assert!(!json.contains("actor"), "{json}");
        change.actor = RawValue::from_string(r#"{"kind":"ai", "model" : "x"}"#.into()).ok();
        let json = serde_json::to_string(&change).expect("serialises");
        assert!(
            json.contains(r#""actor":{"kind":"ai", "model" : "x"}"#),
            "{json}"
        );
    }
}
