//! The operator's commands that work on the database directly, without a
//! running server: `export`, `import`, `compact`, `import-seed`. They read
//! `DATABASE_URL` like `serve` does (its TLS settings included).

use anyhow::Context as _;
use clap::Args;
use mana_sync_protocol::{LogId, SpaceId, UserId};
use mana_sync_store::{CompactOutcome, StoreOptions};

use crate::{DatabaseArgs, RetentionArgs};

#[derive(Args)]
pub(crate) struct ExportArgs {
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
pub(crate) struct ImportArgs {
    /// The user whose history to restore into.
    #[arg(long)]
    user: String,
    /// The NDJSON backup, as written by `mana-sync export` or `GET /backup/export`.
    file: std::path::PathBuf,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
pub(crate) struct ImportSeedArgs {
    /// The seed's database (postgres://USER@HOST/DB), holding `sync_changes`.
    #[arg(long, env = "SEED_DATABASE_URL", hide_env_values = true)]
    from: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
pub(crate) struct CompactArgs {
    /// Only this user's own log (default: every log with changes to fold,
    /// users' and shared spaces').
    #[arg(long, conflicts_with = "space")]
    user: Option<String>,
    /// Only this shared space's log.
    #[arg(long)]
    space: Option<String>,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    database: DatabaseArgs,
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

pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<()> {
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

pub(crate) async fn import(args: ImportArgs) -> anyhow::Result<()> {
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

pub(crate) async fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let store = open_store(&args.database).await?;
    let logs = match (args.user, args.space) {
        (Some(user), _) => vec![LogId::of_user(
            &UserId::new(user).context("invalid --user")?,
        )],
        (None, Some(space)) => vec![LogId::of_space(
            &SpaceId::new(space).context("invalid --space")?,
        )],
        // Every log that may hold something to fold.
        (None, None) => store
            .compaction_candidates(0, usize::MAX)
            .await
            .context("listing logs")?
            .into_iter()
            .map(|(log, _)| log)
            .collect(),
    };
    let options = args.retention.options();
    let bar = progress(Some(logs.len() as u64), "{bar:40} {pos}/{len} logs, {msg}");
    let mut total = CompactOutcome::default();
    let mut busy = 0;
    for log in &logs {
        let before = total;
        let shown = bar.clone();
        let outcome = mana_sync_server::compactor::compact_log(
            &*store,
            None,
            log,
            &options,
            &move |so_far: &CompactOutcome| {
                shown.set_message(format!(
                    "{} folded, {} dropped",
                    before.changes_folded + so_far.changes_folded,
                    before.changes_dropped + so_far.changes_dropped
                ));
            },
        )
        .await
        .with_context(|| format!("compacting {}", log.as_str()))?;
        if outcome.busy {
            busy += 1;
        }
        total.add(&outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "logs {}, changes folded {} (records {}), changes dropped {} (records {}), busy {busy}",
        logs.len(),
        total.changes_folded,
        total.records_folded,
        total.changes_dropped,
        total.records_dropped
    );
    Ok(())
}

pub(crate) async fn import_seed(args: ImportSeedArgs) -> anyhow::Result<()> {
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
