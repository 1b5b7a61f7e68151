//! The decision engine's side of the store: what a model is told about a
//! group (`decision_input`), and the decision log.

use super::audit::Entity;
use super::{Result, Txn, pricing, rows, snapshot, to_u64};
use crate::store::engine::col;
use crate::store::engine::from_row;
use crate::store::engine::{Conn, ConnExt, params};
use spot_common::decision::{
    DecisionInput, DecisionOutput, GroupFeatures, HourPrice, Member, PoolFeatures, SCHEMA_VERSION,
};
use spot_common::pricing::to_dollars;
use spot_common::wire::{DecisionView, ModelStats};
use spot_common::{NoticeKind, PoolKey, Role};
use std::collections::BTreeMap;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// The price history a model sees.
const SERIES_MS: i64 = 7 * DAY;
/// The window of the fleet's own risk evidence.
const EVIDENCE_MS: i64 = 30 * DAY;

/// Per pool over the evidence window: instance-hours spent there,
/// interruption and rebalance notices, the last interruption.
fn evidence(conn: &dyn Conn, pool: &PoolKey, now_ms: i64) -> Result<(f64, i64, i64, Option<i64>)> {
    let since = now_ms - EVIDENCE_MS;
    let hours: f64 = conn.query_row(
        "SELECT COALESCE(SUM(CASE WHEN span > 0 THEN span ELSE 0 END), 0) / 3600000.0
         FROM (SELECT CASE WHEN role = 'terminated' AND updated_at_ms < ?3 THEN updated_at_ms
                           ELSE ?3 END
                      - CASE WHEN created_at_ms > ?4 THEN created_at_ms ELSE ?4 END AS span
               FROM instances WHERE instance_type = ?1 AND availability_zone = ?2) s",
        params![pool.instance_type, pool.availability_zone, now_ms, since],
        |r| r.get(0),
    )?;
    let (interruptions, rebalances, last): (i64, i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*) FILTER (WHERE n.kind = 'interruption'),
                COUNT(*) FILTER (WHERE n.kind = 'rebalance'),
                MAX(n.seen_at_ms) FILTER (WHERE n.kind = 'interruption')
         FROM notices n JOIN instances i ON i.instance_id = n.instance_id
         WHERE i.instance_type = ?1 AND i.availability_zone = ?2 AND n.seen_at_ms >= ?3",
        params![pool.instance_type, pool.availability_zone, since],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok((hours, interruptions, rebalances, last))
}

/// Interruption notices per instance-hour in `pool` over the 30 days
/// before `at_ms`.
pub fn interruption_rate(conn: &dyn Conn, pool: &PoolKey, at_ms: i64) -> Result<f64> {
    let (hours, interruptions, _, _) = evidence(conn, pool, at_ms)?;
    Ok(if hours > 0.0 {
        interruptions as f64 / hours
    } else {
        0.0
    })
}

/// Launches into `pool` that failed in the evidence window, fleet-wide.
fn failed_launches(conn: &dyn Conn, pool: &PoolKey, now_ms: i64) -> Result<u32> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM commands WHERE kind = 'launch' AND state = 'failed'
           AND finished_at_ms >= ?3
           AND json_extract(body, '$.action.pool.instance_type') = ?1
           AND json_extract(body, '$.action.pool.availability_zone') = ?2",
        params![
            pool.instance_type,
            pool.availability_zone,
            now_ms - EVIDENCE_MS
        ],
        |r| r.get(0),
    )?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Notices an instance carries (interruption, rebalance, maintenance).
fn notices_of(conn: &dyn Conn, instance_id: &str) -> Result<Vec<NoticeKind>> {
    let stmt = conn.prepare_cached(
        "SELECT DISTINCT kind FROM notices WHERE instance_id = ?1 AND kind != 'malformed'
         ORDER BY kind",
    )?;
    let kinds: Vec<String> = stmt
        .query_map([instance_id], |r| r.get(0))?
        .collect::<Result<_>>()?;
    Ok(kinds.iter().filter_map(|k| k.parse().ok()).collect())
}

/// What a model is told about `group` at `now_ms` (prices in dollars;
/// `on_demand`: instance type -> dollars per hour).
pub fn input(
    conn: &dyn Conn,
    group: &str,
    now_ms: i64,
    on_demand: &BTreeMap<String, f64>,
) -> Result<DecisionInput> {
    let g = rows::group(conn, group)?;
    let boot = snapshot::boot_secs(conn, group)?;
    let mut pools = Vec::with_capacity(g.config.pools.len());
    for (pool, series) in pricing::group_series(conn, &g.config, now_ms - SERIES_MS, now_ms + 1)? {
        let hourly = series
            .into_iter()
            .map(|h| HourPrice {
                hour_ms: h.hour_ms,
                price: to_dollars(h.price),
                interpolated: h.interpolated,
            })
            .collect();
        let (hours, interruptions, rebalances, last) = evidence(conn, &pool, now_ms)?;
        let rate = |n: i64| if hours > 0.0 { n as f64 / hours } else { 0.0 };
        pools.push(PoolFeatures {
            failed_launches: failed_launches(conn, &pool, now_ms)?,
            boot_s: boot.get(&pool).copied(),
            pool,
            hourly,
            interruptions_per_instance_hour: rate(interruptions),
            rebalances_per_instance_hour: rate(rebalances),
            last_interruption_ms: last,
        });
    }
    let cheapest = pools
        .iter()
        .filter_map(PoolFeatures::price)
        .min_by(f64::total_cmp);
    let mut primary = None;
    let mut replicas = Vec::new();
    for i in super::instances::list(conn, Some(group))? {
        if !matches!(i.role, Role::Primary | Role::Replica) {
            continue;
        }
        let pool = PoolKey::new(&i.instance_type, &i.availability_zone);
        let price = pools
            .iter()
            .find(|p| p.pool == pool)
            .and_then(PoolFeatures::price);
        let m = Member {
            notices: notices_of(conn, &i.instance_id)?,
            uptime_s: to_u64((now_ms - i.created_at_ms) / 1000),
            cost_delta_to_cheapest: price.zip(cheapest).map(|(a, b)| (a - b).max(0.0)),
            on_demand_price: on_demand.get(&i.instance_type).copied(),
            price,
            pool,
            instance_id: i.instance_id,
        };
        if i.role == Role::Primary {
            primary = Some(m);
        } else {
            replicas.push(m);
        }
    }
    let volumes = super::volumes::view(conn, group, &g.config, now_ms)?;
    let switches: i64 = conn.query_row(
        "SELECT COUNT(*) FROM switches WHERE group_name = ?1 AND started_at_ms >= ?2",
        params![group, now_ms - DAY],
        |r| r.get(0),
    )?;
    Ok(DecisionInput {
        version: SCHEMA_VERSION,
        group: group.to_owned(),
        now_ms,
        config: GroupFeatures {
            mode: g.config.decision_mode(),
            manual_replica: g.config.manual_replica,
            auto_terminate: g.config.auto_terminate,
            pools: g.config.pools.iter().map(|p| p.key()).collect(),
            volume_zone: volumes.availability_zone.clone(),
            rpo_s: volumes.rpo_s,
        },
        primary,
        replicas,
        pools,
        switches_last_24h: u32::try_from(switches).unwrap_or(u32::MAX),
    })
}

/// One decision as the log keeps it.
#[derive(Debug, Clone)]
pub struct Logged<'a> {
    pub group: &'a str,
    pub mode: spot_common::DecisionMode,
    pub input_digest: &'a str,
    pub output: &'a DecisionOutput,
    pub latency_us: i64,
    pub saving_per_hour: Option<f64>,
    pub outcome: &'a str,
    pub invalid: Option<&'a str>,
    pub fallback: Option<&'a str>,
    /// The model the group is assigned (A/B).
    pub assigned: spot_common::ModelChoice,
    /// The PRIMARY's hourly price when decided.
    pub primary_price: Option<f64>,
}

impl Txn<'_> {
    pub fn log_decision(&mut self, d: &Logged<'_>) -> Result<i64> {
        let target = match &d.output.action {
            spot_common::decision::Action::Switch { pool }
            | spot_common::decision::Action::CreateReplica { pool } => Some(pool),
            _ => None,
        };
        let id: i64 = self.tx.query_row(
            "INSERT INTO decisions (group_name, at_ms, mode, model, input_digest, action,
                 target_instance_type, target_availability_zone, confidence, reason,
                 latency_us, saving_per_hour, outcome, invalid, fallback, assigned, primary_price)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             RETURNING id",
            params![
                d.group,
                self.now_ms(),
                d.mode.as_str(),
                format!("{}/{}", d.output.model.name, d.output.model.version),
                d.input_digest,
                d.output.action.name(),
                target.map(|p| p.instance_type.as_str()),
                target.map(|p| p.availability_zone.as_str()),
                d.output.confidence,
                d.output.reason,
                d.latency_us,
                d.saving_per_hour,
                d.outcome,
                d.invalid,
                d.fallback,
                d.assigned.as_str(),
                d.primary_price
            ],
            |r| r.get(0),
        )?;
        self.audit(
            Entity::Group(d.group),
            "decision",
            &serde_json::Value::Null,
            &serde_json::json!({
                "id": id,
                "mode": d.mode.as_str(),
                "action": d.output.action.name(),
                "target_pool": target,
                "outcome": d.outcome,
            }),
        )?;
        Ok(id)
    }
}

/// The latest `limit` decisions of `group`, newest first.
pub fn list(conn: &dyn Conn, group: &str, limit: u32) -> Result<Vec<DecisionView>> {
    let stmt = conn.prepare_cached(
        "SELECT id, group_name, at_ms, mode, model, input_digest, action,
                target_instance_type, target_availability_zone, confidence, reason,
                latency_us, saving_per_hour, outcome, invalid, fallback, assigned
         FROM decisions WHERE group_name = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![group, limit], |r| {
            let itype: Option<String> = r.get(7)?;
            let zone: Option<String> = r.get(8)?;
            Ok(DecisionView {
                id: r.get(0)?,
                group: r.get(1)?,
                at_ms: r.get(2)?,
                mode: col::text(r, 3)?,
                model: r.get(4)?,
                input_digest: r.get(5)?,
                action: r.get(6)?,
                target_pool: itype.zip(zone).map(|(t, z)| PoolKey::new(&t, &z)),
                confidence: r.get(9)?,
                reason: r.get(10)?,
                latency_us: r.get(11)?,
                saving_per_hour: r.get(12)?,
                outcome: r.get(13)?,
                invalid: r.get(14)?,
                fallback: r.get(15)?,
                assigned: col::text(r, 16)?,
            })
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// `group`'s pools' canonical hourly prices and this fleet's interruption
/// notices per pool, hour by hour from `since_ms` to `now_ms`, for a
/// backtest.
pub fn history(
    conn: &dyn Conn,
    group: &str,
    since_ms: i64,
    now_ms: i64,
) -> Result<spot_common::decision::backtest::History> {
    let g = rows::group(conn, group)?;
    let start = spot_common::pricing::hour_floor(since_ms);
    let hours = usize::try_from((now_ms - start) / HOUR + 1).unwrap_or(0);
    let mut prices = Vec::new();
    let mut interrupted = Vec::new();
    for (pool, points) in pricing::group_series(conn, &g.config, start, now_ms + 1)? {
        let mut series = vec![None; hours];
        for h in points {
            if let Ok(k) = usize::try_from((h.hour_ms - start) / HOUR)
                && k < hours
            {
                series[k] = Some(to_dollars(h.price));
            }
        }
        prices.push(series);
        let mut hit = vec![false; hours];
        let stmt = conn.prepare_cached(
            "SELECT n.seen_at_ms FROM notices n JOIN instances i ON i.instance_id = n.instance_id
             WHERE n.kind = 'interruption' AND i.instance_type = ?1 AND i.availability_zone = ?2
               AND n.seen_at_ms >= ?3",
        )?;
        let seen: Vec<i64> = stmt
            .query_map(
                params![pool.instance_type, pool.availability_zone, start],
                |r| r.get(0),
            )?
            .collect::<Result<_>>()?;
        for t in seen {
            if let Ok(k) = usize::try_from((t - start) / HOUR)
                && k < hours
            {
                hit[k] = true;
            }
        }
        interrupted.push(hit);
    }
    Ok(spot_common::decision::backtest::History {
        pools: g.config.pools.iter().map(|p| p.key()).collect(),
        start_ms: start,
        prices,
        interrupted,
    })
}

/// Per assigned model, over the decisions since `since_ms`: groups,
/// decisions, switches acted on, fallbacks, the PRIMARY's mean price at
/// decision time (the realized cost per instance-hour, sampled), and for
/// the groups it decides now, their interruptions and switch downtime.
pub fn compare(conn: &dyn Conn, since_ms: i64) -> Result<Vec<ModelStats>> {
    let stmt = conn.prepare(
        "WITH current AS (
             SELECT d.group_name, d.assigned FROM decisions d
             WHERE d.id = (SELECT MAX(id) FROM decisions x WHERE x.group_name = d.group_name)
         )
         SELECT d.assigned,
                COUNT(DISTINCT d.group_name),
                COUNT(*),
                SUM(CASE WHEN d.outcome LIKE 'switch to%' THEN 1 ELSE 0 END),
                SUM(CASE WHEN d.fallback IS NOT NULL THEN 1 ELSE 0 END),
                AVG(d.primary_price),
                (SELECT COUNT(*) FROM notices n JOIN current c ON c.group_name = n.group_name
                  WHERE c.assigned = d.assigned AND n.kind = 'interruption' AND n.seen_at_ms >= ?1),
                (SELECT COALESCE(SUM(s.downtime_ms), 0) FROM switches s JOIN current c ON c.group_name = s.group_name
                  WHERE c.assigned = d.assigned AND s.started_at_ms >= ?1) / 1000.0
         FROM decisions d WHERE d.at_ms >= ?1
         GROUP BY d.assigned ORDER BY d.assigned",
    )?;
    let rows = stmt
        .query_map([since_ms], |r| {
            Ok(from_row! { r => ModelStats {
                model: text, groups, decisions, switches, fallbacks,
                cost_per_instance_hour, interruptions, switch_downtime_s
            }})
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}
