//! Replaying price and interruption history through a model, against two
//! baselines, to see what the optimizer would have saved before turning it
//! on (`spot-coordinator backtest`, `spot-sim bench backtest`).
//!
//! One workload starts in the first pool and lives through the history
//! hour by hour. Each hour: if its pool is interrupted it fails over to the
//! least interrupted other pool (whatever the policy: an interruption is
//! not a choice); otherwise the policy may move it. It pays the hour's price of
//! the pool it ends the hour in. The model is given what the coordinator
//! would give it: the last 7 days of each pool's series, and each pool's
//! interruption rate over the last 30 days as seen by this workload's
//! fleet (one instance-hour per pool-hour).

use super::{
    Action, DecisionInput, DecisionOutput, GroupFeatures, HourPrice, Member, PoolFeatures,
    SCHEMA_VERSION,
};
use crate::types::PoolKey;
use crate::vocab::DecisionMode;
use serde::Serialize;

const HOUR: i64 = 3_600_000;
const SERIES_HOURS: usize = 7 * 24;
const EVIDENCE_HOURS: usize = 30 * 24;

/// Hourly history of a set of pools, aligned on the same hours.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub pools: Vec<PoolKey>,
    /// Unix ms of hour 0.
    pub start_ms: i64,
    /// `prices[p][h]`: dollars per hour of pool `p` in hour `h`.
    pub prices: Vec<Vec<Option<f64>>>,
    /// `interrupted[p][h]`: an instance in pool `p` was interrupted in
    /// hour `h`.
    pub interrupted: Vec<Vec<bool>>,
}

impl History {
    pub fn hours(&self) -> usize {
        self.prices.iter().map(Vec::len).min().unwrap_or(0)
    }
}

/// What a replay cost under one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub policy: String,
    pub hours: u32,
    /// Dollars paid over the replayed hours.
    pub cost: f64,
    pub switches: u32,
    /// The most switches in any 24 hours.
    pub max_switches_per_day: u32,
    pub interruptions_hit: u32,
    /// Estimated: each switch costs `switch_downtime_s`, each interruption
    /// `failover_downtime_s`.
    pub downtime_s: f64,
}

/// How long a move costs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Downtime {
    /// A planned switch (warm REPLICA, demote, promote): about a second.
    pub switch_downtime_s: f64,
    /// A failover on an interruption notice.
    pub failover_downtime_s: f64,
}

impl Default for Downtime {
    fn default() -> Self {
        Downtime {
            switch_downtime_s: 1.0,
            failover_downtime_s: 5.0,
        }
    }
}

/// Who decides, hour by hour.
pub enum Policy<'a> {
    /// Never moves by choice.
    AlwaysStay,
    /// Moves to the cheapest pool whenever it is not in it.
    AlwaysCheapest,
    /// A model's SWITCH answers are followed.
    Model(&'a str, &'a dyn Fn(&DecisionInput) -> DecisionOutput),
}

/// Where a failover goes: the pool with the fewest interruptions in the
/// last 30 days, then the cheapest (the planner avoids the interrupted
/// pool and prefers what boots; price is not its concern).
fn refuge(h: &History, hour: usize, from: usize) -> Option<usize> {
    let hits = |p: usize| {
        (hour.saturating_sub(EVIDENCE_HOURS)..hour)
            .filter(|&k| h.interrupted[p][k])
            .count()
    };
    (0..h.pools.len())
        .filter(|&p| p != from)
        .filter_map(|p| h.prices[p][hour].map(|x| ((hits(p), x), p)))
        .min_by(|a, b| a.0.0.cmp(&b.0.0).then(a.0.1.total_cmp(&b.0.1)))
        .map(|(_, p)| p)
}

fn cheapest(h: &History, hour: usize, except: Option<usize>) -> Option<usize> {
    (0..h.pools.len())
        .filter(|&p| Some(p) != except)
        .filter_map(|p| h.prices[p][hour].map(|x| (x, p)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, p)| p)
}

/// What the model is told at `hour`, the workload in `current`.
pub fn input_at(h: &History, hour: usize, current: usize, switches_24h: u32) -> DecisionInput {
    let now_ms = h.start_ms + i64::try_from(hour).unwrap_or(0) * HOUR;
    let pools: Vec<PoolFeatures> = (0..h.pools.len())
        .map(|p| {
            let from = hour.saturating_sub(SERIES_HOURS - 1);
            let hourly = (from..=hour)
                .filter_map(|k| {
                    h.prices[p][k].map(|price| HourPrice {
                        hour_ms: h.start_ms + i64::try_from(k).unwrap_or(0) * HOUR,
                        price,
                        interpolated: false,
                    })
                })
                .collect();
            let window = hour.saturating_sub(EVIDENCE_HOURS)..hour;
            let seen = window.len().max(1);
            let hits: Vec<usize> = window.filter(|&k| h.interrupted[p][k]).collect();
            PoolFeatures {
                pool: h.pools[p].clone(),
                hourly,
                interruptions_per_instance_hour: hits.len() as f64 / seen as f64,
                rebalances_per_instance_hour: 0.0,
                failed_launches: 0,
                boot_s: None,
                last_interruption_ms: hits
                    .last()
                    .map(|&k| h.start_ms + i64::try_from(k).unwrap_or(0) * HOUR),
            }
        })
        .collect();
    let price = h.prices[current][hour];
    let low = pools
        .iter()
        .filter_map(PoolFeatures::price)
        .min_by(f64::total_cmp);
    DecisionInput {
        version: SCHEMA_VERSION,
        group: "backtest".into(),
        now_ms,
        config: GroupFeatures {
            mode: DecisionMode::Auto,
            manual_replica: false,
            auto_terminate: false,
            pools: h.pools.clone(),
            volume_zone: None,
            rpo_s: None,
        },
        primary: Some(Member {
            instance_id: "backtest".into(),
            pool: h.pools[current].clone(),
            uptime_s: 0,
            price,
            cost_delta_to_cheapest: price.zip(low).map(|(a, b)| (a - b).max(0.0)),
            on_demand_price: None,
            notices: Vec::new(),
        }),
        replicas: Vec::new(),
        pools,
        switches_last_24h: switches_24h,
    }
}

/// Replay `h` from `start_hour` (earlier hours are the model's first
/// week of evidence) under `policy`.
pub fn replay(h: &History, start_hour: usize, policy: &Policy<'_>, d: &Downtime) -> Outcome {
    let name = match policy {
        Policy::AlwaysStay => "always-stay".to_owned(),
        Policy::AlwaysCheapest => "always-cheapest".to_owned(),
        Policy::Model(n, _) => (*n).to_owned(),
    };
    let mut out = Outcome {
        policy: name,
        hours: 0,
        cost: 0.0,
        switches: 0,
        max_switches_per_day: 0,
        interruptions_hit: 0,
        downtime_s: 0.0,
    };
    let mut current = 0usize;
    let mut switched_at: Vec<usize> = Vec::new();
    let mut last_price = vec![None; h.pools.len()];
    for hour in start_hour..h.hours() {
        for (p, lp) in last_price.iter_mut().enumerate() {
            if let Some(x) = h.prices[p][hour] {
                *lp = Some(x);
            }
        }
        let recent = |s: &[usize]| {
            u32::try_from(s.iter().filter(|&&k| k + 24 > hour).count()).unwrap_or(u32::MAX)
        };
        if h.interrupted[current][hour] {
            out.interruptions_hit += 1;
            out.downtime_s += d.failover_downtime_s;
            if let Some(to) = refuge(h, hour, current) {
                current = to;
            }
        } else {
            let target = match policy {
                Policy::AlwaysStay => None,
                Policy::AlwaysCheapest => cheapest(h, hour, None).filter(|&p| p != current),
                Policy::Model(_, model) => {
                    match model(&input_at(h, hour, current, recent(&switched_at))).action {
                        Action::Switch { pool } => h.pools.iter().position(|k| *k == pool),
                        _ => None,
                    }
                }
            };
            if let Some(to) = target {
                current = to;
                out.switches += 1;
                out.downtime_s += d.switch_downtime_s;
                switched_at.push(hour);
                out.max_switches_per_day = out.max_switches_per_day.max(recent(&switched_at));
            }
        }
        out.hours += 1;
        out.cost += last_price[current].unwrap_or(0.0);
    }
    out
}

/// The model and both baselines over the same history.
pub fn compare(
    h: &History,
    model_name: &str,
    model: &dyn Fn(&DecisionInput) -> DecisionOutput,
    d: &Downtime,
) -> Vec<Outcome> {
    let start = SERIES_HOURS.min(h.hours());
    vec![
        replay(h, start, &Policy::Model(model_name, model), d),
        replay(h, start, &Policy::AlwaysStay, d),
        replay(h, start, &Policy::AlwaysCheapest, d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::builtin::{Params, decide};

    /// Pool 0 at $0.10; pool 1 at $0.05 from hour 200 on; pool 2 always
    /// cheapest at $0.03 but interrupted every 4 hours.
    fn history() -> History {
        let n = 400;
        History {
            pools: ["a", "b", "c"]
                .iter()
                .map(|z| PoolKey::new("m5.large", z))
                .collect(),
            start_ms: 0,
            prices: vec![
                vec![Some(0.10); n],
                (0..n)
                    .map(|k| Some(if k >= 200 { 0.05 } else { 0.10 }))
                    .collect(),
                vec![Some(0.03); n],
            ],
            interrupted: vec![
                vec![false; n],
                vec![false; n],
                (0..n).map(|k| k % 4 == 0).collect(),
            ],
        }
    }

    #[test]
    fn the_model_beats_staying_and_avoids_the_risky_cheap_pool() {
        let h = history();
        let p = Params::default();
        let r = compare(&h, "builtin", &|i| decide(i, &p), &Downtime::default());
        let (model, stay, cheap) = (&r[0], &r[1], &r[2]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(stay.cost, 0.10 * f64::from(stay.hours)), "stays in a");
        assert!(model.cost < stay.cost, "{model:?} vs {stay:?}");
        assert!(
            model.interruptions_hit < cheap.interruptions_hit,
            "{model:?} vs {cheap:?}"
        );
        assert!(model.max_switches_per_day <= p.max_switches_per_day);
        // It moved to b once b had been cheaper for the dwell, no earlier.
        assert_eq!(model.switches, 1, "{model:?}");
        let expected = 0.10 * (200.0 - 168.0 + 2.0) + 0.05 * (400.0 - 202.0);
        assert!(close(model.cost, expected), "{} vs {expected}", model.cost);
    }

    #[test]
    fn an_interruption_moves_every_policy() {
        let mut h = history();
        h.interrupted[0][180] = true;
        let r = replay(&h, 168, &Policy::AlwaysStay, &Downtime::default());
        assert_eq!((r.interruptions_hit, r.switches), (1, 0));
        assert_eq!(r.downtime_s, 5.0);
    }
}
