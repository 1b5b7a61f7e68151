//! Unit tests of the planner: each rule with its numbers.

use super::*;
use crate::command::{CommandState, NoticeKind};
use crate::types::{Phase, Pool, PoolKey, Role};

fn plan(s: &GroupSnap, now: i64, cfg: &PlanConfig) -> Vec<Step> {
    super::plan(s, now, cfg).steps
}

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

fn mkpool(t: &str, az: &str) -> Pool {
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
            mkpool("m5.large", "a"),
            mkpool("m5.large", "b"),
            mkpool("c5.large", "a"),
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
        matches!(&plan(&s, 1, &CFG)[..], [Step::Replace { old: None, candidate, old_fenced: true, .. }] if candidate == "r1")
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
            Step::Replace {
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
        matches!(&plan(&s, 25_000, &CFG)[..], [Step::Grant { .. }]),
        "lease plus margin passed"
    );
    s.transition.as_mut().unwrap().old_fenced = true;
    assert!(
        matches!(&plan(&s, 5_000, &CFG)[..], [Step::Grant { .. }]),
        "acknowledged"
    );
    s.transition.as_mut().unwrap().old_fenced = false;
    s.instances[0].ec2_gone = true;
    assert!(
        matches!(&plan(&s, 5_000, &CFG)[..], [Step::Grant { .. }]),
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
        matches!(&plan(&s, 40_000, &CFG)[..], [Step::RollOver { .. }]),
        "timeout"
    );
    s.transition = Some(TransitionSnap {
        candidate_outcome: Some(CommandState::Done),
        ..t.clone()
    });
    assert!(matches!(
        &plan(&s, 2_000, &CFG)[..],
        [Step::Commit { expected_epoch: 4 }]
    ));
    s.transition = Some(TransitionSnap {
        candidate_outcome: Some(CommandState::Failed),
        ..t
    });
    assert!(matches!(
        &plan(&s, 2_000, &CFG)[..],
        [Step::RollOver { .. }]
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
        [Step::Replace {
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
        [Step::Launch {
            emergency: true,
            ..
        }]
    ));
}

#[test]
fn interruption_without_replica_launches_via_the_primary_outside_its_pool() {
    let mut s = snap(vec![inst("p", Role::Primary, "a", 1)]);
    interrupt(&mut s, "p");
    s.boot_secs.insert(PoolKey::new("c5.large", "a"), 30.0);
    s.boot_secs.insert(PoolKey::new("m5.large", "b"), 45.0);
    s.boot_secs.insert(PoolKey::new("m5.large", "a"), 10.0);
    match &plan(&s, 2, &CFG)[..] {
        [
            Step::Launch {
                via_agent,
                pool,
                emergency: true,
                ..
            },
        ] => {
            assert_eq!(via_agent, "a-p");
            assert_eq!(
                pool,
                &mkpool("c5.large", "a"),
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
        launch_pools(&s, Some(&PoolKey::new("m5.large", "a"))),
        vec![mkpool("m5.large", "b"), mkpool("c5.large", "a")]
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
        [Step::Launch {
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
    assert!(matches!(&plan(&s, 2, &CFG)[..], [Step::Launch { .. }]));
    s.instances.push(inst("r1", Role::Replica, "b", 1));
    s.instances.push(inst("r2", Role::Replica, "a", 1));
    match &plan(&s, 2, &CFG)[..] {
        [Step::Retire { instance_id, .. }] => {
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
        pool: mkpool("c5.large", "a"),
        launch_request_id: None,
        launched_instance: None,
    });
    assert!(matches!(
        &plan(&s, 2, &CFG)[..],
        [Step::Launch {
            switch_id: Some(7),
            ..
        }]
    ));
    s.switch = Some(SwitchSnap {
        id: 7,
        pool: mkpool("c5.large", "a"),
        launch_request_id: Some("switch-7-launch".into()),
        launched_instance: Some("n".into()),
    });
    assert!(plan(&s, 2, &CFG).is_empty(), "not registered yet");
    s.instances.push(inst("n", Role::Replica, "a", 1));
    assert!(
        matches!(&plan(&s, 2, &CFG)[..], [Step::Replace { candidate, old_fenced: false, .. }] if candidate == "n")
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
    assert!(acts.iter().all(|a| matches!(a, Step::Gone { .. })));
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
        candidate_outcome: Some(CommandState::Done),
    });
    assert!(matches!(&plan(&s, 2, &CFG)[..], [Step::Commit { .. }]));
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
            Step::Launch {
                emergency: true,
                pool,
                ..
            },
        ] => {
            assert_ne!(pool, &mkpool("m5.large", "a"), "not the interrupted pool")
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
        matches!(&plan(&s, 2, &CFG)[..], [Step::LaunchFailed { instance_id }] if instance_id == "l")
    );
    let mut s = snap(vec![inst("p", Role::Primary, "a", 1)]);
    s.failed_pools = vec![PoolKey::new("m5.large", "b")];
    assert_eq!(
        launch_pools(&s, Some(&PoolKey::new("m5.large", "a"))),
        vec![mkpool("c5.large", "a")]
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
