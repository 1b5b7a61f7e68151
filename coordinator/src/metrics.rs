//! Prometheus metrics of the coordinator, named per Prometheus conventions:
//! base units, `_total` for counters, small fixed label sets.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use spot_common::AgentStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum EventResult {
    Applied,
    Duplicate,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub result: EventResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub agents: Family<StatusLabel, Gauge>,
    pub heartbeats: Counter,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub events: Family<EventLabels, Counter>,
    pub promotions: Family<OutcomeLabel, Counter>,
    pub consolidations: Counter,
    pub convergences: Counter,
    pub disagreements: Family<KindLabel, Counter>,
    pub fences: Family<OutcomeLabel, Counter>,
    pub groups_blocked: Gauge,
    pub agents_backlogged: Gauge,
    pub stalled_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub consolidation_rows: Family<KindLabel, Counter>,
    pub consolidation_duration: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Register `m` under `name` and hand it back (metrics are shared handles).
fn metric<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    registry.register(name, help, m.clone());
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spot_coordinator");
        let r = &mut registry;
        // 0.5 ms .. ~4 s: the p99 target is 50 ms, so the buckets are dense
        // below it.
        let http_buckets = || Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        Metrics {
            agents: metric(r, "agents", "Agents by status", Family::default()),
            heartbeats: metric(r, "heartbeats", "Heartbeats received", Counter::default()),
            http_duration: metric(
                r,
                "http_request_duration_seconds",
                "API request latency",
                Family::new_with_constructor(http_buckets),
            ),
            events: metric(r, "events", "Agent events received", Family::default()),
            promotions: metric(r, "promotions", "Promotions by outcome", Family::default()),
            convergences: metric(
                r,
                "epoch_convergences",
                "Times the store was behind an agent's epoch (restored or stale store) and converged",
                Counter::default(),
            ),
            disagreements: metric(
                r,
                "role_disagreements",
                "Disagreements between an agent's reported role and the store, by kind",
                Family::default(),
            ),
            fences: metric(
                r,
                "fences",
                "EC2 fences (STONITH) by outcome: queued, done, failed",
                Family::default(),
            ),
            groups_blocked: metric(
                r,
                "groups_fence_blocked",
                "Groups waiting for an operator because an instance cannot be fenced",
                Gauge::default(),
            ),
            agents_backlogged: metric(
                r,
                "agents_backlogged",
                "Online agents whose outbox holds more than 100 unacknowledged events",
                Gauge::default(),
            ),
            stalled_seconds: metric(
                r,
                "stalled_seconds",
                "Time the coordinator did not run (frozen, starved), discounted from its timers",
                Gauge::default(),
            ),
            consolidations: metric(
                r,
                "price_consolidations",
                "Price consolidation runs",
                Counter::default(),
            ),
            consolidation_rows: metric(
                r,
                "price_consolidation_rows",
                "Rows handled by price consolidation, by kind",
                Family::default(),
            ),
            consolidation_duration: metric(
                r,
                "price_consolidation_duration_seconds",
                "Duration of price consolidation runs",
                Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            ),
            registry,
        }
    }

    pub fn set_agent_counts(&self, counts: &[(AgentStatus, i64)]) {
        for (status, n) in counts {
            self.agents
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(*n);
        }
    }

    pub fn record_consolidation(&self, run: &spot_common::wire::ConsolidationRun) {
        self.consolidations.inc();
        self.consolidation_duration
            .observe(run.duration_ms as f64 / 1000.0);
        for (kind, n) in [
            ("read", run.rows_read),
            ("duplicate_dropped", run.duplicates_dropped),
            ("conflict_median", run.conflicts_median),
            ("primary_precedence", run.primary_precedence),
            ("interpolated", run.points_interpolated),
            ("hour_written", run.hours_written),
            ("staging_pruned", run.staging_pruned),
        ] {
            self.consolidation_rows
                .get_or_create(&KindLabel { kind })
                .inc_by(u64::try_from(n).unwrap_or(0));
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
