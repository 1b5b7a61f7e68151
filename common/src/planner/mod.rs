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
//!   old PRIMARY (its agent refuses anything older from then on);
//! * **T2 grant**: only once every fence target (the old PRIMARY, and any
//!   candidate a roll-over gave up on) is *shown* not to serve: its agent
//!   acknowledged the demotion with a successful `demote` hook, or EC2
//!   reports it terminated (STONITH through a `fence` command), or an
//!   operator declared it dead. The clock never grants: silence or a slow
//!   demotion only escalates to the EC2 fence;
//! * **T3 commit**: the candidate confirmed: it becomes PRIMARY. If it
//!   fails or does not confirm within the promotion timeout, the
//!   transition **rolls over**: the candidate becomes a fence target at a
//!   new epoch and the next candidate waits for it to be fenced too.

mod rules;
#[cfg(test)]
mod tests;
mod transition;

pub use rules::RULES;

use crate::command::{CommandState, NoticeKind};
use crate::types::{Phase, Pool, PoolKey, Role};
use std::collections::HashMap;

/// Who makes an EC2 call or runs a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executor {
    Agent(String),
    /// The coordinator's optional EC2 executor (its own tag-scoped role).
    Coordinator,
}

/// What an instance's agent last reported about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reported {
    pub role: Option<Role>,
    pub role_epoch: u64,
    /// Sent after the store gave the instance its current role (an older
    /// report says nothing about the current role).
    pub fresh: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceSnap {
    pub instance_id: String,
    pub role: Role,
    /// Epoch of the store's role (for a PRIMARY: its promotion's).
    pub role_epoch: u64,
    pub instance_type: String,
    pub availability_zone: String,
    pub agent_id: Option<String>,
    pub online: bool,
    pub healthy: bool,
    /// Since its agent was last heard, on the coordinator's monotonic clock
    /// (stalls of the coordinator itself discounted); `None`: not heard
    /// since the coordinator started, or no agent.
    pub silent_ms: Option<i64>,
    /// EC2 (seen by an agent of the group) says shutting-down/terminated.
    pub ec2_gone: bool,
    /// Its last promotion failed within the cool-down: not a candidate.
    pub promote_failed_recently: bool,
    /// LAUNCHING for longer than the launch timeout (never registered).
    pub launch_overdue: bool,
    pub reported: Option<Reported>,
}

impl InstanceSnap {
    pub fn pool(&self) -> PoolKey {
        PoolKey::new(&self.instance_type, &self.availability_zone)
    }

    fn silent_past(&self, ms: i64) -> bool {
        self.silent_ms.is_none_or(|s| s > ms)
    }

    /// Its agent says, freshly, that it is not serving as PRIMARY.
    fn reports_not_primary(&self) -> bool {
        self.reported
            .is_some_and(|r| r.fresh && r.role != Some(Role::Primary))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NoticeSnap {
    pub instance_id: String,
    pub kind: NoticeKind,
    pub effective_at_ms: Option<i64>,
}

/// One instance a transition must fence, and what is known about it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct FenceSnap {
    pub instance_id: String,
    pub epoch: u64,
    /// Shown not to serve: acknowledged demotion (hook succeeded), EC2
    /// terminated, or declared dead by an operator.
    pub fenced: bool,
    /// Its `demote(epoch)`: `None` when none was queued (no agent).
    pub demote: Option<CommandState>,
    /// Fence commands tried so far, and the last one's state and EC2 code.
    pub fence_attempts: u32,
    pub last_fence: Option<CommandState>,
    pub last_fence_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransitionSnap {
    pub phase: Phase,
    pub old: Option<String>,
    pub candidate: String,
    pub epoch: u64,
    /// Time in this phase, on the coordinator's monotonic clock.
    pub phase_age_ms: i64,
    pub targets: Vec<FenceSnap>,
    /// Final state of the candidate's `promote(epoch)`, once it has one.
    pub candidate_outcome: Option<CommandState>,
    /// The candidate's agent reports PRIMARY at this epoch (its result
    /// event may still be on its way).
    pub candidate_reports_primary: bool,
    /// The transition began after this coordinator started and EC2's view
    /// of the group since then is not in: the store grants nothing before
    /// it is (an instance its copy never saw may hold a higher epoch), so
    /// neither does the planner; the coordinator asks the group's agents
    /// for it meanwhile.
    pub ec2_view_pending: bool,
}

impl TransitionSnap {
    fn is_target(&self, instance: &str) -> bool {
        self.targets.iter().any(|t| t.instance_id == instance)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwitchSnap {
    pub id: i64,
    pub pool: Pool,
    /// Request id of the switch's launch, once queued.
    pub launch_request_id: Option<String>,
    /// The instance that launch created, once known.
    pub launched_instance: Option<String>,
    /// The launch command's state, once it has one.
    pub launch_state: Option<CommandState>,
    /// Since the operator asked (wall clock).
    pub age_ms: i64,
}

/// Tunables of the protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    pub rebalance_window_ms: i64,
    /// Lease plus margin: a PRIMARY silent this long is presumed lost and
    /// replaced (fenced through EC2 first).
    pub lease_expiry_ms: i64,
    pub promotion_timeout_ms: i64,
    /// A fence target whose demotion is not acknowledged within this is
    /// fenced through EC2.
    pub demote_timeout_ms: i64,
    /// Fence attempts (transient failures) before the group is blocked
    /// and an operator must decide.
    pub max_fence_attempts: u32,
    /// An instance whose interruption took effect this long ago while its
    /// agent is silent is gone.
    pub notice_grace_ms: i64,
    /// A switch whose new instance is not a healthy REPLICA this long
    /// after it was asked for fails (the old PRIMARY stays).
    pub switch_timeout_ms: i64,
    /// A PRIMARY with scheduled maintenance is switched to a REPLICA this
    /// long before the maintenance's NotBefore.
    pub maintenance_lead_ms: i64,
}

impl PlanConfig {
    /// The coordinator's defaults (a 15 s lease plus margin).
    pub const DEFAULT: PlanConfig = PlanConfig {
        rebalance_window_ms: 600_000,
        lease_expiry_ms: 21_000,
        promotion_timeout_ms: 30_000,
        demote_timeout_ms: 15_000,
        max_fence_attempts: 3,
        notice_grace_ms: 10_000,
        switch_timeout_ms: 360_000,
        maintenance_lead_ms: 600_000,
    };
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig::DEFAULT
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
    /// The PRIMARY's address cannot leave this zone (a secondary ENI):
    /// candidates and launches only here.
    pub pinned_zone: Option<String>,
    /// The zone the group's data volumes are in (when it has any and the
    /// store knows): candidates and launches there first.
    pub volume_zone: Option<String>,
    /// What moving the data volumes adds to a promote (its confirmation
    /// is awaited that much longer): `GroupConfig::volume_handover_ms`.
    pub handover_ms: i64,
    /// A snapshot of every data volume exists: a PRIMARY in another zone
    /// gets volumes restored from them (losing at most the interval).
    /// Without one, only the volumes' zone can hold the PRIMARY.
    pub volumes_restorable: bool,
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
    /// The coordinator can make EC2 calls itself (its executor is on).
    pub coordinator_executor: bool,
    /// The group has had an instance (a brand-new group waits for its
    /// first, started by the operator).
    pub had_instances: bool,
    /// ZOMBIE and FAILED instances past their retention that EC2 does not
    /// report gone: to terminate.
    pub expired: Vec<String>,
    /// TERMINATED instances EC2 still runs, whose termination ended
    /// without effect (its agent went away, EC2 refused): to terminate
    /// again (a few attempts at most).
    pub unterminated: Vec<String>,
}

impl GroupSnap {
    pub fn instance(&self, id: &str) -> Option<&InstanceSnap> {
        self.instances.iter().find(|i| i.instance_id == id)
    }

    /// Whether `zone` may hold the PRIMARY (see `pinned_zone`).
    pub fn in_pinned_zone(&self, zone: &str) -> bool {
        self.pinned_zone.as_deref().is_none_or(|z| z == zone)
    }

    /// How `zone` suits the data volumes: 0 their zone (or no volumes),
    /// 1 another zone they can be restored into from snapshots, 2 a zone
    /// the PRIMARY cannot be in (no snapshot yet).
    pub fn volume_rank(&self, zone: &str) -> u8 {
        match &self.volume_zone {
            None => 0,
            Some(z) if z == zone => 0,
            Some(_) if self.volumes_restorable => 1,
            Some(_) => 2,
        }
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

    /// The earliest scheduled maintenance of `id` still to come (the
    /// snapshot leaves out maintenance long past); an unknown time sorts
    /// first (imminent).
    pub fn maintenance(&self, id: &str) -> Option<&NoticeSnap> {
        self.notices
            .iter()
            .filter(|n| n.instance_id == id && n.kind == NoticeKind::ScheduledMaintenance)
            .min_by_key(|n| n.effective_at_ms.unwrap_or(i64::MIN))
    }
}

/// One thing the coordinator must do, as one store transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// T1 (granted at once when there is nothing to fence).
    Replace {
        old: Option<String>,
        candidate: String,
        expected_epoch: u64,
        emergency: bool,
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
    /// STONITH a fence target through EC2.
    Fence {
        expected_epoch: u64,
        instance_id: String,
        /// The epoch of the target's demotion.
        epoch: u64,
        attempt: u32,
        via: Executor,
        reason: &'static str,
    },
    Launch {
        via: Executor,
        pool: Pool,
        emergency: bool,
        /// The manual switch this launch serves.
        switch_id: Option<i64>,
        reason: &'static str,
    },
    /// Terminate a REPLICA (manual replica: extras).
    Retire { instance_id: String, via: Executor },
    /// EC2 says the instance is gone.
    Gone {
        instance_id: String,
        reason: &'static str,
    },
    /// A launched instance never registered: FAILED.
    LaunchFailed { instance_id: String },
    /// Terminate again an instance whose termination ended without effect.
    Terminate { instance_id: String, via: Executor },
    /// A manual switch cannot finish: it fails, the PRIMARY stays.
    SwitchFailed {
        switch_id: i64,
        reason: &'static str,
    },
}

/// What `plan` decided, and which rule decided it (for logs).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub rule: &'static str,
    pub steps: Vec<Step>,
    /// The group cannot go on without an operator (fencing impossible):
    /// why. An alert fires on it.
    pub blocked: Option<String>,
}

/// A rule's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub steps: Vec<Step>,
    pub blocked: Option<String>,
}

impl From<Vec<Step>> for Decision {
    fn from(steps: Vec<Step>) -> Decision {
        Decision {
            steps,
            blocked: None,
        }
    }
}

/// Ask the rules in priority order; the first that applies decides.
pub fn plan(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Plan {
    for (rule, f) in RULES {
        if let Some(d) = f(snap, now_ms, cfg) {
            return Plan {
                rule,
                steps: d.steps,
                blocked: d.blocked,
            };
        }
    }
    Plan {
        rule: "healthy",
        steps: Vec::new(),
        blocked: None,
    }
}

/// Who should make a call for the group: `prefer`'s agent when online,
/// else any online agent not in `exclude`, else the coordinator's executor
/// when it is on.
pub fn executor(
    snap: &GroupSnap,
    prefer: Option<&InstanceSnap>,
    exclude: &[&str],
) -> Option<Executor> {
    let usable = |i: &&InstanceSnap| {
        i.online
            && !i.ec2_gone
            && !exclude.contains(&i.instance_id.as_str())
            && matches!(i.role, Role::Primary | Role::Replica)
    };
    prefer
        .filter(usable)
        .or_else(|| {
            let mut live: Vec<&InstanceSnap> = snap.instances.iter().filter(usable).collect();
            live.sort_by_key(|i| (i.role != Role::Primary, i.silent_ms.unwrap_or(i64::MAX)));
            live.into_iter().next()
        })
        .and_then(|i| i.agent_id.clone().map(Executor::Agent))
        .or_else(|| snap.coordinator_executor.then_some(Executor::Coordinator))
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
/// configured order; not `avoid` (the interrupted pool) nor a pool whose
/// launch failed recently for want of capacity, unless nothing else is
/// left: a launch there may still work, and no launch at all leaves the
/// group without a PRIMARY (a group pinned to one zone by its ENI may
/// have only two pools). The zone constraints (ENI, data volumes) hold
/// always.
pub fn launch_pools(snap: &GroupSnap, avoid: Option<&PoolKey>) -> Vec<Pool> {
    let allowed = |p: &&Pool| {
        snap.in_pinned_zone(&p.availability_zone) && snap.volume_rank(&p.availability_zone) < 2
    };
    let preferred = |p: &&Pool| {
        avoid.is_none_or(|a| !a.matches(p)) && !snap.failed_pools.iter().any(|k| k.matches(p))
    };
    let mut pools: Vec<(usize, &Pool)> = snap
        .pools
        .iter()
        .enumerate()
        .filter(|(_, p)| allowed(p) && preferred(p))
        .collect();
    if pools.is_empty() {
        pools = snap
            .pools
            .iter()
            .enumerate()
            .filter(|(_, p)| allowed(p))
            .collect();
    }
    let boot = |p: &Pool| snap.boot_secs.get(&p.key()).copied();
    let zone = |p: &Pool| snap.volume_rank(&p.availability_zone);
    // The data volumes' zone first (no restore, no data lost), then the
    // fastest boot.
    pools.sort_by(|(ia, a), (ib, b)| {
        zone(a).cmp(&zone(b)).then(match (boot(a), boot(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y).then(ia.cmp(ib)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => ia.cmp(ib),
        })
    });
    pools.into_iter().map(|(_, p)| p.clone()).collect()
}

/// An emergency launch for a group that needs an instance, away from
/// `avoid`, unless one is on its way or nobody can launch.
fn emergency_launch(
    snap: &GroupSnap,
    prefer: Option<&InstanceSnap>,
    avoid: Option<&PoolKey>,
    reason: &'static str,
) -> Vec<Step> {
    if snap.launches_in_flight > 0 || snap.instances.iter().any(|i| i.role == Role::Launching) {
        return Vec::new();
    }
    match (
        executor(snap, prefer, &[]),
        launch_pools(snap, avoid).into_iter().next(),
    ) {
        (Some(via), Some(pool)) => vec![Step::Launch {
            via,
            pool,
            emergency: true,
            switch_id: None,
            reason,
        }],
        _ => Vec::new(),
    }
}

/// Online, healthy REPLICAs without an interruption notice, a recently
/// failed promotion or a pending fence, least correlated with `primary`
/// first, then the most recent heartbeat.
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
        // Its agent says, since the store gave it its role, that it is no
        // REPLICA any more (a store restored from a copy older than a
        // failed promotion): it would refuse the promote, and as a ZOMBIE
        // it reports nothing of EC2 a restored store may be waiting for.
        .filter(|i| {
            !i.reported.as_ref().is_some_and(|r| {
                r.fresh && matches!(r.role, Some(Role::Zombie | Role::Failed | Role::Terminated))
            })
        })
        .filter(|i| snap.in_pinned_zone(&i.availability_zone))
        .filter(|i| snap.volume_rank(&i.availability_zone) < 2)
        // A replica with its own interruption notice is no refuge.
        .filter(|i| snap.interruption(&i.instance_id).is_none())
        // A candidate a roll-over gave up on is fenced, not promoted.
        .filter(|i| {
            snap.transition
                .as_ref()
                .is_none_or(|t| !t.is_target(&i.instance_id))
        })
        .collect();
    // A replica with maintenance coming is still a refuge in an
    // emergency, but the last one chosen.
    c.sort_by(|a, b| {
        let due = |i: &InstanceSnap| snap.maintenance(&i.instance_id).is_some();
        let volumes = |i: &InstanceSnap| snap.volume_rank(&i.availability_zone);
        volumes(a)
            .cmp(&volumes(b))
            .then(due(a).cmp(&due(b)))
            .then(correlation(a, zone, itype).cmp(&correlation(b, zone, itype)))
            .then(a.silent_ms.cmp(&b.silent_ms))
            .then(a.instance_id.cmp(&b.instance_id))
    });
    c
}
