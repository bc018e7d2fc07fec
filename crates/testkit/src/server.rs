//! The real `mana-sync` binary, started on a free port for black-box tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mana_sync_protocol::UserId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `DATABASE_URL`; `None` uses a SQLite file in a temporary directory.
    pub database_url: Option<String>,
    /// `JWT_SECRET`; `None` uses a fixed test secret. `Some("")` leaves it
    /// unset, which starts dev mode (unless `JWKS_URL` is in `env`).
    pub jwt_secret: Option<String>,
    /// Further environment variables.
    pub env: Vec<(String, String)>,
    /// Runs the server with this limit on open files (soft and hard), as a
    /// small machine or container would.
    pub max_open_files: Option<u64>,
}

/// Secret used when a test does not choose one.
pub const TEST_SECRET: &str = "mana-sync-test-secret-0123456789abcdef";

/// A running `mana-sync serve`, killed when dropped.
pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The `DATABASE_URL` it runs on.
    pub database_url: String,
    secret: String,
    logs: Arc<Mutex<Vec<String>>>,
    new_log_line: Arc<Notify>,
    _dir: Option<tempfile::TempDir>,
}

/// How long a server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

impl TestServer {
    /// Starts `binary serve` and waits until it listens.
    pub async fn start(binary: &Path, options: ServerOptions) -> Self {
        let (dir, database_url) = match options.database_url {
            Some(url) => (None, url),
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("sync.db").display());
                (Some(dir), url)
            }
        };
        let secret = options.jwt_secret.unwrap_or_else(|| TEST_SECRET.to_owned());
        let mut command = match options.max_open_files {
            // The shell lowers the limit, then becomes the server (same pid).
            Some(limit) => {
                let mut command = Command::new("/bin/sh");
                command
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" serve"))
                    .arg(binary);
                command
            }
            None => {
                let mut command = Command::new(binary);
                command.arg("serve");
                command
            }
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("DATABASE_URL", &database_url)
            .env("RUST_LOG", "info");
        if !secret.is_empty() {
            command.env("JWT_SECRET", &secret);
        }
        command
            .envs(options.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &dir {
            command.current_dir(dir.path());
        }
        let mut child = command.spawn().expect("mana-sync starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let new_log_line = Arc::new(Notify::new());
        let (sink, notify) = (logs.clone(), new_log_line.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log lock").push(line);
                notify.notify_waiters();
            }
        });
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(START_DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.strip_prefix("mana-sync listening on ") {
                    return Some(address.to_owned());
                }
            }
            None
        })
        .await;
        let url = match url {
            Ok(Some(url)) => url,
            other => {
                let logs = logs.lock().expect("log lock").join("\n");
                panic!("mana-sync did not start ({other:?}); its log:\n{logs}");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            url,
            database_url,
            secret,
            logs,
            new_log_line,
            _dir: dir,
        }
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        mana_sync_auth::mint_token(
            &self.secret,
            &UserId::new(user).expect("valid user"),
            Duration::from_secs(3600),
        )
        .expect("mints")
    }

    /// A token for `user` that expires `ttl` from now.
    pub fn token_with_ttl(&self, user: &str, ttl: Duration) -> String {
        mana_sync_auth::mint_token(&self.secret, &UserId::new(user).expect("valid user"), ttl)
            .expect("mints")
    }

    /// The server's resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn resident_kib(&self) -> u64 {
        let pid = self.pid().expect("server running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// `self.url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The server's `/metrics`: its Prometheus text.
    pub async fn metrics(&self) -> String {
        crate::http_client()
            .get(self.at("/metrics"))
            .send()
            .await
            .expect("metrics sent")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of the unlabelled sample `name` in `/metrics`; `None` when
    /// the server does not export it (yet).
    pub async fn metric<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.metrics().await.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    /// Waits until the server's log contains `needle`; panics after `deadline`.
    pub async fn wait_for_log(&self, needle: &str, deadline: Duration) {
        let waited = tokio::time::timeout(deadline, async {
            loop {
                // Register for the next line before looking, so none is missed.
                let next_line = self.new_log_line.notified();
                tokio::pin!(next_line);
                next_line.as_mut().enable();
                if self.logs().contains(needle) {
                    return;
                }
                next_line.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "`{needle}` never appeared in the log:\n{}",
            self.logs()
        );
    }

    /// The process id (to signal it).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit, returning its status.
    pub async fn terminate(&mut self, deadline: Duration) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -TERM failed");
        }
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .expect("server exits after SIGTERM before the deadline")
            .expect("wait succeeds")
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .expect("server exits before the deadline")
            .expect("wait succeeds")
    }

    /// Kills the process and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Path of a binary built by this workspace, for tests of other crates
/// (`CARGO_BIN_EXE_*` only exists for a crate's own binaries).
pub fn workspace_binary(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().expect("test binary path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join(name)
}
