//! The decision engine's interface: what a model is told about one group
//! (`DecisionInput`) and what it answers (`DecisionOutput`), as versioned
//! JSON (docs/decision-schema.json), and the checks every answer passes
//! before anyone acts on it. The built-in model lives in [`builtin`].
//!
//! Prices are US dollars per instance-hour; times are unix milliseconds.

pub mod backtest;
pub mod builtin;

use crate::types::{Pool, PoolKey};
use crate::vocab::{DecisionMode, ModelChoice, NoticeKind};
use serde::{Deserialize, Serialize};

/// Version of the input and output schema; a model answers for the
/// version it was given.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything a model is told about one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionInput {
    pub version: u32,
    pub group: String,
    pub now_ms: i64,
    pub config: GroupFeatures,
    pub primary: Option<Member>,
    pub replicas: Vec<Member>,
    /// Every candidate pool of the group, with its evidence.
    pub pools: Vec<PoolFeatures>,
    /// Switches the group made in the last 24 hours.
    pub switches_last_24h: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFeatures {
    pub mode: DecisionMode,
    pub manual_replica: bool,
    pub auto_terminate: bool,
    /// The group's candidate pools, in the operator's order.
    pub pools: Vec<PoolKey>,
    /// The zone of the group's EBS data volumes, when it has any: a move
    /// elsewhere restores them from a snapshot, losing up to `rpo_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_zone: Option<String>,
    /// Seconds of writes a failover outside `volume_zone` would lose now
    /// (since the latest snapshot); absent without volumes or snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_s: Option<u64>,
}

/// The PRIMARY or a REPLICA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub instance_id: String,
    pub pool: PoolKey,
    pub uptime_s: u64,
    /// Its pool's latest hourly price.
    pub price: Option<f64>,
    /// Its price minus the cheapest candidate pool's (>= 0).
    pub cost_delta_to_cheapest: Option<f64>,
    pub on_demand_price: Option<f64>,
    /// Notices it has seen and still carries.
    pub notices: Vec<NoticeKind>,
}

/// One candidate pool: its price history and this fleet's own evidence of
/// its risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFeatures {
    pub pool: PoolKey,
    /// The canonical hourly series of the last 7 days, oldest first.
    pub hourly: Vec<HourPrice>,
    /// Interruption notices per instance-hour spent in the pool, last 30 days.
    pub interruptions_per_instance_hour: f64,
    /// Rebalance recommendations per instance-hour, last 30 days.
    pub rebalances_per_instance_hour: f64,
    /// Launches into the pool that failed (no capacity...), last 30 days.
    pub failed_launches: u32,
    /// Observed launch-to-healthy seconds.
    pub boot_s: Option<f64>,
    /// The last interruption notice seen in the pool.
    pub last_interruption_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourPrice {
    pub hour_ms: i64,
    pub price: f64,
    /// Filled in between two real points, not observed.
    pub interpolated: bool,
}

impl PoolFeatures {
    /// The latest hourly price.
    pub fn price(&self) -> Option<f64> {
        self.hourly.last().map(|h| h.price)
    }
}

/// What a model advises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// The PRIMARY is where it should be.
    Stay,
    /// Move the PRIMARY to `pool` (through the switch flow).
    Switch { pool: PoolKey },
    /// Launch a REPLICA in `pool`.
    CreateReplica { pool: PoolKey },
    /// Nothing to decide now (no PRIMARY, no prices...).
    NoAction,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Stay => "STAY",
            Action::Switch { .. } => "SWITCH",
            Action::CreateReplica { .. } => "CREATE_REPLICA",
            Action::NoAction => "NO_ACTION",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

/// A model's answer (extra fields are ignored: `serde(flatten)` and
/// `deny_unknown_fields` do not mix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionOutput {
    #[serde(flatten)]
    pub action: Action,
    /// In [0, 1].
    pub confidence: f64,
    pub reason: String,
    pub model: ModelId,
}

/// Why an answer is not acted on (it is logged with the raw answer,
/// counted, and taken as NO_ACTION).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("confidence {0} is outside [0, 1]")]
    Confidence(f64),
    #[error("pool {0} is not one of the group's pools")]
    PoolOutsideGroup(PoolKey),
    #[error("SWITCH in a manual-replica group (the modes exclude each other)")]
    SwitchInManualReplica,
    #[error("SWITCH without a PRIMARY")]
    SwitchWithoutPrimary,
    #[error("SWITCH to the pool the PRIMARY is in")]
    SwitchToCurrentPool,
    #[error("reason is empty or longer than 1,000 characters")]
    Reason,
}

/// Check an answer against what the model was told.
pub fn validate(input: &DecisionInput, out: &DecisionOutput) -> Result<(), Invalid> {
    if !(0.0..=1.0).contains(&out.confidence) {
        return Err(Invalid::Confidence(out.confidence));
    }
    if out.reason.trim().is_empty() || out.reason.len() > 1000 {
        return Err(Invalid::Reason);
    }
    let in_group = |p: &PoolKey| {
        if input.config.pools.contains(p) {
            Ok(())
        } else {
            Err(Invalid::PoolOutsideGroup(p.clone()))
        }
    };
    match &out.action {
        Action::Switch { pool } => {
            in_group(pool)?;
            if input.config.manual_replica {
                return Err(Invalid::SwitchInManualReplica);
            }
            let p = input
                .primary
                .as_ref()
                .ok_or(Invalid::SwitchWithoutPrimary)?;
            if &p.pool == pool {
                return Err(Invalid::SwitchToCurrentPool);
            }
            Ok(())
        }
        Action::CreateReplica { pool } => in_group(pool),
        Action::Stay | Action::NoAction => Ok(()),
    }
}

/// Which model decides for `group`: its configured choice, else the
/// external model for a stable `split` share of groups (by a hash of the
/// name, so a group keeps its model across restarts), else the
/// built-in one. Without an external model, always the built-in one.
pub fn assign(group: &str, chosen: Option<ModelChoice>, external: bool, split: f64) -> ModelChoice {
    if !external {
        return ModelChoice::Builtin;
    }
    if let Some(c) = chosen {
        return c;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's high bits follow short names too closely: mix them (the
    // MurmurHash3 finaliser), then take the top 53 bits as a fraction.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let share = (h >> 11) as f64 / (1u64 << 53) as f64;
    if share < split {
        ModelChoice::External
    } else {
        ModelChoice::Builtin
    }
}

/// A group's pool as the switch flow takes it (with the operator's subnet).
pub fn group_pool<'a>(pools: &'a [Pool], key: &PoolKey) -> Option<&'a Pool> {
    pools.iter().find(|p| &p.key() == key)
}

#[cfg(test)]
mod tests;
