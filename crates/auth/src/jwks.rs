//! The public keys of an auth service (a JSON Web Key Set), fetched over HTTP,
//! cached by key id, and refetched when a token names a key we do not know
//! (that is how key rotation reaches us) — at most once per configured
//! interval, so random key ids cannot make us hammer the auth service.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use crate::AuthError;

/// Failure to prepare key fetching.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for JWKS_URL: {0}")]
pub struct JwksError(String);

#[derive(Clone)]
struct CachedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

pub(crate) struct KeySet {
    url: String,
    http: reqwest::Client,
    min_refresh: Duration,
    keys: RwLock<Vec<CachedKey>>,
    last_fetch: Mutex<Option<Instant>>,
    /// How many times the key set was fetched: tokens verified against an
    /// earlier set are verified again (a key may have been dropped).
    fetched: AtomicU64,
}

fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Another component may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The one algorithm a key may verify, or `None` for keys we never use
/// (symmetric keys, encryption keys, other curves and algorithms).
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let declared_matches = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => by_type == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => by_type == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => by_type == Algorithm::EdDSA,
        Some(_) => false,
    };
    declared_matches.then_some(by_type)
}

impl KeySet {
    pub(crate) async fn new(url: String, min_refresh: Duration) -> Result<Self, JwksError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| JwksError(e.to_string()))?;
        let set = Self {
            url,
            http,
            min_refresh,
            keys: RwLock::new(Vec::new()),
            last_fetch: Mutex::new(None),
            fetched: AtomicU64::new(0),
        };
        if let Err(error) = set.refresh().await {
            tracing::warn!(url = %set.url, %error, "could not fetch the JWKS; will retry when a token arrives");
        }
        Ok(set)
    }

    async fn fetch(&self) -> Result<Vec<CachedKey>, String> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let algorithm = algorithm_of(jwk)?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(CachedKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                })
            })
            .collect())
    }

    /// Refetches the key set unless that happened less than `min_refresh` ago.
    /// Returns whether a fetch happened.
    async fn refresh(&self) -> Result<bool, String> {
        let mut last_fetch = self.last_fetch.lock().await;
        if last_fetch.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return Ok(false);
        }
        *last_fetch = Some(Instant::now());
        let keys = self.fetch().await?;
        tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
        *self.keys.write().await = keys;
        self.fetched.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// Which key set is current: changes with every fetch.
    pub(crate) fn generation(&self) -> u64 {
        self.fetched.load(Ordering::Acquire)
    }

    async fn lookup(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<CachedKey> {
        let keys = self.keys.read().await;
        keys.iter()
            .find(|key| match kid {
                Some(kid) => key.kid.as_deref() == Some(kid),
                None => key.algorithm == algorithm,
            })
            .cloned()
    }

    /// The key for a token with this `kid` and header algorithm.
    pub(crate) async fn key_for(
        &self,
        kid: Option<&str>,
        header_algorithm: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), AuthError> {
        let found = match self.lookup(kid, header_algorithm).await {
            Some(found) => Some(found),
            None => match self.refresh().await {
                Ok(_) => self.lookup(kid, header_algorithm).await,
                Err(error) => {
                    tracing::warn!(url = %self.url, %error, "could not refresh the JWKS");
                    None
                }
            },
        };
        let found = found.ok_or(AuthError::UnknownKey)?;
        if found.algorithm != header_algorithm {
            return Err(AuthError::AlgorithmNotAccepted(format!(
                "{header_algorithm:?} for a {:?} key",
                found.algorithm
            )));
        }
        Ok((found.key, found.algorithm))
    }
}
