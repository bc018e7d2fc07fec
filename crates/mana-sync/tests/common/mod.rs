//! Helpers shared by the black-box suites: a server on either database, and a
//! small client that speaks the sync API as a device would.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // each suite uses a subset

use mana_sync_testkit::pg::TestDatabase;
use mana_sync_testkit::server::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const BINARY: &str = env!("CARGO_BIN_EXE_mana-sync");

/// Which database a server under test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The real binary, started on the database at `database_url` (one that
/// already exists: a restart, an import's target).
pub async fn server_on(database_url: String) -> TestServer {
    TestServer::start(
        std::path::Path::new(BINARY),
        ServerOptions {
            database_url: Some(database_url),
            ..ServerOptions::default()
        },
    )
    .await
}

/// A running server and the database it owns.
pub struct Harness {
    pub server: TestServer,
    pub db: Option<TestDatabase>,
}

impl Harness {
    /// Starts a server on `db`; `None` when Postgres is unreachable outside CI.
    pub async fn start(db: Db) -> Option<Self> {
        Self::start_with(db, ServerOptions::default()).await
    }

    pub async fn start_with(db: Db, mut options: ServerOptions) -> Option<Self> {
        let database = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(TestDatabase::create().await?),
        };
        if let Some(database) = &database {
            options.database_url = Some(database.url());
        }
        let server = TestServer::start(std::path::Path::new(BINARY), options).await;
        Some(Self {
            server,
            db: database,
        })
    }

    /// A server on SQLite with these environment variables set.
    pub async fn sqlite_with_env(env: &[(&str, &str)]) -> Self {
        Self::sqlite_with(env, ServerOptions::default()).await
    }

    /// A server on SQLite in dev mode (no `JWT_SECRET`: it makes one up and
    /// mints tokens).
    pub async fn sqlite_in_dev_mode() -> Self {
        Self::sqlite_with(
            &[],
            ServerOptions {
                jwt_secret: Some(String::new()),
                ..ServerOptions::default()
            },
        )
        .await
    }

    /// A server on SQLite with these `options` and environment variables.
    pub async fn sqlite_with(env: &[(&str, &str)], options: ServerOptions) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_with(Db::Sqlite, ServerOptions { env, ..options })
            .await
            .expect("SQLite always starts")
    }

    /// A device of a client that follows shared spaces and is told about
    /// expired cursors (`X-Sync-Features: cursor-expired, spaces`).
    pub fn spaces_device(&self, user: &str, client_id: &str) -> Device {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "x-sync-features",
            reqwest::header::HeaderValue::from_static("cursor-expired, spaces"),
        );
        Device {
            http: mana_sync_testkit::http_client_with(headers),
            ..self.device(user, client_id)
        }
    }

    pub fn device(&self, user: &str, client_id: &str) -> Device {
        Device::on(&self.server, user, client_id)
    }

    /// Another instance on the same database (Postgres), with `env` settings.
    pub async fn instance(&self, env: Vec<(String, String)>) -> TestServer {
        TestServer::start(
            std::path::Path::new(BINARY),
            ServerOptions {
                database_url: Some(self.server.database_url.clone()),
                env,
                ..ServerOptions::default()
            },
        )
        .await
    }
}

/// One device of one user.
pub struct Device {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub client_id: String,
}

pub const START: &str = "1970-01-01T00:00:00.000Z";

impl Device {
    /// A device of `user` talking to `server`.
    pub fn on(server: &TestServer, user: &str, client_id: &str) -> Self {
        Self {
            http: mana_sync_testkit::http_client(),
            base: server.url.clone(),
            token: server.token(user),
            client_id: client_id.to_owned(),
        }
    }

    /// `POST /sync/{app}` with `body` as given (plus the device's headers).
    pub async fn post(&self, app: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/sync/{app}", self.base))
            .bearer_auth(&self.token)
            .header("x-client-id", &self.client_id)
            .json(body)
            .send()
            .await
            .expect("request sent");
        read(response).await
    }

    /// Pushes `changes` after `since`.
    pub async fn push(&self, app: &str, since: &str, changes: Value) -> (StatusCode, Value) {
        self.post(
            app,
            &json!({ "clientId": self.client_id, "since": since, "changes": changes }),
        )
        .await
    }

    /// `GET /sync/{app}/pull?{query}`.
    pub async fn pull(&self, app: &str, query: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}/sync/{app}/pull?{query}", self.base))
            .bearer_auth(&self.token)
            .header("x-client-id", &self.client_id)
            .send()
            .await
            .expect("request sent");
        read(response).await
    }

    /// A request to `path` (the spaces API, say) as the device's user, with
    /// `body` as JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("sent")).await
    }

    /// Pulls one collection from `since` to the end, page by page; returns
    /// every change and the final cursor.
    pub async fn pull_all(&self, app: &str, collection: &str, since: &str) -> (Vec<Value>, String) {
        let mut since = since.to_owned();
        let mut changes = Vec::new();
        loop {
            let (status, body) = self
                .pull(
                    app,
                    &format!("collection={collection}&since={}", encode(&since)),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            changes.extend(
                body["serverChanges"]
                    .as_array()
                    .expect("array")
                    .iter()
                    .cloned(),
            );
            since = body["syncedUntil"].as_str().expect("cursor").to_owned();
            if !body["hasMore"].as_bool().expect("hasMore") {
                return (changes, since);
            }
        }
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts that `cursor` has the shape every `syncedUntil` has: a fixed-width
/// RFC 3339 UTC timestamp with nine fractional digits.
pub fn assert_cursor(cursor: &str) {
    let shaped = cursor.len() == 30
        && cursor.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            29 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(
        shaped,
        "`{cursor}` is not a cursor like 2026-11-29T19:20:00.123456789Z"
    );
}

pub fn insert(table: &str, id: &str) -> Value {
    json!({ "table": table, "id": id, "op": "insert", "data": { "id": id, "title": format!("todo {id}") } })
}

pub fn ids(changes: &[Value]) -> Vec<String> {
    changes
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Asserts an error reply: status, `error.code`, and that the message mentions `needle`.
pub fn assert_error(reply: &(StatusCode, Value), status: StatusCode, code: &str, needle: &str) {
    let (actual, body) = reply;
    assert_eq!(*actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(needle),
        "`{message}` does not mention `{needle}`"
    );
}

/// Generates `mod sqlite` and `mod postgres`, each running every listed
/// `async fn(Harness)` against a fresh server on that database.
#[macro_export]
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let harness = $crate::common::Harness::start($crate::common::Db::Sqlite)
                        .await
                        .expect("SQLite always starts");
                    super::$test(harness).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(harness) = $crate::common::Harness::start($crate::common::Db::Postgres).await
                    else { return };
                    super::$test(harness).await;
                }
            )*
        }
    };
}

/// A field of a change restored from the seed's data, as pulls serve it:
/// its value, and its time both as `updatedAt` (for the seed's clients) and
/// as `at`.
pub fn seed_field(value: Value, at: &str) -> Value {
    json!({"value": value, "updatedAt": at, "at": at})
}

/// A response's `content-type`.
pub fn content_type(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default())
}

/// `GET /backup/export` as `user`: the NDJSON text.
pub async fn export(server: &TestServer, user: &str) -> String {
    let response = mana_sync_testkit::http_client()
        .get(server.at("/backup/export"))
        .bearer_auth(server.token(user))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), Some("application/x-ndjson"));
    response.text().await.expect("body")
}

/// `POST /backup/import` of `body` as `user`.
pub async fn import(
    server: &TestServer,
    user: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = mana_sync_testkit::http_client()
        .post(server.at("/backup/import"))
        .bearer_auth(server.token(user))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("sent");
    read(response).await
}

/// A fresh, empty server on the same kind of database.
pub async fn fresh(h: &Harness) -> Harness {
    let db = match h.db {
        Some(_) => Db::Postgres,
        None => Db::Sqlite,
    };
    Harness::start(db)
        .await
        .expect("the first one started, so this one does")
}

/// How long a test waits for something that should happen at once.
pub const PROMPTLY: std::time::Duration = std::time::Duration::from_secs(10);

/// An open change stream, read event by event.
pub struct EventStream {
    events: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<
                        eventsource_stream::Event,
                        eventsource_stream::EventStreamError<reqwest::Error>,
                    >,
                > + Send,
        >,
    >,
}

impl Device {
    /// Opens `GET /sync/{app}/stream?collections=…&since=…` with this
    /// device's token header and client id.
    pub async fn stream(&self, app: &str, collections: &str, since: &str) -> EventStream {
        let response = self
            .http
            .get(format!(
                "{}/sync/{app}/stream?collections={collections}&since={}",
                self.base,
                encode(since)
            ))
            .bearer_auth(&self.token)
            .header("x-client-id", &self.client_id)
            .send()
            .await
            .expect("stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_type(&response), Some("text/event-stream"));
        EventStream::new(response)
    }
}

impl EventStream {
    pub fn new(response: reqwest::Response) -> Self {
        use eventsource_stream::Eventsource as _;
        Self {
            events: Box::pin(response.bytes_stream().eventsource()),
        }
    }

    /// The next event (`event`, parsed `data`); panics after `PROMPTLY`.
    pub async fn next(&mut self) -> (String, Value) {
        self.next_within(PROMPTLY)
            .await
            .expect("an event arrives in time")
    }

    /// The next event, or `None` if the stream ended.
    pub async fn next_within(&mut self, deadline: std::time::Duration) -> Option<(String, Value)> {
        use futures::StreamExt as _;
        let event = tokio::time::timeout(deadline, self.events.next())
            .await
            .expect("no event before the deadline")?;
        let event = event.expect("well-formed SSE");
        let data = serde_json::from_str(&event.data).expect("JSON data");
        Some((event.event, data))
    }

    /// The next `changes` event, skipping heartbeats.
    pub async fn next_changes(&mut self) -> Value {
        loop {
            let (kind, data) = self.next().await;
            match kind.as_str() {
                "changes" => return data,
                "heartbeat" => continue,
                other => panic!("unexpected `{other}` event: {data}"),
            }
        }
    }

    /// Reads the backlog: one `changes` event per page until `hasMore` is
    /// false, for `collections` collections.
    pub async fn backlog(&mut self, collections: usize) -> Vec<Value> {
        let mut pages = Vec::new();
        let mut done = 0;
        while done < collections {
            let page = self.next_changes().await;
            if page["hasMore"] == false {
                done += 1;
            }
            pages.push(page);
        }
        pages
    }

    /// Waits for the stream to end (the server closed it).
    pub async fn ended(&mut self) -> bool {
        loop {
            match self.next_within(PROMPTLY).await {
                None => return true,
                Some((kind, _)) if kind == "heartbeat" => continue,
                Some((kind, data)) => panic!("expected the end, got `{kind}`: {data}"),
            }
        }
    }
}

/// Waits until `/health` reports these open streams and sockets.
pub async fn wait_for_connections(server: &TestServer, streams: i64, sockets: i64) {
    let http = mana_sync_testkit::http_client();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (_, health) = read(http.get(server.at("/health")).send().await.expect("sent")).await;
        if health["connections"] == json!({"streams": streams, "sockets": sockets}) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections stayed at {health}"
        );
        tokio::task::yield_now().await;
    }
}

/// A WebSocket to the server (`/sync/{app}/socket`).
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` on `server` (`/ws`, `/ws/{app}`, with any
/// query).
pub async fn open_socket(server: &TestServer, path: &str) -> Socket {
    let url = format!("{}{path}", server.url.replace("http://", "ws://"));
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the socket opens");
    socket
}

/// Sends the socket's `auth` message with `token`.
pub async fn send_auth(socket: &mut Socket, token: &str) {
    use futures::SinkExt as _;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "auth", "token": token}).to_string(),
        ))
        .await
        .expect("sends");
}

/// A socket to `path` on `server` that has sent its `auth` message with
/// `token` (the reply is the caller's to read).
pub async fn authenticating_socket(server: &TestServer, path: &str, token: &str) -> Socket {
    let mut socket = open_socket(server, path).await;
    send_auth(&mut socket, token).await;
    socket
}

/// The next text message of `socket` as JSON, or `{"closed": code}` when the
/// server closes it; it must come within [`PROMPTLY`].
pub async fn next_message(socket: &mut Socket) -> Value {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Close(frame) => return json!({"closed": frame.map(|f| u16::from(f.code))}),
            _ => continue,
        }
    }
}
