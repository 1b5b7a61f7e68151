//! The planner's rules, in priority order. Each answers `None` ("not my
//! case, ask the next rule") or `Some(decision)` ("decided": possibly no
//! step now, e.g. waiting for a fence). docs/STATE_MACHINE.md lists them.

use super::{
    Decision, Executor, GroupSnap, InstanceSnap, PlanConfig, Step, SwitchSnap, candidates,
    emergency_launch, executor, launch_pools,
};
use crate::command::{CommandState, NoticeKind};
use crate::types::{Pool, PoolKey, Role};

pub type Rule = fn(&GroupSnap, i64, &PlanConfig) -> Option<Decision>;

/// Every rule, highest priority first.
pub const RULES: &[(&str, Rule)] = &[
    ("paused", paused),
    ("gone", gone),
    ("launch_overdue", launch_overdue),
    ("transition", transition),
    ("no_primary", no_primary),
    ("interruption", interruption),
    ("silent_primary", silent_primary),
    ("primary_not_serving", primary_not_serving),
    ("switch", switch),
    ("maintenance", maintenance),
    ("manual_replica", manual_replica),
    ("rebalance", rebalance),
    ("cleanup", cleanup),
];

fn steps(s: Vec<Step>) -> Option<Decision> {
    Some(s.into())
}

/// Paused: no decision of our own, but a promotion an operator started is
/// carried through.
fn paused(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Decision> {
    if !snap.paused {
        return None;
    }
    Some(match &snap.transition {
        Some(t) => super::transition::plan(snap, t, now_ms, cfg),
        None => Decision::default(),
    })
}

/// Instances EC2 has taken away, or whose interruption took effect while
/// their agent fell silent: TERMINATED, history kept. The PRIMARY and the
/// instances of a transition are settled by the other rules.
fn gone(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Decision> {
    let s: Vec<Step> = snap
        .instances
        .iter()
        .filter(|i| {
            i.ec2_gone
                || (!i.online
                    && snap
                        .interruption(&i.instance_id)
                        .and_then(|n| n.effective_at_ms)
                        .is_some_and(|t| now_ms > t + cfg.notice_grace_ms))
        })
        .filter(|i| {
            snap.transition.as_ref().is_none_or(|t| {
                t.old.as_deref() != Some(&i.instance_id)
                    && t.candidate != i.instance_id
                    && !t.is_target(&i.instance_id)
            })
        })
        .filter(|i| i.role != Role::Primary)
        .map(|i| Step::Gone {
            instance_id: i.instance_id.clone(),
            reason: if i.ec2_gone {
                "EC2 shows it shutting down or terminated"
            } else {
                "silent past its interruption time"
            },
        })
        .collect();
    (!s.is_empty()).then(|| s.into())
}

/// Launched instances that never registered: FAILED.
fn launch_overdue(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Decision> {
    let s: Vec<Step> = snap
        .instances
        .iter()
        .filter(|i| i.role == Role::Launching && i.launch_overdue)
        .map(|i| Step::LaunchFailed {
            instance_id: i.instance_id.clone(),
        })
        .collect();
    (!s.is_empty()).then(|| s.into())
}

/// A transition in progress: fence, grant, commit, roll over or retarget.
fn transition(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Decision> {
    let t = snap.transition.as_ref()?;
    Some(super::transition::plan(snap, t, now_ms, cfg))
}

/// Replace the PRIMARY `p` by the best candidate, or, with none, do
/// `otherwise` (launch one first).
fn replace_else(
    snap: &GroupSnap,
    p: &InstanceSnap,
    why: &'static str,
    otherwise: impl FnOnce() -> Vec<Step>,
) -> Option<Decision> {
    match candidates(snap, Some(p)).first() {
        Some(c) => steps(vec![replace(Some(p), c, snap, None, why)]),
        None => steps(otherwise()),
    }
}

/// An emergency replacement of `p` (or of nobody) by `c`.
fn replace(
    p: Option<&InstanceSnap>,
    c: &InstanceSnap,
    snap: &GroupSnap,
    deadline_ms: Option<i64>,
    reason: &'static str,
) -> Step {
    Step::Replace {
        old: p.map(|p| p.instance_id.clone()),
        candidate: c.instance_id.clone(),
        expected_epoch: snap.epoch,
        emergency: p.is_some(),
        deadline_ms,
        switch_id: None,
        reason,
    }
}

/// No PRIMARY: promote the best candidate; with none, launch one through
/// any live agent (or the coordinator's executor), away from an
/// interrupted pool. A group that never had an instance waits for its
/// first.
fn no_primary(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Decision> {
    if snap.primary().is_some() {
        return None;
    }
    if let Some(c) = candidates(snap, None).first() {
        return steps(vec![replace(None, c, snap, None, "group has no PRIMARY")]);
    }
    if !snap.had_instances {
        return steps(Vec::new());
    }
    let avoid: Option<PoolKey> = snap
        .notices
        .iter()
        .filter(|n| n.kind == NoticeKind::Interruption)
        .find_map(|n| snap.instance(&n.instance_id))
        .map(InstanceSnap::pool);
    steps(emergency_launch(
        snap,
        None,
        avoid.as_ref(),
        "no PRIMARY and no candidate left",
    ))
}

/// Interruption notice on the PRIMARY: replace it with the best candidate
/// at emergency priority, the notice time as deadline; with none, launch a
/// replacement at once into the fastest-booting pool, never the
/// interrupted one.
fn interruption(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Decision> {
    let p = snap.primary()?;
    let n = snap.interruption(&p.instance_id)?;
    if let Some(c) = candidates(snap, Some(p)).first() {
        return steps(vec![replace(
            Some(p),
            c,
            snap,
            n.effective_at_ms,
            "interruption notice on the PRIMARY",
        )]);
    }
    steps(emergency_launch(
        snap,
        Some(p),
        Some(&p.pool()),
        "interruption notice on the PRIMARY and no REPLICA",
    ))
}

/// PRIMARY silent past its lease expiry (or EC2 shows it going): replace
/// it (the transition fences it through EC2 before anything is granted);
/// with no candidate, launch one first and fence when it is ready (killing
/// a PRIMARY that may only be cut off from the coordinator, before there
/// is a replacement, would turn a partition into an outage).
fn silent_primary(snap: &GroupSnap, _: i64, cfg: &PlanConfig) -> Option<Decision> {
    let p = snap.primary()?;
    if !(p.ec2_gone || p.silent_past(cfg.lease_expiry_ms)) {
        return None;
    }
    replace_else(snap, p, "PRIMARY silent past its lease (or gone)", || {
        emergency_launch(
            snap,
            None,
            Some(&p.pool()),
            "PRIMARY silent past its lease and no REPLICA",
        )
    })
}

/// The store's PRIMARY says it does not serve (it demoted itself, or its
/// agent lost its journal): the store converges: replace it.
fn primary_not_serving(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Decision> {
    let p = snap.primary()?;
    if !p.reports_not_primary() {
        return None;
    }
    replace_else(
        snap,
        p,
        "the PRIMARY's agent reports it is not serving",
        || {
            emergency_launch(
                snap,
                Some(p),
                None,
                "the PRIMARY's agent reports it is not serving and there is no REPLICA",
            )
        },
    )
}

/// Manual switch: launch into the target pool, wait healthy, replace.
fn switch(snap: &GroupSnap, _: i64, cfg: &PlanConfig) -> Option<Decision> {
    let sw = snap.switch.as_ref()?;
    if let Some(reason) = switch_failure(snap, sw, cfg) {
        return steps(vec![Step::SwitchFailed {
            switch_id: sw.id,
            reason,
        }]);
    }
    let p = snap.primary()?;
    steps(plan_switch(snap, sw, p))
}

/// Why a switch cannot finish, if it cannot: its launch failed, its new
/// instance died or never became healthy, or it is past its deadline.
/// (Never while a replacement runs: the transition rule comes first.)
fn switch_failure(snap: &GroupSnap, sw: &SwitchSnap, cfg: &PlanConfig) -> Option<&'static str> {
    if snap.primary().is_none() {
        return Some("the group lost its PRIMARY: the failover rules take over");
    }
    if sw
        .launch_state
        .is_some_and(|s| !s.is_open() && s != CommandState::Done)
    {
        return Some("the switch's launch failed");
    }
    if let Some(id) = &sw.launched_instance
        && snap.instance(id).is_none_or(|i| i.ec2_gone)
    {
        return Some("the new instance failed or is gone");
    }
    (sw.age_ms > cfg.switch_timeout_ms)
        .then_some("the new instance was not a healthy REPLICA within the switch timeout")
}

fn plan_switch(snap: &GroupSnap, sw: &SwitchSnap, p: &InstanceSnap) -> Vec<Step> {
    match &sw.launched_instance {
        None if sw.launch_request_id.is_none() => executor(snap, Some(p), &[])
            .map(|via| Step::Launch {
                via,
                pool: sw.pool.clone(),
                emergency: false,
                switch_id: Some(sw.id),
                reason: "manual switch",
            })
            .into_iter()
            .collect(),
        Some(id) => {
            let ready = snap
                .instance(id)
                .is_some_and(|i| i.role == Role::Replica && i.online && i.healthy);
            if ready {
                vec![Step::Replace {
                    old: Some(p.instance_id.clone()),
                    candidate: id.clone(),
                    expected_epoch: snap.epoch,
                    emergency: false,
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

fn replicas(snap: &GroupSnap) -> Vec<&InstanceSnap> {
    snap.instances
        .iter()
        .filter(|i| matches!(i.role, Role::Replica | Role::Launching))
        .collect()
}

fn launch(via: Executor, pool: Pool, reason: &'static str) -> Step {
    Step::Launch {
        via,
        pool,
        emergency: false,
        switch_id: None,
        reason,
    }
}

/// Scheduled maintenance (a reboot, a stop, a retirement) on the PRIMARY:
/// like a rebalance recommendation with a deadline: a REPLICA is prepared
/// at once if there is none, and the PRIMARY is switched to it
/// `maintenance_lead` before the maintenance's NotBefore. On a REPLICA: a
/// replacement is launched, then the REPLICA is retired.
fn maintenance(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Decision> {
    if let Some(p) = snap.primary()
        && let Some(n) = snap.maintenance(&p.instance_id)
    {
        let spare = candidates(snap, Some(p))
            .into_iter()
            .find(|c| snap.maintenance(&c.instance_id).is_none());
        let due = n
            .effective_at_ms
            .is_none_or(|at| now_ms >= at - cfg.maintenance_lead_ms);
        match spare {
            Some(c) if due => {
                return steps(vec![replace(
                    Some(p),
                    c,
                    snap,
                    n.effective_at_ms,
                    "scheduled maintenance on the PRIMARY",
                )]);
            }
            Some(_) => {}
            None => {
                if let Some(step) = prepare(
                    snap,
                    p,
                    "scheduled maintenance on the PRIMARY and no spare REPLICA",
                ) {
                    return steps(vec![step]);
                }
            }
        }
    }
    let p = snap.primary()?;
    let due: Vec<&InstanceSnap> = snap
        .instances
        .iter()
        .filter(|i| i.role == Role::Replica && snap.maintenance(&i.instance_id).is_some())
        .collect();
    if due.is_empty() {
        return None;
    }
    let spare = replicas(snap)
        .into_iter()
        .any(|r| snap.maintenance(&r.instance_id).is_none());
    if !spare {
        return prepare(snap, p, "scheduled maintenance on a REPLICA").and_then(|s| steps(vec![s]));
    }
    // Retired once its replacement is a healthy REPLICA.
    let ready = candidates(snap, Some(p))
        .iter()
        .any(|c| snap.maintenance(&c.instance_id).is_none());
    let via = executor(snap, Some(p), &[])?;
    ready.then(|| {
        due.iter()
            .map(|r| Step::Retire {
                instance_id: r.instance_id.clone(),
                via: via.clone(),
            })
            .collect::<Vec<_>>()
            .into()
    })
}

/// A (non-emergency) launch of a spare REPLICA away from `p`'s pool,
/// unless one is on its way or nobody can launch.
fn prepare(snap: &GroupSnap, p: &InstanceSnap, reason: &'static str) -> Option<Step> {
    if snap.launches_in_flight > 0 || snap.instances.iter().any(|i| i.role == Role::Launching) {
        return None;
    }
    let via = executor(snap, Some(p), &[])?;
    let pool = launch_pools(snap, Some(&p.pool())).into_iter().next()?;
    Some(launch(via, pool, reason))
}

/// Manual replica: exactly one REPLICA (launch if none, retire extras).
fn manual_replica(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Decision> {
    if !snap.manual_replica {
        return None;
    }
    let p = snap.primary()?;
    let replicas = replicas(snap);
    if replicas.is_empty() && snap.launches_in_flight == 0 {
        if let (Some(via), Some(pool)) = (
            executor(snap, Some(p), &[]),
            launch_pools(snap, Some(&p.pool())).into_iter().next(),
        ) {
            return steps(vec![launch(via, pool, "manual replica mode: no REPLICA")]);
        }
    } else if replicas.len() > 1
        && let Some(via) = executor(snap, Some(p), &[])
    {
        // Keep the best candidate, retire the rest.
        let keep = candidates(snap, Some(p))
            .first()
            .map(|c| c.instance_id.clone())
            .or_else(|| replicas.first().map(|r| r.instance_id.clone()));
        return steps(
            replicas
                .iter()
                .filter(|r| Some(&r.instance_id) != keep.as_ref() && r.role == Role::Replica)
                .map(|r| Step::Retire {
                    instance_id: r.instance_id.clone(),
                    via: via.clone(),
                })
                .collect(),
        );
    }
    None
}

/// Rebalance recommendation on the PRIMARY and no REPLICA: launch one in
/// another pool, at most once per `rebalance_window`.
fn rebalance(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Decision> {
    if snap.manual_replica {
        // Manual replica mode keeps its one REPLICA itself.
        return None;
    }
    let p = snap.primary()?;
    let recommended = snap
        .notices
        .iter()
        .any(|n| n.instance_id == p.instance_id && n.kind == NoticeKind::Rebalance);
    if !recommended
        || !replicas(snap).is_empty()
        || snap.launches_in_flight > 0
        || snap
            .last_proactive_launch_ms
            .is_some_and(|t| now_ms - t < cfg.rebalance_window_ms)
    {
        return None;
    }
    prepare(
        snap,
        p,
        "rebalance recommendation on the PRIMARY and no REPLICA",
    )
    .and_then(|s| steps(vec![s]))
}

/// ZOMBIE and FAILED instances past their retention: terminated; and
/// instances whose termination ended without effect: terminated again
/// (nothing is left billing). Lowest priority: never in the way of a
/// failover.
fn cleanup(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Decision> {
    if snap.expired.is_empty() && snap.unterminated.is_empty() {
        return None;
    }
    let via = executor(snap, None, &[])?;
    let retire = snap.expired.iter().map(|id| Step::Retire {
        instance_id: id.clone(),
        via: via.clone(),
    });
    let again = snap.unterminated.iter().map(|id| Step::Terminate {
        instance_id: id.clone(),
        via: via.clone(),
    });
    steps(retire.chain(again).collect())
}
