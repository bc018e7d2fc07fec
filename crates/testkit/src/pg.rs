//! Throwaway Postgres databases, one per test.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

use crate::in_ci;

/// The role tests connect as: it owns its databases but is neither superuser
/// nor `BYPASSRLS`, exactly like a production deployment should be.
pub const APP_ROLE: &str = "mana_test_app";

/// Superuser connection used to create and drop test databases.
pub fn admin_url() -> String {
    std::env::var("MANA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A database that exists for the life of this value.
pub struct TestDatabase {
    name: String,
    host: String,
    port: u16,
}

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "mana_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl TestDatabase {
    /// Creates a fresh database owned by [`APP_ROLE`].
    ///
    /// Returns `None` (after saying so on stderr) when Postgres is unreachable
    /// outside CI; panics when it is unreachable in CI.
    pub async fn create() -> Option<Self> {
        let admin_url = admin_url();
        let admin = match connect(&admin_url).await {
            Ok(client) => client,
            Err(error) if in_ci() => {
                panic!("CI=true but Postgres at {admin_url} is unreachable: {error}")
            }
            Err(error) => {
                eprintln!(
                    "SKIPPED: Postgres at {admin_url} is unreachable ({error}); set CI=true to make this a failure"
                );
                return None;
            }
        };
        // Several tests may race to create the role; losing the race is fine.
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN
                     CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$;"
            ))
            .await
            .expect("creating the test role");
        let name = unique_name();
        let mut attempt = 0;
        loop {
            match admin
                .batch_execute(&format!("CREATE DATABASE {name} OWNER {APP_ROLE}"))
                .await
            {
                Ok(()) => break,
                // Concurrent CREATE DATABASE can collide on the template; retry.
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("retrying CREATE DATABASE: {error}");
                    tokio::task::yield_now().await;
                }
                Err(error) => panic!("creating test database {name}: {error}"),
            }
        }
        let config: tokio_postgres::Config = admin_url.parse().expect("admin URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        Some(Self { name, host, port })
    }

    /// URL to connect as [`APP_ROLE`] (what a server under test uses).
    pub fn url(&self) -> String {
        format!(
            "postgres://{APP_ROLE}@{}:{}/{}",
            self.host, self.port, self.name
        )
    }

    /// A superuser connection to this database, for inspecting it from outside
    /// the server (superusers bypass row-level security).
    pub async fn admin(&self) -> Client {
        let mut config: tokio_postgres::Config = admin_url().parse().expect("admin URL parses");
        config.dbname(&self.name);
        let (client, connection) = config.connect(NoTls).await.expect("admin connects");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Refuses new connections as [`APP_ROLE`]; sessions already open live on.
    pub async fn refuse_connections(&self) {
        let name = &self.name;
        self.admin()
            .await
            .batch_execute(&format!(
                "REVOKE CONNECT ON DATABASE {name} FROM PUBLIC, {APP_ROLE}"
            ))
            .await
            .expect("revokes CONNECT");
    }

    /// Accepts connections as [`APP_ROLE`] again.
    pub async fn accept_connections(&self) {
        let name = &self.name;
        self.admin()
            .await
            .batch_execute(&format!(
                "GRANT CONNECT ON DATABASE {name} TO PUBLIC, {APP_ROLE}"
            ))
            .await
            .expect("grants CONNECT");
    }

    /// Ends the sessions of [`APP_ROLE`] on this database, only those with
    /// this `application_name` if one is given (as a Postgres restart would).
    pub async fn end_sessions(&self, application_name: Option<&str>) {
        let name = &self.name;
        let only = application_name
            .map(|app| format!(" AND application_name = '{app}'"))
            .unwrap_or_default();
        self.admin()
            .await
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = '{name}' AND usename = '{APP_ROLE}'{only}"
            ))
            .await
            .expect("ends sessions");
    }

    /// A connection as [`APP_ROLE`], the server's own role.
    pub async fn app(&self) -> Client {
        connect(&self.url()).await.expect("app role connects")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime; do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(admin) = connect(&admin_url()).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}
