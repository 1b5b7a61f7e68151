//! Failover planning: given a snapshot of one group, what the coordinator
//! must do now. Pure, so every rule is a unit test; the coordinator's
//! reconciler takes the snapshot from its store, applies the actions
//! (each one epoch-fenced store transaction) and runs again on the next
//! event or tick.
//!
//! Rules, in order:
//! 1. A promotion in flight (promote command without a result): wait.
//! 2. The PRIMARY's last promotion failed (health check, address move,
//!    hook): demote it, so the next pass promotes the next candidate.
//! 3. No PRIMARY (a new group, or after 2): promote the best candidate.
//! 4. Interruption notice on the PRIMARY: promote the best candidate at
//!    emergency priority with the notice time as deadline; with none, have
//!    the PRIMARY's agent launch a replacement at once into the pool with
//!    the fastest observed boot (never the interrupted pool); it is
//!    promoted when it registers healthy (rule 4 again).
//! 5. Rebalance recommendation on the PRIMARY and no REPLICA (nor one on
//!    its way): launch one in another pool, at most once per window.
//!
//! Candidates are online, healthy REPLICAs, ordered by the pool least
//! correlated with the PRIMARY's (another zone before another type in the
//! same zone before the same pool), then by the most recent heartbeat.

use crate::types::{NoticeKind, Pool, Role};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSnap {
    pub instance_id: String,
    pub role: Role,
    pub instance_type: String,
    pub availability_zone: String,
    pub agent_id: Option<String>,
    pub online: bool,
    pub healthy: bool,
    pub last_heartbeat_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NoticeSnap {
    pub instance_id: String,
    pub kind: NoticeKind,
    pub effective_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupSnap {
    pub name: String,
    pub epoch: u64,
    /// The operator paused automation for this group.
    pub paused: bool,
    pub pools: Vec<Pool>,
    pub instances: Vec<InstanceSnap>,
    /// Notices of the group's live instances.
    pub notices: Vec<NoticeSnap>,
    /// A promote command is queued or delivered, without a result.
    pub promotion_in_flight: bool,
    /// The current PRIMARY's latest promote command failed.
    pub primary_promotion_failed: bool,
    /// Launches queued, running, or done but not yet registered.
    pub launches_in_flight: usize,
    pub last_proactive_launch_ms: Option<i64>,
    /// Observed launch -> registered-healthy seconds, per pool (type, zone).
    pub boot_secs: HashMap<(String, String), f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Promote {
        instance_id: String,
        expected_epoch: u64,
        emergency: bool,
        /// Unix ms; `None`: the default deadline.
        deadline_ms: Option<i64>,
        reason: &'static str,
    },
    Demote {
        instance_id: String,
        expected_epoch: u64,
        reason: &'static str,
    },
    Launch {
        via_agent: String,
        pool: Pool,
        emergency: bool,
        reason: &'static str,
    },
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

pub fn plan(snap: &GroupSnap, now_ms: i64, rebalance_window_ms: i64) -> Vec<Action> {
    if snap.promotion_in_flight {
        return Vec::new();
    }
    let primary = snap.instances.iter().find(|i| i.role == Role::Primary);
    if let Some(p) = primary
        && snap.primary_promotion_failed
    {
        return vec![Action::Demote {
            instance_id: p.instance_id.clone(),
            expected_epoch: snap.epoch,
            reason: "promotion failed; rolling over to the next candidate",
        }];
    }
    let (zone, itype) = primary
        .map(|p| (p.availability_zone.as_str(), p.instance_type.as_str()))
        .unwrap_or(("", ""));
    let mut candidates: Vec<&InstanceSnap> = snap
        .instances
        .iter()
        .filter(|i| i.role == Role::Replica && i.online && i.healthy)
        // A replica with its own interruption notice is no refuge.
        .filter(|i| {
            !snap
                .notices
                .iter()
                .any(|n| n.instance_id == i.instance_id && n.kind == NoticeKind::Interruption)
        })
        .collect();
    candidates.sort_by(|a, b| {
        correlation(a, zone, itype)
            .cmp(&correlation(b, zone, itype))
            .then(b.last_heartbeat_ms.cmp(&a.last_heartbeat_ms))
            .then(a.instance_id.cmp(&b.instance_id))
    });
    let Some(p) = primary else {
        return candidates
            .first()
            .map(|c| Action::Promote {
                instance_id: c.instance_id.clone(),
                expected_epoch: snap.epoch,
                emergency: false,
                deadline_ms: None,
                reason: "group has no PRIMARY",
            })
            .into_iter()
            .collect();
    };
    let notice = |kind| {
        snap.notices
            .iter()
            .find(|n| n.instance_id == p.instance_id && n.kind == kind)
    };
    if let Some(n) = notice(NoticeKind::Interruption) {
        if let Some(c) = candidates.first() {
            return vec![Action::Promote {
                instance_id: c.instance_id.clone(),
                expected_epoch: snap.epoch,
                emergency: true,
                deadline_ms: n.effective_at_ms,
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
                reason: "interruption notice on the PRIMARY and no REPLICA",
            }];
        }
        return Vec::new();
    }
    let has_replica = snap
        .instances
        .iter()
        .any(|i| matches!(i.role, Role::Replica | Role::Launching));
    if notice(NoticeKind::Rebalance).is_some()
        && !has_replica
        && snap.launches_in_flight == 0
        && snap
            .last_proactive_launch_ms
            .is_none_or(|t| now_ms - t >= rebalance_window_ms)
        && let (Some(agent), Some(pool)) = (
            p.agent_id.clone(),
            launch_pools(snap, Some((itype, zone))).into_iter().next(),
        )
    {
        return vec![Action::Launch {
            via_agent: agent,
            pool,
            emergency: false,
            reason: "rebalance recommendation on the PRIMARY and no REPLICA",
        }];
    }
    Vec::new()
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

    #[test]
    fn bootstrap_promotes_a_healthy_replica() {
        let s = snap(vec![inst("r1", Role::Replica, "a", 1)]);
        assert!(
            matches!(&plan(&s, 0, 0)[..], [Action::Promote { instance_id, emergency: false, .. }] if instance_id == "r1")
        );
    }

    #[test]
    fn interruption_promotes_the_least_correlated_replica_with_the_notice_deadline() {
        let mut s = snap(vec![
            inst("p", Role::Primary, "a", 1),
            inst("same-zone", Role::Replica, "a", 9),
            inst("other-zone", Role::Replica, "b", 5),
        ]);
        interrupt(&mut s, "p");
        match &plan(&s, 0, 0)[..] {
            [
                Action::Promote {
                    instance_id,
                    emergency: true,
                    deadline_ms: Some(120_000),
                    expected_epoch: 4,
                    ..
                },
            ] => {
                assert_eq!(instance_id, "other-zone")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unhealthy_offline_or_interrupted_replicas_are_not_candidates() {
        let mut sick = inst("sick", Role::Replica, "b", 5);
        sick.healthy = false;
        let mut gone = inst("gone", Role::Replica, "b", 5);
        gone.online = false;
        let mut s = snap(vec![
            inst("p", Role::Primary, "a", 1),
            sick,
            gone,
            inst("doomed", Role::Replica, "b", 5),
        ]);
        interrupt(&mut s, "p");
        interrupt(&mut s, "doomed");
        assert!(matches!(
            &plan(&s, 0, 0)[..],
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
        match &plan(&s, 0, 0)[..] {
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
        // Once launched, it waits for the new instance instead of launching again.
        s.launches_in_flight = 1;
        assert!(plan(&s, 0, 0).is_empty());
    }

    #[test]
    fn configured_order_until_there_is_boot_history() {
        let s = snap(vec![]);
        let order = launch_pools(&s, Some(("m5.large", "a")));
        assert_eq!(order, vec![pool("m5.large", "b"), pool("c5.large", "a")]);
    }

    #[test]
    fn rebalance_launches_one_replica_per_window() {
        let mut s = snap(vec![inst("p", Role::Primary, "a", 1)]);
        s.notices.push(NoticeSnap {
            instance_id: "p".into(),
            kind: NoticeKind::Rebalance,
            effective_at_ms: None,
        });
        assert!(matches!(
            &plan(&s, 1_000, 600_000)[..],
            [Action::Launch {
                emergency: false,
                ..
            }]
        ));
        s.last_proactive_launch_ms = Some(900);
        assert!(
            plan(&s, 1_000, 600_000).is_empty(),
            "damped inside the window"
        );
        assert_eq!(plan(&s, 700_000, 600_000).len(), 1);
        s.instances.push(inst("r", Role::Launching, "b", 1));
        assert!(
            plan(&s, 700_000, 600_000).is_empty(),
            "a replica is on its way"
        );
    }

    #[test]
    fn failed_promotion_rolls_over_and_in_flight_promotion_waits() {
        let mut s = snap(vec![
            inst("p", Role::Primary, "a", 1),
            inst("r", Role::Replica, "b", 1),
        ]);
        s.primary_promotion_failed = true;
        assert!(
            matches!(&plan(&s, 0, 0)[..], [Action::Demote { instance_id, .. }] if instance_id == "p")
        );
        s.promotion_in_flight = true;
        assert!(plan(&s, 0, 0).is_empty());
    }

    #[test]
    fn a_healthy_group_needs_nothing() {
        let s = snap(vec![
            inst("p", Role::Primary, "a", 1),
            inst("r", Role::Replica, "b", 1),
        ]);
        assert!(plan(&s, 0, 0).is_empty());
    }
}
