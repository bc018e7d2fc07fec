//! `mana-sync`: the sync server's command line. It reads configuration from
//! flags and environment and hands over to the `mana-sync-server` library.

use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use mana_sync_auth::{AuthConfig, DEFAULT_JWKS_MIN_REFRESH};
use mana_sync_protocol::UserId;
use mana_sync_server::{App, ServerConfig};
use mana_sync_store::StoreOptions;

#[derive(Parser)]
#[command(name = "mana-sync", version, about = "Local-first sync server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sync server.
    Serve(ServeArgs),
    /// Mint a token for a user, signed with JWT_SECRET or the dev-mode secret.
    Token(TokenArgs),
    /// Write a user's whole history (every app) as NDJSON.
    Export(ExportArgs),
    /// Restore an NDJSON backup into a user's history: all of it or nothing;
    /// changes the user already has (same eventId) are skipped.
    Import(ImportArgs),
    /// Copy every user's history from the seed's (Go server's) Postgres
    /// database into this one; users already copied are skipped.
    ImportSeed(ImportSeedArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// The user whose history to export.
    #[arg(long)]
    user: String,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
struct ImportArgs {
    /// The user whose history to restore into.
    #[arg(long)]
    user: String,
    /// The NDJSON backup, as written by `mana-sync export` or `GET /backup/export`.
    file: std::path::PathBuf,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
struct ImportSeedArgs {
    /// The seed's database (postgres://USER@HOST/DB), holding `sync_changes`.
    #[arg(long, env = "SEED_DATABASE_URL", hide_env_values = true)]
    from: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
struct DatabaseArgs {
    /// sqlite://PATH (embedded, the default) or postgres://USER@HOST/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://mana-sync.db")]
    database_url: String,
    /// Database connections (Postgres) or reader connections (SQLite).
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
}

#[derive(Args)]
struct ServeArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3050)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    #[command(flatten)]
    database: DatabaseArgs,
    /// HS256 secret shared with the auth service.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// URL of the auth service's JSON Web Key Set (EdDSA, RS256, ES256).
    #[arg(long, env = "JWKS_URL")]
    jwks_url: Option<String>,
    /// Required `aud` claim, if any.
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Required `iss` claim, if any.
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Origins allowed to call the API from a browser, comma-separated (`*` for any).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Seconds between SSE heartbeats.
    #[arg(long, env = "SSE_HEARTBEAT_SECS", default_value_t = 30)]
    sse_heartbeat_secs: u64,
    /// Seconds a new WebSocket has to send its auth message.
    #[arg(long, env = "WS_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    ws_auth_timeout_secs: u64,
    /// Largest backup `POST /backup/import` accepts, in bytes.
    #[arg(long, env = "BACKUP_MAX_BYTES", default_value_t = 1 << 30)]
    backup_max_bytes: u64,
    /// Directory of the built web app served at `/` (`make web` builds it).
    #[arg(long, env = "WEB_DIR", default_value = "web/todo/dist")]
    web_dir: std::path::PathBuf,
    /// Milliseconds between heartbeats of instances on one Postgres, and
    /// between checks that every other instance is still heard; a lost
    /// notice is made up for within about four of these.
    #[arg(long, env = "CATCHUP_INTERVAL_MS", default_value_t = 500)]
    catchup_interval_ms: u64,
    /// Relay live notices between instances through this NATS server
    /// (nats://HOST:PORT) instead of Postgres LISTEN/NOTIFY.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (`sub`) of the token.
    #[arg(long)]
    user: String,
    /// Hours until the token expires.
    #[arg(long, default_value_t = 24 * 30)]
    ttl_hours: u64,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Sign with this secret instead of the dev-mode secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    #[arg(long, env = "JWKS_URL", hide = true)]
    jwks_url: Option<String>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Token(args) => token(args).await,
        Command::Export(args) => export(args).await,
        Command::Import(args) => import(args).await,
        Command::ImportSeed(args) => import_seed(args).await,
    }
}

/// Logs go to stderr: human-readable (coloured on a terminal only), or one
/// JSON object per line with `LOG_FORMAT=json` for log pipelines.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Every open stream and socket is a file descriptor; the soft limit is
    // often far below what the system allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }
    let jwt_secret = non_empty(args.jwt_secret);
    if jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
        tracing::warn!("JWT_SECRET is shorter than 32 bytes; use a long random secret");
    }
    let config = ServerConfig {
        database_url: args.database.database_url.clone(),
        pool_size: args.database.pool_size,
        auth: AuthConfig {
            jwt_secret,
            jwks_url: non_empty(args.jwks_url),
            audience: non_empty(args.jwt_audience),
            issuer: non_empty(args.jwt_issuer),
            jwks_min_refresh: DEFAULT_JWKS_MIN_REFRESH,
        },
        cors_origins: args
            .cors_origins
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect(),
        sse_heartbeat: Duration::from_secs(args.sse_heartbeat_secs.max(1)),
        socket_auth_timeout: Duration::from_secs(args.ws_auth_timeout_secs.max(1)),
        backup_max_bytes: args.backup_max_bytes,
        web_dir: args.web_dir,
        catchup_interval: Duration::from_millis(args.catchup_interval_ms.max(10)),
        nats_url: non_empty(args.nats_url),
    };
    let app = App::build(config).await.context("starting mana-sync")?;
    if let Some(secret) = app.dev_secret() {
        eprintln!(
            "\n  mana-sync is running in DEV MODE: neither JWT_SECRET nor JWKS_URL is set.\n  \
             Every request still needs a token, signed with this server's local secret\n  \
             (stored in its database): {secret}\n\n  \
             Mint a token:  mana-sync token --user alice\n"
        );
    }
    let listener = tokio::net::TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let address = listener.local_addr()?;
    tracing::info!(
        %address,
        database = %mana_sync_store::redact_url(&args.database.database_url),
        "mana-sync listening"
    );
    // A stable line on stdout that scripts and tests can wait for.
    println!("mana-sync listening on http://{address}");
    std::io::stdout().flush()?;
    app.serve(listener, shutdown_signal()).await?;
    tracing::info!("mana-sync stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let user = UserId::new(args.user).context("invalid --user")?;
    let secret = match non_empty(args.jwt_secret) {
        Some(secret) => secret,
        None => {
            if non_empty(args.jwks_url).is_some() {
                bail!("JWKS_URL is set: tokens come from your auth service, not from mana-sync");
            }
            let store = mana_sync_store::open(
                &args.database.database_url,
                &StoreOptions {
                    pool_size: 1,
                    ..StoreOptions::default()
                },
            )
            .await
            .context("opening the database for its dev-mode secret")?;
            mana_sync_server::dev_secret(&*store).await?
        }
    };
    let token =
        mana_sync_auth::mint_token(&secret, &user, Duration::from_secs(args.ttl_hours * 3600))?;
    println!("{token}");
    Ok(())
}

async fn open_store(
    database: &DatabaseArgs,
) -> anyhow::Result<std::sync::Arc<dyn mana_sync_store::Store>> {
    mana_sync_store::open(
        &database.database_url,
        &StoreOptions {
            pool_size: database.pool_size.min(4),
            ..StoreOptions::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "opening {}",
            mana_sync_store::redact_url(&database.database_url)
        )
    })
}

/// A progress bar on a terminal, nothing otherwise (scripts get clean output).
fn progress(total: Option<u64>, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let user = UserId::new(args.user).context("invalid --user")?;
    let store = open_store(&args.database).await?;
    let mut chunks = std::pin::pin!(mana_sync_server::backup::export(&*store, &user).await?);
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.out {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut out = tokio::io::BufWriter::new(&mut out);
    let bar = progress(None, "{spinner} {pos} changes exported ({per_sec})");
    let mut changes = 0_u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.context("reading the history")?;
        let lines = chunk.iter().filter(|b| **b == b'\n').count() as u64;
        out.write_all(&chunk).await.context("writing the backup")?;
        changes += lines;
        bar.inc(lines);
    }
    out.flush().await.context("writing the backup")?;
    bar.finish_and_clear();
    eprintln!("exported {changes} changes of {user}");
    Ok(())
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let user = UserId::new(args.user).context("invalid --user")?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().await.map(|m| m.len()).ok();
    let store = open_store(&args.database).await?;
    let bar = progress(
        size,
        "{bar:40} {bytes}/{total_bytes} checked ({bytes_per_sec})",
    );
    let counted = bar.clone();
    let reader =
        tokio_util::io::InspectReader::new(file, move |bytes| counted.inc(bytes.len() as u64));
    let report = mana_sync_server::backup::import(&*store, &user, reader).await;
    bar.finish_and_clear();
    // Instances serving this database hear of the restored changes.
    store.close().await;
    let report = report.with_context(|| format!("importing {}", args.file.display()))?;
    println!("imported {}, skipped {}", report.imported, report.skipped);
    Ok(())
}

async fn import_seed(args: ImportSeedArgs) -> anyhow::Result<()> {
    let store = open_store(&args.database).await?;
    let bar = progress(Some(0), "{bar:40} {pos}/{len} rows ({per_sec}), {msg}");
    let shown = bar.clone();
    let mut on_progress = move |at: &mana_sync_seed::Progress| {
        shown.set_length(at.rows_total);
        shown.set_position(at.so_far.rows_read);
        shown.set_message(format!(
            "{} users, {} imported, {} skipped",
            at.so_far.users, at.so_far.imported, at.so_far.skipped
        ));
    };
    let report = mana_sync_seed::import_seed(&args.from, &*store, &mut on_progress).await;
    store.close().await;
    bar.finish_and_clear();
    // One line, whatever went wrong: its message already names the cause.
    let report = report.map_err(|error| anyhow::Error::msg(error.to_string()))?;
    println!(
        "users {}, rows read {}, imported {}, skipped {}",
        report.users, report.rows_read, report.imported, report.skipped
    );
    Ok(())
}
