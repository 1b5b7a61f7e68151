//! The planner's rules, in priority order. Each answers `None` ("not my
//! case, ask the next rule") or `Some(steps)` ("decided": possibly no step
//! now, e.g. waiting for a fence). docs/STATE_MACHINE.md lists them.

use super::{
    GroupSnap, InstanceSnap, PlanConfig, Step, SwitchSnap, TransitionSnap, candidates, launch_pools,
};
use crate::command::{CommandState, NoticeKind};
use crate::types::{Phase, PoolKey, Role};

pub type Rule = fn(&GroupSnap, i64, &PlanConfig) -> Option<Vec<Step>>;

/// Every rule, highest priority first.
pub const RULES: &[(&str, Rule)] = &[
    ("paused", paused),
    ("gone", gone),
    ("launch_overdue", launch_overdue),
    ("transition", transition),
    ("no_primary", no_primary),
    ("interruption", interruption),
    ("silent_primary", silent_primary),
    ("switch", switch),
    ("manual_replica", manual_replica),
    ("rebalance", rebalance),
];

/// Paused: no decision of our own, but a promotion an operator started is
/// carried through.
fn paused(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Vec<Step>> {
    if !snap.paused {
        return None;
    }
    Some(match &snap.transition {
        Some(t) => plan_transition(snap, t, now_ms, cfg),
        None => Vec::new(),
    })
}

/// Instances EC2 has taken away, or whose interruption took effect while
/// their agent fell silent: TERMINATED, history kept. The PRIMARY and the
/// instances of a transition are settled by the other rules.
fn gone(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Vec<Step>> {
    let steps: Vec<Step> = snap
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
                t.old.as_deref() != Some(&i.instance_id) && t.candidate != i.instance_id
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
    (!steps.is_empty()).then_some(steps)
}

/// Launched instances that never registered: FAILED.
fn launch_overdue(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Vec<Step>> {
    let steps: Vec<Step> = snap
        .instances
        .iter()
        .filter(|i| i.role == Role::Launching && i.launch_overdue)
        .map(|i| Step::LaunchFailed {
            instance_id: i.instance_id.clone(),
        })
        .collect();
    (!steps.is_empty()).then_some(steps)
}

/// A transition in progress: grant, commit, roll over or retarget.
fn transition(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Vec<Step>> {
    let t = snap.transition.as_ref()?;
    Some(plan_transition(snap, t, now_ms, cfg))
}

/// No PRIMARY: promote the best candidate; with none, launch one through
/// any live agent of the group, away from the interrupted pool. A group
/// that never had an instance (no agent) waits for its first.
fn no_primary(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Vec<Step>> {
    if snap.primary().is_some() {
        return None;
    }
    if let Some(c) = candidates(snap, None).first() {
        return Some(vec![Step::Replace {
            old: None,
            candidate: c.instance_id.clone(),
            expected_epoch: snap.epoch,
            emergency: false,
            old_fenced: true,
            deadline_ms: None,
            switch_id: None,
            reason: "group has no PRIMARY",
        }]);
    }
    let launching = snap.instances.iter().any(|i| i.role == Role::Launching);
    let via = snap
        .instances
        .iter()
        .filter(|i| i.online)
        .find_map(|i| i.agent_id.clone());
    let avoid: Option<PoolKey> = snap
        .notices
        .iter()
        .filter(|n| n.kind == NoticeKind::Interruption)
        .find_map(|n| snap.instance(&n.instance_id))
        .map(InstanceSnap::pool);
    if !launching
        && snap.launches_in_flight == 0
        && let (Some(agent), Some(pool)) =
            (via, launch_pools(snap, avoid.as_ref()).into_iter().next())
    {
        return Some(vec![Step::Launch {
            via_agent: agent,
            pool,
            emergency: true,
            switch_id: None,
            reason: "no PRIMARY and no candidate left",
        }]);
    }
    Some(Vec::new())
}

fn silent_past_lease(p: &InstanceSnap, now_ms: i64, cfg: &PlanConfig) -> bool {
    p.ec2_gone || p.silent_for(now_ms) > cfg.lease_expiry_ms
}

/// Interruption notice on the PRIMARY: replace it with the best candidate
/// at emergency priority, the notice time as deadline; with none, its
/// agent launches a replacement at once into the fastest-booting pool,
/// never the interrupted one.
fn interruption(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Vec<Step>> {
    let p = snap.primary()?;
    let n = snap.interruption(&p.instance_id)?;
    if let Some(c) = candidates(snap, Some(p)).first() {
        return Some(vec![Step::Replace {
            old: Some(p.instance_id.clone()),
            candidate: c.instance_id.clone(),
            expected_epoch: snap.epoch,
            emergency: true,
            old_fenced: silent_past_lease(p, now_ms, cfg),
            deadline_ms: n.effective_at_ms,
            switch_id: None,
            reason: "interruption notice on the PRIMARY",
        }]);
    }
    if snap.launches_in_flight == 0
        && let (Some(agent), Some(pool)) = (
            p.agent_id.clone(),
            launch_pools(snap, Some(&p.pool())).into_iter().next(),
        )
    {
        return Some(vec![Step::Launch {
            via_agent: agent,
            pool,
            emergency: true,
            switch_id: None,
            reason: "interruption notice on the PRIMARY and no REPLICA",
        }]);
    }
    Some(Vec::new())
}

/// PRIMARY silent past its lease expiry (or gone): replace it.
fn silent_primary(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Vec<Step>> {
    let p = snap.primary()?;
    if !silent_past_lease(p, now_ms, cfg) {
        return None;
    }
    let c = candidates(snap, Some(p)).into_iter().next()?;
    Some(vec![Step::Replace {
        old: Some(p.instance_id.clone()),
        candidate: c.instance_id.clone(),
        expected_epoch: snap.epoch,
        emergency: true,
        old_fenced: true,
        deadline_ms: None,
        switch_id: None,
        reason: "PRIMARY silent past its lease (or gone)",
    }])
}

/// Manual switch: launch into the target pool, wait healthy, replace.
fn switch(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Vec<Step>> {
    let sw = snap.switch.as_ref()?;
    let p = snap.primary()?;
    Some(plan_switch(snap, sw, p))
}

fn plan_switch(snap: &GroupSnap, sw: &SwitchSnap, p: &InstanceSnap) -> Vec<Step> {
    match &sw.launched_instance {
        None if sw.launch_request_id.is_none() => p
            .agent_id
            .clone()
            .map(|agent| Step::Launch {
                via_agent: agent,
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

fn replicas(snap: &GroupSnap) -> Vec<&InstanceSnap> {
    snap.instances
        .iter()
        .filter(|i| matches!(i.role, Role::Replica | Role::Launching))
        .collect()
}

/// Manual replica: exactly one REPLICA (launch if none, retire extras).
fn manual_replica(snap: &GroupSnap, _: i64, _: &PlanConfig) -> Option<Vec<Step>> {
    if !snap.manual_replica {
        return None;
    }
    let p = snap.primary()?;
    let replicas = replicas(snap);
    if replicas.is_empty() && snap.launches_in_flight == 0 {
        if let (Some(agent), Some(pool)) = (
            p.agent_id.clone(),
            launch_pools(snap, Some(&p.pool())).into_iter().next(),
        ) {
            return Some(vec![Step::Launch {
                via_agent: agent,
                pool,
                emergency: false,
                switch_id: None,
                reason: "manual replica mode: no REPLICA",
            }]);
        }
    } else if replicas.len() > 1
        && let Some(agent) = p.agent_id.clone()
    {
        // Keep the best candidate, retire the rest.
        let keep = candidates(snap, Some(p))
            .first()
            .map(|c| c.instance_id.clone())
            .or_else(|| replicas.first().map(|r| r.instance_id.clone()));
        return Some(
            replicas
                .iter()
                .filter(|r| Some(&r.instance_id) != keep.as_ref() && r.role == Role::Replica)
                .map(|r| Step::Retire {
                    instance_id: r.instance_id.clone(),
                    via_agent: agent.clone(),
                })
                .collect(),
        );
    }
    Some(Vec::new())
}

/// Rebalance recommendation on the PRIMARY and no REPLICA: launch one in
/// another pool, at most once per `rebalance_window`.
fn rebalance(snap: &GroupSnap, now_ms: i64, cfg: &PlanConfig) -> Option<Vec<Step>> {
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
    let agent = p.agent_id.clone()?;
    let pool = launch_pools(snap, Some(&p.pool())).into_iter().next()?;
    Some(vec![Step::Launch {
        via_agent: agent,
        pool,
        emergency: false,
        switch_id: None,
        reason: "rebalance recommendation on the PRIMARY and no REPLICA",
    }])
}

fn plan_transition(
    snap: &GroupSnap,
    t: &TransitionSnap,
    now_ms: i64,
    cfg: &PlanConfig,
) -> Vec<Step> {
    let e = snap.epoch;
    match t.phase {
        Phase::Demoting => {
            let old = t.old.as_ref().and_then(|o| snap.instance(o));
            let fenced = t.old_fenced || old.is_none_or(|o| silent_past_lease(o, now_ms, cfg));
            let cand_ok = snap
                .instance(&t.candidate)
                .is_some_and(|i| i.role == Role::Replica && i.online && i.healthy && !i.ec2_gone);
            if !cand_ok
                && let Some(c) = candidates(snap, old)
                    .into_iter()
                    .find(|c| c.instance_id != t.candidate)
            {
                return vec![Step::Retarget {
                    expected_epoch: e,
                    candidate: c.instance_id.clone(),
                }];
            }
            if fenced && cand_ok {
                return vec![Step::Grant {
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
        Phase::Promoting => match t.candidate_outcome {
            Some(CommandState::Done) => vec![Step::Commit { expected_epoch: e }],
            Some(_) => vec![Step::RollOver {
                expected_epoch: e,
                reason: "the candidate's promotion failed",
            }],
            None if now_ms - t.phase_started_ms > cfg.promotion_timeout_ms => {
                vec![Step::RollOver {
                    expected_epoch: e,
                    reason: "the candidate did not confirm in time",
                }]
            }
            None => Vec::new(),
        },
    }
}
