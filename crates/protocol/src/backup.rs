//! Backups: one change per line of NDJSON, as `GET /backup/export` and
//! `mana-sync export` write them and `POST /backup/import` and
//! `mana-sync import` read them.
//!
//! A line is a change with everything needed to restore it exactly:
//! `eventId, schemaVersion, appId, table, id, op, data|fields|deletedAt,
//! actor (only if present), clientId, createdAt`. Lines without a
//! `schemaVersion` are version 1. Older lines are carried forward with
//! [`schema::migrate`] before they are validated like any pushed change.

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
    pub data: Option<&'a RawValue>,
    /// Field values with timestamps (updates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<&'a FieldChanges>,
    /// Deletion time (deletes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<&'a Timestamp>,
    /// Opaque actor, only if the change had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<&'a RawValue>,
    /// The device that pushed it.
    pub client_id: &'a str,
    /// When the server first stored it (RFC 3339).
    pub created_at: &'a str,
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
    // Current lines are read as they are; older ones are carried forward
    // first (which re-serialises only what a step changed).
    let migrated;
    let text = if version < MAX_SCHEMA_VERSION {
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
    ident("clientId", &parsed.client_id, MAX_ID_LEN)?;
    let change = WireChange {
        table: parsed.table,
        id: parsed.id,
        op: parsed.op,
        data: parsed.data,
        fields: parsed.fields,
        deleted_at: parsed.deleted_at,
        actor: parsed.actor,
        schema_version: Some(version),
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
mod tests {
    use super::*;

    const CURRENT: &str = r#"{"eventId":"0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d","schemaVersion":2,"appId":"todo","table":"tasks","id":"t1","op":"update","fields":{"title":{"value":"Buy milk","updatedAt":"2026-11-25T10:00:00.000Z","at":"2026-11-25T10:00:00.000Z"}},"actor":{"kind":"ai"},"clientId":"phone","createdAt":"2026-11-25T10:00:01.123456Z"}"#;

    #[test]
    fn reads_what_export_writes() {
        let imported = parse_line(1, CURRENT).expect("valid");
        assert_eq!(
            imported.event_id.to_string(),
            "0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d"
        );
        assert_eq!(
            (imported.app_id.as_str(), imported.client_id.as_str()),
            ("todo", "phone")
        );
        assert_eq!(imported.change.schema_version, 2);
        assert_eq!(
            imported.change.actor.as_ref().map(|a| a.get()),
            Some(r#"{"kind":"ai"}"#)
        );
        let fields = imported.change.fields.expect("fields");
        assert_eq!(fields["title"].at.as_str(), "2026-11-25T10:00:00.000Z");
    }

    #[test]
    fn a_line_without_a_version_is_version_1_and_is_carried_forward() {
        let legacy = r#"{"eventId":"0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d","appId":"todo","table":"tasks","id":"t1","op":"update","fields":{"done":{"value":true,"updatedAt":"2026-01-01T00:00:00Z"}},"clientId":"old-web","createdAt":"2026-01-01T00:00:01Z"}"#;
        let imported = parse_line(7, legacy).expect("valid");
        assert_eq!(imported.change.schema_version, 1);
        assert_eq!(
            imported.change.fields.expect("fields")["done"].at.as_str(),
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn refusals_name_the_line() {
        let too_new = CURRENT.replace(r#""schemaVersion":2"#, r#""schemaVersion":3"#);
        let error = parse_line(12, &too_new).expect_err("too new");
        assert!(error.is_too_new());
        let message = error.to_string();
        assert!(message.starts_with("line 12: schemaVersion 3"), "{message}");
        assert!(message.contains("maximum 2"), "{message}");

        for (broken, needle) in [
            ("not json".to_owned(), "not a JSON object"),
            ("[1,2]".to_owned(), "not a JSON object"),
            (
                CURRENT.replace(r#""eventId":"0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d","#, ""),
                "eventId",
            ),
            (CURRENT.replace(r#""clientId":"phone","#, ""), "clientId"),
            (
                CURRENT.replace(r#""op":"update""#, r#""op":"upsert""#),
                "op",
            ),
            (
                CURRENT.replace(r#""schemaVersion":2"#, r#""schemaVersion":"two""#),
                "schemaVersion",
            ),
            (
                CURRENT.replace(r#""appId":"todo""#, r#""appId":"""#),
                "appId",
            ),
            (
                CURRENT.replace(
                    r#""createdAt":"2026-11-25T10:00:01.123456Z""#,
                    r#""createdAt":"yesterday""#,
                ),
                "createdAt",
            ),
        ] {
            let error = parse_line(3, &broken).expect_err(needle);
            let message = error.to_string();
            assert!(message.starts_with("line 3: "), "{message}");
            assert!(
                message.contains(needle),
                "`{message}` should mention {needle}"
            );
        }
    }
}
