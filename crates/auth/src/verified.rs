//! Tokens verified before, and what they said.
//!
//! A device sends the same token with every request until it expires (an
//! hour, typically), and verifying it again each time is the costliest part
//! of a small push's authentication: 5% of the server's CPU with HS256 under
//! `mana-sync-bench load`, and an ES256 or RS256 signature costs more than
//! the rest of the push (the `verify_cost` example measures it).
//! A token found here is accepted again, without its signature checked, for
//! as long as its verification said ([`Verified::refused_from`]) and while
//! the key set it was verified against is the current one: a refetched JWKS
//! (which may have dropped the key that signed it) has every token verified
//! again.
//!
//! The cache is keyed by the whole token, so only the very bytes whose
//! signature was checked are ever found here.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::SystemTime;

use crate::{AuthError, Verified};

/// At most this many tokens are remembered (about 3 MB). When full, the
/// expired ones are dropped, and if that is not enough, all of them: a
/// server with more devices than this at once verifies some tokens again.
const MOST_TOKENS: usize = 10_000;

struct Entry {
    verified: Verified,
    /// [`crate::Verifier`]'s key set generation when it was verified.
    keys: u64,
}

/// The tokens verified so far.
#[derive(Default)]
pub(crate) struct VerifiedTokens {
    /// Read by every request, written only when a token is new: readers
    /// never wait for one another.
    entries: RwLock<HashMap<Box<str>, Entry>>,
}

impl VerifiedTokens {
    /// What `token` said when verified against key set generation `keys`;
    /// `None` if it was not, or against another generation. A token that
    /// expired since is refused here as it would be by verification.
    pub(crate) fn get(
        &self,
        token: &str,
        keys: u64,
        now: SystemTime,
    ) -> Option<Result<Verified, AuthError>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(token).filter(|entry| entry.keys == keys)?;
        Some(if now < entry.verified.refused_from {
            Ok(entry.verified.clone())
        } else {
            Err(AuthError::Expired)
        })
    }

    /// Remembers that `token` verified as `verified` against key set
    /// generation `keys`.
    pub(crate) fn insert(&self, token: &str, verified: &Verified, keys: u64, now: SystemTime) {
        // The map is whole after any panic (one insert or remove at a time).
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MOST_TOKENS {
            entries.retain(|_, entry| now < entry.verified.refused_from);
            if entries.len() >= MOST_TOKENS {
                entries.clear();
            }
        }
        entries.insert(
            token.into(),
            Entry {
                verified: verified.clone(),
                keys,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mana_sync_protocol::UserId;

    use super::*;

    fn verified(refused_from: SystemTime) -> Verified {
        Verified {
            user: UserId::new("alice").expect("valid"),
            refused_from,
        }
    }

    #[test]
    fn a_token_is_found_until_it_is_refused_and_only_for_its_key_set() {
        let tokens = VerifiedTokens::default();
        let now = SystemTime::now();
        let until = now + Duration::from_secs(60);
        tokens.insert("a.b.c", &verified(until), 1, now);
        assert_eq!(tokens.get("a.b.c", 1, now), Some(Ok(verified(until))));
        assert_eq!(
            tokens.get("a.b.c", 1, until - Duration::from_millis(1)),
            Some(Ok(verified(until)))
        );
        assert_eq!(tokens.get("a.b.c", 1, until), Some(Err(AuthError::Expired)));
        assert_eq!(tokens.get("a.b.c", 2, now), None, "another key set");
        assert_eq!(tokens.get("a.b.d", 1, now), None, "another token");
    }

    #[test]
    fn a_full_cache_drops_expired_tokens_first() {
        let tokens = VerifiedTokens::default();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        tokens.insert("live", &verified(later), 0, now);
        for n in 1..MOST_TOKENS {
            tokens.insert(&format!("expired-{n}"), &verified(now), 0, now);
        }
        tokens.insert("new", &verified(later), 0, now);
        assert_eq!(tokens.get("live", 0, now), Some(Ok(verified(later))));
        assert_eq!(tokens.get("new", 0, now), Some(Ok(verified(later))));
        assert_eq!(tokens.get("expired-1", 0, now), None);
    }
}
