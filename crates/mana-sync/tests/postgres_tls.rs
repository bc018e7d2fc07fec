//! TLS to Postgres, for real: the machine's cluster (TLS on, with its own
//! self-signed certificate, plain connections allowed too) and a TLS-only
//! cluster of the test's own whose certificate a test CA signed (see
//! `tls_cluster`). Every connection the server and the operator commands
//! open takes `DATABASE_URL`'s `sslmode` and `sslrootcert`, with libpq's
//! meanings.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;
mod tls_cluster;

use std::time::Duration;

use common::{Device, START, insert};
use mana_sync_store::postgres::PgConnector;
use mana_sync_testkit::pg::TestDatabase;
use mana_sync_testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::json;
use tls_cluster::TlsCluster;

fn device(server: &TestServer, user: &str, client_id: &str) -> Device {
    Device {
        http: mana_sync_testkit::http_client(),
        base: server.url.clone(),
        token: server.token(user),
        client_id: client_id.to_owned(),
    }
}

async fn server_on(url: String) -> TestServer {
    common::server_on(url).await
}

/// Connects with `url` through the server's own connector and says whether
/// the session is encrypted, as Postgres sees it.
async fn session_is_encrypted(url: &str) -> Result<bool, String> {
    let connector = PgConnector::from_url(url).map_err(|e| e.to_string())?;
    let (client, connection) = connector.connect().await.map_err(|e| with_causes(&e))?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// An error and its causes, as one text (a driver error alone says only
/// "error performing TLS handshake").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Every session on database `name` as `(application_name, ssl)`, once the
/// server's relay (listener and notifier) and at least one pooled
/// connection are among them.
async fn server_sessions(admin: &tokio_postgres::Client, name: &str) -> Vec<(String, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let sessions: Vec<(String, bool)> = admin
            .query(
                "SELECT coalesce(a.application_name, ''), s.ssl
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            .expect("reads pg_stat_activity")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let has = |app: &str| sessions.iter().any(|(name, _)| name == app);
        if has("mana-sync-listener") && has("mana-sync-notifier") && sessions.len() >= 3 {
            return sessions;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server's connections did not all show up: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn push_and_pull(server: &TestServer) {
    let phone = device(server, "alice", "phone");
    let (status, body) = phone
        .push("todo", START, json!([insert("tasks", "t1")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (changes, _) = device(server, "alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(common::ids(&changes), ["t1"]);
}

#[tokio::test]
async fn sslmode_require_encrypts_every_connection_of_the_server() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let server = server_on(format!("{}?sslmode=require", db.url())).await;
    push_and_pull(&server).await;
    let sessions = server_sessions(&db.admin().await, db.name()).await;
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "every connection (pool, listener, notifier) is encrypted: {sessions:?}"
    );
}

#[tokio::test]
async fn sslmode_disable_connects_in_plain_text() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let server = server_on(format!("{}?sslmode=disable", db.url())).await;
    push_and_pull(&server).await;
    let sessions = server_sessions(&db.admin().await, db.name()).await;
    assert!(
        sessions.iter().all(|(_, ssl)| !*ssl),
        "no connection is encrypted: {sessions:?}"
    );
    // libpq's default is prefer: TLS when the server offers it, as this one does.
    assert_eq!(session_is_encrypted(&db.url()).await, Ok(true));
    let prefer = format!("{}?sslmode=prefer", db.url());
    assert_eq!(session_is_encrypted(&prefer).await, Ok(true));
}

/// `mana-sync serve` with `url`, expected to refuse to start: its one line
/// of stderr.
async fn refused_line(url: &str) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(common::BINARY)
            .arg("serve")
            .env_clear()
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("DATABASE_URL", url)
            .env("JWT_SECRET", mana_sync_testkit::server::TEST_SECRET)
            .env("RUST_BACKTRACE", "1")
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "started with {url}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    lines[0].to_owned()
}

#[tokio::test]
async fn verify_full_refuses_the_clusters_self_signed_certificate() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // The certificate the machine's cluster serves (a self-signed one for
    // `localhost`), trusted as a root: the chain holds, the name does not.
    let served: String = db
        .admin()
        .await
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .expect("reads the setting")
        .get(0);
    let full = format!("{}?sslmode=verify-full&sslrootcert={served}", db.url());
    let line = refused_line(&full).await;
    assert!(
        line.contains("invalid peer certificate") && line.contains("127.0.0.1"),
        "{line}"
    );
    // verify-ca checks the chain only: the same certificate is accepted.
    let ca = format!("{}?sslmode=verify-ca&sslrootcert={served}", db.url());
    assert_eq!(session_is_encrypted(&ca).await, Ok(true));
    // Without a root certificate there is nothing to verify against.
    let line = refused_line(&format!("{}?sslmode=verify-full", db.url())).await;
    assert!(line.contains("sslrootcert"), "{line}");
}

#[tokio::test]
async fn verify_full_with_the_right_ca_serves_and_follows_changes_live() {
    let Some(cluster) = TlsCluster::start() else {
        return;
    };
    let admin_url = cluster.verified_url("postgres");
    let connector = PgConnector::from_url(&admin_url).expect("valid URL");
    let (admin, connection) = connector.connect().await.expect("connects");
    tokio::spawn(connection);
    admin
        .batch_execute("CREATE DATABASE mana")
        .await
        .expect("creates a database");
    // Two instances: a push to one reaches a stream on the other through
    // the LISTEN connection, over TLS like every other.
    let first = server_on(cluster.verified_url("mana")).await;
    let second = server_on(cluster.verified_url("mana")).await;
    let mut stream = device(&second, "alice", "laptop")
        .stream("todo", "tasks", START)
        .await;
    let backlog = stream.backlog(1).await;
    assert!(backlog.iter().all(|page| page["changes"] == json!([])));
    let (status, body) = device(&first, "alice", "phone")
        .push("todo", START, json!([insert("tasks", "t1")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let live = stream.next_changes().await;
    assert_eq!(live["changes"][0]["id"], "t1", "{live}");
    let sessions = server_sessions(&admin, "mana").await;
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "{sessions:?}");
}

#[tokio::test]
async fn each_sslmode_checks_what_libpq_checks() {
    let Some(cluster) = TlsCluster::start() else {
        return;
    };
    let ca = cluster.ca.display().to_string();
    let port = cluster.port;
    // Chain and name: 127.0.0.1 and localhost are in the certificate.
    assert_eq!(
        session_is_encrypted(&cluster.verified_url("postgres")).await,
        Ok(true)
    );
    let localhost = format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    );
    assert_eq!(session_is_encrypted(&localhost).await, Ok(true));
    // Reached at the right address under a name the certificate lacks.
    let other_name = |mode: &str| {
        format!(
            "postgres://postgres@db.example:{port}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}"
        )
    };
    let refused = session_is_encrypted(&other_name("verify-full"))
        .await
        .expect_err("the name is checked");
    assert!(refused.contains("not valid for name"), "{refused}");
    // verify-ca checks the chain, not the name.
    assert_eq!(
        session_is_encrypted(&other_name("verify-ca")).await,
        Ok(true)
    );
    // require: encrypted, certificate unchecked...
    let require = cluster.url("postgres", "sslmode=require");
    assert_eq!(session_is_encrypted(&require).await, Ok(true));
    // ...unless a root certificate is given: then it verifies the chain,
    // and another CA's certificate is refused.
    let wrong_root = cluster.url(
        "postgres",
        &format!("sslmode=require&sslrootcert={}", cluster.other_ca.display()),
    );
    let refused = session_is_encrypted(&wrong_root)
        .await
        .expect_err("the chain is checked");
    assert!(refused.contains("invalid peer certificate"), "{refused}");
    // disable: plain, which this cluster does not accept.
    let refused = session_is_encrypted(&cluster.url("postgres", "sslmode=disable"))
        .await
        .expect_err("plain is refused");
    assert!(refused.contains("no encryption"), "{refused}");
}

#[tokio::test]
async fn the_operator_commands_use_the_same_tls_settings() {
    let Some(cluster) = TlsCluster::start() else {
        return;
    };
    let (admin, connection) = PgConnector::from_url(&cluster.verified_url("postgres"))
        .expect("valid URL")
        .connect()
        .await
        .expect("connects");
    tokio::spawn(connection);
    for statement in ["CREATE DATABASE mana", "CREATE DATABASE seed"] {
        admin
            .batch_execute(statement)
            .await
            .expect("creates a database");
    }
    let verified = cluster.verified_url("mana");
    let required = cluster.url("mana", "sslmode=require");
    let run = |args: &[&str], url: &str| {
        let mut command = tokio::process::Command::new(common::BINARY);
        command
            .args(args)
            .env_clear()
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn");
        async move { command.output().await.expect("runs") }
    };
    let ok = |output: &std::process::Output| {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    let migrated = ok(&run(&["migrate"], &verified).await);
    assert!(migrated.contains("applied migrations"), "{migrated}");
    {
        let server = server_on(verified.clone()).await;
        push_and_pull(&server).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("alice.ndjson").display().to_string();
    let exported = ok(&run(&["export", "--user", "alice", "--out", &file], &required).await);
    assert!(exported.contains("exported 1 changes"), "{exported}");
    let imported = ok(&run(&["import", "--user", "bob", &file], &required).await);
    assert!(imported.contains("imported 1, skipped 0"), "{imported}");
    let compacted = ok(&run(&["compact"], &verified).await);
    assert!(compacted.contains("logs "), "{compacted}");
    // The seed's database is read with its own URL's settings.
    let (seed, connection) = PgConnector::from_url(&cluster.verified_url("seed"))
        .expect("valid URL")
        .connect()
        .await
        .expect("connects");
    tokio::spawn(connection);
    seed.batch_execute(
        "CREATE TABLE sync_changes (
            id UUID PRIMARY KEY, app_id TEXT, table_name TEXT, record_id TEXT, user_id TEXT,
            op TEXT, data JSONB, field_timestamps JSONB, client_id TEXT, created_at TIMESTAMPTZ,
            schema_version INT DEFAULT 1, actor JSONB);
         INSERT INTO sync_changes VALUES ('5eed0000-0000-4000-8000-000000000001', 'todo',
            'tasks', 'c1', 'carol', 'insert', '{\"title\": \"from the seed\"}', NULL, 'web',
            '2026-01-01T10:00:00Z', 1, NULL);",
    )
    .await
    .expect("seeds");
    let seeded = ok(&run(
        &["import-seed", "--from", &cluster.verified_url("seed")],
        &verified,
    )
    .await);
    assert!(
        seeded.contains("users 1, rows read 1, imported 1"),
        "{seeded}"
    );
    // The same commands refuse a URL whose root certificate is missing,
    // in one line.
    let missing = cluster.url(
        "mana",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    let refused = run(&["export", "--user", "alice"], &missing).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}
