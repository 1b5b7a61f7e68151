//! Unit tests of the planner: each rule with its numbers.

use super::*;
use crate::command::{CommandState, NoticeKind};
use crate::types::{Phase, Pool, PoolKey, Role};

fn plan(s: &GroupSnap, now: i64, cfg: &PlanConfig) -> Vec<Step> {
    super::plan(s, now, cfg).steps
}

fn inst(id: &str, role: Role, az: &str) -> InstanceSnap {
    InstanceSnap {
        instance_id: id.into(),
        role,
        instance_type: "m5.large".into(),
        availability_zone: az.into(),
        agent_id: Some(format!("a-{id}")),
        online: true,
        healthy: true,
        silent_ms: Some(100),
        ..InstanceSnap::default()
    }
}

fn snap(instances: Vec<InstanceSnap>) -> GroupSnap {
    GroupSnap {
        name: "g".into(),
        epoch: 4,
        pools: vec![
            Pool::new("m5.large", "a"),
            Pool::new("m5.large", "b"),
            Pool::new("c5.large", "a"),
        ],
        instances,
        had_instances: true,
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

const CFG: PlanConfig = PlanConfig::DEFAULT;

/// A transition from `p` to `r` at epoch 4, demoting, `age` ms in.
fn demoting(age: i64) -> TransitionSnap {
    TransitionSnap {
        phase: Phase::Demoting,
        old: Some("p".into()),
        candidate: "r".into(),
        epoch: 4,
        phase_age_ms: age,
        targets: vec![FenceSnap {
            instance_id: "p".into(),
            epoch: 4,
            demote: Some(CommandState::Delivered),
            ..FenceSnap::default()
        }],
        candidate_outcome: None,
        candidate_reports_primary: false,
        ec2_view_pending: false,
    }
}

fn pr() -> GroupSnap {
    snap(vec![
        inst("p", Role::Primary, "a"),
        inst("r", Role::Replica, "b"),
    ])
}

#[test]
fn bootstrap_grants_at_once() {
    let s = snap(vec![inst("r1", Role::Replica, "a")]);
    assert!(
        matches!(&plan(&s, 1, &CFG)[..], [Step::Replace { old: None, candidate, .. }] if candidate == "r1")
    );
}

#[test]
fn interruption_replaces_with_the_least_correlated_replica() {
    let mut s = snap(vec![
        inst("p", Role::Primary, "a"),
        inst("same-zone", Role::Replica, "a"),
        inst("other-zone", Role::Replica, "b"),
    ]);
    interrupt(&mut s, "p");
    match &plan(&s, 10, &CFG)[..] {
        [
            Step::Replace {
                old: Some(o),
                candidate,
                emergency: true,
                deadline_ms: Some(120_000),
                expected_epoch: 4,
                ..
            },
        ] => assert_eq!((o.as_str(), candidate.as_str()), ("p", "other-zone")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_clock_never_grants_silence_escalates_to_an_ec2_fence() {
    let mut s = pr();
    s.transition = Some(demoting(1_000));
    assert!(plan(&s, 0, &CFG).is_empty(), "demote in flight: wait");
    // The old PRIMARY falls silent, for ever: never a grant, a fence.
    s.instances[0].online = false;
    s.instances[0].silent_ms = Some(10 * 60_000);
    match &plan(&s, 0, &CFG)[..] {
        [
            Step::Fence {
                instance_id,
                epoch: 4,
                attempt: 1,
                via: Executor::Agent(via),
                ..
            },
        ] => assert_eq!(
            (instance_id.as_str(), via.as_str()),
            ("p", "a-r"),
            "by the candidate"
        ),
        other => panic!("{other:?}"),
    }
    // The fence is on its way: wait for it.
    s.transition.as_mut().unwrap().targets[0].last_fence = Some(CommandState::Delivered);
    s.transition.as_mut().unwrap().targets[0].fence_attempts = 1;
    assert!(plan(&s, 0, &CFG).is_empty());
    // EC2 reports it terminated: fenced, granted.
    s.transition.as_mut().unwrap().targets[0].fenced = true;
    assert!(matches!(
        &plan(&s, 0, &CFG)[..],
        [Step::Grant {
            expected_epoch: 4,
            ..
        }]
    ));
}

#[test]
fn no_grant_before_ec2s_view_since_the_start_is_in() {
    // What the store checks before a grant, the planner sees: a demote
    // acknowledged after a restart is not enough without EC2's view (the
    // store would refuse the grant every pass, and nothing else moves).
    let mut s = pr();
    let mut t = demoting(1_000);
    t.targets[0].demote = Some(CommandState::Done);
    t.targets[0].fenced = true;
    t.ec2_view_pending = true;
    s.transition = Some(t);
    let d = super::plan(&s, 0, &CFG);
    assert!(d.steps.is_empty() && d.blocked.is_none(), "{d:?}");
    s.transition.as_mut().unwrap().ec2_view_pending = false;
    assert!(matches!(&plan(&s, 0, &CFG)[..], [Step::Grant { .. }]));
}

#[test]
fn an_unacknowledged_or_failed_demotion_is_fenced_through_ec2() {
    let mut s = pr();
    s.transition = Some(demoting(16_000));
    assert!(
        matches!(&plan(&s, 0, &CFG)[..], [Step::Fence { reason, .. }] if reason.contains("in time")),
        "past demote_timeout"
    );
    let mut t = demoting(1_000);
    t.targets[0].demote = Some(CommandState::Failed);
    s.transition = Some(t);
    assert!(
        matches!(&plan(&s, 0, &CFG)[..], [Step::Fence { reason, .. }] if reason.contains("failed")),
        "a failed demote hook does not count"
    );
    let mut t = demoting(1_000);
    t.targets[0].demote = Some(CommandState::Done);
    t.targets[0].fenced = true;
    s.transition = Some(t);
    assert!(
        matches!(&plan(&s, 0, &CFG)[..], [Step::Grant { .. }]),
        "acknowledged"
    );
}

#[test]
fn when_fencing_is_impossible_the_group_waits_blocked() {
    let mut s = pr();
    let mut t = demoting(16_000);
    t.targets[0].fence_attempts = 1;
    t.targets[0].last_fence = Some(CommandState::Failed);
    t.targets[0].last_fence_code = Some("UnauthorizedOperation".into());
    s.transition = Some(t.clone());
    let p = super::plan(&s, 0, &CFG);
    assert!(p.steps.is_empty(), "no grant: {:?}", p.steps);
    assert!(p.blocked.unwrap().contains("UnauthorizedOperation"));
    // A transient failure is tried again, up to the limit.
    t.targets[0].last_fence_code = Some("FenceTimeout".into());
    s.transition = Some(t.clone());
    assert!(matches!(
        &plan(&s, 0, &CFG)[..],
        [Step::Fence { attempt: 2, .. }]
    ));
    t.targets[0].fence_attempts = 3;
    s.transition = Some(t);
    assert!(super::plan(&s, 0, &CFG).blocked.is_some());
    // Nobody to fence with: no live agent but the target, no executor.
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.instances[0].online = false;
    s.instances.push(InstanceSnap {
        online: false,
        ..inst("r", Role::Replica, "b")
    });
    s.transition = Some(demoting(16_000));
    assert!(super::plan(&s, 0, &CFG).blocked.is_some());
    s.coordinator_executor = true;
    assert!(matches!(
        &plan(&s, 0, &CFG)[..],
        [
            Step::Fence {
                via: Executor::Coordinator,
                ..
            },
            ..
        ]
    ));
}

#[test]
fn commit_on_the_result_or_the_candidates_own_report_else_roll_over() {
    let mut s = snap(vec![
        inst("p", Role::Zombie, "a"),
        inst("r", Role::Replica, "b"),
    ]);
    let t = TransitionSnap {
        phase: Phase::Promoting,
        phase_age_ms: 1_000,
        ..demoting(0)
    };
    s.transition = Some(t.clone());
    assert!(plan(&s, 0, &CFG).is_empty());
    s.transition = Some(TransitionSnap {
        phase_age_ms: 31_000,
        ..t.clone()
    });
    assert!(
        matches!(&plan(&s, 0, &CFG)[..], [Step::RollOver { .. }]),
        "timeout"
    );
    s.transition = Some(TransitionSnap {
        candidate_outcome: Some(CommandState::Done),
        ..t.clone()
    });
    assert!(matches!(
        &plan(&s, 0, &CFG)[..],
        [Step::Commit { expected_epoch: 4 }]
    ));
    s.transition = Some(TransitionSnap {
        candidate_reports_primary: true,
        phase_age_ms: 31_000,
        ..t.clone()
    });
    assert!(
        matches!(&plan(&s, 0, &CFG)[..], [Step::Commit { .. }]),
        "its heartbeat says PRIMARY at this epoch: the result is on its way"
    );
    s.transition = Some(TransitionSnap {
        candidate_outcome: Some(CommandState::Failed),
        ..t
    });
    assert!(matches!(&plan(&s, 0, &CFG)[..], [Step::RollOver { .. }]));
}

#[test]
fn a_rolled_over_candidate_is_fenced_before_the_next_is_granted() {
    let mut s = snap(vec![
        inst("p", Role::Zombie, "a"),
        inst("r", Role::Replica, "b"),
        inst("r2", Role::Replica, "b"),
    ]);
    let mut t = demoting(1_000);
    t.epoch = 5;
    s.epoch = 5;
    t.targets[0].fenced = true; // the old PRIMARY
    t.targets.push(FenceSnap {
        instance_id: "r".into(),
        epoch: 5,
        demote: Some(CommandState::Delivered),
        ..FenceSnap::default()
    });
    s.transition = Some(t.clone());
    // The failed candidate is no candidate: point at r2, grant nothing yet.
    assert!(
        matches!(&plan(&s, 0, &CFG)[..], [Step::Retarget { candidate, .. }] if candidate == "r2")
    );
    t.candidate = "r2".into();
    s.transition = Some(t.clone());
    assert!(
        plan(&s, 0, &CFG).is_empty(),
        "r still promoting for all we know"
    );
    t.targets[1].fenced = true;
    s.transition = Some(t);
    assert!(matches!(&plan(&s, 0, &CFG)[..], [Step::Grant { .. }]));
}

#[test]
fn no_candidate_left_launches_while_the_transition_waits() {
    let mut s = snap(vec![
        inst("p", Role::Zombie, "a"),
        inst("r", Role::Replica, "b"),
    ]);
    let mut t = demoting(1_000);
    t.targets[0].fenced = true;
    t.targets.push(FenceSnap {
        instance_id: "r".into(),
        epoch: 4,
        fenced: true,
        ..FenceSnap::default()
    });
    s.transition = Some(t);
    assert!(matches!(
        &plan(&s, 0, &CFG)[..],
        [Step::Launch {
            emergency: true,
            ..
        }]
    ));
    s.launches_in_flight = 1;
    assert!(plan(&s, 0, &CFG).is_empty());
}

#[test]
fn a_silent_primary_is_replaced_after_its_lease_and_fenced_by_the_transition() {
    let mut s = pr();
    s.instances[0].silent_ms = Some(15_000);
    assert!(plan(&s, 0, &CFG).is_empty(), "within lease + margin");
    s.instances[0].silent_ms = Some(22_000);
    assert!(matches!(
        &plan(&s, 0, &CFG)[..],
        [Step::Replace { old: Some(o), .. }] if o == "p"
    ));
}

#[test]
fn a_lone_primary_lost_gets_a_replacement_launched_first() {
    // Its agent silent, no REPLICA, no other agent: only the coordinator
    // can launch, and only when its executor is on.
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.instances[0].online = false;
    s.instances[0].silent_ms = None;
    assert!(plan(&s, 0, &CFG).is_empty());
    s.coordinator_executor = true;
    match &plan(&s, 0, &CFG)[..] {
        [
            Step::Launch {
                via: Executor::Coordinator,
                emergency: true,
                pool,
                ..
            },
        ] => assert_ne!(pool, &Pool::new("m5.large", "a"), "not its pool"),
        other => panic!("{other:?}"),
    }
    // Never fenced before the replacement is there.
    assert!(
        !plan(&s, 0, &CFG)
            .iter()
            .any(|x| matches!(x, Step::Fence { .. }))
    );
}

#[test]
fn a_primary_that_reports_not_serving_is_replaced() {
    let mut s = pr();
    s.instances[0].reported = Some(Reported {
        role: Some(Role::Zombie),
        role_epoch: 4,
        fresh: true,
    });
    assert!(matches!(&plan(&s, 0, &CFG)[..], [Step::Replace { .. }]));
    // A stale report (sent before the promotion) says nothing.
    s.instances[0].reported = Some(Reported {
        role: Some(Role::Replica),
        role_epoch: 0,
        fresh: false,
    });
    assert!(plan(&s, 0, &CFG).is_empty());
}

#[test]
fn unfit_replicas_are_not_candidates() {
    let mut sick = inst("sick", Role::Replica, "b");
    sick.healthy = false;
    let mut gone = inst("gone", Role::Replica, "b");
    gone.online = false;
    let mut failed = inst("failed", Role::Replica, "b");
    failed.promote_failed_recently = true;
    let mut s = snap(vec![
        inst("p", Role::Primary, "a"),
        sick,
        gone,
        failed,
        inst("doomed", Role::Replica, "b"),
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
fn a_primary_pinned_to_its_enis_zone_is_replaced_only_there() {
    // The only REPLICA is in b; the secondary ENI lives in a.
    let mut s = snap(vec![
        inst("p", Role::Primary, "a"),
        inst("r-b", Role::Replica, "b"),
    ]);
    s.pinned_zone = Some("a".into());
    s.boot_secs.insert(PoolKey::new("m5.large", "b"), 5.0);
    interrupt(&mut s, "p");
    match &plan(&s, 2, &CFG)[..] {
        [
            Step::Launch {
                pool,
                emergency: true,
                ..
            },
        ] => {
            assert_eq!(pool.availability_zone, "a", "never another zone: {pool:?}");
        }
        other => panic!("a REPLICA outside the ENI's zone is no candidate: {other:?}"),
    }
    s.instances.push(inst("r-a", Role::Replica, "a"));
    assert!(matches!(
        &plan(&s, 2, &CFG)[..],
        [Step::Replace { candidate, .. }] if candidate == "r-a"
    ));
}

#[test]
fn data_volumes_keep_the_primary_in_their_zone_until_a_snapshot_can_follow() {
    // The volumes live in a; the least correlated REPLICA is in b.
    let mut s = snap(vec![
        inst("p", Role::Primary, "a"),
        inst("r-b", Role::Replica, "b"),
        inst("r-a", Role::Replica, "a"),
    ]);
    s.volume_zone = Some("a".into());
    interrupt(&mut s, "p");
    assert!(
        matches!(&plan(&s, 2, &CFG)[..], [Step::Replace { candidate, .. }] if candidate == "r-a"),
        "the volumes' zone first: {:?}",
        plan(&s, 2, &CFG)
    );
    // Without a REPLICA there and without a snapshot, b cannot hold it:
    // launch in a, the fastest there, though b boots faster.
    s.instances.retain(|i| i.instance_id != "r-a");
    s.boot_secs.insert(PoolKey::new("m5.large", "b"), 5.0);
    s.boot_secs.insert(PoolKey::new("c5.large", "a"), 20.0);
    s.boot_secs.insert(PoolKey::new("m5.large", "a"), 30.0);
    match &plan(&s, 2, &CFG)[..] {
        [
            Step::Launch {
                pool,
                emergency: true,
                ..
            },
        ] => {
            assert_eq!(
                pool,
                &Pool::new("c5.large", "a"),
                "the fastest pool in the volumes' zone"
            );
        }
        other => panic!("no candidate outside the volumes' zone without a snapshot: {other:?}"),
    }
    // With a snapshot, b may take over (restoring from it).
    s.volumes_restorable = true;
    assert!(
        matches!(&plan(&s, 2, &CFG)[..], [Step::Replace { candidate, .. }] if candidate == "r-b"),
        "{:?}",
        plan(&s, 2, &CFG)
    );
}

#[test]
fn interruption_without_replica_launches_via_the_primary_outside_its_pool() {
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    interrupt(&mut s, "p");
    s.boot_secs.insert(PoolKey::new("c5.large", "a"), 30.0);
    s.boot_secs.insert(PoolKey::new("m5.large", "b"), 45.0);
    s.boot_secs.insert(PoolKey::new("m5.large", "a"), 10.0);
    match &plan(&s, 2, &CFG)[..] {
        [
            Step::Launch {
                via: Executor::Agent(via),
                pool,
                emergency: true,
                ..
            },
        ] => {
            assert_eq!(via, "a-p");
            assert_eq!(
                pool,
                &Pool::new("c5.large", "a"),
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
        vec![Pool::new("m5.large", "b"), Pool::new("c5.large", "a")]
    );
}

#[test]
fn rebalance_launches_one_replica_per_window() {
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
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
    assert_eq!(plan(&s, 700_000, &CFG).len(), 1);
    s.instances.push(inst("r", Role::Launching, "b"));
    assert!(
        plan(&s, 700_000, &CFG).is_empty(),
        "a replica is on its way"
    );
}

fn maintenance(id: &str, at: Option<i64>) -> NoticeSnap {
    NoticeSnap {
        instance_id: id.into(),
        kind: NoticeKind::ScheduledMaintenance,
        effective_at_ms: at,
    }
}

#[test]
fn maintenance_on_the_primary_prepares_a_replica_then_switches_before_its_time() {
    let at = 3_600_000;
    let lead = CFG.maintenance_lead_ms;
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.notices.push(maintenance("p", Some(at)));
    // No REPLICA: one is launched at once, not in the PRIMARY's pool.
    match &plan(&s, 1_000, &CFG)[..] {
        [
            Step::Launch {
                emergency: false,
                pool,
                ..
            },
        ] => assert_ne!(pool.availability_zone, "a"),
        other => panic!("{other:?}"),
    }
    s.launches_in_flight = 1;
    assert!(plan(&s, 1_000, &CFG).is_empty(), "one launch at a time");
    s.launches_in_flight = 0;
    s.instances.push(inst("r", Role::Replica, "b"));
    // A healthy REPLICA: nothing until `maintenance_lead` before NotBefore.
    assert!(plan(&s, at - lead - 1, &CFG).is_empty());
    match &plan(&s, at - lead, &CFG)[..] {
        [
            Step::Replace {
                old: Some(old),
                candidate,
                deadline_ms,
                ..
            },
        ] => {
            assert_eq!((old.as_str(), candidate.as_str()), ("p", "r"));
            assert_eq!(*deadline_ms, Some(at));
        }
        other => panic!("{other:?}"),
    }
    // An unreadable NotBefore is imminent.
    s.notices = vec![maintenance("p", None)];
    assert!(matches!(&plan(&s, 0, &CFG)[..], [Step::Replace { .. }]));
    // A REPLICA under maintenance too is no spare: a launch, not a switch.
    s.notices.push(maintenance("r", Some(at)));
    assert!(matches!(&plan(&s, at, &CFG)[..], [Step::Launch { .. }]));
    // Paused: the operator's call.
    s.paused = true;
    assert!(plan(&s, at, &CFG).is_empty());
}

#[test]
fn maintenance_on_a_replica_replaces_it_in_time() {
    let mut s = snap(vec![
        inst("p", Role::Primary, "a"),
        inst("r", Role::Replica, "b"),
    ]);
    s.notices.push(maintenance("r", Some(3_600_000)));
    assert!(matches!(
        &plan(&s, 1_000, &CFG)[..],
        [Step::Launch {
            emergency: false,
            ..
        }]
    ));
    s.instances.push(inst("n", Role::Launching, "c"));
    assert!(
        plan(&s, 1_000, &CFG).is_empty(),
        "waits for its replacement"
    );
    s.instances.last_mut().unwrap().role = Role::Replica;
    match &plan(&s, 1_000, &CFG)[..] {
        [Step::Retire { instance_id, .. }] => assert_eq!(instance_id, "r"),
        other => panic!("{other:?}"),
    }
    // In an emergency it is still a refuge, chosen last.
    let c = candidates(&s, s.primary());
    assert_eq!(c.last().unwrap().instance_id, "r");
}

#[test]
fn manual_replica_keeps_exactly_one() {
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.manual_replica = true;
    assert!(matches!(&plan(&s, 2, &CFG)[..], [Step::Launch { .. }]));
    s.instances.push(inst("r1", Role::Replica, "b"));
    s.instances.push(inst("r2", Role::Replica, "a"));
    match &plan(&s, 2, &CFG)[..] {
        [Step::Retire { instance_id, .. }] => {
            assert_eq!(instance_id, "r2", "keeps the least correlated")
        }
        other => panic!("{other:?}"),
    }
}

fn switch_snap(
    launched: Option<&str>,
    launch_state: Option<CommandState>,
    age_ms: i64,
) -> SwitchSnap {
    SwitchSnap {
        id: 7,
        pool: Pool::new("c5.large", "a"),
        launch_request_id: launch_state.map(|_| "switch-7-launch".into()),
        launched_instance: launched.map(str::to_owned),
        launch_state,
        age_ms,
    }
}

#[test]
fn switch_launches_then_replaces() {
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.switch = Some(switch_snap(None, None, 0));
    assert!(matches!(
        &plan(&s, 2, &CFG)[..],
        [Step::Launch {
            switch_id: Some(7),
            ..
        }]
    ));
    s.switch = Some(switch_snap(Some("n"), Some(CommandState::Done), 1000));
    s.instances.push(inst("n", Role::Launching, "a"));
    assert!(plan(&s, 2, &CFG).is_empty(), "not registered yet");
    s.instances[1].role = Role::Replica;
    assert!(
        matches!(&plan(&s, 2, &CFG)[..], [Step::Replace { candidate, switch_id: Some(7), .. }] if candidate == "n")
    );
}

#[test]
fn a_switch_that_cannot_finish_fails_and_the_primary_stays() {
    let failed = |s: &GroupSnap| match &plan(s, 2, &CFG)[..] {
        [
            Step::SwitchFailed {
                switch_id: 7,
                reason,
            },
        ] => Some(*reason),
        _ => None,
    };
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.switch = Some(switch_snap(None, Some(CommandState::Failed), 1000));
    assert_eq!(failed(&s), Some("the switch's launch failed"));
    // Its instance went FAILED (not in the snapshot) or EC2 says gone.
    s.switch = Some(switch_snap(Some("n"), Some(CommandState::Done), 1000));
    assert_eq!(failed(&s), Some("the new instance failed or is gone"));
    // Still launching: waited for, until the deadline.
    s.instances.push(inst("n", Role::Launching, "a"));
    assert_eq!(failed(&s), None);
    s.switch = Some(switch_snap(
        Some("n"),
        Some(CommandState::Done),
        CFG.switch_timeout_ms + 1,
    ));
    assert!(failed(&s).is_some_and(|r| r.contains("switch timeout")));
    // A launch still queued is waited for.
    s.switch = Some(switch_snap(None, Some(CommandState::Queued), 1000));
    assert_eq!(failed(&s), None);
}

#[test]
fn gone_instances_are_marked() {
    let mut r = inst("r", Role::Replica, "b");
    r.ec2_gone = true;
    let mut z = inst("z", Role::Zombie, "a");
    z.online = false;
    let mut s = snap(vec![inst("p", Role::Primary, "a"), r, z]);
    interrupt(&mut s, "z");
    let acts = plan(&s, 200_000, &CFG);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(acts.iter().all(|a| matches!(a, Step::Gone { .. })));
}

#[test]
fn paused_groups_only_finish_what_was_started() {
    let mut s = snap(vec![inst("r", Role::Replica, "b")]);
    s.paused = true;
    assert!(plan(&s, 2, &CFG).is_empty(), "no bootstrap while paused");
    s.transition = Some(TransitionSnap {
        phase: Phase::Promoting,
        old: None,
        targets: Vec::new(),
        candidate_outcome: Some(CommandState::Done),
        ..demoting(0)
    });
    assert!(matches!(&plan(&s, 2, &CFG)[..], [Step::Commit { .. }]));
}

#[test]
fn no_primary_and_no_candidate_launches_through_any_live_agent() {
    let z = inst("z", Role::Zombie, "a");
    let mut failed = inst("r", Role::Replica, "b");
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
        ] => assert_ne!(
            pool,
            &Pool::new("m5.large", "a"),
            "not the interrupted pool"
        ),
        other => panic!("{other:?}"),
    }
    s.launches_in_flight = 1;
    assert!(plan(&s, 2, &CFG).is_empty());
    // A brand-new group waits for its first instance.
    let mut fresh = snap(vec![]);
    fresh.had_instances = false;
    fresh.coordinator_executor = true;
    assert!(plan(&fresh, 2, &CFG).is_empty());
}

#[test]
fn overdue_launches_fail_and_failed_pools_are_avoided() {
    let mut l = inst("l", Role::Launching, "b");
    l.launch_overdue = true;
    let s = snap(vec![inst("p", Role::Primary, "a"), l]);
    assert!(
        matches!(&plan(&s, 2, &CFG)[..], [Step::LaunchFailed { instance_id }] if instance_id == "l")
    );
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.failed_pools = vec![PoolKey::new("m5.large", "b")];
    assert_eq!(
        launch_pools(&s, Some(&PoolKey::new("m5.large", "a"))),
        vec![Pool::new("c5.large", "a")]
    );
}

#[test]
fn with_every_pool_avoided_a_launch_still_goes_to_the_best_allowed_one() {
    // A group pinned to one zone (its ENI) with two pools: the PRIMARY's
    // pool is interrupted and the other's last launch failed. Launching
    // nowhere leaves it without a PRIMARY for the whole cooldown.
    let mut s = snap(vec![inst("p", Role::Primary, "a")]);
    s.pools = vec![
        Pool::new("m5.large", "a"),
        Pool::new("c5.large", "a"),
        Pool::new("m5.large", "b"),
    ];
    s.pinned_zone = Some("a".into());
    s.failed_pools = vec![PoolKey::new("c5.large", "a")];
    assert_eq!(
        launch_pools(&s, Some(&PoolKey::new("m5.large", "a"))),
        vec![Pool::new("m5.large", "a"), Pool::new("c5.large", "a")],
        "both allowed pools (never the other zone), rather than none"
    );
    interrupt(&mut s, "p");
    s.instances[0].online = false;
    s.coordinator_executor = true;
    assert!(
        plan(&s, 2, &CFG)
            .iter()
            .any(|x| matches!(x, Step::Launch { .. })),
        "{:?}",
        plan(&s, 2, &CFG)
    );
}

#[test]
fn a_replica_whose_agent_reports_zombie_is_no_candidate() {
    // A store restored from a copy taken before the REPLICA's promotion
    // failed: its agent is a ZOMBIE since. Waiting on it stalls the group.
    let mut s = pr();
    s.instances[0].online = false;
    s.instances[0].silent_ms = Some(60_000);
    s.coordinator_executor = true;
    s.instances[1].reported = Some(Reported {
        role: Some(Role::Zombie),
        role_epoch: 5,
        fresh: true,
    });
    assert!(candidates(&s, None).is_empty());
    assert!(
        !plan(&s, 2, &CFG)
            .iter()
            .any(|x| matches!(x, Step::Replace { .. })),
        "{:?}",
        plan(&s, 2, &CFG)
    );
    // An older report says nothing about the role the store gave it.
    s.instances[1].reported.as_mut().unwrap().fresh = false;
    assert_eq!(candidates(&s, None).len(), 1);
}

#[test]
fn a_healthy_group_needs_nothing() {
    assert!(plan(&pr(), 2, &CFG).is_empty());
}

#[test]
fn expired_zombies_and_failed_instances_are_terminated_last() {
    let mut s = pr();
    s.expired = vec!["z1".into(), "f1".into()];
    let via = Executor::Agent("a-p".into());
    assert_eq!(
        plan(&s, 0, &CFG),
        vec![
            Step::Retire {
                instance_id: "z1".into(),
                via: via.clone()
            },
            Step::Retire {
                instance_id: "f1".into(),
                via
            },
        ]
    );
    // A failover comes first: the PRIMARY is interrupted.
    interrupt(&mut s, "p");
    assert!(matches!(&plan(&s, 0, &CFG)[..], [Step::Replace { .. }]));
    // Nobody to terminate through: nothing (the coordinator's executor off).
    let mut s = snap(vec![InstanceSnap {
        agent_id: None,
        ..inst("p", Role::Primary, "a")
    }]);
    s.expired = vec!["z1".into()];
    assert!(plan(&s, 0, &CFG).is_empty());
    s.coordinator_executor = true;
    assert!(matches!(
        &plan(&s, 0, &CFG)[..],
        [Step::Retire {
            via: Executor::Coordinator,
            ..
        }]
    ));
}

#[test]
fn an_instance_ec2_still_runs_after_its_termination_is_terminated_again() {
    let mut s = pr();
    s.unterminated = vec!["t1".into()];
    assert_eq!(
        plan(&s, 0, &CFG),
        vec![Step::Terminate {
            instance_id: "t1".into(),
            via: Executor::Agent("a-p".into())
        }]
    );
    // A manual replica group with its one REPLICA is not in the way (the
    // nemesis found a leak when it was).
    s.manual_replica = true;
    assert!(matches!(&plan(&s, 0, &CFG)[..], [Step::Terminate { .. }]));
}
