//! Parsing request bodies into typed values with errors that say where the
//! problem is (`changes[3].op: unknown variant ...`), so a client developer can
//! fix their request from the 400 alone.

use serde::de::DeserializeOwned;

/// The deepest a stored JSON value (`data`, a field's `value`, `actor`) may
/// nest arrays and objects; the value itself counts as one level. Ordinary
/// JSON parsers stop somewhere between a few hundred and a few thousand
/// levels (Python's at about 1000), so a deeper value would make every other
/// device of the user unable to read its pages.
pub const MAX_DEPTH: usize = 64;

/// Whether the JSON text `text` nests arrays and objects more than `limit`
/// levels deep. Linear, without recursion, and stops at the first level
/// past the limit, so a value millions of levels deep costs nothing more.
pub fn nested_deeper_than(text: &str, limit: usize) -> bool {
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A body that is not the JSON we expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JsonError {
    /// Where in the document, and what is wrong.
    pub message: String,
}

/// Parses `bytes` as `T`, naming the path of the first problem.
///
/// Tracking the path costs something at every key and element (2% of the
/// server's CPU under `mana-sync-bench load`), and only a document that
/// fails needs it: so a failed document is parsed again, with the path
/// tracked, to say where. Parsing is deterministic, so the second parse
/// fails at the same place.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    serde_json::from_slice(bytes).map_err(|error| locate::<T>(bytes, &error))
}

/// Why `bytes` is not a `T` (`error`, from parsing it without the path),
/// with the path of the problem.
fn locate<T: DeserializeOwned>(bytes: &[u8], error: &serde_json::Error) -> JsonError {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Err(located) => describe(located),
        // The value itself parses: what failed is what follows it.
        Ok(_) => JsonError {
            message: format!("trailing characters after the JSON document: {error}"),
        },
    }
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
    fn a_valid_document_with_something_after_it_is_refused() {
        let body = br#"{"clientId":"d","since":"c1.0","changes":[]} {}"#;
        let error = parse::<PushRequest>(body).expect_err("trailing characters");
        assert!(
            error.message.starts_with(
                "trailing characters after the JSON document: trailing characters at line 1 column"
            ),
            "{}",
            error.message
        );
        let body = br#"{"clientId":"d","since":"c1.0","changes":[]}"#;
        assert!(parse::<PushRequest>(body).is_ok());
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(!nested_deeper_than(&nested(64), 64));
        assert!(nested_deeper_than(&nested(65), 64));
        assert!(!nested_deeper_than("1", 0));
        assert!(nested_deeper_than("{}", 0));
        let object = r#"{"a":{"b":[1,{"c":"[[[[{{{{\\\"[["}]}}"#;
        assert!(!nested_deeper_than(object, 4));
        assert!(nested_deeper_than(object, 3));
        // Siblings do not add up.
        assert!(!nested_deeper_than("[[1],[2],[[3]]]", 3));
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
