//! Schema versions of changes.
//!
//! Every change records the schema version it was written under. A change
//! without one is version 1 (clients from before versions existed). The server
//! refuses versions newer than [`MAX_SCHEMA_VERSION`]: it could not promise to
//! carry them forward, and accepting data it does not understand would corrupt
//! what older devices read.
//!
//! | version | shape |
//! |---|---|
//! | 1 | field timestamps named `updatedAt` |
//! | 2 | field timestamps named `at` (both are accepted and emitted on the wire) |
//!
//! Backups carry changes of every version ever written, so [`migrate`] carries
//! an old change forward one version at a time: adding version N+1 means
//! adding one step to [`STEPS`] (and a test of it). Steps work on the change's
//! top-level keys with their values kept as raw JSON text, and re-parse only
//! what they change, so user data (record fields, actors) keeps its exact text.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// The version assumed when a change or changeset carries none.
pub const DEFAULT_SCHEMA_VERSION: u32 = 1;

/// The newest schema version this build understands.
pub const MAX_SCHEMA_VERSION: u32 = 2;

/// Why a schema version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaVersionError {
    /// Newer than this server understands.
    #[error("schemaVersion {got} is newer than this server supports (maximum {max})")]
    TooNew {
        /// The version that was sent.
        got: u32,
        /// [`MAX_SCHEMA_VERSION`].
        max: u32,
    },
    /// Zero, which no client ever wrote.
    #[error("schemaVersion must be at least 1")]
    Zero,
}

/// Checks that `version` is one this build understands.
pub fn check(version: u32) -> Result<u32, SchemaVersionError> {
    match version {
        0 => Err(SchemaVersionError::Zero),
        v if v > MAX_SCHEMA_VERSION => Err(SchemaVersionError::TooNew {
            got: v,
            max: MAX_SCHEMA_VERSION,
        }),
        v => Ok(v),
    }
}

/// A change as a map of its top-level keys to their raw JSON values.
pub type RawChange = BTreeMap<String, Box<RawValue>>;

/// One step: carries a change written under version `n` to version `n + 1`.
type Step = fn(&mut RawChange) -> Result<(), String>;

/// The migration chain: `STEPS[n - 1]` carries version `n` to `n + 1`.
const STEPS: [Step; (MAX_SCHEMA_VERSION - 1) as usize] = [v1_to_v2];

/// Why a change could not be carried forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot carry schemaVersion {from} forward: {reason}")]
pub struct MigrationError {
    /// The version whose step failed.
    pub from: u32,
    /// What the step could not do.
    pub reason: String,
}

/// Carries `change`, written under `version`, forward to [`MAX_SCHEMA_VERSION`].
pub fn migrate(change: &mut RawChange, version: u32) -> Result<(), MigrationError> {
    let version = check(version).map_err(|error| MigrationError {
        from: version,
        reason: error.to_string(),
    })?;
    for from in version..MAX_SCHEMA_VERSION {
        let step = STEPS[(from - 1) as usize];
        step(change).map_err(|reason| MigrationError { from, reason })?;
    }
    Ok(())
}

/// Version 1 named field timestamps `updatedAt`; version 2 names them `at`.
fn v1_to_v2(change: &mut RawChange) -> Result<(), String> {
    let Some(fields) = change.get("fields") else {
        return Ok(());
    };
    if fields.get() == "null" {
        return Ok(());
    }
    let mut fields: BTreeMap<String, BTreeMap<String, Box<RawValue>>> =
        serde_json::from_str(fields.get()).map_err(|e| format!("`fields`: {e}"))?;
    for field in fields.values_mut() {
        if !field.contains_key("at")
            && let Some(updated_at) = field.remove("updatedAt")
        {
            field.insert("at".to_owned(), updated_at);
        }
    }
    let text = serde_json::to_string(&fields).map_err(|e| e.to_string())?;
    let raw = RawValue::from_string(text).map_err(|e| e.to_string())?;
    change.insert("fields".to_owned(), raw);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawChange {
        serde_json::from_str(json).expect("an object")
    }

    #[test]
    fn version_1_field_timestamps_become_at_and_everything_else_keeps_its_text() {
        let mut change = raw(
            r#"{"op":"update","fields":{"title":{"value":1.50,"updatedAt":"2026-01-01T00:00:00Z"}},"actor":{"b":1, "a":2}}"#,
        );
        migrate(&mut change, 1).expect("migrates");
        assert_eq!(
            change["fields"].get(),
            r#"{"title":{"at":"2026-01-01T00:00:00Z","value":1.50}}"#
        );
        assert_eq!(change["actor"].get(), r#"{"b":1, "a":2}"#);
    }

    #[test]
    fn a_version_2_change_is_left_alone() {
        let text = r#"{"fields":{"t":{"value":"x","updatedAt":"2026-01-01T00:00:00Z"}}}"#;
        let mut change = raw(text);
        migrate(&mut change, MAX_SCHEMA_VERSION).expect("nothing to do");
        assert_eq!(
            serde_json::to_string(&change).expect("serialises"),
            serde_json::to_string(&raw(text)).expect("serialises")
        );
    }

    #[test]
    fn too_new_versions_cannot_be_migrated() {
        let mut change = raw("{}");
        let error = migrate(&mut change, MAX_SCHEMA_VERSION + 1).expect_err("refused");
        assert!(error.reason.contains("newer than this server supports"));
    }

    #[test]
    fn too_new_names_both_numbers() {
        let error = check(MAX_SCHEMA_VERSION + 1).expect_err("refused");
        let message = error.to_string();
        assert!(message.contains(&(MAX_SCHEMA_VERSION + 1).to_string()));
        assert!(message.contains(&MAX_SCHEMA_VERSION.to_string()));
        assert_eq!(check(1), Ok(1));
        assert_eq!(check(0), Err(SchemaVersionError::Zero));
    }
}
