//! Failover planning: given a snapshot of one group, what the coordinator
//! must do now. Pure, so every rule is a unit test; the coordinator's
//! reconciler takes the snapshot from its store, applies the actions (each
//! one epoch-fenced store transaction) and runs again on the next event or
//! tick. See docs/STATE_MACHINE.md for the protocol.
//!
//! Replacing a PRIMARY is a transition in three steps:
//! * **T1 replace**: the epoch goes to e+1 and `demote(e+1)` is queued to the
//!   old PRIMARY (fencing it: its agent refuses anything older);
//! * **T2 grant**: only once the old PRIMARY acknowledged its demotion, or
//!   EC2 shows it gone, or its lease plus a margin has expired: the old
//!   PRIMARY becomes ZOMBIE and `promote(e+1)` goes to the candidate;
//! * **T3 commit**: the candidate confirmed: it becomes PRIMARY. If it
//!   fails or does not confirm within the promotion timeout, the
//!   transition **rolls over**: epoch e+2, `demote(e+2)` to the candidate
//!   (it may have half-promoted), and the next pass picks the next one.
//!
//! Candidates are online, healthy REPLICAs without an interruption notice
//! or a recently failed promotion, ordered by the pool least correlated
//! with the PRIMARY's (another zone before another type in the same zone
//! before the same pool), then by the most recent heartbeat.

use crate::types::{NoticeKind, Pool, Role};
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

#[derive(Debug, Clone, PartialEq)]
pub struct NoticeSnap {
    pub instance_id: String,
    pub kind: NoticeKind,
    pub effective_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// T1 done: waiting for the old PRIMARY to be fenced.
    Demoting,
    /// T2 done: waiting for the candidate to confirm.
    Promoting,
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
    /// Outcome of the candidate's `promote(epoch)`: `done`, `failed`, ...
    pub candidate_outcome: Option<String>,
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
    /// Observed launch -> registered-healthy seconds, per pool (type, zone).
    pub boot_secs: HashMap<(String, String), f64>,
    /// Pools whose last launch failed recently (e.g. no capacity): avoided.
    pub failed_pools: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
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
        /// Fixed request id (switch launches), else generated.
        request_id: Option<String>,
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
/// configured order; never `avoid` (the interrupted pool).
pub fn launch_pools(snap: &GroupSnap, avoid: Option<(&str, &str)>) -> Vec<Pool> {
    let mut pools: Vec<(usize, &Pool)> = snap
        .pools
        .iter()
        .enumerate()
        .filter(|(_, p)| avoid != Some((p.instance_type.as_str(), p.availability_zone.as_str())))
        .filter(|(_, p)| {
            !snap
                .failed_pools
                .iter()
                .any(|(t, z)| *t == p.instance_type && *z == p.availability_zone)
        })
        .collect();
    let boot = |p: &Pool| {
        snap.boot_secs
            .get(&(p.instance_type.clone(), p.availability_zone.clone()))
            .copied()
    };
    pools.sort_by(|(ia, a), (ib, b)| match (boot(a), boot(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y).then(ia.cmp(ib)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => ia.cmp(ib),
    });
    pools.into_iter().map(|(_, p)| p.clone()).collect()
}

fn interrupted<'a>(snap: &'a GroupSnap, id: &str) -> Option<&'a NoticeSnap> {
    snap.notices
        .iter()
        .find(|n| n.instance_id == id && n.kind == NoticeKind::Interruption)
}

fn silent_for(i: &InstanceSnap, now_ms: i64) -> i64 {
    i.last_heartbeat_ms.map_or(i64::MAX, |t| now_ms - t)
}

fn candidates<'a>(snap: &'a GroupSnap, primary: Option<&InstanceSnap>) -> Vec<&'a InstanceSnap> {
    let (zone, itype) = primary
        .map(|p| (p.availability_zone.as_str(), p.instance_type.as_str()))
        .unwrap_or(("", ""));
    let mut c: Vec<&InstanceSnap> = snap
        .instances
        .iter()
        .filter(|i| i.role == Role::Replica && i.online && i.healthy && !i.ec2_gone)
        .filter(|i| !i.promote_failed_recently)
        // A replica with its own interruption notice is no refuge.
        .filter(|i| interrupted(snap, &i.instance_id).is_none())
        .collect();
    c.sort_by(|a, b| {
        correlation(a, zone, itype)
            .cmp(&correlation(b, zone, itype))
            .then(b.last_heartbeat_ms.cmp(&a.last_heartbeat_ms))
            .then(a.instance_id.cmp(&b.instance_id))
    });
    c
}

pub fn plan(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Vec<Action> {
    // Paused: no decision of our own, but a promotion an operator started
    // is carried through.
    if snap.paused {
        return match &snap.transition {
            Some(t) => plan_transition(snap, t, now_ms, cfg),
            None => Vec::new(),
        };
    }
    // Instances EC2 has taken away, or whose interruption took effect while
    // their agent fell silent.
    let gone: Vec<Action> = snap
        .instances
        .iter()
        .filter(|i| {
            i.ec2_gone
                || (!i.online
                    && interrupted(snap, &i.instance_id)
                        .and_then(|n| n.effective_at_ms)
                        .is_some_and(|t| now_ms > t + cfg.notice_grace_ms))
        })
        // The old PRIMARY of a transition is settled by the transition.
        .filter(|i| {
            snap.transition.as_ref().is_none_or(|t| {
                t.old.as_deref() != Some(&i.instance_id) && t.candidate != i.instance_id
            })
        })
        .filter(|i| i.role != Role::Primary)
        .map(|i| Action::Gone {
            instance_id: i.instance_id.clone(),
            reason: if i.ec2_gone {
                "EC2 shows it shutting down or terminated"
            } else {
                "silent past its interruption time"
            },
        })
        .collect();
    if !gone.is_empty() {
        return gone;
    }
    let overdue: Vec<Action> = snap
        .instances
        .iter()
        .filter(|i| i.role == Role::Launching && i.launch_overdue)
        .map(|i| Action::LaunchFailed {
            instance_id: i.instance_id.clone(),
        })
        .collect();
    if !overdue.is_empty() {
        return overdue;
    }
    let primary = snap.instances.iter().find(|i| i.role == Role::Primary);
    if let Some(t) = &snap.transition {
        return plan_transition(snap, t, now_ms, cfg);
    }
    let cands = candidates(snap, primary);
    let Some(p) = primary else {
        if let Some(c) = cands.first() {
            return vec![Action::Replace {
                old: None,
                candidate: c.instance_id.clone(),
                expected_epoch: snap.epoch,
                emergency: false,
                old_fenced: true,
                deadline_ms: None,
                switch_id: None,
                reason: "group has no PRIMARY",
            }];
        }
        // No PRIMARY and nobody to promote (every candidate failed, or the
        // last one was taken away): launch one through any live agent of
        // the group, away from the interrupted pool. A group that never
        // had an instance (no agent) waits for its first.
        let launching = snap.instances.iter().any(|i| i.role == Role::Launching);
        let via = snap
            .instances
            .iter()
            .filter(|i| i.online)
            .find_map(|i| i.agent_id.clone());
        let avoid = snap
            .notices
            .iter()
            .filter(|n| n.kind == NoticeKind::Interruption)
            .find_map(|n| {
                snap.instances
                    .iter()
                    .find(|i| i.instance_id == n.instance_id)
            })
            .map(|i| (i.instance_type.as_str(), i.availability_zone.as_str()));
        if !launching
            && snap.launches_in_flight == 0
            && let (Some(agent), Some(pool)) = (via, launch_pools(snap, avoid).into_iter().next())
        {
            return vec![Action::Launch {
                via_agent: agent,
                pool,
                emergency: true,
                request_id: None,
                reason: "no PRIMARY and no candidate left",
            }];
        }
        return Vec::new();
    };
    let (zone, itype) = (p.availability_zone.as_str(), p.instance_type.as_str());
    let p_fenced = p.ec2_gone || silent_for(p, now_ms) > cfg.lease_expiry_ms;
    if let Some(n) = interrupted(snap, &p.instance_id) {
        if let Some(c) = cands.first() {
            return vec![Action::Replace {
                old: Some(p.instance_id.clone()),
                candidate: c.instance_id.clone(),
                expected_epoch: snap.epoch,
                emergency: true,
                old_fenced: p_fenced,
                deadline_ms: n.effective_at_ms,
                switch_id: None,
                reason: "interruption notice on the PRIMARY",
            }];
        }
        if snap.launches_in_flight == 0
            && let (Some(agent), Some(pool)) = (
                p.agent_id.clone(),
                launch_pools(snap, Some((itype, zone))).into_iter().next(),
            )
        {
            return vec![Action::Launch {
                via_agent: agent,
                pool,
                emergency: true,
                request_id: None,
                reason: "interruption notice on the PRIMARY and no REPLICA",
            }];
        }
        return Vec::new();
    }
    if p_fenced && let Some(c) = cands.first() {
        return vec![Action::Replace {
            old: Some(p.instance_id.clone()),
            candidate: c.instance_id.clone(),
            expected_epoch: snap.epoch,
            emergency: true,
            old_fenced: true,
            deadline_ms: None,
            switch_id: None,
            reason: "PRIMARY silent past its lease (or gone)",
        }];
    }
    if let Some(sw) = &snap.switch {
        return plan_switch(snap, sw, p);
    }
    let replicas: Vec<&InstanceSnap> = snap
        .instances
        .iter()
        .filter(|i| matches!(i.role, Role::Replica | Role::Launching))
        .collect();
    if snap.manual_replica {
        if replicas.is_empty() && snap.launches_in_flight == 0 {
            if let (Some(agent), Some(pool)) = (
                p.agent_id.clone(),
                launch_pools(snap, Some((itype, zone))).into_iter().next(),
            ) {
                return vec![Action::Launch {
                    via_agent: agent,
                    pool,
                    emergency: false,
                    request_id: None,
                    reason: "manual replica mode: no REPLICA",
                }];
            }
        } else if replicas.len() > 1
            && let Some(agent) = p.agent_id.clone()
        {
            // Keep the best candidate, retire the rest.
            let keep = candidates(snap, Some(p))
                .first()
                .map(|c| c.instance_id.clone())
                .or_else(|| replicas.first().map(|r| r.instance_id.clone()));
            return replicas
                .iter()
                .filter(|r| Some(&r.instance_id) != keep.as_ref() && r.role == Role::Replica)
                .map(|r| Action::Retire {
                    instance_id: r.instance_id.clone(),
                    via_agent: agent.clone(),
                })
                .collect();
        }
        return Vec::new();
    }
    let rebalance = snap
        .notices
        .iter()
        .any(|n| n.instance_id == p.instance_id && n.kind == NoticeKind::Rebalance);
    if rebalance
        && replicas.is_empty()
        && snap.launches_in_flight == 0
        && snap
            .last_proactive_launch_ms
            .is_none_or(|t| now_ms - t >= cfg.rebalance_window_ms)
        && let (Some(agent), Some(pool)) = (
            p.agent_id.clone(),
            launch_pools(snap, Some((itype, zone))).into_iter().next(),
        )
    {
        return vec![Action::Launch {
            via_agent: agent,
            pool,
            emergency: false,
            request_id: None,
            reason: "rebalance recommendation on the PRIMARY and no REPLICA",
        }];
    }
    Vec::new()
}

fn plan_transition(
    snap: &GroupSnap,
    t: &TransitionSnap,
    now_ms: i64,
    cfg: &PlanConfig,
) -> Vec<Action> {
    let e = snap.epoch;
    match t.phase {
        Phase::Demoting => {
            let old = t
                .old
                .as_ref()
                .and_then(|o| snap.instances.iter().find(|i| &i.instance_id == o));
            let fenced = t.old_fenced
                || old.is_none_or(|o| o.ec2_gone || silent_for(o, now_ms) > cfg.lease_expiry_ms);
            let cand_ok = snap.instances.iter().any(|i| {
                i.instance_id == t.candidate
                    && i.role == Role::Replica
                    && i.online
                    && i.healthy
                    && !i.ec2_gone
            });
            if !cand_ok
                && let Some(c) = candidates(snap, old)
                    .into_iter()
                    .find(|c| c.instance_id != t.candidate)
            {
                return vec![Action::Retarget {
                    expected_epoch: e,
                    candidate: c.instance_id.clone(),
                }];
            }
            if fenced && cand_ok {
                return vec![Action::Grant {
                    expected_epoch: e,
                    reason: if t.old_fenced {
                        "old PRIMARY acknowledged its demotion"
                    } else {
                        "old PRIMARY gone or past its lease"
                    },
                }];
            }
            Vec::new()
        }
        Phase::Promoting => match t.candidate_outcome.as_deref() {
            Some("done") => vec![Action::Commit { expected_epoch: e }],
            Some(_) => vec![Action::RollOver {
                expected_epoch: e,
                reason: "the candidate's promotion failed",
            }],
            None if now_ms - t.phase_started_ms > cfg.promotion_timeout_ms => {
                vec![Action::RollOver {
                    expected_epoch: e,
                    reason: "the candidate did not confirm in time",
                }]
            }
            None => Vec::new(),
        },
    }
}

fn plan_switch(snap: &GroupSnap, sw: &SwitchSnap, p: &InstanceSnap) -> Vec<Action> {
    match &sw.launched_instance {
        None if sw.launch_request_id.is_none() => p
            .agent_id
            .clone()
            .map(|agent| Action::Launch {
                via_agent: agent,
                pool: sw.pool.clone(),
                emergency: false,
                request_id: Some(format!("switch-{}-launch", sw.id)),
                reason: "manual switch",
            })
            .into_iter()
            .collect(),
        Some(id) => {
            let ready = snap
                .instances
                .iter()
                .any(|i| &i.instance_id == id && i.role == Role::Replica && i.online && i.healthy);
            if ready {
                vec![Action::Replace {
                    old: Some(p.instance_id.clone()),
                    candidate: id.clone(),
                    expected_epoch: snap.epoch,
                    emergency: false,
                    old_fenced: false,
                    deadline_ms: None,
                    switch_id: Some(sw.id),
                    reason: "manual switch: the new instance is healthy",
                }]
            } else {
                Vec::new()
            }
        }
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, role: Role, az: &str, hb: i64) -> InstanceSnap {
        InstanceSnap {
            instance_id: id.into(),
            role,
            instance_type: "m5.large".into(),
            availability_zone: az.into(),
            agent_id: Some(format!("a-{id}")),
            online: true,
            healthy: true,
            last_heartbeat_ms: Some(hb),
            ..InstanceSnap::default()
        }
    }

    fn pool(t: &str, az: &str) -> Pool {
        Pool {
            instance_type: t.into(),
            availability_zone: az.into(),
            subnet_id: None,
        }
    }

    fn snap(instances: Vec<InstanceSnap>) -> GroupSnap {
        GroupSnap {
            name: "g".into(),
            epoch: 4,
            pools: vec![
                pool("m5.large", "a"),
                pool("m5.large", "b"),
                pool("c5.large", "a"),
            ],
            instances,
            ..GroupSnap::default()
        }
    }

    fn interrupt(s: &mut GroupSnap, id: &str) {
        s.notices.push(NoticeSnap {
            instance_id: id.into(),
            kind: NoticeKind::Interruption,
            effective_at_ms: Some(120_000),
        });
    }

    const CFG: PlanConfig = PlanConfig {
        rebalance_window_ms: 600_000,
        lease_expiry_ms: 20_000,
        promotion_timeout_ms: 30_000,
        notice_grace_ms: 10_000,
    };

    #[test]
    fn bootstrap_grants_at_once() {
        let s = snap(vec![inst("r1", Role::Replica, "a", 1)]);
        assert!(
            matches!(&plan(&s, 1, &CFG)[..], [Action::Replace { old: None, candidate, old_fenced: true, .. }] if candidate == "r1")
        );
    }

    #[test]
    fn interruption_replaces_with_the_least_correlated_replica_and_fences_first() {
        let mut s = snap(vec![
            inst("p", Role::Primary, "a", 1),
            inst("same-zone", Role::Replica, "a", 9),
            inst("other-zone", Role::Replica, "b", 5),
        ]);
        interrupt(&mut s, "p");
        match &plan(&s, 10, &CFG)[..] {
            [
                Action::Replace {
                    old: Some(o),
                    candidate,
                    emergency: true,
                    old_fenced: false,
                    deadline_ms: Some(120_000),
                    expected_epoch: 4,
                    ..
                },
            ] => {
                assert_eq!((o.as_str(), candidate.as_str()), ("p", "other-zone"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grant_waits_for_the_old_primary_to_be_fenced() {
        let mut s = snap(vec![
            inst("p", Role::Primary, "a", 1_000),
            inst("r", Role::Replica, "b", 1_000),
        ]);
        s.transition = Some(TransitionSnap {
            phase: Phase::Demoting,
            old: Some("p".into()),
            candidate: "r".into(),
            epoch: 4,
            phase_started_ms: 1_000,
            old_fenced: false,
            candidate_outcome: None,
        });
        assert!(
            plan(&s, 5_000, &CFG).is_empty(),
            "old PRIMARY reachable and not yet demoted: wait"
        );
        assert!(
            matches!(&plan(&s, 25_000, &CFG)[..], [Action::Grant { .. }]),
            "lease plus margin passed"
        );
        s.transition.as_mut().unwrap().old_fenced = true;
        assert!(
            matches!(&plan(&s, 5_000, &CFG)[..], [Action::Grant { .. }]),
            "acknowledged"
        );
        s.transition.as_mut().unwrap().old_fenced = false;
        s.instances[0].ec2_gone = true;
        assert!(
            matches!(&plan(&s, 5_000, &CFG)[..], [Action::Grant { .. }]),
            "EC2 shows it gone"
        );
    }

    #[test]
    fn commit_or_roll_over() {
        let mut s = snap(vec![
            inst("p", Role::Zombie, "a", 1),
            inst("r", Role::Replica, "b", 1),
        ]);
        let t = TransitionSnap {
            phase: Phase::Promoting,
            old: Some("p".into()),
            candidate: "r".into(),
            epoch: 4,
            phase_started_ms: 1_000,
            old_fenced: true,
            candidate_outcome: None,
        };
        s.transition = Some(t.clone());
        assert!(plan(&s, 2_000, &CFG).is_empty());
        assert!(
            matches!(&plan(&s, 40_000, &CFG)[..], [Action::RollOver { .. }]),
            "timeout"
        );
        s.transition = Some(TransitionSnap {
            candidate_outcome: Some("done".into()),
            ..t.clone()
        });
        assert!(matches!(
            &plan(&s, 2_000, &CFG)[..],
            [Action::Commit { expected_epoch: 4 }]
        ));
        s.transition = Some(TransitionSnap {
            candidate_outcome: Some("failed".into()),
            ..t
        });
        assert!(matches!(
            &plan(&s, 2_000, &CFG)[..],
            [Action::RollOver { .. }]
        ));
    }

    #[test]
    fn a_silent_primary_is_replaced_only_after_its_lease() {
        let s = snap(vec![
            inst("p", Role::Primary, "a", 0),
            inst("r", Role::Replica, "b", 15_000),
        ]);
        assert!(plan(&s, 15_000, &CFG).is_empty(), "within lease + margin");
        assert!(matches!(
            &plan(&s, 21_000, &CFG)[..],
            [Action::Replace {
                old_fenced: true,
                ..
            }]
        ));
    }

    #[test]
    fn a_primary_is_silent_only_once_it_has_been_seen() {
        // No heartbeat known at all: the store gives the registration time;
        // an instance without one is treated as silent (it has no agent).
        let s = snap(vec![
            inst("p", Role::Primary, "a", 1_000),
            inst("r", Role::Replica, "b", 1_000),
        ]);
        assert!(
            plan(&s, 1_500, &CFG).is_empty(),
            "a fresh PRIMARY is not replaced"
        );
    }

    #[test]
    fn unfit_replicas_are_not_candidates() {
        let mut sick = inst("sick", Role::Replica, "b", 5);
        sick.healthy = false;
        let mut gone = inst("gone", Role::Replica, "b", 5);
        gone.online = false;
        let mut failed = inst("failed", Role::Replica, "b", 5);
        failed.promote_failed_recently = true;
        let mut s = snap(vec![
            inst("p", Role::Primary, "a", 1),
            sick,
            gone,
            failed,
            inst("doomed", Role::Replica, "b", 5),
        ]);
        interrupt(&mut s, "p");
        interrupt(&mut s, "doomed");
        assert!(matches!(
            &plan(&s, 2, &CFG)[..],
            [Action::Launch {
                emergency: true,
                ..
            }]
        ));
    }

    #[test]
    fn interruption_without_replica_launches_via_the_primary_outside_its_pool() {
        let mut s = snap(vec![inst("p", Role::Primary, "a", 1)]);
        interrupt(&mut s, "p");
        s.boot_secs.insert(("c5.large".into(), "a".into()), 30.0);
        s.boot_secs.insert(("m5.large".into(), "b".into()), 45.0);
        s.boot_secs.insert(("m5.large".into(), "a".into()), 10.0);
        match &plan(&s, 2, &CFG)[..] {
            [
                Action::Launch {
                    via_agent,
                    pool,
                    emergency: true,
                    ..
                },
            ] => {
                assert_eq!(via_agent, "a-p");
                assert_eq!(
                    pool,
                    &super::tests::pool("c5.large", "a"),
                    "fastest boot, not the interrupted pool"
                );
            }
            other => panic!("{other:?}"),
        }
        s.launches_in_flight = 1;
        assert!(plan(&s, 2, &CFG).is_empty());
    }

    #[test]
    fn configured_order_until_there_is_boot_history() {
        let s = snap(vec![]);
        assert_eq!(
            launch_pools(&s, Some(("m5.large", "a"))),
            vec![pool("m5.large", "b"), pool("c5.large", "a")]
        );
    }

    #[test]
    fn rebalance_launches_one_replica_per_window() {
        let mut s = snap(vec![inst("p", Role::Primary, "a", 1_000)]);
        s.notices.push(NoticeSnap {
            instance_id: "p".into(),
            kind: NoticeKind::Rebalance,
            effective_at_ms: None,
        });
        assert!(matches!(
            &plan(&s, 1_000, &CFG)[..],
            [Action::Launch {
                emergency: false,
                ..
            }]
        ));
        s.last_proactive_launch_ms = Some(900);
        assert!(plan(&s, 1_000, &CFG).is_empty(), "damped inside the window");
        s.instances[0].last_heartbeat_ms = Some(700_000);
        assert_eq!(plan(&s, 700_000, &CFG).len(), 1);
        s.instances.push(inst("r", Role::Launching, "b", 700_000));
        assert!(
            plan(&s, 700_000, &CFG).is_empty(),
            "a replica is on its way"
        );
    }

    #[test]
    fn manual_replica_keeps_exactly_one() {
        let mut s = snap(vec![inst("p", Role::Primary, "a", 1)]);
        s.manual_replica = true;
        assert!(matches!(&plan(&s, 2, &CFG)[..], [Action::Launch { .. }]));
        s.instances.push(inst("r1", Role::Replica, "b", 1));
        s.instances.push(inst("r2", Role::Replica, "a", 1));
        match &plan(&s, 2, &CFG)[..] {
            [Action::Retire { instance_id, .. }] => {
                assert_eq!(instance_id, "r2", "keeps the least correlated")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn switch_launches_then_replaces() {
        let mut s = snap(vec![inst("p", Role::Primary, "a", 1)]);
        s.switch = Some(SwitchSnap {
            id: 7,
            pool: pool("c5.large", "a"),
            launch_request_id: None,
            launched_instance: None,
        });
        assert!(
            matches!(&plan(&s, 2, &CFG)[..], [Action::Launch { request_id: Some(r), .. }] if r == "switch-7-launch")
        );
        s.switch = Some(SwitchSnap {
            id: 7,
            pool: pool("c5.large", "a"),
            launch_request_id: Some("switch-7-launch".into()),
            launched_instance: Some("n".into()),
        });
        assert!(plan(&s, 2, &CFG).is_empty(), "not registered yet");
        s.instances.push(inst("n", Role::Replica, "a", 1));
        assert!(
            matches!(&plan(&s, 2, &CFG)[..], [Action::Replace { candidate, old_fenced: false, .. }] if candidate == "n")
        );
    }

    #[test]
    fn gone_instances_are_marked() {
        let mut r = inst("r", Role::Replica, "b", 1);
        r.ec2_gone = true;
        let mut z = inst("z", Role::Zombie, "a", 1);
        z.online = false;
        let mut s = snap(vec![inst("p", Role::Primary, "a", 1), r, z]);
        interrupt(&mut s, "z");
        let acts = plan(&s, 200_000, &CFG);
        assert_eq!(acts.len(), 2, "{acts:?}");
        assert!(acts.iter().all(|a| matches!(a, Action::Gone { .. })));
    }

    #[test]
    fn paused_groups_only_finish_what_was_started() {
        let mut s = snap(vec![inst("r", Role::Replica, "b", 1)]);
        s.paused = true;
        assert!(plan(&s, 2, &CFG).is_empty(), "no bootstrap while paused");
        s.transition = Some(TransitionSnap {
            phase: Phase::Promoting,
            old: None,
            candidate: "r".into(),
            epoch: 4,
            phase_started_ms: 1,
            old_fenced: true,
            candidate_outcome: Some("done".into()),
        });
        assert!(matches!(&plan(&s, 2, &CFG)[..], [Action::Commit { .. }]));
    }

    #[test]
    fn no_primary_and_no_candidate_launches_through_any_live_agent() {
        let z = inst("z", Role::Zombie, "a", 1);
        let mut failed = inst("r", Role::Replica, "b", 1);
        failed.promote_failed_recently = true;
        let mut s = snap(vec![z, failed]);
        interrupt(&mut s, "z");
        match &plan(&s, 2, &CFG)[..] {
            [
                Action::Launch {
                    emergency: true,
                    pool,
                    ..
                },
            ] => {
                assert_ne!(
                    pool,
                    &super::tests::pool("m5.large", "a"),
                    "not the interrupted pool"
                )
            }
            other => panic!("{other:?}"),
        }
        s.launches_in_flight = 1;
        assert!(plan(&s, 2, &CFG).is_empty());
    }

    #[test]
    fn overdue_launches_fail_and_failed_pools_are_avoided() {
        let mut l = inst("l", Role::Launching, "b", 1);
        l.launch_overdue = true;
        let s = snap(vec![inst("p", Role::Primary, "a", 1), l]);
        assert!(
            matches!(&plan(&s, 2, &CFG)[..], [Action::LaunchFailed { instance_id }] if instance_id == "l")
        );
        let mut s = snap(vec![inst("p", Role::Primary, "a", 1)]);
        s.failed_pools = vec![("m5.large".into(), "b".into())];
        assert_eq!(
            launch_pools(&s, Some(("m5.large", "a"))),
            vec![pool("c5.large", "a")]
        );
    }

    #[test]
    fn a_healthy_group_needs_nothing() {
        let s = snap(vec![
            inst("p", Role::Primary, "a", 1),
            inst("r", Role::Replica, "b", 1),
        ]);
        assert!(plan(&s, 2, &CFG).is_empty());
    }
}
