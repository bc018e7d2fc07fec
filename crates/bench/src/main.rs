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

mod raw;
mod server;

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Parser)]
#[command(about = "mana-sync push/pull throughput against the raw database")]
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
    /// The server binary (default: `mana-sync` next to this one).
    #[arg(long)]
    binary: Option<std::path::PathBuf>,
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
    let args = Args::parse();
    let binary = args
        .binary
        .clone()
        .unwrap_or_else(|| mana_sync_testkit::server::workspace_binary("mana-sync"));
    anyhow::ensure!(
        binary.exists(),
        "{} not found; run `cargo build --release` first",
        binary.display()
    );
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
