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
    pub claims_refused: Counter,
    pub disagreements: Family<KindLabel, Counter>,
    pub shed: Family<KindLabel, Counter>,
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
    pub promotions_committed: Family<KindLabel, Counter>,
    pub promotion_duration: Family<KindLabel, Histogram>,
    pub savings_ratio: Family<GroupLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub fleet_savings_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub agents_online_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while this coordinator leads (always on SQLite).
    pub leader: Gauge,
    pub leader_changes: Counter,
    /// Write transactions refused by the leader fence (PostgreSQL).
    pub writes_refused: Counter,
    pub follower_redirects: Counter,
    pub follower_proxied: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

/// What the PRIMARIES save against on-demand: per group `1 - spot /
/// on-demand` of its PRIMARY's instance type, and fleet-wide `1 - sum(spot)
/// / sum(on-demand)` over the groups that have both prices.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Savings {
    pub groups: Vec<GroupSavings>,
    /// `None` until some group has both prices.
    pub fleet_ratio: Option<f64>,
    pub fleet_spot_per_hour: f64,
    pub fleet_on_demand_per_hour: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupSavings {
    pub group: String,
    pub spot_price: f64,
    pub on_demand_price: f64,
    pub ratio: f64,
}

pub fn savings(
    primaries: &[crate::store::PrimaryPrice],
    on_demand: &std::collections::BTreeMap<String, f64>,
) -> Savings {
    let mut out = Savings::default();
    for p in primaries {
        let (Some(spot), Some(&od)) = (p.price, on_demand.get(&p.instance_type)) else {
            continue;
        };
        if od <= 0.0 {
            continue;
        }
        out.fleet_spot_per_hour += spot;
        out.fleet_on_demand_per_hour += od;
        out.groups.push(GroupSavings {
            group: p.group.clone(),
            spot_price: spot,
            on_demand_price: od,
            ratio: 1.0 - spot / od,
        });
    }
    if out.fleet_on_demand_per_hour > 0.0 {
        out.fleet_ratio = Some(1.0 - out.fleet_spot_per_hour / out.fleet_on_demand_per_hour);
    }
    out
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
            leader: metric(
                r,
                "leader",
                "1 while this coordinator leads (the store's writer), else 0",
                Gauge::default(),
            ),
            leader_changes: metric(
                r,
                "leader_terms",
                "Leader terms this coordinator began",
                Counter::default(),
            ),
            writes_refused: metric(
                r,
                "writes_refused_not_leader",
                "Write transactions refused because this coordinator's leader term was over",
                Counter::default(),
            ),
            follower_redirects: metric(
                r,
                "follower_redirects",
                "Agent requests a follower sent to the leader (307)",
                Counter::default(),
            ),
            follower_proxied: metric(
                r,
                "follower_proxied",
                "Operator requests a follower proxied to the leader",
                Counter::default(),
            ),
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
            claims_refused: metric(
                r,
                "primary_claims_refused",
                "PRIMARY claims refused because the agent showed no valid grant (forged or foreign epoch)",
                Counter::default(),
            ),
            disagreements: metric(
                r,
                "role_disagreements",
                "Disagreements between an agent's reported role and the store, by kind",
                Family::default(),
            ),
            shed: metric(
                r,
                "agent_requests_shed",
                "Agent requests refused with 503 overloaded, by kind (register, heartbeat)",
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
            promotions_committed: metric(
                r,
                "promotions_committed",
                "Promotions committed, by kind: emergency (interruption, lost PRIMARY) or planned (switch, operator)",
                Family::default(),
            ),
            // 50 ms .. ~100 s.
            promotion_duration: metric(
                r,
                "promotion_duration_seconds",
                "Time from a transition's start to its commit (a failover's or switch's length), by kind",
                Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.05, 2.0, 12))),
            ),
            savings_ratio: metric(
                r,
                "savings_ratio",
                "1 - PRIMARY's spot price / on-demand price of its type, per group (groups with an on-demand price configured)",
                Family::default(),
            ),
            fleet_savings_ratio: metric(
                r,
                "fleet_savings_ratio",
                "1 - sum of PRIMARIES' spot prices / sum of their on-demand prices, fleet-wide",
                Gauge::default(),
            ),
            agents_online_ratio: metric(
                r,
                "agents_online_ratio",
                "Share of live agents (online or offline, not replaced) that are online: the fleet's agent uptime ratio",
                Gauge::default(),
            ),
            registry,
        }
    }

    pub fn set_savings(&self, s: &Savings) {
        self.savings_ratio.clear();
        for g in &s.groups {
            self.savings_ratio
                .get_or_create(&GroupLabel {
                    group: g.group.clone(),
                })
                .set(g.ratio);
        }
        self.fleet_savings_ratio.set(s.fleet_ratio.unwrap_or(0.0));
    }

    pub fn record_commit(&self, emergency: bool, duration_ms: i64) {
        let kind = if emergency { "emergency" } else { "planned" };
        self.promotions_committed
            .get_or_create(&KindLabel { kind })
            .inc();
        self.promotion_duration
            .get_or_create(&KindLabel { kind })
            .observe(duration_ms.max(0) as f64 / 1000.0);
    }

    pub fn set_fleet_health(&self, h: &crate::store::FleetHealth) {
        self.groups_without_primary.set(h.groups_without_primary);
        self.groups_interrupted_without_replica
            .set(h.interrupted_without_replica);
        self.zombies_past_retention.set(h.zombies_past_retention);
    }

    pub fn set_agent_counts(&self, counts: &[(AgentStatus, i64)]) {
        let (mut online, mut live) = (0, 0);
        for (status, n) in counts {
            self.agents
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(*n);
            match status {
                AgentStatus::Online => (online, live) = (online + n, live + n),
                AgentStatus::Offline => live += n,
                _ => {}
            }
        }
        self.agents_online_ratio.set(if live > 0 {
            online as f64 / live as f64
        } else {
            1.0
        });
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

    #[test]
    fn savings_weigh_groups_by_their_on_demand_price() {
        let p = |group: &str, t: &str, price: Option<f64>| crate::store::PrimaryPrice {
            group: group.into(),
            instance_type: t.into(),
            price,
        };
        let od = [("m5.large".to_owned(), 0.1), ("m5.xlarge".to_owned(), 0.2)].into();
        let s = savings(
            &[
                p("a", "m5.large", Some(0.03)),
                p("b", "m5.xlarge", Some(0.1)),
                p("no-price", "m5.large", None),
                p("no-od", "c5.large", Some(0.05)),
            ],
            &od,
        );
        let ratios: Vec<_> = s
            .groups
            .iter()
            .map(|g| (g.group.as_str(), g.ratio))
            .collect();
        assert_eq!(ratios.len(), 2, "{ratios:?}");
        assert!((ratios[0].1 - 0.7).abs() < 1e-9 && (ratios[1].1 - 0.5).abs() < 1e-9);
        // (0.03 + 0.1) / (0.1 + 0.2): the larger group weighs more.
        assert!((s.fleet_ratio.unwrap() - (1.0 - 0.13 / 0.3)).abs() < 1e-9);
        assert_eq!(savings(&[], &od).fleet_ratio, None);
        let m = Metrics::new();
        m.set_savings(&s);
        let text = m.encode().unwrap();
        assert!(
            text.contains("spot_coordinator_savings_ratio{group=\"a\"} 0.7"),
            "{text}"
        );
        m.set_savings(&savings(&[], &od));
        assert!(
            !m.encode().unwrap().contains("group=\"a\""),
            "a gone group's ratio is dropped"
        );
    }

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
        m.record_commit(true, 1000);
        m.set_savings(&savings(
            &[crate::store::PrimaryPrice {
                group: "g".into(),
                instance_type: "m5.large".into(),
                price: Some(0.03),
            }],
            &[("m5.large".to_owned(), 0.096)].into(),
        ));
        m.set_agent_counts(&[(AgentStatus::Online, 3), (AgentStatus::Offline, 1)]);
        let exported = m.encode().unwrap();
        assert!(
            exported.contains("spot_coordinator_agents_online_ratio 0.75"),
            "{exported}"
        );
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
