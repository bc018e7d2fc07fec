//! `mana-sync-bench`: measures the real `mana-sync` server (release build,
//! over HTTP on loopback) and, in the same run, the raw database doing the
//! same inserts or selects through the same driver, and prints the ratio.
//!
//! Every scenario starts on a fresh database. The raw baseline writes to
//! `raw_changes`, a copy of `mana_changes` with the same columns and indexes
//! but without row-level security, counters or changeset bookkeeping: the
//! ratio is what everything mana-sync adds costs (HTTP, JSON, validation,
//! RLS, the per-user counter, idempotency).

// A benchmark stops loudly on a broken setup.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod backup;
mod cap;
mod compaction;
mod cpu;
mod live;
mod load;
mod raw;
mod server;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Parser)]
#[command(about = "mana-sync benchmarks: throughput against the raw database, live delivery")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The server binary (default: `mana-sync` next to this one).
    #[arg(long, global = true)]
    binary: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Push and pull throughput against the raw database (the default).
    Throughput(Args),
    /// Push→stream latency, on one instance and across two, personal and
    /// into a shared space (with the push's own latency: the membership
    /// check's cost).
    Latency(LatencyArgs),
    /// One push fanned out to many idle streams.
    Fanout(FanoutArgs),
    /// Backup export and import: rate and the server's peak memory.
    Backup(BackupArgs),
    /// A long-lived account's first sync before and after compaction.
    Compaction(CompactionArgs),
    /// Another user's push latency while a large backup is imported.
    Contention(ContentionArgs),
    /// Many users making small pushes with live streams attached, against
    /// the raw database's durable single-row transactions at the same
    /// concurrency.
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct CompactionArgs {
    /// Records of the account.
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Updates of each record (the log holds records × (updates + 1) changes).
    #[arg(long, default_value_t = 100)]
    updates: usize,
    /// Databases to measure.
    #[arg(long, value_enum, default_values_t = [Backend::Postgres, Backend::Sqlite])]
    backend: Vec<Backend>,
}

#[derive(clap::Args)]
struct ContentionArgs {
    /// Size of the imported backup in MiB.
    #[arg(long, default_value_t = 200)]
    mib: usize,
    /// Databases to measure.
    #[arg(long, value_enum, default_values_t = [Backend::Postgres, Backend::Sqlite])]
    backend: Vec<Backend>,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Users pushing.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Devices per user; each has a live stream and pushes in turn.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Pushes in flight at once (and raw database connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long each side runs, e.g. `20s`.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Databases to measure.
    #[arg(long, value_enum, default_values_t = [Backend::Postgres, Backend::Sqlite])]
    backend: Vec<Backend>,
    /// Extra server environment, `NAME=VALUE` (e.g. `NATS_URL=nats://127.0.0.1:4222`).
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Pushes only: no streams or sockets (nothing is checked).
    #[arg(long)]
    no_live: bool,
    /// Holds Postgres to this many cores for the whole run (mana-sync and
    /// the raw baselines), so that the database bounds the rate as in
    /// production, where many server instances share it (Linux cgroup, root).
    #[arg(long, value_name = "CORES")]
    database_cpus: Option<f64>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 20s"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}`: use s, ms or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

#[derive(clap::Args)]
struct BackupArgs {
    /// Changes in the backup.
    #[arg(long, default_value_t = 200_000)]
    changes: usize,
    /// Databases to measure.
    #[arg(long, value_enum, default_values_t = [Backend::Postgres, Backend::Sqlite])]
    backend: Vec<Backend>,
}

#[derive(clap::Args)]
struct LatencyArgs {
    /// Pushes timed per scenario.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
}

#[derive(clap::Args)]
struct FanoutArgs {
    /// Idle streams to open.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Pushes to time.
    #[arg(long, default_value_t = 5)]
    pushes: usize,
    /// Databases to measure.
    #[arg(long, value_enum, default_values_t = [Backend::Postgres, Backend::Sqlite])]
    backend: Vec<Backend>,
}

#[derive(clap::Args, Clone)]
struct Args {
    /// Changes pushed per push scenario, and preloaded for the pull scenario.
    #[arg(long, default_value_t = 100_000)]
    changes: usize,
    /// Changes per changeset.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Databases to measure.
    #[arg(long, value_enum, default_values_t = [Backend::Postgres, Backend::Sqlite])]
    backend: Vec<Backend>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            changes: 100_000,
            batch: 500,
            backend: vec![Backend::Postgres, Backend::Sqlite],
        }
    }
}

/// One measured scenario.
struct Row {
    backend: Backend,
    scenario: String,
    server: f64,
    raw: f64,
}

fn rate(changes: usize, elapsed: Duration) -> f64 {
    changes as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let binary = cli
        .binary
        .clone()
        .unwrap_or_else(|| mana_sync_testkit::server::workspace_binary("mana-sync"));
    anyhow::ensure!(
        binary.exists(),
        "{} not found; run `cargo build --release` first",
        binary.display()
    );
    // Servers start in temporary directories: the path must not be relative.
    let binary = binary.canonicalize()?;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match cli.command.unwrap_or(Command::Throughput(Args::default())) {
        Command::Throughput(args) => throughput(&args, &binary).await,
        Command::Latency(args) => latency(&args, &binary).await,
        Command::Fanout(args) => fanout(&args, &binary).await,
        Command::Backup(args) => backups(&args, &binary).await,
        Command::Compaction(args) => compactions(&args, &binary).await,
        Command::Contention(args) => contention(&args, &binary).await,
        Command::Load(args) => load_run(&args, &binary).await,
    }
}

async fn compactions(args: &CompactionArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for &backend in &args.backend {
        reports.push(compaction::run(backend, binary, args.records, args.updates).await?);
    }
    println!(
        "| database | log | new device downloads | bytes | first sync over HTTP | raw database reading the same rows | ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &reports {
        let rows = [
            ("before compaction", Some(&r.before)),
            ("after compaction, before vacuum", r.before_vacuum.as_ref()),
            ("after compaction", Some(&r.after)),
        ];
        for (label, sync) in rows
            .into_iter()
            .filter_map(|(label, sync)| Some((label, sync?)))
        {
            println!(
                "| {:?} | {label} | {} changes ({:.2}× the {} records) | {:.1} MB | {:.0} ms | {:.0} ms | {:.2} |",
                r.backend,
                sync.changes,
                sync.changes as f64 / r.records as f64,
                r.records,
                sync.bytes as f64 / 1e6,
                sync.elapsed.as_secs_f64() * 1000.0,
                sync.raw.as_secs_f64() * 1000.0,
                sync.raw.as_secs_f64() / sync.elapsed.as_secs_f64(),
            );
        }
    }
    println!();
    println!(
        "| database | first sync speed-up | changes folded | compaction | folded per second | small push p50 / p99 idle | during compaction |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &reports {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {:?} | {:.0}× | {} | {:.1} s | {:.0} | {:.1} / {:.1} ms ({} pushes) | {:.1} / {:.1} ms ({} pushes) |",
            r.backend,
            r.before.elapsed.as_secs_f64() / r.after.elapsed.as_secs_f64(),
            r.folded,
            r.compaction.as_secs_f64(),
            r.folded as f64 / r.compaction.as_secs_f64(),
            ms(r.push_idle.percentile(0.5)),
            ms(r.push_idle.percentile(0.99)),
            r.push_idle.count(),
            ms(r.push_during.percentile(0.5)),
            ms(r.push_during.percentile(0.99)),
            r.push_during.count(),
        );
    }
    Ok(())
}

async fn load_run(args: &LoadArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.devices >= 2,
        "--devices must be at least 2 (streams hear other devices)"
    );
    let shape = load::Shape {
        users: args.users,
        devices: args.devices,
        concurrency: args.concurrency,
        duration: args.duration,
        server_env: args.server_env.clone(),
        no_live: args.no_live,
    };
    anyhow::ensure!(
        args.database_cpus.is_none() || args.backend == [Backend::Postgres],
        "--database-cpus needs --backend postgres: SQLite works inside the server"
    );
    let mut rows = Vec::new();
    for &backend in &args.backend {
        let _cap = args
            .database_cpus
            .map(|cores| cap::Cap::confine("postgres", cores))
            .transpose()?;
        rows.extend(load::run(backend, binary, &shape).await?);
    }
    println!(
        "{} users × {} devices, {} concurrent, {:?} per side; ratios against the first raw row of each database",
        args.users, args.devices, args.concurrency, args.duration
    );
    if let Some(cores) = args.database_cpus {
        println!("Postgres held to {cores} cores (every `postgres` process, both sides)");
    }
    println!("{}", load::HEADER);
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

async fn backups(args: &BackupArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &backend in &args.backend {
        for phase in backup::run(backend, binary, args.changes).await? {
            eprintln!(
                "{backend:?} {} {}: {:.0}/s (raw {:.0}/s), peak +{} KiB",
                phase.label,
                phase.changes,
                rate(phase.changes, phase.server),
                rate(phase.changes, phase.raw),
                phase.peak_kib
            );
            rows.push((backend, phase));
        }
    }
    println!(
        "| database | phase | changes | mana-sync (changes/s) | raw database (changes/s) | ratio | server peak memory |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (backend, phase) in &rows {
        println!(
            "| {backend:?} | {} | {} | {:.0} | {:.0} | {:.2} | +{:.1} MiB |",
            phase.label,
            phase.changes,
            rate(phase.changes, phase.server),
            rate(phase.changes, phase.raw),
            phase.raw.as_secs_f64() / phase.server.as_secs_f64(),
            phase.peak_kib as f64 / 1024.0
        );
    }
    Ok(())
}

async fn contention(args: &ContentionArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    fn percentile(samples: &mut [Duration], p: f64) -> Duration {
        samples.sort();
        let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(index).copied().unwrap_or_default()
    }
    println!(
        "| database | backup | import | other user's push p50 / max, idle | during the import |"
    );
    println!("|---|---:|---:|---:|---:|");
    for &backend in &args.backend {
        let mut run = backup::contention(backend, binary, args.mib).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {:?} | {:.0} MiB, {} changes | {:.1} s | {:.1} / {:.1} ms | {:.1} / {:.0} ms ({} pushes) |",
            run.backend,
            run.backup_bytes as f64 / 1048576.0,
            run.changes,
            run.import.as_secs_f64(),
            ms(percentile(&mut run.idle, 0.5)),
            ms(percentile(&mut run.idle, 1.0)),
            ms(percentile(&mut run.during, 0.5)),
            ms(percentile(&mut run.during, 1.0)),
            run.during.len(),
        );
    }
    Ok(())
}

async fn latency(args: &LatencyArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    // Personal changes the seed's way, then the same user with the features
    // our clients list (which read every log the user belongs to), then a
    // change into a shared space delivered to another member.
    const FEATURES: &str = "cursor-expired,spaces";
    let mut results = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let env = server::Env::new(backend, binary).await?;
        let space = live::shared_space(&env, "ann", "bob").await?;
        let personal = live::Route {
            pusher: "ann",
            listener: "ann",
            space: None,
            features: FEATURES,
        };
        let shared = live::Route {
            listener: "bob",
            space: Some(&space),
            ..personal
        };
        let name = format!("{backend:?}");
        let mut scenarios = vec![
            (
                format!("{name}, one instance, personal (seed client)"),
                live::Route::PERSONAL,
                &env.server,
            ),
            (
                format!("{name}, one instance, personal (spaces client)"),
                personal,
                &env.server,
            ),
            (
                format!("{name}, one instance, shared space → another member"),
                shared,
                &env.server,
            ),
        ];
        let other = match backend {
            Backend::Postgres => Some(live::second_instance(&env, binary).await),
            Backend::Sqlite => None,
        };
        if let Some(other) = &other {
            scenarios.push((
                format!("{name}, across instances, personal"),
                personal,
                other,
            ));
            scenarios.push((
                format!("{name}, across instances, shared space → another member"),
                shared,
                other,
            ));
        }
        for (label, route, stream_from) in scenarios {
            results.push(live::latency(&env, stream_from, &label, args.samples, route).await?);
        }
    }
    live::Latency::print_header();
    for result in &results {
        result.print();
    }
    Ok(())
}

async fn fanout(args: &FanoutArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &backend in &args.backend {
        let env = server::Env::new(backend, binary).await?;
        let result = live::fan_out(&env, args.streams, args.pushes).await?;
        eprintln!(
            "{:?}: {} streams, {:.1} KiB per stream, one push reached all in {} ms",
            result.backend,
            result.streams,
            result.kib_per_stream,
            live::list_ms(&result.reach_all)
        );
        results.push(result);
    }
    println!(
        "| database | idle streams | server memory per stream | one push reaches all (ms, each of {} pushes) |",
        args.pushes
    );
    println!("|---|---:|---:|---|");
    for result in &results {
        println!(
            "| {:?} | {} | {:.1} KiB | {} |",
            result.backend,
            result.streams,
            result.kib_per_stream,
            live::list_ms(&result.reach_all)
        );
    }
    Ok(())
}

async fn throughput(args: &Args, binary: &std::path::Path) -> anyhow::Result<()> {
    let binary = binary.to_path_buf();
    let mut rows = Vec::new();
    for &backend in &args.backend {
        for users in [1, 8] {
            let env = server::Env::new(backend, &binary).await?;
            let server = server::push(&env, users, args.changes, args.batch).await?;
            let raw = raw::push(&env, users, args.changes, args.batch).await?;
            rows.push(Row {
                backend,
                scenario: format!(
                    "push, {users} user{}",
                    if users == 1 { "" } else { "s in parallel" }
                ),
                server: rate(args.changes, server),
                raw: rate(args.changes, raw),
            });
            print_row(rows.last().expect("just pushed"));
        }
        let env = server::Env::new(backend, &binary).await?;
        server::preload(&env, args.changes, args.batch).await?;
        raw::copy_log(&env).await?;
        let server = server::pull(&env, args.changes).await?;
        let raw = raw::pull(&env, args.changes).await?;
        rows.push(Row {
            backend,
            scenario: format!("pull {} changes, pages of 1000", args.changes),
            server: rate(args.changes, server),
            raw: rate(args.changes, raw),
        });
        print_row(rows.last().expect("just pushed"));
    }
    println!();
    println!("| database | scenario | mana-sync (changes/s) | raw database (changes/s) | ratio |");
    println!("|---|---|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {:?} | {} | {:.0} | {:.0} | {:.2} |",
            row.backend,
            row.scenario,
            row.server,
            row.raw,
            row.server / row.raw
        );
    }
    Ok(())
}

fn print_row(row: &Row) {
    eprintln!(
        "{:?} {}: mana-sync {:.0}/s, raw {:.0}/s, ratio {:.2}",
        row.backend,
        row.scenario,
        row.server,
        row.raw,
        row.server / row.raw
    );
}
