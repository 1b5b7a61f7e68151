//! The training extraction: per group and hour, who was PRIMARY where, the
//! prices around it, the pool's risk evidence, the decision taken, and the
//! outcome labels that followed (docs/DECISIONS.md, "Training data").
//!
//! Who was PRIMARY when comes from the audit log (every role change is
//! audited with the role it led to), so it is exact to the millisecond
//! and reaches back as far as the audit log is kept.

use super::{Result, pricing, rows};
use crate::store::engine::{Conn, ConnExt, params};
use serde::Serialize;
use spot_common::PoolKey;
use spot_common::pricing::to_dollars;
use std::collections::{BTreeMap, HashMap};

const HOUR: i64 = 3_600_000;
const EVIDENCE_MS: i64 = 30 * 24 * HOUR;

/// One group-hour (see the module docs); prices in dollars per hour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingRow {
    pub group: String,
    /// Unix ms of the start of the hour.
    pub hour_ms: i64,
    /// PRIMARY at the start of the hour (none: the group had none).
    pub primary: Option<String>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
    /// The PRIMARY's pool's canonical price that hour.
    pub price: Option<f64>,
    pub price_interpolated: Option<bool>,
    /// The cheapest of the group's pools that hour.
    pub cheapest_pool: Option<String>,
    pub cheapest_price: Option<f64>,
    /// Interruption notices per instance-hour in the PRIMARY's pool over
    /// the 30 days before the hour.
    pub pool_interruptions_per_instance_hour: Option<f64>,
    /// The last decision logged in the hour.
    pub decision_action: Option<String>,
    pub decision_target: Option<String>,
    pub decision_mode: Option<String>,
    /// Labels: the hour's PRIMARY got an interruption notice within 1, 6,
    /// 24 hours of the start of the hour.
    pub interrupted_1h: bool,
    pub interrupted_6h: bool,
    pub interrupted_24h: bool,
    /// Label: the mean price the group's PRIMARY paid over the next 24
    /// hours (the hours that had one).
    pub realized_price_24h: Option<f64>,
}

pub const COLUMNS: &[&str] = &[
    "group",
    "hour_ms",
    "primary",
    "instance_type",
    "availability_zone",
    "price",
    "price_interpolated",
    "cheapest_pool",
    "cheapest_price",
    "pool_interruptions_per_instance_hour",
    "decision_action",
    "decision_target",
    "decision_mode",
    "interrupted_1h",
    "interrupted_6h",
    "interrupted_24h",
    "realized_price_24h",
];

/// A span during which `instance` was PRIMARY (`to`: still is, or gone).
struct Span {
    instance: String,
    from: i64,
    to: i64,
}

/// PRIMARY spans of every instance of `group`, from the audit log.
fn primary_spans(conn: &dyn Conn, group: &str, now_ms: i64) -> Result<Vec<Span>> {
    let stmt = conn.prepare(
        "SELECT substr(a.entity, 10), a.at_ms, json_extract(a.post_state, '$.role')
         FROM audit a JOIN instances i ON i.instance_id = substr(a.entity, 10)
         WHERE a.entity LIKE 'instance:%' AND i.group_name = ?1
           AND json_extract(a.post_state, '$.role') IS NOT NULL
         ORDER BY a.id",
    )?;
    let changes: Vec<(String, i64, String)> = stmt
        .query_map([group], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_>>()?;
    let mut open: HashMap<String, i64> = HashMap::new();
    let mut spans = Vec::new();
    for (instance, at, role) in changes {
        match (role == "primary", open.remove(&instance)) {
            (true, None) => {
                open.insert(instance, at);
            }
            (true, Some(from)) => {
                open.insert(instance, from);
            }
            (false, Some(from)) => spans.push(Span {
                instance,
                from,
                to: at,
            }),
            (false, None) => {}
        }
    }
    spans.extend(open.into_iter().map(|(instance, from)| Span {
        instance,
        from,
        to: now_ms,
    }));
    Ok(spans)
}

/// Every group-hour from `since_ms` to `now_ms`.
pub fn rows(conn: &dyn Conn, since_ms: i64, now_ms: i64) -> Result<Vec<TrainingRow>> {
    let first = spot_common::pricing::hour_floor(since_ms);
    let mut out = Vec::new();
    let mut risk_cache: HashMap<(PoolKey, i64), f64> = HashMap::new();
    for group in super::groups::names(conn)? {
        let g = rows::group(conn, &group)?;
        // Each pool's hourly series (price, interpolated), by hour.
        let series: BTreeMap<PoolKey, BTreeMap<i64, (f64, bool)>> =
            pricing::group_series(conn, &g.config, first - EVIDENCE_MS, now_ms + 1)?
                .into_iter()
                .map(|(pool, points)| {
                    let by_hour = points
                        .into_iter()
                        .map(|h| (h.hour_ms, (to_dollars(h.price), h.interpolated)))
                        .collect();
                    (pool, by_hour)
                })
                .collect();
        let spans = primary_spans(conn, &group, now_ms)?;
        let mut pool_of: HashMap<String, PoolKey> = HashMap::new();
        let mut notices: HashMap<String, Vec<i64>> = HashMap::new();
        for s in &spans {
            if pool_of.contains_key(&s.instance) {
                continue;
            }
            let i = rows::instance(conn, &s.instance)?;
            pool_of.insert(
                s.instance.clone(),
                PoolKey::new(&i.instance_type, &i.availability_zone),
            );
            let stmt = conn.prepare_cached(
                "SELECT seen_at_ms FROM notices WHERE instance_id = ?1 AND kind = 'interruption'",
            )?;
            let seen: Vec<i64> = stmt
                .query_map([&s.instance], |r| r.get(0))?
                .collect::<Result<_>>()?;
            notices.insert(s.instance.clone(), seen);
        }
        let primary_at = |t: i64| {
            spans
                .iter()
                .find(|s| s.from <= t && t < s.to)
                .map(|s| s.instance.clone())
        };
        let price_at =
            |pool: &PoolKey, hour: i64| series.get(pool).and_then(|s| s.get(&hour)).copied();
        let mut hour = first;
        while hour <= now_ms {
            let primary = primary_at(hour);
            let pool = primary.as_ref().and_then(|p| pool_of.get(p)).cloned();
            let here = pool.as_ref().and_then(|p| price_at(p, hour));
            let cheapest = series
                .iter()
                .filter_map(|(k, s)| s.get(&hour).map(|(x, _)| (*x, k)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let hit = |within: i64| {
                primary.as_ref().is_some_and(|p| {
                    notices
                        .get(p)
                        .is_some_and(|n| n.iter().any(|&t| t >= hour && t < hour + within))
                })
            };
            let paid: Vec<f64> = (1..=24)
                .filter_map(|k| {
                    let h = hour + k * HOUR;
                    let p = primary_at(h)?;
                    price_at(pool_of.get(&p)?, h).map(|(x, _)| x)
                })
                .collect();
            let decision: Option<(String, Option<String>, String)> = conn
                .query_row(
                    "SELECT action, target_instance_type || '/' || target_availability_zone, mode
                     FROM decisions WHERE group_name = ?1 AND at_ms >= ?2 AND at_ms < ?3
                     ORDER BY id DESC LIMIT 1",
                    params![group, hour, hour + HOUR],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .ok();
            // The 30-day rate moves slowly: computed once a day per pool.
            let risk = match &pool {
                Some(p) => {
                    let day = hour / (24 * HOUR);
                    match risk_cache.get(&(p.clone(), day)) {
                        Some(r) => Some(*r),
                        None => {
                            let r = super::decisions::interruption_rate(conn, p, hour)?;
                            risk_cache.insert((p.clone(), day), r);
                            Some(r)
                        }
                    }
                }
                None => None,
            };
            let (interrupted_1h, interrupted_6h, interrupted_24h) =
                (hit(HOUR), hit(6 * HOUR), hit(24 * HOUR));
            out.push(TrainingRow {
                group: group.clone(),
                hour_ms: hour,
                instance_type: pool.as_ref().map(|p| p.instance_type.clone()),
                availability_zone: pool.as_ref().map(|p| p.availability_zone.clone()),
                primary,
                price: here.map(|h| h.0),
                price_interpolated: here.map(|h| h.1),
                cheapest_pool: cheapest.map(|c| c.1.to_string()),
                cheapest_price: cheapest.map(|c| c.0),
                pool_interruptions_per_instance_hour: risk,
                decision_action: decision.as_ref().map(|d| d.0.clone()),
                decision_target: decision.as_ref().and_then(|d| d.1.clone()),
                decision_mode: decision.map(|d| d.2),
                interrupted_1h,
                interrupted_6h,
                interrupted_24h,
                realized_price_24h: (!paid.is_empty())
                    .then(|| paid.iter().sum::<f64>() / paid.len() as f64),
            });
            hour += HOUR;
        }
    }
    Ok(out)
}
