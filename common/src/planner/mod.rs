//! Failover planning: given a snapshot of one group, what the coordinator
//! must do now. Pure, so every rule is a unit test; the coordinator's
//! reconciler takes the snapshot from its store, applies the steps (each
//! one epoch-fenced store transaction) and runs again on the next event or
//! tick. See docs/STATE_MACHINE.md for the protocol.
//!
//! `plan` asks the rules of `rules::RULES` in priority order; the first
//! rule that applies decides (possibly "nothing now"), the rest are not
//! asked. Replacing a PRIMARY is a transition in three steps:
//! * **T1 replace**: the epoch goes to e+1 and `demote(e+1)` is queued to the
//!   old PRIMARY (fencing it: its agent refuses anything older);
//! * **T2 grant**: only once the old PRIMARY is fenced; the old PRIMARY
//!   becomes ZOMBIE and `promote(e+1)` goes to the candidate;
//! * **T3 commit**: the candidate confirmed: it becomes PRIMARY. If it
//!   fails or does not confirm within the promotion timeout, the
//!   transition **rolls over** to the next candidate.

mod rules;
#[cfg(test)]
mod tests;

pub use rules::RULES;

use crate::command::{CommandState, NoticeKind};
use crate::types::{Phase, Pool, PoolKey, Role};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceSnap {
    pub instance_id: String,
    pub role: Role,
    pub instance_type: String,
    pub availability_zone: String,
    pub agent_id: Option<String>,
    pub online: bool,
    pub healthy: bool,
    pub last_heartbeat_ms: Option<i64>,
    /// EC2 (seen by an agent of the group) says shutting-down/terminated.
    pub ec2_gone: bool,
    /// Its last promotion failed within the cool-down: not a candidate.
    pub promote_failed_recently: bool,
    /// LAUNCHING for longer than the launch timeout (never registered).
    pub launch_overdue: bool,
}

impl InstanceSnap {
    pub fn pool(&self) -> PoolKey {
        PoolKey::new(&self.instance_type, &self.availability_zone)
    }

    fn silent_for(&self, now_ms: i64) -> i64 {
        self.last_heartbeat_ms.map_or(i64::MAX, |t| now_ms - t)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NoticeSnap {
    pub instance_id: String,
    pub kind: NoticeKind,
    pub effective_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransitionSnap {
    pub phase: Phase,
    pub old: Option<String>,
    pub candidate: String,
    pub epoch: u64,
    pub phase_started_ms: i64,
    /// The old PRIMARY's agent acknowledged `demote(epoch)` or demoted
    /// itself when its lease ran out.
    pub old_fenced: bool,
    /// Final state of the candidate's `promote(epoch)`, once it has one.
    pub candidate_outcome: Option<CommandState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwitchSnap {
    pub id: i64,
    pub pool: Pool,
    /// Request id of the switch's launch, once queued.
    pub launch_request_id: Option<String>,
    /// The instance that launch created, once known.
    pub launched_instance: Option<String>,
}

/// Tunables of the protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    pub rebalance_window_ms: i64,
    /// Lease plus margin: a PRIMARY silent this long has demoted itself.
    pub lease_expiry_ms: i64,
    pub promotion_timeout_ms: i64,
    /// An instance whose interruption took effect this long ago while its
    /// agent is silent is gone.
    pub notice_grace_ms: i64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            rebalance_window_ms: 600_000,
            lease_expiry_ms: 20_000,
            promotion_timeout_ms: 30_000,
            notice_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupSnap {
    pub name: String,
    pub epoch: u64,
    /// The operator paused automation for this group.
    pub paused: bool,
    pub manual_replica: bool,
    pub pools: Vec<Pool>,
    pub instances: Vec<InstanceSnap>,
    /// Notices of the group's live instances.
    pub notices: Vec<NoticeSnap>,
    pub transition: Option<TransitionSnap>,
    pub switch: Option<SwitchSnap>,
    /// Launches queued, running, or done but not yet registered.
    pub launches_in_flight: usize,
    pub last_proactive_launch_ms: Option<i64>,
    /// Observed launch -> registered-healthy seconds, per pool.
    pub boot_secs: HashMap<PoolKey, f64>,
    /// Pools whose last launch failed recently (e.g. no capacity): avoided.
    pub failed_pools: Vec<PoolKey>,
}

impl GroupSnap {
    pub fn instance(&self, id: &str) -> Option<&InstanceSnap> {
        self.instances.iter().find(|i| i.instance_id == id)
    }

    pub fn primary(&self) -> Option<&InstanceSnap> {
        self.instances.iter().find(|i| i.role == Role::Primary)
    }

    /// The interruption notice of `id`, if it has one.
    pub fn interruption(&self, id: &str) -> Option<&NoticeSnap> {
        self.notices
            .iter()
            .find(|n| n.instance_id == id && n.kind == NoticeKind::Interruption)
    }
}

/// One thing the coordinator must do, as one store transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// T1. `old_fenced`: the old PRIMARY is already gone or silent past
    /// its lease, so the store grants at once.
    Replace {
        old: Option<String>,
        candidate: String,
        expected_epoch: u64,
        emergency: bool,
        old_fenced: bool,
        /// Unix ms; `None`: the default deadline.
        deadline_ms: Option<i64>,
        /// The manual switch this replacement completes.
        switch_id: Option<i64>,
        reason: &'static str,
    },
    /// T2.
    Grant {
        expected_epoch: u64,
        reason: &'static str,
    },
    /// T3.
    Commit { expected_epoch: u64 },
    RollOver {
        expected_epoch: u64,
        reason: &'static str,
    },
    /// Point a waiting transition at another candidate.
    Retarget {
        expected_epoch: u64,
        candidate: String,
    },
    Launch {
        via_agent: String,
        pool: Pool,
        emergency: bool,
        /// The manual switch this launch serves.
        switch_id: Option<i64>,
        reason: &'static str,
    },
    /// Terminate a REPLICA (manual replica: extras).
    Retire {
        instance_id: String,
        via_agent: String,
    },
    /// EC2 says the instance is gone.
    Gone {
        instance_id: String,
        reason: &'static str,
    },
    /// A launched instance never registered: FAILED.
    LaunchFailed { instance_id: String },
}

/// What `plan` decided, and which rule decided it (for logs).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub rule: &'static str,
    pub steps: Vec<Step>,
}

/// Ask the rules in priority order; the first that applies decides.
pub fn plan(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Plan {
    for (rule, f) in RULES {
        if let Some(steps) = f(snap, now_ms, cfg) {
            return Plan { rule, steps };
        }
    }
    Plan {
        rule: "healthy",
        steps: Vec::new(),
    }
}

/// 0: another zone, 1: same zone other type, 2: same pool.
fn correlation(a: &InstanceSnap, zone: &str, itype: &str) -> u8 {
    if a.availability_zone != zone {
        0
    } else if a.instance_type != itype {
        1
    } else {
        2
    }
}

/// Pools to launch into, best first: fastest observed boot, then the
/// configured order; never `avoid` (the interrupted pool), never a pool
/// whose launch failed recently.
pub fn launch_pools(snap: &GroupSnap, avoid: Option<&PoolKey>) -> Vec<Pool> {
    let mut pools: Vec<(usize, &Pool)> = snap
        .pools
        .iter()
        .enumerate()
        .filter(|(_, p)| avoid.is_none_or(|a| !a.matches(p)))
        .filter(|(_, p)| !snap.failed_pools.iter().any(|k| k.matches(p)))
        .collect();
    let boot = |p: &Pool| snap.boot_secs.get(&p.key()).copied();
    pools.sort_by(|(ia, a), (ib, b)| match (boot(a), boot(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y).then(ia.cmp(ib)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => ia.cmp(ib),
    });
    pools.into_iter().map(|(_, p)| p.clone()).collect()
}

/// Online, healthy REPLICAs without an interruption notice or a recently
/// failed promotion, least correlated with `primary` first, then the most
/// recent heartbeat.
pub fn candidates<'a>(
    snap: &'a GroupSnap,
    primary: Option<&InstanceSnap>,
) -> Vec<&'a InstanceSnap> {
    let (zone, itype) = primary
        .map(|p| (p.availability_zone.as_str(), p.instance_type.as_str()))
        .unwrap_or(("", ""));
    let mut c: Vec<&InstanceSnap> = snap
        .instances
        .iter()
        .filter(|i| i.role == Role::Replica && i.online && i.healthy && !i.ec2_gone)
        .filter(|i| !i.promote_failed_recently)
        // A replica with its own interruption notice is no refuge.
        .filter(|i| snap.interruption(&i.instance_id).is_none())
        .collect();
    c.sort_by(|a, b| {
        correlation(a, zone, itype)
            .cmp(&correlation(b, zone, itype))
            .then(b.last_heartbeat_ms.cmp(&a.last_heartbeat_ms))
            .then(a.instance_id.cmp(&b.instance_id))
    });
    c
}
