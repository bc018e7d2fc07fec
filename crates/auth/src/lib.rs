//! Who is asking: verification of the bearer tokens (JWTs) every sync request
//! carries, and minting of tokens for the dev mode.
//!
//! Tokens are verified against a shared secret (`JWT_SECRET`, HS256) and/or the
//! public keys an auth service publishes (`JWKS_URL`: EdDSA, RS256, ES256). The
//! algorithm is always decided by *our* key, never by the token's header: an
//! HS256 token is checked only against the configured secret, never against a
//! public key, and a key from the JWKS accepts only its own algorithm. That
//! closes `alg: none` and algorithm-confusion attacks. The token's `sub` is the
//! user id; `exp` is required, and so are `aud` and `iss` when an audience or
//! issuer is configured. A header that lists critical extensions (`crit`) is
//! refused: we understand none (RFC 7515, section 4.1.11).

mod jwks;
mod verified;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mana_sync_protocol::UserId;
use serde::{Deserialize, Serialize};

pub use jwks::JwksError;

/// Default clock skew tolerated on `exp` and `nbf` ([`AuthConfig::leeway`]).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Shortest HS256 secret accepted: 32 bytes, the size of the hash (RFC 7518,
/// section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Shared HS256 secret.
    pub jwt_secret: Option<String>,
    /// URL of a JSON Web Key Set with the auth service's public keys.
    pub jwks_url: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Shortest time between two fetches of the key set (see [`DEFAULT_JWKS_MIN_REFRESH`]).
    pub jwks_min_refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf` (see [`DEFAULT_LEEWAY`]).
    pub leeway: Duration,
}

/// Default for [`AuthConfig::jwks_min_refresh`].
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

impl AuthConfig {
    /// No keys configured; set at least one of `jwt_secret` and `jwks_url`.
    pub fn new() -> Self {
        Self {
            jwt_secret: None,
            jwks_url: None,
            audience: None,
            issuer: None,
            jwks_min_refresh: DEFAULT_JWKS_MIN_REFRESH,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a token was refused. Every variant means HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error("a bearer token is required (Authorization: Bearer <JWT>)")]
    Missing,
    /// Not a JWT, or a header we cannot read (including `alg: none`).
    #[error("the token is not a valid JWT: {0}")]
    Malformed(String),
    /// An algorithm this server does not accept from this kind of key.
    #[error("tokens signed with {0} are not accepted here")]
    AlgorithmNotAccepted(String),
    /// No key with the token's `kid` (after refreshing the key set).
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// Signature, expiry, audience or issuer check failed.
    #[error("the token is invalid: {0}")]
    Invalid(String),
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// `sub` is missing or not a valid user id.
    #[error("the token has no usable `sub` claim: {0}")]
    Subject(String),
}

/// Failure to set up verification.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// Neither a secret nor a JWKS URL was given.
    #[error("no JWT_SECRET or JWKS_URL configured")]
    NothingConfigured,
    /// The HS256 secret is too short to be safe.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The HTTP client for the JWKS could not be built.
    #[error("cannot fetch keys: {0}")]
    Jwks(#[from] JwksError),
}

/// An HS256 secret that must not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Empty, or only white space.
    #[error(
        "JWT_SECRET is empty; set a long random secret shared with your auth service, or unset it for dev mode"
    )]
    Empty,
    /// Shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "JWT_SECRET is {len} bytes long; use at least {MIN_SECRET_BYTES} bytes of random (for example `openssl rand -hex 32`)"
    )]
    TooShort {
        /// Its length in bytes.
        len: usize,
    },
}

/// Checks that `secret` is fit to sign tokens with HS256.
pub fn check_secret(secret: &str) -> Result<(), SecretError> {
    if secret.trim().is_empty() {
        Err(SecretError::Empty)
    } else if secret.len() < MIN_SECRET_BYTES {
        Err(SecretError::TooShort { len: secret.len() })
    } else {
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
}

/// A verified token: whose it is, and until when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The token's user (`sub`).
    pub user: UserId,
    /// The first instant at which the token is refused: its `exp` plus the
    /// tolerated clock skew. Streams and sockets opened with it end then.
    pub refused_from: SystemTime,
}

/// Checks tokens and says whose they are.
pub struct Verifier {
    secret: Option<DecodingKey>,
    jwks: Option<jwks::KeySet>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Duration,
    verified: verified::VerifiedTokens,
}

impl Verifier {
    /// Builds a verifier; with a JWKS URL, fetches the key set once (a failure is
    /// logged, and fetching is retried when a token arrives).
    pub async fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        if let Some(secret) = &config.jwt_secret {
            check_secret(secret)?;
        }
        let secret = config
            .jwt_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        let jwks = match &config.jwks_url {
            Some(url) => Some(jwks::KeySet::new(url.clone(), config.jwks_min_refresh).await?),
            None => None,
        };
        if secret.is_none() && jwks.is_none() {
            return Err(AuthSetupError::NothingConfigured);
        }
        Ok(Self {
            secret,
            jwks,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway,
            verified: verified::VerifiedTokens::default(),
        })
    }

    /// Verifies `token` and returns its user.
    pub async fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_token(token).await.map(|verified| verified.user)
    }

    /// Verifies `token` and returns its user and until when it is accepted.
    pub async fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let keys = self.jwks.as_ref().map_or(0, jwks::KeySet::generation);
        let now = SystemTime::now();
        if let Some(known) = self.verified.get(token, keys, now) {
            return known;
        }
        let verified = self.check_signature_and_claims(token).await?;
        self.verified.insert(token, &verified, keys, now);
        Ok(verified)
    }

    /// Verifies `token` from scratch.
    async fn check_signature_and_claims(&self, token: &str) -> Result<Verified, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        // We implement no JWS extension, so any header parameter marked
        // critical is one we do not understand (an empty list is invalid too).
        if let Some(critical) = &header.crit {
            return Err(AuthError::Invalid(format!(
                "the header marks {critical:?} as critical (`crit`); this server understands no extensions"
            )));
        }
        let (key, algorithm) = match header.alg {
            Algorithm::HS256 => match &self.secret {
                Some(secret) => (secret.clone(), Algorithm::HS256),
                None => return Err(AuthError::AlgorithmNotAccepted("HS256".into())),
            },
            Algorithm::EdDSA | Algorithm::RS256 | Algorithm::ES256 => match &self.jwks {
                Some(jwks) => jwks.key_for(header.kid.as_deref(), header.alg).await?,
                None => return Err(AuthError::AlgorithmNotAccepted(format!("{:?}", header.alg))),
            },
            other => return Err(AuthError::AlgorithmNotAccepted(format!("{other:?}"))),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // Configured audience and issuer are required, not only checked when
        // present.
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let subject = data
            .claims
            .sub
            .ok_or_else(|| AuthError::Subject("missing".into()))?;
        let user = UserId::new(subject).map_err(|e| AuthError::Subject(e.to_string()))?;
        // `exp` is accepted up to and including `exp + leeway` (whole seconds).
        let refused_from = UNIX_EPOCH
            .checked_add(Duration::from_secs(
                data.claims
                    .exp
                    .saturating_add(self.leeway.as_secs())
                    .saturating_add(1),
            ))
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)));
        Ok(Verified { user, refused_from })
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the token: {0}")]
pub struct MintError(String);

/// Signs an HS256 token for `user`, valid for `ttl`.
pub fn mint_token(secret: &str, user: &UserId, ttl: Duration) -> Result<String, MintError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| MintError(e.to_string()))?;
    let claims = serde_json::json!({
        "sub": user.as_str(),
        "iat": now.as_secs(),
        "exp": (now + ttl).as_secs(),
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| MintError(e.to_string()))
}

/// A fresh random 256-bit secret, hex-encoded, for the dev mode.
pub fn random_secret() -> Result<String, MintError> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| MintError(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests;
