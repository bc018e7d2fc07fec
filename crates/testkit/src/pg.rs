//! Throwaway Postgres databases, one per test.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

use crate::in_ci;

/// The role tests connect as: it owns its databases but is neither superuser
/// nor `BYPASSRLS`, exactly like a production deployment should be.
pub const APP_ROLE: &str = "mana_test_app";

/// The role that owns the database and runs migrations in the split setup
/// ([`TestDatabase::create_split`]).
pub const OWNER_ROLE: &str = "mana_test_owner";

/// The role the server runs as in the split setup: it may only read and
/// write rows (what the migrations grant it).
pub const ROWS_ROLE: &str = "mana_test_rows";

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

/// Whether Postgres answers at [`admin_url`], where [`TestDatabase`]
/// creates its databases.
pub async fn reachable() -> bool {
    connect(&admin_url()).await.is_ok()
}

/// A database that exists for the life of this value.
pub struct TestDatabase {
    name: String,
    host: String,
    port: u16,
    /// The role [`TestDatabase::url`] connects as.
    role: &'static str,
    /// The role that owns the database.
    owner: &'static str,
}

async fn create_role(admin: &Client, role: &str) {
    // Several tests may race to create the role; losing the race is fine.
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
                 CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$;"
        ))
        .await
        .expect("creating a test role");
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
    /// Creates a fresh database owned by [`APP_ROLE`], the server's role.
    ///
    /// Returns `None` (after saying so on stderr) when Postgres is unreachable
    /// outside CI; panics when it is unreachable in CI.
    pub async fn create() -> Option<Self> {
        Self::create_owned_by(APP_ROLE, APP_ROLE).await
    }

    /// Creates a fresh database owned by [`OWNER_ROLE`], for a server that
    /// connects as [`ROWS_ROLE`] ([`TestDatabase::url`]) after migrations ran
    /// as the owner ([`TestDatabase::owner_url`]). The rows role has no
    /// privilege on anything in it until a migration grants it some.
    pub async fn create_split() -> Option<Self> {
        Self::create_owned_by(OWNER_ROLE, ROWS_ROLE).await
    }

    async fn create_owned_by(owner: &'static str, role: &'static str) -> Option<Self> {
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
        create_role(&admin, owner).await;
        create_role(&admin, role).await;
        let name = unique_name();
        let mut attempt = 0;
        loop {
            match admin
                .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
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
        Some(Self {
            name,
            host,
            port,
            role,
            owner,
        })
    }

    /// URL to connect as the server's role: [`APP_ROLE`], or [`ROWS_ROLE`]
    /// for a database made by [`TestDatabase::create_split`].
    pub fn url(&self) -> String {
        self.url_as(self.role)
    }

    /// URL to connect as the database's owner.
    pub fn owner_url(&self) -> String {
        self.url_as(self.owner)
    }

    fn url_as(&self, role: &str) -> String {
        format!(
            "postgres://{role}@{}:{}/{}",
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

    /// Refuses new connections as the server's role; sessions already open live on.
    pub async fn refuse_connections(&self) {
        let (name, role) = (&self.name, self.role);
        self.admin()
            .await
            .batch_execute(&format!(
                "REVOKE CONNECT ON DATABASE {name} FROM PUBLIC, {role}"
            ))
            .await
            .expect("revokes CONNECT");
    }

    /// Accepts connections as the server's role again.
    pub async fn accept_connections(&self) {
        let (name, role) = (&self.name, self.role);
        self.admin()
            .await
            .batch_execute(&format!(
                "GRANT CONNECT ON DATABASE {name} TO PUBLIC, {role}"
            ))
            .await
            .expect("grants CONNECT");
    }

    /// Ends the sessions of the server's role on this database, only those
    /// with this `application_name` if one is given (as a Postgres restart would).
    pub async fn end_sessions(&self, application_name: Option<&str>) {
        let (name, role) = (&self.name, self.role);
        let only = application_name
            .map(|app| format!(" AND application_name = '{app}'"))
            .unwrap_or_default();
        self.admin()
            .await
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = '{name}' AND usename = '{role}'{only}"
            ))
            .await
            .expect("ends sessions");
    }

    /// A connection as the server's own role.
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
