//! Prometheus metrics of the coordinator, named per Prometheus conventions:
//! base units, `_total` for counters, small fixed label sets.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
    pub stalled_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub consolidation_rows: Family<KindLabel, Counter>,
    pub consolidation_duration: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spot_coordinator");
        let agents = Family::<StatusLabel, Gauge>::default();
        registry.register("agents", "Agents by status", agents.clone());
        let heartbeats = Counter::default();
        registry.register("heartbeats", "Heartbeats received", heartbeats.clone());
        // 0.5 ms .. ~4 s: the p99 target is 50 ms, so the buckets are dense
        // below it.
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 14,
            ))
        });
        registry.register(
            "http_request_duration_seconds",
            "API request latency",
            http_duration.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register("events", "Agent events received", events.clone());
        let promotions = Family::<OutcomeLabel, Counter>::default();
        registry.register("promotions", "Promotions by outcome", promotions.clone());
        let convergences = Counter::default();
        registry.register(
            "epoch_convergences",
            "Times the store was behind an agent's epoch (restored or stale store) and converged",
            convergences.clone(),
        );
        let disagreements = Family::<KindLabel, Counter>::default();
        registry.register(
            "role_disagreements",
            "Disagreements between an agent's reported role and the store, by kind",
            disagreements.clone(),
        );
        let fences = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "fences",
            "EC2 fences (STONITH) by outcome: queued, done, failed",
            fences.clone(),
        );
        let groups_blocked = Gauge::default();
        registry.register(
            "groups_fence_blocked",
            "Groups waiting for an operator because an instance cannot be fenced",
            groups_blocked.clone(),
        );
        let stalled_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "stalled_seconds",
            "Time the coordinator did not run (frozen, starved), discounted from its timers",
            stalled_seconds.clone(),
        );
        let consolidations = Counter::default();
        registry.register(
            "price_consolidations",
            "Price consolidation runs",
            consolidations.clone(),
        );
        let consolidation_rows = Family::<KindLabel, Counter>::default();
        registry.register(
            "price_consolidation_rows",
            "Rows handled by price consolidation, by kind",
            consolidation_rows.clone(),
        );
        let consolidation_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14),
        );
        registry.register(
            "price_consolidation_duration_seconds",
            "Duration of price consolidation runs",
            consolidation_duration.clone(),
        );
        Metrics {
            convergences,
            disagreements,
            fences,
            groups_blocked,
            stalled_seconds,
            consolidations,
            consolidation_rows,
            consolidation_duration,
            registry,
            agents,
            heartbeats,
            http_duration,
            events,
            promotions,
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
