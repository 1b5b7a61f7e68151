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
    pub groups_without_primary: Gauge,
    pub groups_interrupted_without_replica: Gauge,
    pub zombies_past_retention: Gauge,
    pub switch_downtime: Histogram,
    pub last_consolidation: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub stalled_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub consolidation_rows: Family<KindLabel, Counter>,
    pub consolidation_duration: Histogram,
    pub pruned: Family<TableLabel, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub decision_fallbacks: Counter,
    pub store_bytes: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub mode: &'static str,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
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
            groups_without_primary: metric(
                r,
                "groups_without_primary",
                "Groups that had instances and have no PRIMARY now",
                Gauge::default(),
            ),
            groups_interrupted_without_replica: metric(
                r,
                "groups_interrupted_without_replica",
                "Groups whose PRIMARY is interrupted with no REPLICA and no launch in flight",
                Gauge::default(),
            ),
            zombies_past_retention: metric(
                r,
                "zombies_past_retention",
                "ZOMBIE instances kept past their group's retention (cleanup not working)",
                Gauge::default(),
            ),
            // 50 ms .. ~100 s.
            switch_downtime: metric(
                r,
                "switch_downtime_seconds",
                "Downtime of manual switches: promote done minus demote delivered",
                Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            ),
            last_consolidation: metric(
                r,
                "price_consolidation_last_timestamp_seconds",
                "Unix time the last price consolidation started",
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
            pruned: metric(
                r,
                "pruned_rows",
                "Rows deleted by retention, by table",
                Family::default(),
            ),
            decisions: metric(
                r,
                "decisions",
                "Decisions of the decision engine, by mode and action",
                Family::default(),
            ),
            decision_fallbacks: metric(
                r,
                "decision_fallbacks",
                "Model answers refused as invalid and taken as NO_ACTION",
                Counter::default(),
            ),
            store_bytes: metric(
                r,
                "store_used_bytes",
                "Bytes of the database in use (free pages excluded), after the last retention pass",
                Gauge::default(),
            ),
            registry,
        }
    }

    pub fn set_fleet_health(&self, h: &crate::store::FleetHealth) {
        self.groups_without_primary.set(h.groups_without_primary);
        self.groups_interrupted_without_replica
            .set(h.interrupted_without_replica);
        self.zombies_past_retention.set(h.zombies_past_retention);
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
        self.last_consolidation
            .set(run.started_at_ms as f64 / 1000.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series the shipped alert rules read is one this coordinator
    /// exports (a renamed metric must not silently disarm an alert).
    #[test]
    fn the_alert_rules_and_the_dashboard_name_only_exported_metrics() {
        let m = Metrics::new();
        // Families show only once they have a child.
        m.agents
            .get_or_create(&StatusLabel { status: "online" })
            .set(1);
        let http = HttpLabels {
            route: "/v1/agents/{agent_id}/heartbeat".into(),
            method: "POST".into(),
        };
        m.http_duration.get_or_create(&http).observe(0.001);
        m.events
            .get_or_create(&EventLabels {
                result: EventResult::Applied,
            })
            .inc();
        for f in [&m.promotions, &m.fences] {
            f.get_or_create(&OutcomeLabel { outcome: "x" }).inc();
        }
        for f in [&m.disagreements, &m.consolidation_rows] {
            f.get_or_create(&KindLabel { kind: "x" }).inc();
        }
        m.decisions
            .get_or_create(&DecisionLabels {
                mode: "shadow",
                action: "STAY",
            })
            .inc();
        m.pruned
            .get_or_create(&TableLabel { table: "events" })
            .inc();
        let exported = m.encode().unwrap();
        for (file, text) in [
            (
                "alerts.yml",
                include_str!("../../packaging/prometheus/alerts.yml"),
            ),
            (
                "spot-optimizer.json",
                include_str!("../../packaging/grafana/spot-optimizer.json"),
            ),
        ] {
            let mut named = 0;
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("spot_coordinator_") {
                    named += 1;
                    assert!(
                        exported.contains(&format!("\n{word}{{"))
                            || exported.contains(&format!("\n{word} ")),
                        "{file} reads {word}, which the coordinator does not export"
                    );
                }
            }
            assert!(named >= 12, "{file} was read: {named}");
        }
    }
}
