//! Authentication against the real binary: every sync request needs a valid
//! token; HS256 secrets, JWKS keys, and the dev mode with `mana-sync token`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::routing::get;
use base64::Engine as _;
use common::{Db, Harness, START, insert};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mana_sync_testkit::server::{ServerOptions, TEST_SECRET};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signs")
}

fn valid_claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600})
}

async fn status_with(h: &Harness, authorization: Option<String>) -> (StatusCode, Value) {
    let http = mana_sync_testkit::http_client();
    let mut request = http
        .post(h.server.at("/sync/todo"))
        .header("x-client-id", "d")
        .json(&json!({"since": START, "changes": [insert("tasks", "1")]}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("sent");
    assert!(
        response.status() != StatusCode::UNAUTHORIZED
            || response.headers().contains_key("www-authenticate"),
        "401 carries WWW-Authenticate"
    );
    common::read(response).await
}

#[tokio::test]
async fn every_sync_route_refuses_requests_without_a_valid_token() {
    let h = Harness::start(Db::Sqlite).await.expect("starts");
    let hs = |claims: &Value, secret: &[u8]| {
        sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(secret),
            claims,
        )
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(valid_claims("alice").to_string())
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("empty bearer", Some("Bearer ".into())),
        (
            "wrong scheme",
            Some(format!(
                "Basic {}",
                hs(&valid_claims("alice"), TEST_SECRET.as_bytes())
            )),
        ),
        ("garbage", Some("Bearer not-a-jwt".into())),
        (
            "bad signature",
            Some(format!(
                "Bearer {}",
                hs(&valid_claims("alice"), b"some other secret")
            )),
        ),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                hs(
                    &json!({"sub":"alice","exp": now() - 3600}),
                    TEST_SECRET.as_bytes()
                )
            )),
        ),
        (
            "no sub",
            Some(format!(
                "Bearer {}",
                hs(&json!({"exp": now() + 600}), TEST_SECRET.as_bytes())
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                hs(&json!({"sub": "alice"}), TEST_SECRET.as_bytes())
            )),
        ),
    ];
    for (name, authorization) in cases {
        let (status, body) = status_with(&h, authorization).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}");
    }
    let http = mana_sync_testkit::http_client();
    let pull = http
        .get(h.server.at(&format!(
            "/sync/todo/pull?collection=tasks&since={}",
            common::encode(START)
        )))
        .send()
        .await
        .expect("sent");
    assert_eq!(pull.status(), StatusCode::UNAUTHORIZED);
    // And with a good token, the same request goes through.
    let (status, _) = status_with(&h, Some(format!("Bearer {}", h.server.token("alice")))).await;
    assert_eq!(status, StatusCode::OK);
    let (changes, _) = h
        .device("alice", "other")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(
        changes.len(),
        1,
        "only the authenticated request stored anything"
    );
}

/// An auth service's key set, served on a free port.
async fn jwks_server(keys: Vec<Jwk>) -> String {
    let set = JwkSet { keys };
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || async move { Json(set.clone()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/.well-known/jwks.json")
}

fn public(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("public key");
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

#[tokio::test]
async fn tokens_from_an_auth_service_are_checked_against_its_jwks() {
    let ed =
        EncodingKey::from_ed_pem(include_bytes!("../../auth/testdata/ed25519.pem")).expect("ed");
    let rsa =
        EncodingKey::from_rsa_pem(include_bytes!("../../auth/testdata/rsa.pem")).expect("rsa");
    let ec = EncodingKey::from_ec_pem(include_bytes!("../../auth/testdata/p256.pem")).expect("ec");
    let url = jwks_server(vec![
        public(&ed, Algorithm::EdDSA, "ed"),
        public(&rsa, Algorithm::RS256, "rsa"),
        public(&ec, Algorithm::ES256, "ec"),
    ])
    .await;
    // JWKS only: no shared secret at all.
    let h = Harness::start_with(
        Db::Sqlite,
        ServerOptions {
            jwt_secret: Some(String::new()),
            env: vec![("JWKS_URL".into(), url)],
            ..ServerOptions::default()
        },
    )
    .await
    .expect("starts");
    assert!(
        !h.server.logs().contains("DEV MODE"),
        "JWKS configured: not dev mode"
    );
    for (alg, kid, key) in [
        (Algorithm::EdDSA, "ed", &ed),
        (Algorithm::RS256, "rsa", &rsa),
        (Algorithm::ES256, "ec", &ec),
    ] {
        let token = sign(alg, Some(kid), key, &valid_claims("alice"));
        let (status, body) = status_with(&h, Some(format!("Bearer {token}"))).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
    }
    // Algorithm confusion: HMAC-signed with the RSA public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        Some("rsa"),
        &EncodingKey::from_secret(include_bytes!("../../auth/testdata/rsa.pub.pem")),
        &valid_claims("mallory"),
    );
    let (status, _) = status_with(&h, Some(format!("Bearer {confused}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A header claiming RS256 for the EC key.
    let mixed = sign(Algorithm::RS256, Some("ec"), &rsa, &valid_claims("mallory"));
    let (status, _) = status_with(&h, Some(format!("Bearer {mixed}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An expired token from a real key.
    let expired = sign(
        Algorithm::EdDSA,
        Some("ed"),
        &ed,
        &json!({"sub":"alice","exp": now() - 3600}),
    );
    let (status, _) = status_with(&h, Some(format!("Bearer {expired}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn dev_mode_creates_a_secret_and_mints_tokens_for_it() {
    let h = Harness::sqlite_in_dev_mode().await;
    h.server
        .wait_for_log("DEV MODE", Duration::from_secs(10))
        .await;
    h.server
        .wait_for_log("mana-sync token --user", Duration::from_secs(10))
        .await;
    // Unauthenticated access is still refused.
    let (status, _) = status_with(&h, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A token signed with the test secret is not this server's secret.
    let (status, _) = status_with(&h, Some(format!("Bearer {}", h.server.token("alice")))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let minted = tokio::process::Command::new(common::BINARY)
        .args(["token", "--user", "alice"])
        .env_clear()
        .env("DATABASE_URL", &h.server.database_url)
        .output()
        .await
        .expect("token command runs");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let (status, body) = status_with(&h, Some(format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_token_command_refuses_when_tokens_come_from_an_auth_service() {
    let output = tokio::process::Command::new(common::BINARY)
        .args(["token", "--user", "alice"])
        .env_clear()
        .env("JWKS_URL", "https://auth.example/jwks.json")
        .env("DATABASE_URL", "sqlite:///nonexistent/never-created.db")
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("auth service"));
}

#[tokio::test]
async fn dev_mode_on_postgres_shares_one_secret_between_instances() {
    let Some(first) = Harness::start_with(
        Db::Postgres,
        ServerOptions {
            jwt_secret: Some(String::new()),
            ..ServerOptions::default()
        },
    )
    .await
    else {
        return;
    };
    let second = mana_sync_testkit::server::TestServer::start(
        std::path::Path::new(common::BINARY),
        ServerOptions {
            database_url: Some(first.server.database_url.clone()),
            jwt_secret: Some(String::new()),
            ..ServerOptions::default()
        },
    )
    .await;
    let minted = tokio::process::Command::new(common::BINARY)
        .args(["token", "--user", "alice", "--ttl-hours", "1"])
        .env_clear()
        .env("DATABASE_URL", &first.server.database_url)
        .output()
        .await
        .expect("token command runs");
    let token = String::from_utf8(minted.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    for base in [&first.server.url, &second.url] {
        let response = mana_sync_testkit::http_client()
            .post(format!("{base}/sync/todo"))
            .bearer_auth(&token)
            .json(&json!({"clientId":"d","since":START,"changes":[]}))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{base}");
    }
}

#[tokio::test]
async fn audience_and_issuer_are_required_when_configured() {
    let h = Harness::sqlite_with_env(&[
        ("JWT_AUDIENCE", "mana-sync"),
        ("JWT_ISSUER", "https://auth.example"),
    ])
    .await;
    let key = EncodingKey::from_secret(TEST_SECRET.as_bytes());
    let with = |claims: Value| {
        Some(format!(
            "Bearer {}",
            sign(Algorithm::HS256, None, &key, &claims)
        ))
    };
    let exp = now() + 600;
    let good =
        json!({"sub": "alice", "exp": exp, "aud": "mana-sync", "iss": "https://auth.example"});
    let (status, body) = status_with(&h, with(good)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = status_with(
        &h,
        with(json!({"sub": "alice", "exp": exp, "aud": ["other", "mana-sync"], "iss": "https://auth.example"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "one of several audiences: {body}");
    for (name, claims) in [
        (
            "no aud",
            json!({"sub": "alice", "exp": exp, "iss": "https://auth.example"}),
        ),
        (
            "no iss",
            json!({"sub": "alice", "exp": exp, "aud": "mana-sync"}),
        ),
        ("neither", json!({"sub": "alice", "exp": exp})),
        (
            "wrong aud",
            json!({"sub": "alice", "exp": exp, "aud": "other", "iss": "https://auth.example"}),
        ),
        (
            "wrong iss",
            json!({"sub": "alice", "exp": exp, "aud": "mana-sync", "iss": "https://evil.example"}),
        ),
    ] {
        let (status, body) = status_with(&h, with(claims)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}");
    }
}

#[tokio::test]
async fn tokens_with_critical_header_extensions_are_refused() {
    let h = Harness::start(Db::Sqlite).await.expect("starts");
    let key = EncodingKey::from_secret(TEST_SECRET.as_bytes());
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["urn:example:must-understand".into()]);
    header.extras.insert("urn:example:must-understand", true);
    let token = jsonwebtoken::encode(&header, &valid_claims("alice"), &key).expect("signs");
    let (status, body) = status_with(&h, Some(format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("crit"),
        "{body}"
    );
    // An empty list is not allowed either (RFC 7515, 4.1.11).
    header.crit = Some(Vec::new());
    let token = jsonwebtoken::encode(&header, &valid_claims("alice"), &key).expect("signs");
    let (status, _) = status_with(&h, Some(format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Runs `mana-sync serve` with `env` and expects it to refuse to start,
/// returning its standard error.
async fn refuses_to_start(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = tokio::process::Command::new(common::BINARY)
        .arg("serve")
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("sync.db").display()),
        )
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawns");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("started with {env:?}"))
        .expect("waits");
    assert!(!status.success(), "{env:?}");
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt as _;
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .await
        .expect("reads");
    stderr
}

#[tokio::test]
async fn an_empty_or_short_jwt_secret_is_a_startup_error() {
    let stderr = refuses_to_start(&[("JWT_SECRET", "")]).await;
    assert!(stderr.contains("JWT_SECRET is empty"), "{stderr}");
    let stderr = refuses_to_start(&[("JWT_SECRET", "   ")]).await;
    assert!(stderr.contains("JWT_SECRET is empty"), "{stderr}");
    let stderr = refuses_to_start(&[("JWT_SECRET", "password123")]).await;
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    // The token command refuses the same secrets.
    let output = tokio::process::Command::new(common::BINARY)
        .args(["token", "--user", "alice"])
        .env_clear()
        .env("JWT_SECRET", "short")
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 32 bytes"));
}
