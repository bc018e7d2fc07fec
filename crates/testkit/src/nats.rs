//! NATS for tests: the machine's server at `127.0.0.1:4222` (like Postgres:
//! skipped with a message when unreachable, a failure under `CI=true`), and
//! private `nats-server` processes a test may stop and restart.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::in_ci;

/// The shared NATS server tests use (`MANA_TEST_NATS_URL`).
pub fn shared_url() -> String {
    std::env::var("MANA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn address(url: &str) -> String {
    url.trim_start_matches("nats://").to_owned()
}

/// The shared server's URL if it accepts connections; `None` (after saying
/// so) outside CI when it does not; panics in CI.
pub async fn shared() -> Option<String> {
    let url = shared_url();
    match tokio::net::TcpStream::connect(address(&url)).await {
        Ok(_) => Some(url),
        Err(error) if in_ci() => panic!("CI=true but NATS at {url} is unreachable: {error}"),
        Err(error) => {
            eprintln!(
                "SKIPPED: NATS at {url} is unreachable ({error}); set CI=true to make this a failure"
            );
            None
        }
    }
}

/// The `nats-server` binary (`NATS_SERVER`, default `/usr/sbin/nats-server`).
pub fn server_binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned())
}

/// A `nats-server` of the test's own on a free loopback port, killed when
/// dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
}

impl NatsServer {
    /// Starts one; `None` (after saying so) outside CI when there is no
    /// `nats-server` binary; panics in CI.
    pub async fn start() -> Option<Self> {
        if !std::path::Path::new(&server_binary()).exists() {
            assert!(!in_ci(), "CI=true but {} is missing", server_binary());
            eprintln!("SKIPPED: {} is missing", server_binary());
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port();
        let mut server = Self { child: None, port };
        server.resume().await;
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash or a restart would) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port, and waits until it accepts
    /// connections.
    pub async fn resume(&mut self) {
        let child = Command::new(server_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            tokio::task::yield_now().await;
        }
    }
}
