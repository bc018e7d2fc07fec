//! The mana-sync side: the release binary on a fresh database, driven over HTTP.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mana_sync_testkit::pg::TestDatabase;
use mana_sync_testkit::server::{ServerOptions, TestServer};
use serde::Deserialize;
use serde_json::json;

use crate::Backend;

/// A server on a fresh database, and what the raw side needs to reach it.
pub struct Env {
    pub backend: Backend,
    pub server: TestServer,
    pub database: Option<TestDatabase>,
    pub http: reqwest::Client,
}

impl Env {
    pub async fn new(backend: Backend, binary: &Path) -> anyhow::Result<Self> {
        Self::with_env(backend, binary, Vec::new()).await
    }

    /// A server with further environment variables (settings).
    pub async fn with_env(
        backend: Backend,
        binary: &Path,
        settings: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                TestDatabase::create()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("Postgres is unreachable"))?,
            ),
        };
        let server = TestServer::start(
            binary,
            ServerOptions {
                // The raw baselines connect without TLS (local socket
                // over TCP): so does the server, to compare like with like
                // (a URL without `sslmode` means `prefer`, as in libpq).
                database_url: database
                    .as_ref()
                    .map(|db| format!("{}?sslmode=disable", db.url())),
                env: [
                    ("RUST_LOG".to_owned(), "warn".to_owned()),
                    // The fan-out scenario opens 10,000 streams of one user.
                    ("MAX_LIVE_PER_USER".to_owned(), "1000000".to_owned()),
                ]
                .into_iter()
                .chain(settings)
                .collect(),
                ..ServerOptions::default()
            },
        )
        .await;
        Ok(Self {
            backend,
            server,
            database,
            http: mana_sync_testkit::http_client(),
        })
    }

    /// SQLite file path of the server's database.
    pub fn sqlite_path(&self) -> Option<String> {
        self.server
            .database_url
            .strip_prefix("sqlite://")
            .map(str::to_owned)
    }
}

/// The JSON array of one changeset of `batch` inserts (ids unique per worker).
pub fn changes_json(worker: usize, batch_index: usize, batch: usize) -> String {
    let changes: Vec<_> = (0..batch)
        .map(|i| {
            json!({
                "table": "tasks",
                "id": format!("w{worker}-{batch_index}-{i}"),
                "op": "insert",
                "data": {"id": format!("w{worker}-{batch_index}-{i}"), "title": "Buy oat milk", "done": false, "order": i},
            })
        })
        .collect();
    serde_json::to_string(&changes).expect("serialises")
}

/// A push body around a prepared changes array.
pub fn push_body(worker: usize, since: &str, changes: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"clientId":"device-{worker}","since":"{since}","changes":{changes}}}"#
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    synced_until: String,
    has_more: bool,
    server_changes: Vec<serde::de::IgnoredAny>,
}

/// Pushes one changeset to `url` and returns the reply; panics on failure
/// (a benchmark whose pushes fail measures nothing).
async fn post(http: &reqwest::Client, url: &str, token: &str, body: Bytes) -> Reply {
    let response = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("push sent");
    assert!(
        response.status().is_success(),
        "push failed: {}",
        response.status()
    );
    response.json().await.expect("push reply")
}

/// Pushes `changes` in changesets of `batch`, spread over `users` users
/// pushing in parallel, each like a real device (resuming from the previous
/// reply's cursor). Returns the wall time.
pub async fn push(
    env: &Env,
    users: usize,
    changes: usize,
    batch: usize,
) -> anyhow::Result<Duration> {
    let per_user = changes / users / batch;
    // Changes are serialised before the clock starts: we measure the server.
    let workloads: Vec<(usize, String, Vec<String>)> = (0..users)
        .map(|u| {
            let batches = (0..per_user).map(|b| changes_json(u, b, batch)).collect();
            (u, env.server.token(&format!("bench-user-{u}")), batches)
        })
        .collect();
    // Warm up connections and statement caches.
    let url = env.server.at("/sync/bench");
    for (u, token, _) in &workloads {
        post(
            &env.http,
            &url,
            token,
            push_body(*u, "c1.0", &changes_json(*u, usize::MAX, 1)),
        )
        .await;
    }
    let started = Instant::now();
    let tasks: Vec<_> = workloads
        .into_iter()
        .map(|(worker, token, batches)| {
            let (http, url) = (env.http.clone(), url.clone());
            tokio::spawn(async move {
                let mut since = String::from("c1.0");
                for changes in batches {
                    let body = push_body(worker, &since, &changes);
                    since = post(&http, &url, &token, body).await.synced_until;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    Ok(started.elapsed())
}

/// Loads `changes` changes of one user into one collection (not timed).
pub async fn preload(env: &Env, changes: usize, batch: usize) -> anyhow::Result<()> {
    preload_user(env, "bench-reader", changes, batch).await
}

/// Loads `changes` changes of `user` into one collection (not timed).
pub async fn preload_user(
    env: &Env,
    user: &str,
    changes: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let token = env.server.token(user);
    let url = env.server.at("/sync/bench");
    for b in 0..changes / batch {
        post(
            &env.http,
            &url,
            &token,
            push_body(0, "c1.0", &changes_json(0, b, batch)),
        )
        .await;
    }
    Ok(())
}

/// Follows every page of the preloaded collection from the start, as a new
/// device would. Returns the wall time.
pub async fn pull(env: &Env, expected: usize) -> anyhow::Result<Duration> {
    let token = env.server.token("bench-reader");
    let started = Instant::now();
    let mut since = String::from("c1.0");
    let mut seen = 0;
    loop {
        let response = env
            .http
            .get(
                env.server
                    .at(&format!("/sync/bench/pull?collection=tasks&since={since}")),
            )
            .bearer_auth(&token)
            .header("x-client-id", "new-device")
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "pull failed: {}",
            response.status()
        );
        let reply: Reply = serde_json::from_slice(&response.bytes().await?)?;
        seen += reply.server_changes.len();
        since = reply.synced_until;
        if !reply.has_more {
            break;
        }
    }
    anyhow::ensure!(
        seen == expected,
        "pulled {seen} changes, expected {expected}"
    );
    Ok(started.elapsed())
}
