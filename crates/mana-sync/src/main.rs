//! `mana-sync`: the sync server's command line. It reads configuration from
//! flags and environment and hands over to the `mana-sync-server` library.
//!
//! Every setting is a flag with an environment variable and a stated
//! default (`mana-sync serve --help` lists them). Whatever goes wrong before
//! or while serving ends the process with one line on stderr and a non-zero
//! exit code: an operator's mistake gets a sentence, never a panic, a
//! backtrace or a page of usage.

mod commands;

/// Every request allocates and frees many small buffers on many threads
/// (bodies, JSON, pages, notices); under `mana-sync-bench load`, glibc's
/// allocator cost the server 13–30% more CPU per push than mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use commands::{CompactArgs, ExportArgs, ImportArgs, ImportSeedArgs};
use mana_sync_auth::{AuthConfig, DEFAULT_JWKS_MIN_REFRESH};
use mana_sync_protocol::UserId;
use mana_sync_server::compactor::CompactionConfig;
use mana_sync_server::connections::ConnectionLimits;
use mana_sync_server::{App, ServerConfig};
use mana_sync_store::{CompactOptions, StoreOptions};

#[derive(Parser)]
#[command(name = "mana-sync", version, about = "Local-first sync server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    logging: LoggingArgs,
}

/// Logs go to stderr, for every command.
#[derive(Args)]
struct LoggingArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or
    /// per-module directives (`info,mana_sync_store=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info", global = true)]
    filter: String,
    /// `text` (coloured on a terminal) or `json` (one object per line).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true,
          value_parser = ["text", "json"], ignore_case = true)]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sync server.
    Serve(Box<ServeArgs>),
    /// Mint a token for a user, signed with JWT_SECRET or the dev-mode secret.
    Token(TokenArgs),
    /// Write a user's whole history (every app) as NDJSON.
    Export(ExportArgs),
    /// Restore an NDJSON backup into a user's history: all of it or nothing;
    /// changes the user already has (same eventId) are skipped.
    Import(ImportArgs),
    /// Compact change logs now: fold each record's superseded history into
    /// one change, drop deleted records past the tombstone retention.
    Compact(CompactArgs),
    /// Copy every user's history from the seed's (Go server's) Postgres
    /// database into this one; users already copied are skipped.
    ImportSeed(ImportSeedArgs),
    /// Bring the database schema up to date as the role that owns the tables,
    /// and let the server's role read and write rows (nothing more).
    Migrate(MigrateArgs),
    /// Print the OpenAPI description of the HTTP API (what `GET /openapi.json`
    /// serves; docs/openapi.json is a copy).
    Openapi,
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Migrate as this owner role's URL instead of DATABASE_URL's; the role
    /// of DATABASE_URL then gets the rows (unless --app-role names another).
    #[arg(long, env = "MIGRATION_DATABASE_URL", hide_env_values = true)]
    migration_database_url: Option<String>,
    /// The role the server runs as: it may read and write the rows of every
    /// table, now and of tables later migrations add (Postgres only).
    #[arg(long, env = "MANA_SYNC_APP_ROLE")]
    app_role: Option<String>,
}

#[derive(Args)]
pub(crate) struct RetentionArgs {
    /// Days a deleted record is kept as a tombstone before compaction may
    /// drop it; devices whose cursor is older are told to download again.
    #[arg(long, env = "TOMBSTONE_RETENTION_DAYS", default_value_t = 90)]
    tombstone_retention_days: u64,
}

impl RetentionArgs {
    pub(crate) fn options(&self) -> CompactOptions {
        CompactOptions {
            tombstone_retention: Duration::from_secs(
                self.tombstone_retention_days.saturating_mul(24 * 3600),
            ),
            ..CompactOptions::default()
        }
    }
}

#[derive(Args)]
pub(crate) struct DatabaseArgs {
    /// sqlite://PATH (embedded) or postgres://USER[:PASSWORD]@HOST[:PORT]/DB,
    /// with libpq's `?sslmode=disable|prefer|require|verify-ca|verify-full`
    /// (default prefer) and `&sslrootcert=PATH|system`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://mana-sync.db",
        hide_env_values = true
    )]
    pub(crate) database_url: String,
    /// Database connections (Postgres) or reader connections (SQLite, at most 8).
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub(crate) pool_size: usize,
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
    /// Run migrations at start-up as this role (the tables' owner), and serve
    /// as DATABASE_URL's role, which only gets to read and write rows
    /// [default: unset: migrate as DATABASE_URL's role].
    #[arg(long, env = "MIGRATION_DATABASE_URL", hide_env_values = true)]
    migration_database_url: Option<String>,
    /// HS256 secret shared with the auth service, at least 32 bytes
    /// [default: unset: with JWKS_URL unset too, dev mode].
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// URL of the auth service's JSON Web Key Set (EdDSA, RS256, ES256)
    /// [default: unset].
    #[arg(long, env = "JWKS_URL")]
    jwks_url: Option<String>,
    /// Required `aud` claim [default: unset: any].
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Required `iss` claim [default: unset: any].
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Seconds of clock skew tolerated on a token's `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 30)]
    jwt_leeway_secs: u64,
    /// Origins allowed to call the API from a browser, comma-separated (`*`
    /// for any) [default: unset: same origin only].
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
    /// Serve the web app at `/` from this directory (e.g. `web/todo/dist`,
    /// which `make web` builds) instead of the copy built into the binary
    /// [default: unset: the built-in copy].
    #[arg(long, env = "WEB_DIR")]
    web_dir: Option<std::path::PathBuf>,
    /// Compact a user's log in the background once it has this many
    /// changes that may supersede earlier ones (updates, deletes) since
    /// its last compaction; 0 turns background compaction off.
    #[arg(long, env = "COMPACTION_THRESHOLD", default_value_t = 1000)]
    compaction_threshold: u64,
    /// Seconds between looks for logs to compact.
    #[arg(long, env = "COMPACTION_INTERVAL_SECS", default_value_t = 60)]
    compaction_interval_secs: u64,
    #[command(flatten)]
    retention: RetentionArgs,
    /// Seconds a client has to send a request head (on a new connection, and
    /// between requests on a kept-alive one).
    #[arg(long, env = "HEADER_TIMEOUT_SECS", default_value_t = 30)]
    header_timeout_secs: u64,
    /// Longest pause, in seconds, while a request body arrives (then 408).
    #[arg(long, env = "BODY_TIMEOUT_SECS", default_value_t = 30)]
    body_timeout_secs: u64,
    /// Most connections served at once [default: the open-file limit less
    /// a reserve for the database and files].
    #[arg(long, env = "MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most open streams and sockets per user.
    #[arg(long, env = "MAX_LIVE_PER_USER", default_value_t = 100)]
    max_live_per_user: usize,
    /// Milliseconds between heartbeats of instances on one Postgres, and
    /// between checks that every other instance is still heard; a lost
    /// notice is made up for within about four of these.
    #[arg(long, env = "CATCHUP_INTERVAL_MS", default_value_t = 500)]
    catchup_interval_ms: u64,
    /// Relay live notices between instances through this NATS server
    /// (nats://HOST:PORT) instead of Postgres LISTEN/NOTIFY [default: unset:
    /// LISTEN/NOTIFY].
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
}

/// File descriptors kept free of connections: the database pool, the
/// Postgres listener, SQLite's files, backup spools, logs (plus three per
/// pooled connection, see [`connection_budget`]).
const RESERVED_FILES: u64 = 64;

/// The soft open-file limit, raised to the hard limit first: every open
/// stream and socket is a file descriptor, and the soft limit is often far
/// below what the system allows.
fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "could not raise the open file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// Connections that fit in `open_files` next to the reserve.
fn connection_budget(open_files: u64, pool_size: usize) -> usize {
    let reserve = RESERVED_FILES + 3 * pool_size as u64;
    usize::try_from(open_files.saturating_sub(reserve).max(16)).unwrap_or(usize::MAX)
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

/// `JWT_SECRET`, if set, and only if it is fit to sign with: an empty or
/// short secret is an error, never a silent dev mode or a guessable key.
fn checked_secret(secret: Option<String>) -> anyhow::Result<Option<String>> {
    match secret {
        Some(secret) => {
            mana_sync_auth::check_secret(&secret)?;
            Ok(Some(secret))
        }
        None => Ok(None),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let result = match init_logging(&cli.logging) {
        Ok(()) => run(cli.command).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Token(args) => token(args).await,
        Command::Export(args) => commands::export(args).await,
        Command::Import(args) => commands::import(args).await,
        Command::Compact(args) => commands::compact(args).await,
        Command::ImportSeed(args) => commands::import_seed(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Openapi => {
            print!("{}", mana_sync_server::openapi::json());
            Ok(())
        }
    }
}

/// `text` on one line: a database's or a library's message may hold line
/// breaks, and the one line must stay one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version as clap prints them; a bad flag or value as one line
/// (clap's message without the usage that follows it), exit code 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .collect();
    let mut line = one_line(&message.join(" "));
    if let Some(variable) = env_of(error) {
        line.push_str(&format!(" (set by {variable} or the flag)"));
    }
    eprintln!("{line}");
    ExitCode::from(2)
}

/// The environment variable of the flag a usage error is about: operators
/// set variables, and clap's message names only the flag.
fn env_of(error: &clap::Error) -> Option<String> {
    use clap::CommandFactory as _;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(flag)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = flag.strip_prefix("--")?.split(' ').next()?;
    let command = Cli::command();
    let found = command
        .get_arguments()
        .chain(
            command
                .get_subcommands()
                .flat_map(|sub| sub.get_arguments()),
        )
        .find(|arg| arg.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    Some(found)
}

/// Logs go to stderr: human-readable (coloured on a terminal only), or one
/// JSON object per line with `LOG_FORMAT=json` for log pipelines.
fn init_logging(logging: &LoggingArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(&logging.filter)
        .with_context(|| format!("RUST_LOG `{}` is not a log filter", logging.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if logging.log_format.eq_ignore_ascii_case("json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // What can be checked without the database is checked first, and the
    // port is taken before the database is opened: a mistake is one line
    // on stderr, before any log.
    let jwt_secret = checked_secret(args.jwt_secret)?;
    let listener = tokio::net::TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{} (HOST, PORT)", args.host, args.port))?;
    let open_files = raise_open_file_limit();
    let fits = open_files.map(|limit| connection_budget(limit, args.database.pool_size));
    let max_connections = match (args.max_connections, fits) {
        (Some(chosen), _) => chosen,
        (None, Some(fits)) => fits,
        (None, None) => 1024,
    };
    let config = ServerConfig {
        database_url: args.database.database_url.clone(),
        pool_size: args.database.pool_size,
        auth: AuthConfig {
            jwt_secret,
            jwks_url: non_empty(args.jwks_url),
            audience: non_empty(args.jwt_audience),
            issuer: non_empty(args.jwt_issuer),
            jwks_min_refresh: DEFAULT_JWKS_MIN_REFRESH,
            leeway: Duration::from_secs(args.jwt_leeway_secs),
        },
        cors_origins: args.cors_origins,
        sse_heartbeat: Duration::from_secs(args.sse_heartbeat_secs.max(1)),
        socket_auth_timeout: Duration::from_secs(args.ws_auth_timeout_secs.max(1)),
        backup_max_bytes: args.backup_max_bytes,
        web_dir: args.web_dir.filter(|dir| !dir.as_os_str().is_empty()),
        compaction: CompactionConfig {
            threshold: args.compaction_threshold,
            interval: Duration::from_secs(args.compaction_interval_secs.max(1)),
            options: args.retention.options(),
        },
        connections: ConnectionLimits {
            max_connections,
            header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(args.body_timeout_secs.max(1)),
        },
        max_live_per_user: args.max_live_per_user.max(1),
        catchup_interval: Duration::from_millis(args.catchup_interval_ms.max(10)),
        nats_url: non_empty(args.nats_url),
    };
    if let Some(owner_url) = non_empty(args.migration_database_url) {
        let role = mana_sync_store::postgres::role_of(&args.database.database_url)
            .context("MIGRATION_DATABASE_URL needs a postgres:// DATABASE_URL with a user")?;
        mana_sync_store::migrate(&owner_url, Some(&role))
            .await
            .with_context(|| {
                format!(
                    "migrating {} as its owner",
                    mana_sync_store::redact_url(&owner_url)
                )
            })?;
    }
    let app = App::build(config).await.context("starting mana-sync")?;
    if let (Some(chosen), Some(fits)) = (args.max_connections, fits)
        && chosen > fits
    {
        tracing::warn!(
            max_connections = chosen,
            fits,
            "MAX_CONNECTIONS is more than the open file limit leaves room for"
        );
    }
    tracing::info!(
        open_files,
        max_connections,
        "open file limit {}: serving up to {max_connections} connections",
        open_files.map_or_else(|| "unknown".to_owned(), |limit| limit.to_string()),
    );
    if let Some(secret) = app.dev_secret() {
        eprintln!(
            "\n  mana-sync is running in DEV MODE: neither JWT_SECRET nor JWKS_URL is set.\n  \
             Every request still needs a token, signed with this server's local secret\n  \
             (stored in its database): {secret}\n\n  \
             Mint a token:  mana-sync token --user alice\n"
        );
    }
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

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let (url, role) = match non_empty(args.migration_database_url) {
        Some(owner_url) => {
            let role = non_empty(args.app_role)
                .or_else(|| mana_sync_store::postgres::role_of(&args.database.database_url));
            (owner_url, role)
        }
        None => (args.database.database_url, non_empty(args.app_role)),
    };
    let applied = mana_sync_store::migrate(&url, role.as_deref())
        .await
        .with_context(|| format!("migrating {}", mana_sync_store::redact_url(&url)))?;
    match applied.as_slice() {
        [] => println!("the schema is up to date"),
        versions => println!("applied migrations {versions:?}"),
    }
    if let Some(role) = role {
        println!("{role} may read and write the rows of every table, and nothing more");
    }
    Ok(())
}

async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let user = UserId::new(args.user).context("invalid --user")?;
    let secret = match checked_secret(args.jwt_secret)? {
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
