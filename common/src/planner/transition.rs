//! A transition in progress: fence every target (a demote first, EC2
//! when that fails or is not acknowledged in time), grant once all are
//! fenced, commit on the candidate's confirmation, roll over or retarget
//! when the candidate fails or is no candidate any more.

use super::{
    Decision, FenceSnap, GroupSnap, InstanceSnap, PlanConfig, Step, TransitionSnap, candidates,
    emergency_launch, executor,
};
use crate::command::CommandState;
use crate::types::Phase;

/// EC2 failures worth another fence attempt (the next may succeed).
fn transient(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("FenceTimeout" | "DeadlineExceeded" | "RequestLimitExceeded" | "InternalError")
            | Some("ServiceUnavailable" | "Unavailable" | "Throttling")
    )
}

/// What to do about one unfenced target; `Err` when fencing it is
/// impossible without an operator.
fn fence_target(
    snap: &GroupSnap,
    t: &TransitionSnap,
    target: &FenceSnap,
    cfg: &PlanConfig,
) -> Result<Option<Step>, String> {
    let inst = snap.instance(&target.instance_id);
    let demote_failed = matches!(
        target.demote,
        Some(
            CommandState::Failed
                | CommandState::Expired
                | CommandState::Stale
                | CommandState::Cancelled
        )
    );
    let needs_ec2 = target.demote.is_none()
        || demote_failed
        || t.phase_age_ms > cfg.demote_timeout_ms
        || inst.is_none_or(|i| i.ec2_gone || !i.online || i.silent_past(cfg.lease_expiry_ms));
    if !needs_ec2 {
        return Ok(None);
    }
    match target.last_fence {
        Some(CommandState::Queued | CommandState::Delivered) => return Ok(None),
        Some(CommandState::Failed) if !transient(target.last_fence_code.as_deref()) => {
            return Err(format!(
                "fencing {} through EC2 failed ({}): an operator must declare it dead",
                target.instance_id,
                target.last_fence_code.as_deref().unwrap_or("error")
            ));
        }
        _ => {}
    }
    if target.fence_attempts >= cfg.max_fence_attempts {
        return Err(format!(
            "fencing {} failed {} times: an operator must declare it dead",
            target.instance_id, target.fence_attempts
        ));
    }
    let candidate = snap.instance(&t.candidate);
    let Some(via) = executor(snap, candidate, &[target.instance_id.as_str()]) else {
        return Err(format!(
            "no live agent and no coordinator EC2 executor can fence {}",
            target.instance_id
        ));
    };
    Ok(Some(Step::Fence {
        expected_epoch: snap.epoch,
        instance_id: target.instance_id.clone(),
        epoch: target.epoch,
        attempt: target.fence_attempts + 1,
        via,
        reason: if demote_failed {
            "its demotion failed"
        } else if target.demote.is_none() {
            "it has no agent to demote it"
        } else if inst.is_none_or(|i| !i.online || i.silent_past(cfg.lease_expiry_ms)) {
            "it is silent"
        } else {
            "its demotion was not acknowledged in time"
        },
    }))
}

/// The next steps of a transition in progress.
pub(super) fn plan(snap: &GroupSnap, t: &TransitionSnap, _: i64, cfg: &PlanConfig) -> Decision {
    let e = snap.epoch;
    match t.phase {
        Phase::Demoting => {
            let mut out = Vec::new();
            let mut blocked = None;
            for target in t.targets.iter().filter(|x| !x.fenced) {
                match fence_target(snap, t, target, cfg) {
                    Ok(step) => out.extend(step),
                    Err(why) => blocked = Some(why),
                }
            }
            let cands = candidates(snap, t.old.as_deref().and_then(|o| snap.instance(o)));
            let cand_ok = cands.iter().any(|c| c.instance_id == t.candidate);
            if !cand_ok {
                if let Some(c) = cands.first() {
                    out.push(Step::Retarget {
                        expected_epoch: e,
                        candidate: c.instance_id.clone(),
                    });
                } else {
                    let old = t.old.as_deref().and_then(|o| snap.instance(o));
                    out.extend(emergency_launch(
                        snap,
                        None,
                        old.map(InstanceSnap::pool).as_ref(),
                        "replacement waiting for a candidate",
                    ));
                }
            } else if t.targets.iter().all(|x| x.fenced) && !t.ec2_view_pending {
                out.push(Step::Grant {
                    expected_epoch: e,
                    reason: "every fence target is shown not to serve",
                });
            }
            Decision {
                steps: out,
                blocked,
            }
        }
        Phase::Promoting => {
            let roll = |reason| {
                vec![Step::RollOver {
                    expected_epoch: e,
                    reason,
                }]
                .into()
            };
            match t.candidate_outcome {
                Some(CommandState::Done) => vec![Step::Commit { expected_epoch: e }].into(),
                _ if t.candidate_reports_primary => vec![Step::Commit { expected_epoch: e }].into(),
                Some(_) => roll("the candidate's promotion failed"),
                None if t.phase_age_ms > cfg.promotion_timeout_ms + snap.handover_ms => {
                    roll("the candidate did not confirm in time")
                }
                None => Decision::default(),
            }
        }
    }
}
