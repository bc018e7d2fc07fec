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

#[cfg(test)]
mod tests {
    use super::*;

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
