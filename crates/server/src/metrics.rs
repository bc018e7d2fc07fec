//! Prometheus metrics, in a registry of their own (no global state, so
//! several servers can live in one process, as in tests).

use std::sync::{Mutex, PoisonError};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by method, route and status.
    pub requests: IntCounterVec,
    /// Changes stored by pushes.
    pub changes_stored: IntCounter,
    /// Changesets acknowledged without storing (repeated `changesetId`).
    pub duplicate_changesets: IntCounter,
    /// Changes sent to devices in push and pull replies.
    pub changes_sent: IntCounter,
    /// Time to handle a push (validation, store, reply).
    pub push_seconds: Histogram,
    /// Time to handle a pull.
    pub pull_seconds: Histogram,
    /// Open SSE streams.
    pub open_streams: IntGauge,
    /// Open WebSockets.
    pub open_sockets: IntGauge,
    /// Streams and sockets that fell too far behind and re-read from their cursors.
    pub live_overflows: IntCounter,
    /// Compactions of one user's log that ran to the end.
    pub compaction_runs: IntCounter,
    /// Changes removed by folding them into their record's latest change.
    pub compaction_folded: IntCounter,
    /// Changes removed with deleted records past their retention.
    pub compaction_dropped: IntCounter,
    /// Notices of committed pushes heard (from this instance and others).
    pub notices: IntCounter,
    /// Times every live subscriber was told to re-read from its cursor
    /// (bus (re)joined, a notice lost, an instance fell silent).
    pub resyncs: IntCounter,
    /// Reads of a log for live delivery: one per notice that some
    /// subscriber needed and that did not carry its changes (notices from
    /// other instances, shared spaces' logs, restores).
    pub live_reads: IntCounter,
    /// Pages a stream read from its own cursor after it was woken: a notice
    /// that did not continue where it stood, one whose batch the hub had
    /// let go, or a resync.
    pub catch_up_reads: IntCounter,
    /// Transactions that committed pushes (read from the store when
    /// scraped): pushes ÷ this is how many a group commit holds.
    pub push_transactions: IntCounter,
    /// Held while `push_transactions` catches up with the store, so that two
    /// scrapes at once do not both add the same difference.
    push_transactions_caught_up: Mutex<()>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        // Registering at construction means no metric can exist unexposed.
        fn registered<M: Collector + Clone + 'static>(
            registry: &Registry,
            metric: prometheus::Result<M>,
        ) -> prometheus::Result<M> {
            let metric = metric?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        }
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help));
        let histogram = |name: &str, help: &str| {
            registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                ),
            )
        };
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help));
        Ok(Metrics {
            requests: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new("mana_sync_http_requests_total", "HTTP requests handled"),
                    &["method", "route", "status"],
                ),
            )?,
            changes_stored: counter("mana_sync_changes_stored_total", "Changes stored by pushes")?,
            duplicate_changesets: counter(
                "mana_sync_duplicate_changesets_total",
                "Pushes acknowledged without storing, by repeated changesetId",
            )?,
            changes_sent: counter(
                "mana_sync_changes_sent_total",
                "Changes sent in push and pull replies and on streams",
            )?,
            push_seconds: histogram("mana_sync_push_duration_seconds", "Time to handle a push")?,
            pull_seconds: histogram("mana_sync_pull_duration_seconds", "Time to handle a pull")?,
            open_streams: gauge("mana_sync_open_streams", "Open SSE streams")?,
            open_sockets: gauge("mana_sync_open_sockets", "Open WebSockets")?,
            live_overflows: counter(
                "mana_sync_live_overflows_total",
                "Streams and sockets that fell too far behind and re-read from their cursors",
            )?,
            compaction_runs: counter(
                "mana_sync_compaction_runs_total",
                "Compactions of one user's log that ran to the end",
            )?,
            compaction_folded: counter(
                "mana_sync_compaction_folded_changes_total",
                "Changes folded into their record's latest change by compaction",
            )?,
            compaction_dropped: counter(
                "mana_sync_compaction_dropped_changes_total",
                "Changes dropped with deleted records past the tombstone retention",
            )?,
            notices: counter(
                "mana_sync_notices_total",
                "Notices of committed pushes heard, from this instance and others",
            )?,
            resyncs: counter(
                "mana_sync_resyncs_total",
                "Times every live subscriber re-read from its cursor (bus rejoined, notices lost, an instance fell silent)",
            )?,
            live_reads: counter(
                "mana_sync_live_reads_total",
                "Reads of the database for live delivery: one per notice needed that did not carry its changes (from other instances, shared spaces, restores)",
            )?,
            catch_up_reads: counter(
                "mana_sync_live_catch_up_reads_total",
                "Pages live streams read from their own cursors: a notice that did not continue where the stream stood, a batch no longer kept, a resync",
            )?,
            push_transactions: counter(
                "mana_sync_push_transactions_total",
                "Database transactions that committed pushes: the pushes waiting are committed together, so under load fewer than the pushes",
            )?,
            push_transactions_caught_up: Mutex::new(()),
            registry: registry.clone(),
        })
    }

    /// Brings `mana_sync_push_transactions_total` up to the store's own
    /// count, `total` (a counter only grows: a smaller total is ignored).
    pub fn observe_push_transactions(&self, total: u64) {
        let _alone = self
            .push_transactions_caught_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = self.push_transactions.get();
        if total > seen {
            self.push_transactions.inc_by(total - seen);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed() {
        let metrics = Metrics::new().expect("valid definitions");
        metrics
            .requests
            .with_label_values(&["GET", "/health", "200"])
            .inc();
        let text = metrics.render();
        for name in [
            "mana_sync_http_requests_total",
            "mana_sync_changes_stored_total",
            "mana_sync_push_duration_seconds",
            "mana_sync_pull_duration_seconds",
            "mana_sync_open_streams",
            "mana_sync_open_sockets",
            "mana_sync_duplicate_changesets_total",
            "mana_sync_changes_sent_total",
            "mana_sync_live_overflows_total",
            "mana_sync_notices_total",
            "mana_sync_resyncs_total",
            "mana_sync_live_reads_total",
            "mana_sync_live_catch_up_reads_total",
            "mana_sync_push_transactions_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
