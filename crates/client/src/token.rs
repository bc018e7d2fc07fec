//! Reading the user out of a bearer token.
//!
//! The client cannot verify a token (only the server holds the key); it reads
//! the `sub` claim to know which account a store belongs to, so that one
//! account's data is never pushed into another's.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{ClientError, Result};

/// The `sub` claim of a JWT, unverified.
pub fn subject(token: &str) -> Result<String> {
    let mut parts = token.trim().split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ClientError::InvalidToken(
            "expected three dot-separated parts".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|error| ClientError::InvalidToken(format!("payload is not base64url: {error}")))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| ClientError::InvalidToken(format!("payload is not JSON: {error}")))?;
    match claims.get("sub") {
        Some(serde_json::Value::String(sub)) if !sub.is_empty() => Ok(sub.clone()),
        _ => Err(ClientError::InvalidToken("no `sub` claim".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_subject() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","exp":1}"#);
        assert_eq!(
            subject(&format!("e30.{payload}.sig")).ok(),
            Some("alice".into())
        );
        assert!(subject("not-a-jwt").is_err());
        let no_sub = URL_SAFE_NO_PAD.encode(br#"{"exp":1}"#);
        assert!(subject(&format!("e30.{no_sub}.sig")).is_err());
    }
}
