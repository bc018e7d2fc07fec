use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::sync::RwLock;

use super::*;

const SECRET: &str = "test-secret-test-secret-test-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).expect("signs")
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "exp": now() + 600 })
}

struct Keys {
    ed: EncodingKey,
    rsa: EncodingKey,
    ec: EncodingKey,
}

fn keys() -> Keys {
    Keys {
        ed: EncodingKey::from_ed_pem(include_bytes!("../testdata/ed25519.pem")).expect("ed key"),
        rsa: EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa.pem")).expect("rsa key"),
        ec: EncodingKey::from_ec_pem(include_bytes!("../testdata/p256.pem")).expect("ec key"),
    }
}

fn public(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("public part");
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

/// A JWKS endpoint on a free port whose key set the test can replace.
async fn jwks_server(keys: Vec<Jwk>) -> (String, Arc<RwLock<JwkSet>>) {
    let set = Arc::new(RwLock::new(JwkSet { keys }));
    let app =
        axum::Router::new()
            .route(
                "/jwks",
                get(|State(set): State<Arc<RwLock<JwkSet>>>| async move {
                    Json(set.read().await.clone())
                }),
            )
            .with_state(set.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("has address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/jwks"), set)
}

/// A verifier of the key set `keys` (which the test can replace) that
/// refetches it whenever a token names a key it does not know.
async fn refetching_verifier(keys: Vec<Jwk>) -> (Verifier, Arc<RwLock<JwkSet>>) {
    let (url, set) = jwks_server(keys).await;
    let verifier = Verifier::new(&AuthConfig {
        jwks_url: Some(url),
        jwks_min_refresh: Duration::ZERO,
        ..AuthConfig::new()
    })
    .await
    .expect("configured");
    (verifier, set)
}

async fn hs_verifier() -> Verifier {
    Verifier::new(&AuthConfig {
        jwt_secret: Some(SECRET.into()),
        ..AuthConfig::new()
    })
    .await
    .expect("configured")
}

#[tokio::test]
async fn hs256_tokens_name_their_user() {
    let token = mint_token(
        SECRET,
        &UserId::new("alice").expect("valid"),
        Duration::from_secs(60),
    )
    .expect("mints");
    assert_eq!(
        hs_verifier()
            .await
            .verify(&token)
            .await
            .map(|u| u.to_string()),
        Ok("alice".into())
    );
}

#[tokio::test]
async fn refuses_wrong_secret_expiry_missing_sub_and_garbage() {
    let verifier = hs_verifier().await;
    let other = EncodingKey::from_secret(b"another secret");
    let wrong = sign(Algorithm::HS256, None, &other, claims("alice"));
    assert!(matches!(
        verifier.verify(&wrong).await,
        Err(AuthError::Invalid(_))
    ));

    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let expired = sign(
        Algorithm::HS256,
        None,
        &key,
        json!({"sub": "alice", "exp": now() - 3600}),
    );
    assert_eq!(verifier.verify(&expired).await, Err(AuthError::Expired));

    let no_sub = sign(Algorithm::HS256, None, &key, json!({"exp": now() + 60}));
    assert!(matches!(
        verifier.verify(&no_sub).await,
        Err(AuthError::Subject(_))
    ));

    let no_exp = sign(Algorithm::HS256, None, &key, json!({"sub": "alice"}));
    assert!(matches!(
        verifier.verify(&no_exp).await,
        Err(AuthError::Invalid(_))
    ));

    assert!(matches!(
        verifier.verify("not.a.jwt").await,
        Err(AuthError::Malformed(_))
    ));
    assert_eq!(verifier.verify("").await, Err(AuthError::Missing));
}

#[tokio::test]
async fn refuses_alg_none() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(claims("alice").to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert!(
            matches!(
                hs_verifier().await.verify(&token).await,
                Err(AuthError::Malformed(_))
            ),
            "{token} accepted"
        );
    }
}

#[tokio::test]
async fn verifies_eddsa_rs256_and_es256_from_the_key_set() {
    let keys = keys();
    let (url, _) = jwks_server(vec![
        public(&keys.ed, Algorithm::EdDSA, "ed"),
        public(&keys.rsa, Algorithm::RS256, "rsa"),
        public(&keys.ec, Algorithm::ES256, "ec"),
    ])
    .await;
    let verifier = Verifier::new(&AuthConfig {
        jwks_url: Some(url),
        ..AuthConfig::new()
    })
    .await
    .expect("configured");
    for (alg, kid, key, user) in [
        (Algorithm::EdDSA, "ed", &keys.ed, "ed-user"),
        (Algorithm::RS256, "rsa", &keys.rsa, "rsa-user"),
        (Algorithm::ES256, "ec", &keys.ec, "ec-user"),
    ] {
        let token = sign(alg, Some(kid), key, claims(user));
        assert_eq!(
            verifier.verify(&token).await.map(|u| u.to_string()),
            Ok(user.to_owned())
        );
    }
    // Without a secret, HS256 is not accepted at all.
    let hs = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"x"),
        claims("mallory"),
    );
    assert!(matches!(
        verifier.verify(&hs).await,
        Err(AuthError::AlgorithmNotAccepted(_))
    ));
}

#[tokio::test]
async fn refuses_algorithm_confusion() {
    let keys = keys();
    let (url, _) = jwks_server(vec![
        public(&keys.rsa, Algorithm::RS256, "rsa"),
        public(&keys.ec, Algorithm::ES256, "ec"),
    ])
    .await;
    let verifier = Verifier::new(&AuthConfig {
        jwt_secret: Some(SECRET.into()),
        jwks_url: Some(url),
        ..AuthConfig::new()
    })
    .await
    .expect("configured");
    // The classic attack: HMAC-sign with the RSA *public* key as the secret.
    let public_pem = include_bytes!("../testdata/rsa.pub.pem");
    let forged = sign(
        Algorithm::HS256,
        Some("rsa"),
        &EncodingKey::from_secret(public_pem),
        claims("mallory"),
    );
    assert!(matches!(
        verifier.verify(&forged).await,
        Err(AuthError::Invalid(_))
    ));
    // An RS256 header naming the EC key: the key decides, not the header.
    let mixed = sign(Algorithm::RS256, Some("ec"), &keys.rsa, claims("mallory"));
    assert!(matches!(
        verifier.verify(&mixed).await,
        Err(AuthError::AlgorithmNotAccepted(_))
    ));
    // A valid signature by a key that is not in the set.
    let stranger = sign(Algorithm::ES256, Some("nope"), &keys.ec, claims("mallory"));
    assert_eq!(verifier.verify(&stranger).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn refetches_the_key_set_for_an_unknown_key_id() {
    let keys = keys();
    let (verifier, set) =
        refetching_verifier(vec![public(&keys.rsa, Algorithm::RS256, "old")]).await;
    let token = sign(Algorithm::EdDSA, Some("new"), &keys.ed, claims("rotated"));
    assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
    set.write()
        .await
        .keys
        .push(public(&keys.ed, Algorithm::EdDSA, "new"));
    assert_eq!(
        verifier.verify(&token).await.map(|u| u.to_string()),
        Ok("rotated".into())
    );
}

#[tokio::test]
async fn refresh_is_rate_limited() {
    let keys = keys();
    let (url, set) = jwks_server(vec![]).await;
    let verifier = Verifier::new(&AuthConfig {
        jwks_url: Some(url),
        jwks_min_refresh: Duration::from_secs(3600),
        ..AuthConfig::new()
    })
    .await
    .expect("configured");
    set.write()
        .await
        .keys
        .push(public(&keys.ed, Algorithm::EdDSA, "new"));
    let token = sign(Algorithm::EdDSA, Some("new"), &keys.ed, claims("u"));
    // The set was fetched at start-up, so an unknown kid does not refetch yet.
    assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn a_configured_audience_and_issuer_are_required() {
    let verifier = Verifier::new(&AuthConfig {
        jwt_secret: Some(SECRET.into()),
        audience: Some("mana-sync".into()),
        issuer: Some("https://auth.example".into()),
        ..AuthConfig::new()
    })
    .await
    .expect("configured");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 60;
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs")
    };
    let both =
        sign(json!({"sub": "a", "exp": exp, "aud": "mana-sync", "iss": "https://auth.example"}));
    let verified = verifier.verify_token(&both).await.expect("accepted");
    assert_eq!(
        verified.refused_from,
        UNIX_EPOCH + Duration::from_secs(exp + 30 + 1),
        "refused once exp + leeway has passed"
    );
    for claims in [
        json!({"sub": "a", "exp": exp, "iss": "https://auth.example"}),
        json!({"sub": "a", "exp": exp, "aud": "mana-sync"}),
    ] {
        assert!(verifier.verify(&sign(claims)).await.is_err());
    }
}

#[tokio::test]
async fn critical_header_extensions_and_weak_secrets_are_refused() {
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["b64".into()]);
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "a", "exp": u64::from(u32::MAX)}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signs");
    let error = hs_verifier().await.verify(&token).await.unwrap_err();
    assert!(error.to_string().contains("crit"), "{error}");
    for secret in ["", "  ", "short"] {
        let refused = Verifier::new(&AuthConfig {
            jwt_secret: Some(secret.into()),
            ..AuthConfig::new()
        })
        .await;
        assert!(
            matches!(refused, Err(AuthSetupError::Secret(_))),
            "{secret:?}"
        );
    }
}

#[tokio::test]
async fn a_token_verified_before_is_refused_once_its_key_leaves_the_key_set() {
    let keys = keys();
    let (verifier, set) =
        refetching_verifier(vec![public(&keys.ed, Algorithm::EdDSA, "old")]).await;
    let old = sign(Algorithm::EdDSA, Some("old"), &keys.ed, claims("alice"));
    assert_eq!(
        verifier.verify(&old).await.map(|u| u.to_string()),
        Ok("alice".into())
    );
    // The auth service rotates its key; a token signed with the new one
    // makes us fetch the set again.
    set.write().await.keys = vec![public(&keys.rsa, Algorithm::RS256, "new")];
    let new = sign(Algorithm::RS256, Some("new"), &keys.rsa, claims("bob"));
    assert_eq!(
        verifier.verify(&new).await.map(|u| u.to_string()),
        Ok("bob".into())
    );
    assert_eq!(verifier.verify(&old).await, Err(AuthError::UnknownKey));
}
