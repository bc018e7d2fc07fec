//! Test support shared by mana-sync's suites: throwaway Postgres databases
//! owned by a role that is not a superuser (so row-level security applies), the
//! real `mana-sync` binary started on a free port, and tokens for it.
//!
//! Postgres is real in tests. When it cannot be reached, a test is skipped with
//! a message on stderr — except under `CI=true`, where that is a failure.

// Test support: a broken test environment should stop the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod nats;
pub mod pg;
pub mod server;

/// Whether we run in CI, where missing services are failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// An HTTP client for tests (installs the TLS crypto provider reqwest needs).
pub fn http_client() -> reqwest::Client {
    http_client_with(reqwest::header::HeaderMap::new())
}

/// An HTTP client for tests that sends `headers` with every request.
pub fn http_client_with(headers: reqwest::header::HeaderMap) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}
