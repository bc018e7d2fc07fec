//! Parsing request bodies into typed values with errors that say where the
//! problem is (`changes[3].op: unknown variant ...`), so a client developer can
//! fix their request from the 400 alone.

use serde::de::DeserializeOwned;

/// A body that is not the JSON we expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JsonError {
    /// Where in the document, and what is wrong.
    pub message: String,
}

/// Parses `bytes` as `T`, naming the path of the first problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(describe)?;
    deserializer.end().map_err(|error| JsonError {
        message: format!("trailing characters after the JSON document: {error}"),
    })?;
    Ok(value)
}

fn describe(error: serde_path_to_error::Error<serde_json::Error>) -> JsonError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    let message = if path == "." || path.is_empty() {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    };
    JsonError { message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::PushRequest;

    #[test]
    fn errors_name_the_path() {
        let body =
            br#"{"clientId":"d","since":"c1.0","changes":[{"table":"t","id":"1","op":"upsert"}]}"#;
        let error = parse::<PushRequest>(body).expect_err("invalid op");
        assert!(
            error
                .message
                .starts_with("changes[0].op: unknown variant `upsert`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn raw_values_survive_path_tracking() {
        let body = br#"{"clientId":"d","since":"c1.0","changes":[{"table":"t","id":"1","op":"insert","data":{"x" : 1},"actor":[1, 2]}]}"#;
        let request = parse::<PushRequest>(body).expect("valid");
        assert_eq!(
            request.changes[0].data.as_ref().map(|d| d.get()),
            Some(r#"{"x" : 1}"#)
        );
        assert_eq!(
            request.changes[0].actor.as_ref().map(|d| d.get()),
            Some("[1, 2]")
        );
    }
}
