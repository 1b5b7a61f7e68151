//! The built-in model: the expected cost of an hour in each pool is its
//! price plus its risk (interruptions per instance-hour, from this fleet's
//! own history) times the cost of one failover. It switches only when
//! another pool has been cheaper by more than `margin` for every one of
//! the last `dwell_hours` (waived when the current pool is spiking: priced
//! above `spike_factor` times its own 7-day median), at most
//! `max_switches_per_day`, never into a pool that had an interruption
//! within `cooldown` or a failed launch; and
//! it proposes a REPLICA when the PRIMARY's pool turns risky (a rebalance
//! recommendation or scheduled maintenance) and the group has none.

use super::{Action, DecisionInput, DecisionOutput, ModelId, PoolFeatures};
use crate::types::PoolKey;
use crate::vocab::NoticeKind;
use serde::{Deserialize, Serialize};

pub const NAME: &str = "builtin";
pub const VERSION: &str = "1";

/// The model's knobs (`[decisions]` in the coordinator's config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Dollars one failover costs (downtime, warm-up, an operator's look).
    pub failover_cost: f64,
    /// Fraction of the current expected cost another pool must save.
    pub margin: f64,
    /// Hours the saving must have held, every one of them.
    pub dwell_hours: u32,
    pub max_switches_per_day: u32,
    /// A pool with an interruption in this many hours is not switched into.
    pub cooldown_hours: u32,
    /// The current pool priced above this multiple of its own 7-day median
    /// is spiking (spot price spikes come with interruptions): the dwell
    /// is waived to leave it.
    pub spike_factor: f64,
    /// Dollars per hour of writes lost: a group with data volumes loses up
    /// to its RPO when a failover must restore them in another zone, so
    /// each interruption costs that much more.
    pub data_loss_per_hour: f64,
}

impl Params {
    pub const DEFAULT: Params = Params {
        failover_cost: 0.50,
        margin: 0.15,
        dwell_hours: 3,
        max_switches_per_day: 2,
        cooldown_hours: 6,
        spike_factor: 1.5,
        data_loss_per_hour: 1.0,
    };
}

impl Default for Params {
    fn default() -> Self {
        Params::DEFAULT
    }
}

impl Params {
    /// Every knob sane; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.failover_cost.is_finite() && self.failover_cost >= 0.0) {
            return Err("decisions.failover_cost must be a non-negative number".into());
        }
        if !(0.0..1.0).contains(&self.margin) {
            return Err("decisions.margin must be in [0, 1)".into());
        }
        if !(1..=168).contains(&self.dwell_hours) {
            return Err("decisions.dwell_hours must be 1-168 (the series is 7 days)".into());
        }
        if !(self.data_loss_per_hour.is_finite() && self.data_loss_per_hour >= 0.0) {
            return Err("decisions.data_loss_per_hour must be a non-negative number".into());
        }
        if !(self.spike_factor.is_finite() && self.spike_factor > 1.0) {
            return Err("decisions.spike_factor must be a number above 1".into());
        }
        Ok(())
    }
}

fn out(action: Action, confidence: f64, reason: String) -> DecisionOutput {
    DecisionOutput {
        action,
        confidence,
        reason,
        model: ModelId {
            name: NAME.into(),
            version: VERSION.into(),
        },
    }
}

/// Expected dollars per hour in `p` at `price`, one failover costing
/// `failover` dollars.
fn expected(p: &PoolFeatures, price: f64, failover: f64) -> f64 {
    price + p.interruptions_per_instance_hour * failover
}

#[cfg(test)]
pub(super) fn failover_cost_of(input: &DecisionInput) -> f64 {
    failover_cost(input, &Params::default())
}

/// What one failover of this group costs: the knob, plus the data a
/// restore in another zone would lose (its RPO, for a group with data
/// volumes).
fn failover_cost(input: &DecisionInput, prm: &Params) -> f64 {
    let lost_hours = input
        .config
        .volume_zone
        .as_ref()
        .and(input.config.rpo_s)
        .map_or(0.0, |s| s as f64 / 3600.0);
    prm.failover_cost + lost_hours * prm.data_loss_per_hour
}

/// The median of a pool's series.
fn median(p: &PoolFeatures) -> Option<f64> {
    let mut v: Vec<f64> = p.hourly.iter().map(|h| h.price).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The pool's price at `hour_ms` (the series is hourly and sorted).
fn price_at(p: &PoolFeatures, hour_ms: i64) -> Option<f64> {
    p.hourly
        .binary_search_by_key(&hour_ms, |h| h.hour_ms)
        .ok()
        .map(|i| p.hourly[i].price)
}

pub fn decide(input: &DecisionInput, prm: &Params) -> DecisionOutput {
    let Some(primary) = &input.primary else {
        return out(Action::NoAction, 1.0, "no PRIMARY: failover decides".into());
    };
    let pool = |k: &PoolKey| input.pools.iter().find(|p| &p.pool == k);
    let failover = failover_cost(input, prm);
    // A planned move never leaves the data volumes' zone: it would restore
    // them from a snapshot and lose what was written since.
    let in_volume_zone = |p: &PoolFeatures| {
        input
            .config
            .volume_zone
            .as_ref()
            .is_none_or(|z| p.pool.availability_zone == *z)
    };
    let safe = |p: &&PoolFeatures| {
        in_volume_zone(p)
            && p.pool != primary.pool
            && p.failed_launches == 0
            && p.last_interruption_ms
                .is_none_or(|t| input.now_ms - t >= i64::from(prm.cooldown_hours) * 3_600_000)
    };
    let cost_now = |p: &PoolFeatures| p.price().map(|x| expected(p, x, failover));

    // The PRIMARY's pool turned risky and nothing stands by: a REPLICA in
    // the cheapest safe pool.
    let risky = primary
        .notices
        .iter()
        .any(|n| matches!(n, NoticeKind::Rebalance | NoticeKind::ScheduledMaintenance));
    if risky && input.replicas.is_empty() {
        let best = input
            .pools
            .iter()
            .filter(safe)
            .filter_map(|p| cost_now(p).map(|c| (c, p)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, p)| p.pool.clone());
        if let Some(target) = best {
            return out(
                Action::CreateReplica {
                    pool: target.clone(),
                },
                0.9,
                format!(
                    "the PRIMARY's pool {} is at risk and there is no REPLICA: one in {target}",
                    primary.pool
                ),
            );
        }
    }
    if input.config.manual_replica {
        return out(
            Action::Stay,
            1.0,
            "manual replica mode never switches".into(),
        );
    }
    let Some(here) = pool(&primary.pool).and_then(|p| cost_now(p).map(|c| (c, p))) else {
        return out(
            Action::NoAction,
            1.0,
            format!("no price for the PRIMARY's pool {}", primary.pool),
        );
    };
    let Some((there, best)) = input
        .pools
        .iter()
        .filter(safe)
        .filter_map(|p| cost_now(p).map(|c| (c, p)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
    else {
        return out(Action::Stay, 1.0, "no other pool is priced and safe".into());
    };
    let saving = 1.0 - there / here.0;
    if saving <= prm.margin {
        return out(
            Action::Stay,
            1.0,
            format!(
                "{} at ${there:.4}/h expected is within {:.0}% of ${:.4}/h here",
                best.pool,
                prm.margin * 100.0,
                here.0
            ),
        );
    }
    // Every one of the last `dwell_hours` hours must show the saving,
    // unless the current pool is spiking.
    let spiking = median(here.1)
        .is_some_and(|m| here.1.price().is_some_and(|now| now > m * prm.spike_factor));
    let dwell = if spiking { 1 } else { prm.dwell_hours };
    let last = here.1.hourly.last().map_or(0, |h| h.hour_ms);
    for k in 0..i64::from(dwell) {
        let h = last - k * 3_600_000;
        let held = match (price_at(here.1, h), price_at(best, h)) {
            (Some(a), Some(b)) => {
                expected(best, b, failover) < expected(here.1, a, failover) * (1.0 - prm.margin)
            }
            _ => false,
        };
        if !held {
            return out(
                Action::Stay,
                0.8,
                format!(
                    "{} is {:.0}% cheaper now but not for the last {} hours",
                    best.pool,
                    saving * 100.0,
                    prm.dwell_hours
                ),
            );
        }
    }
    if input.switches_last_24h >= prm.max_switches_per_day {
        return out(
            Action::Stay,
            1.0,
            format!(
                "{} switches in 24 h already (at most {})",
                input.switches_last_24h, prm.max_switches_per_day
            ),
        );
    }
    let why = if spiking {
        format!(
            "this pool is spiking (above {}x its 7-day median)",
            prm.spike_factor
        )
    } else {
        format!("for {} hours", prm.dwell_hours)
    };
    out(
        Action::Switch {
            pool: best.pool.clone(),
        },
        (saving / (saving + prm.margin)).clamp(0.0, 1.0),
        format!(
            "{} at ${there:.4}/h expected vs ${:.4}/h here: {:.0}% less, {why}",
            best.pool,
            here.0,
            saving * 100.0,
        ),
    )
}
