//! Compaction in the background, and on demand (`mana-sync compact`).
//!
//! Every `interval`, the compactor asks the store for users with at least
//! `threshold` changes that may supersede earlier ones since their last
//! compaction, and compacts them one after the other (see
//! [`mana_sync_store::compaction`]). Any number of instances may run one: a
//! user that another instance is compacting is skipped.

use std::sync::Arc;
use std::time::Duration;

use mana_sync_protocol::UserId;
use mana_sync_store::{CompactOptions, CompactOutcome, Store, StoreResult};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// When and how the background compactor works.
#[derive(Debug, Clone, Copy)]
pub struct CompactionConfig {
    /// Superseding changes since a user's last compaction that make it due;
    /// 0 turns background compaction off.
    pub threshold: u64,
    /// Time between looks for users that are due.
    pub interval: Duration,
    /// How to compact.
    pub options: CompactOptions,
}

/// Users looked at per round.
const USERS_PER_ROUND: usize = 100;

/// Compacts `user`, counting it in `metrics`.
pub async fn compact_user(
    store: &dyn Store,
    metrics: Option<&Metrics>,
    user: &UserId,
    options: &CompactOptions,
    progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
) -> StoreResult<CompactOutcome> {
    let outcome = store.compact(user, options, progress).await?;
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
            .compaction_candidates(config.threshold, USERS_PER_ROUND)
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot look for logs to compact");
                continue;
            }
        };
        for (user, superseding) in due {
            if shutdown.is_cancelled() {
                return;
            }
            let started = std::time::Instant::now();
            match compact_user(&*store, Some(&metrics), &user, &config.options, &|_| {}).await {
                Ok(outcome) if outcome.busy => {}
                Ok(outcome) => tracing::info!(
                    user = user.as_str(),
                    superseding,
                    folded = outcome.changes_folded,
                    records = outcome.records_folded,
                    dropped = outcome.changes_dropped,
                    elapsed_ms = started.elapsed().as_millis(),
                    "compacted"
                ),
                Err(error) => tracing::warn!(user = user.as_str(), %error, "compaction failed"),
            }
        }
    }
}
