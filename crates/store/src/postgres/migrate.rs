//! Schema migrations on Postgres: applied in order under an advisory lock,
//! optionally by the owner for a role that may then only read and write
//! rows.

use super::{PgConnector, database_error, describe};
use crate::migrations::{Migration, POSTGRES};
use crate::{StoreError, StoreResult};

/// Key of the advisory lock that serialises migrations across instances.
const MIGRATION_LOCK: i64 = 0x6d61_6e61_7379_6e63; // "manasync"

/// Brings the schema up to date on `client`: the pending migrations in one
/// transaction, under an advisory lock so instances starting together take
/// turns. With `grant_to`, the role that will serve gets the rows of every
/// table (and of every table this role creates later). Returns the versions
/// applied.
///
/// When nothing is pending and nothing is to be granted, no DDL runs at
/// all: a server connected as a role that may only read and write rows
/// starts on a database that its owner migrated.
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    migrations: &[Migration],
    grant_to: Option<&str>,
) -> StoreResult<Vec<u32>> {
    let newest = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if grant_to.is_none() && applied_version(client).await? >= i64::from(newest) {
        return Ok(Vec::new());
    }
    let tx = client.transaction().await.map_err(database_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(database_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS mana_schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| migration_error(0, e))?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM mana_schema_migrations",
            &[],
        )
        .await
        .map_err(database_error)?
        .get(0);
    let mut done = Vec::new();
    for migration in migrations
        .iter()
        .filter(|m| i64::from(m.version) > i64::from(applied))
    {
        tx.batch_execute(migration.sql)
            .await
            .map_err(|e| migration_error(migration.version, e))?;
        let version = i32::try_from(migration.version).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO mana_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &migration.name],
        )
        .await
        .map_err(database_error)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        done.push(migration.version);
    }
    if let Some(role) = grant_to {
        let schema: String = tx
            .query_one("SELECT current_schema()::text", &[])
            .await
            .map_err(database_error)?
            .get(0);
        tx.batch_execute(&grant_rows_sql(&schema, role))
            .await
            .map_err(|e| migration_error(newest, e))?;
    }
    tx.commit().await.map_err(database_error)?;
    Ok(done)
}

/// The newest migration applied, 0 for a database never migrated; read
/// without any DDL (the rows role may not create tables).
async fn applied_version(client: &tokio_postgres::Client) -> StoreResult<i64> {
    let row = client
        .query_one(
            "SELECT to_regclass('mana_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(database_error)?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM mana_schema_migrations",
            &[],
        )
        .await
        .map_err(database_error)?;
    Ok(row.get(0))
}

/// A failed migration step; a role without the right to change the schema
/// is told how to run the migrations instead.
fn migration_error(version: u32, error: tokio_postgres::Error) -> StoreError {
    let insufficient = error
        .as_db_error()
        .is_some_and(|db| db.code().code() == "42501");
    let mut message = database_error(error).to_string();
    if insufficient {
        message.push_str(
            "; this role may not change the schema: run the migrations as the role that owns \
             the tables (`mana-sync migrate`, or MIGRATION_DATABASE_URL for `mana-sync serve`)",
        );
    }
    StoreError::Migration { version, message }
}

/// `name` as a quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Lets `role` read and write the rows of every table in `schema`, and of
/// every table the migrating role creates there later (a future migration),
/// and nothing else: no DDL, no TRUNCATE, and only reading the migration
/// record. Idempotent.
fn grant_rows_sql(schema: &str, role: &str) -> String {
    let (schema, role) = (quote_identifier(schema), quote_identifier(role));
    format!(
        "GRANT USAGE ON SCHEMA {schema} TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role};
         REVOKE INSERT, UPDATE, DELETE ON mana_schema_migrations FROM {role};
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema}
             GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role};
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema}
             GRANT USAGE, SELECT ON SEQUENCES TO {role};"
    )
}

/// Migrates the database at `url` as its owner and, with `grant_to`, lets
/// that role read and write rows (see [`grant_rows_sql`]). Returns the
/// versions applied.
pub async fn migrate_as_owner(url: &str, grant_to: Option<&str>) -> StoreResult<Vec<u32>> {
    let (mut client, connection) = PgConnector::from_url(url)?
        .connect()
        .await
        .map_err(|e| StoreError::Unavailable(describe(&e)))?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            let error = describe(&error);
            tracing::warn!(%error, "the migration connection failed");
        }
    });
    let result = migrate(&mut client, POSTGRES, grant_to).await;
    drop(client);
    let _ = driver.await;
    result
}

/// The role a `postgres://` URL connects as.
pub fn role_of(url: &str) -> Option<String> {
    let config: tokio_postgres::Config = url.parse().ok()?;
    config.get_user().map(str::to_owned)
}
