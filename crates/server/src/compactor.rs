//! Compaction in the background, and on demand (`mana-sync compact`).
//!
//! Every `interval`, the compactor asks the store for logs (users' and
//! shared spaces') with at least `threshold` changes that may supersede
//! earlier ones since their last compaction, and compacts them one after the
//! other (see [`mana_sync_store::compaction`]). Any number of instances may
//! run one: a log that another instance is compacting is skipped.

use std::sync::Arc;
use std::time::Duration;

use mana_sync_protocol::LogId;
use mana_sync_store::{CompactOptions, CompactOutcome, Store, StoreResult};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// When and how the background compactor works.
#[derive(Debug, Clone, Copy)]
pub struct CompactionConfig {
    /// Superseding changes since a log's last compaction that make it due;
    /// 0 turns background compaction off.
    pub threshold: u64,
    /// Time between looks for logs that are due.
    pub interval: Duration,
    /// How to compact.
    pub options: CompactOptions,
}

/// Logs looked at per round.
const LOGS_PER_ROUND: usize = 100;

/// Compacts `log`, counting it in `metrics`.
pub async fn compact_log(
    store: &dyn Store,
    metrics: Option<&Metrics>,
    log: &LogId,
    options: &CompactOptions,
    progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
) -> StoreResult<CompactOutcome> {
    let outcome = store.compact(log, options, progress).await?;
    if let Some(metrics) = metrics.filter(|_| !outcome.busy) {
        metrics.compaction_runs.inc();
        metrics.compaction_folded.inc_by(outcome.changes_folded);
        metrics.compaction_dropped.inc_by(outcome.changes_dropped);
    }
    Ok(outcome)
}

/// Runs the background compactor until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    config: CompactionConfig,
    shutdown: CancellationToken,
) {
    if config.threshold == 0 {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.interval) => {}
        }
        let due = match store
            .compaction_candidates(config.threshold, LOGS_PER_ROUND)
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot look for logs to compact");
                continue;
            }
        };
        for (log, superseding) in due {
            if shutdown.is_cancelled() {
                return;
            }
            let started = std::time::Instant::now();
            match compact_log(&*store, Some(&metrics), &log, &config.options, &|_| {}).await {
                Ok(outcome) if outcome.busy => {}
                Ok(outcome) => tracing::info!(
                    log = log.as_str(),
                    superseding,
                    folded = outcome.changes_folded,
                    records = outcome.records_folded,
                    dropped = outcome.changes_dropped,
                    elapsed_ms = started.elapsed().as_millis(),
                    "compacted"
                ),
                Err(error) => tracing::warn!(log = log.as_str(), %error, "compaction failed"),
            }
        }
    }
}
