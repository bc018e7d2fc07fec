//! Helpers shared by the client's suites: the real server, devices (stores in
//! temporary directories), and a proxy between them that injects faults
//! (`proxy.rs`).

#![allow(
    dead_code,
    unused_imports,
    unused_macros,
    clippy::expect_used,
    clippy::unwrap_used
)] // each suite uses a subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use mana_sync_client::{
    LocalStore, Query, Record, StoreOptions, Subscription, SyncClient, SyncOptions, SyncStatus,
};
use mana_sync_testkit::server::{ServerOptions, TestServer, workspace_binary};
use serde_json::Value;
use tokio::sync::{oneshot, watch};

mod proxy;

pub use proxy::{Faults, Proxy};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Starts the real `mana-sync` (built by `cargo test --workspace`).
pub async fn server() -> TestServer {
    let binary = workspace_binary("mana-sync");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        binary.display()
    );
    TestServer::start(&binary, ServerOptions::default()).await
}

/// A device: a store in its own temporary directory.
pub struct Device {
    pub store: LocalStore,
    pub dir: tempfile::TempDir,
}

impl Device {
    pub fn new(app: &str) -> Self {
        Self::with_options(StoreOptions::new(app, &["tasks"]))
    }

    pub fn with_options(options: StoreOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalStore::open(dir.path().join("store.db"), options).expect("store opens");
        Self { store, dir }
    }

    pub fn client(&self, url: &str, token: &str) -> SyncClient {
        SyncClient::new(self.store.clone(), url, token).expect("client")
    }

    pub fn client_with(&self, url: &str, token: &str, options: SyncOptions) -> SyncClient {
        SyncClient::with_options(self.store.clone(), url, token, options).expect("client")
    }
}

/// Fast reconnects for tests.
pub fn quick_options() -> SyncOptions {
    SyncOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
        ..SyncOptions::default()
    }
}

/// Starts the real `mana-sync` on the given database (`None`: SQLite in a
/// temporary file) with background compaction off, so that tests compact
/// exactly when they run [`compact`].
pub async fn server_on(database_url: Option<String>) -> TestServer {
    let binary = workspace_binary("mana-sync");
    assert!(binary.exists(), "{} is missing", binary.display());
    TestServer::start(
        &binary,
        ServerOptions {
            database_url,
            env: vec![("COMPACTION_THRESHOLD".into(), "0".into())],
            ..ServerOptions::default()
        },
    )
    .await
}

/// What `mana-sync compact` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub folded: u64,
    pub dropped: u64,
}

/// Runs `mana-sync compact --user USER` against the server's database (on
/// SQLite, the file of the running server), keeping deleted records
/// `retention_days` (0: drops every deleted record).
pub async fn compact(server: &TestServer, user: &str, retention_days: u32) -> Compacted {
    let output = tokio::process::Command::new(workspace_binary("mana-sync"))
        .args(["compact", "--user", user])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &server.database_url)
        .env("TOMBSTONE_RETENTION_DAYS", retention_days.to_string())
        .output()
        .await
        .expect("mana-sync compact runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "mana-sync compact failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "users 1, changes folded N (records R), changes dropped D (records E), busy 0"
    let number_after = |label: &str| -> u64 {
        let rest = &stdout[stdout
            .find(label)
            .unwrap_or_else(|| panic!("{label} in {stdout}"))
            + label.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    Compacted {
        folded: number_after("changes folded "),
        dropped: number_after("changes dropped "),
    }
}

/// Pulls every change of `collection` as a third device would (over HTTP,
/// from the start), to see what the server holds.
pub async fn server_changes(
    server: &TestServer,
    token: &str,
    app: &str,
    collection: &str,
) -> Vec<Value> {
    pull_from_the_start(server, token, app, collection, None).await
}

/// Every change of `collection` a third device of the token's user that
/// follows spaces pulls from the start.
pub async fn followed_changes(
    server: &TestServer,
    token: &str,
    app: &str,
    collection: &str,
) -> Vec<Value> {
    pull_from_the_start(server, token, app, collection, Some("spaces")).await
}

async fn pull_from_the_start(
    server: &TestServer,
    token: &str,
    app: &str,
    collection: &str,
    features: Option<&str>,
) -> Vec<Value> {
    let http = mana_sync_testkit::http_client();
    let mut since = "1970-01-01T00:00:00.000Z".to_owned();
    let mut all = Vec::new();
    loop {
        let mut url = reqwest::Url::parse(&server.at(&format!("/sync/{app}/pull"))).unwrap();
        url.query_pairs_mut()
            .append_pair("collection", collection)
            .append_pair("since", &since);
        let mut request = http
            .get(url)
            .bearer_auth(token)
            .header("x-client-id", "observer");
        if let Some(features) = features {
            request = request.header("x-sync-features", features);
        }
        let reply: Value = request
            .send()
            .await
            .expect("pull sent")
            .json()
            .await
            .expect("pull reply");
        all.extend(reply["serverChanges"].as_array().expect("changes").clone());
        since = reply["syncedUntil"].as_str().expect("cursor").to_owned();
        if !reply["hasMore"].as_bool().expect("hasMore") {
            return all;
        }
    }
}

/// A counter from the server's Prometheus text (0 until it is exported).
pub async fn metric(server: &TestServer, name: &str) -> f64 {
    server.metric(name).await.unwrap_or(0.0)
}

/// A unique app id per test, so tests can share a server.
pub fn app_id(name: &str) -> String {
    format!("{name}-{}", uuid_like())
}

fn uuid_like() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs a scenario on SQLite and on Postgres (skipped with a message when
/// Postgres is unreachable outside CI).
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(None).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(database) = mana_sync_testkit::pg::TestDatabase::create().await else {
                    return;
                };
                super::$name(Some(database.url())).await;
            }
        }
    };
}
pub(crate) use on_both_databases;

/// The fields of an update, written as a JSON object.
pub fn fields(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// The titles of a device's todos, sorted.
pub fn titles(device: &Device) -> Vec<String> {
    let mut titles = titles_of(&device.store.list("tasks").unwrap());
    titles.sort();
    titles
}

/// The records' titles, in their order (`""` for a record without one).
pub fn titles_of(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            r.get("title")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// Whether the device holds any state of the todo `id` (a tombstone counts).
pub fn holds(device: &Device, id: &str) -> bool {
    device.store.record_state("tasks", id).unwrap().is_some()
}

/// One todo's visible state (fields and actors).
pub fn record(device: &Device, id: &str) -> Option<Record> {
    device.store.get("tasks", id).unwrap()
}

/// Waits until the subscription yields exactly `want` as the titles of the
/// records `shown` keeps (in any order); panics after the deadline, naming
/// `what`.
pub async fn wait_for_titles(
    todos: &mut Subscription,
    want: &[&str],
    what: &str,
    shown: impl Fn(&Record) -> bool,
) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let list = todos.next().await.unwrap().unwrap();
            let mut titles: Vec<&str> = list
                .iter()
                .filter(|r| shown(r))
                .map(|r| r.get("title").and_then(Value::as_str).unwrap())
                .collect();
            titles.sort_unstable();
            if titles == want {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: never saw {want:?}"));
}

/// Waits until the device's status is `Synced`; panics after the deadline,
/// naming `what`.
pub async fn wait_until_synced(statuses: &mut watch::Receiver<SyncStatus>, what: &str) {
    tokio::time::timeout(DEADLINE, statuses.wait_for(|s| *s == SyncStatus::Synced))
        .await
        .unwrap_or_else(|_| panic!("never synced: {what}"))
        .unwrap();
}

/// Waits until `done` holds, looking again whenever the device's records or
/// its status change; panics after the deadline.
pub async fn wait_until(device: &Device, what: &str, done: impl Fn(&LocalStore) -> bool) {
    let mut records = device.store.subscribe(Query::new("tasks"));
    let mut statuses = device.store.watch_status();
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            statuses.borrow_and_update();
            if done(&device.store) {
                return;
            }
            tokio::select! {
                _ = records.next() => {}
                _ = statuses.changed() => {}
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "never: {what}");
}

/// A client's live loop (`SyncClient::run_live`), running until
/// [`Live::stop`].
pub struct Live {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<mana_sync_client::Result<()>>,
}

impl Live {
    pub fn start(client: &SyncClient) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let client = client.clone();
        let task = tokio::spawn(async move {
            client
                .run_live(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { stop, task }
    }

    /// Stops the loop and asserts that it ended without an error.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the live loop stops")
            .unwrap()
            .unwrap();
    }
}

/// A server on `database_url` with background compaction off (see
/// [`server_on`]), and alice's account in an app of its own on it.
pub struct Account {
    pub server: TestServer,
    pub token: String,
    pub app: String,
}

impl Account {
    pub async fn on(database_url: Option<String>) -> Self {
        let server = server_on(database_url).await;
        let token = server.token("alice");
        Self {
            server,
            token,
            app: app_id("todo"),
        }
    }

    /// A new device of the app.
    pub fn device(&self) -> Device {
        Device::new(&self.app)
    }

    /// A client of `device` that talks to the server directly.
    pub fn client(&self, device: &Device) -> SyncClient {
        device.client(&self.server.url, &self.token)
    }

    /// A device that has never synced, synced now from scratch: exactly what
    /// the server holds.
    pub async fn fresh_copy(&self) -> Device {
        let fresh = self.device();
        self.client(&fresh).sync().await.unwrap();
        fresh
    }

    /// Every change of `tasks` the server holds.
    pub async fn server_changes(&self) -> Vec<Value> {
        server_changes(&self.server, &self.token, &self.app, "tasks").await
    }
}
