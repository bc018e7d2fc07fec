//! Every benchmark the README documents runs to its table, on both
//! databases, at a tiny size, against the debug server that `cargo test
//! --workspace` builds next to this one.
//!
//! Figures are not checked (speed is measured, not asserted); that the
//! benchmarks still run is: the backup benchmark's raw restore stopped
//! working when the raw table gained a column, and nobody noticed until it
//! was next run.

#![allow(clippy::expect_used)] // tests stop loudly on broken setups

use std::process::Command;

/// Whether the Postgres runs are checked: always in CI; elsewhere only when
/// Postgres answers where the benchmarks create their databases.
fn with_postgres() -> bool {
    let reachable = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(mana_sync_testkit::pg::reachable());
    if !reachable && !mana_sync_testkit::in_ci() {
        eprintln!(
            "Postgres is unreachable at {}: only the SQLite runs are checked",
            mana_sync_testkit::pg::admin_url()
        );
    }
    reachable || mana_sync_testkit::in_ci()
}

/// Runs `mana-sync-bench ARGS` and returns what it printed.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mana-sync-bench"))
        .args(args)
        .output()
        .expect("mana-sync-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "mana-sync-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// How many rows of the printed tables start with `| {first_cell} |`.
fn rows(output: &str, first_cell: &str) -> usize {
    let start = format!("| {first_cell} |");
    output
        .lines()
        .filter(|line| line.starts_with(&start))
        .count()
}

/// Runs a benchmark that takes `--backend` on each database there is and
/// checks that each printed its rows of the table.
fn runs(args: &[&str], postgres_rows: usize, sqlite_rows: usize) {
    let mut backends = vec![("sqlite", "Sqlite", sqlite_rows)];
    if with_postgres() {
        backends.push(("postgres", "Postgres", postgres_rows));
    }
    let mut all = args.to_vec();
    for (backend, ..) in &backends {
        all.extend(["--backend", backend]);
    }
    let output = bench(&all);
    for (_, database, expected) in backends {
        assert_eq!(
            rows(&output, database),
            expected,
            "rows of {database} for {all:?} in:\n{output}"
        );
    }
}

#[test]
fn throughput() {
    runs(&["throughput", "--changes", "400", "--batch", "50"], 3, 3);
}

#[test]
fn latency() {
    // Runs on both databases; Postgres is not optional here.
    if !with_postgres() {
        return;
    }
    let output = bench(&["latency", "--samples", "20"]);
    for scenario in [
        "Sqlite, one instance, personal (seed client)",
        "Sqlite, one instance, shared space → another member",
        "Postgres, across instances, personal",
        "Postgres, across instances, shared space → another member",
    ] {
        assert_eq!(rows(&output, scenario), 1, "{scenario} in:\n{output}");
    }
}

#[test]
fn fanout() {
    runs(&["fanout", "--streams", "20", "--pushes", "2"], 1, 1);
}

#[test]
fn backup() {
    // Preloaded in changesets of 500: the smaller export is a tenth.
    runs(&["backup", "--changes", "5000"], 3, 3);
}

#[test]
fn compaction() {
    // Two tables: first syncs (Postgres also before its vacuum), then
    // compaction itself.
    runs(&["compaction", "--records", "20", "--updates", "3"], 4, 3);
}

#[test]
fn contention() {
    runs(&["contention", "--mib", "1"], 1, 1);
}

#[test]
fn load() {
    // mana-sync and the raw database; on Postgres three raw variants. The
    // run fails by itself when a stream missed a change or got one twice.
    runs(
        &[
            "load",
            "--users",
            "4",
            "--concurrency",
            "4",
            "--duration",
            "1s",
        ],
        4,
        2,
    );
}
