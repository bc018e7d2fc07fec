//! What checking a bearer token costs, from scratch and once remembered.
//!
//! `cargo run --release -p mana-sync-auth --example verify_cost` signs 500
//! tokens per algorithm (an HS256 secret, and ES256 and RS256 keys served as
//! a JWKS on a local port, as an auth service would), verifies each once
//! (its signature checked) and then each again (found among the verified
//! tokens), and prints the time per token of both.

#![allow(clippy::expect_used)] // an example stops loudly on a broken setup

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mana_sync_auth::{AuthConfig, Verifier};

const TOKENS: u32 = 500;
const SECRET: &str = "example-secret-example-secret-example";

#[tokio::main]
async fn main() {
    let ec = EncodingKey::from_ec_pem(include_bytes!("../testdata/p256.pem")).expect("EC key");
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa.pem")).expect("RSA key");
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let set = JwkSet {
        keys: vec![
            public(&ec, Algorithm::ES256, "ec"),
            public(&rsa, Algorithm::RS256, "rsa"),
        ],
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds a local port");
    let jwks_url = format!(
        "http://{}/jwks",
        listener.local_addr().expect("has an address")
    );
    let app = axum::Router::new().route("/jwks", get(move || async move { Json(set.clone()) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let verifier = Verifier::new(&AuthConfig {
        jwt_secret: Some(SECRET.into()),
        jwks_url: Some(jwks_url),
        ..AuthConfig::new()
    })
    .await
    .expect("configured");

    for (name, algorithm, kid, key) in [
        ("HS256", Algorithm::HS256, None, &hs),
        ("ES256", Algorithm::ES256, Some("ec"), &ec),
        ("RS256", Algorithm::RS256, Some("rsa"), &rsa),
    ] {
        let tokens: Vec<String> = (0..TOKENS)
            .map(|n| sign(algorithm, kid, key, &format!("user-{n}")))
            .collect();
        let from_scratch = time_verifying(&verifier, &tokens).await;
        let remembered = time_verifying(&verifier, &tokens).await;
        println!(
            "{name}: {from_scratch:.1?} per token from scratch, {remembered:.1?} remembered ({:.0}× less)",
            from_scratch.as_secs_f64() / remembered.as_secs_f64()
        );
    }
}

/// The time per token of verifying each of `tokens` once.
async fn time_verifying(verifier: &Verifier, tokens: &[String]) -> Duration {
    let started = Instant::now();
    for token in tokens {
        verifier.verify(token).await.expect("a valid token");
    }
    started.elapsed() / TOKENS
}

fn sign(algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey, user: &str) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &header,
        &serde_json::json!({ "sub": user, "exp": exp }),
        key,
    )
    .expect("signs")
}

fn public(key: &EncodingKey, algorithm: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, algorithm).expect("its public part");
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}
