//! The promotion protocol's transactions: T1 replace, T2 grant, T3 commit,
//! roll-over and retarget (docs/STATE_MACHINE.md).
//!
//! The group's transition lives in `groups.transition` (JSON, one row): a
//! coordinator killed in the middle of a promotion resumes it from there.
//! Every step checks the epoch it was decided against, and the grant
//! checks, in its own transaction, that every fence target is fenced
//! (`fence::fenced`): the store itself refuses to promote past an
//! unfenced instance, whatever the planner decided.

use super::fence::{self, fenced};
use super::unheard::{Ready, restored_epoch_floor};
use super::{Read, Result, StoreError, Txn};
use crate::store::audit::Entity;
use crate::store::engine::{Conn, ConnExt, OptionalExtension, params};
use serde_json::json;
use spot_common::ids;
use spot_common::wire::{FenceTarget, TransitionStatus, TransitionView};
use spot_common::{Command, CommandKind, Phase, Promotion, Role, RoleError, RoleEvent};

/// T1, as the planner or an operator asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaceRequest {
    pub group: String,
    pub candidate: String,
    /// The group epoch the decision was made against.
    pub expected_epoch: u64,
    pub emergency: bool,
    /// Unix ms the new PRIMARY must serve by; `None`: 60 s from now.
    pub deadline_ms: Option<i64>,
    pub reason: String,
    /// The manual switch this replacement completes.
    pub switch_id: Option<i64>,
    /// The candidate must finish its promotion within this after the
    /// grant (shorter than the coordinator's promotion timeout, so a late
    /// promotion is abandoned by the agent before it is rolled over).
    pub promote_budget_ms: i64,
    /// Unix ms this coordinator started. An instance of the group created
    /// before and not heard since may hold an epoch this store never saw
    /// (the store was restored from an older copy while it was promoted):
    /// it becomes a fence target, so nothing is granted until it is heard
    /// or fenced.
    pub heard_since_ms: i64,
}

/// What a replacement started or became.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromoteResult {
    pub group: String,
    pub epoch: u64,
    pub phase: Phase,
    pub promoted: String,
    pub demoted: Option<String>,
    /// Request ids of the commands queued.
    pub commands: Vec<String>,
}

fn check_epoch(actual: u64, expected: u64) -> Result<()> {
    if actual != expected {
        return Err(RoleError::StaleEpoch { expected, actual }.into());
    }
    Ok(())
}

/// Until when the candidate granted at `now` may promote: the whole promote
/// budget from now (the agent abandons a promotion that cannot finish in
/// it, before the coordinator rolls it over), capped by the notice only
/// while the notice is still ahead. A grant that lands late (a slow
/// demote, a second fence, a replacement that booted after the reclaim)
/// gets its full budget: a window already past would only get its hook
/// killed, its instance fenced and another launched, round after round.
pub fn grant_window(t: &TransitionView, now: i64) -> i64 {
    let window = now.saturating_add(t.promote_budget_ms);
    match t.notice_at_ms {
        Some(notice) if notice > now => window.min(notice).max(now + 1_000),
        _ => window,
    }
}

/// The group's transition, each fence target's evidence, and in words what
/// it waits for.
pub fn status(conn: &dyn Conn, group: &str) -> Result<Option<TransitionStatus>> {
    let Some(t) = super::rows::group(conn, group)?.transition else {
        return Ok(None);
    };
    let targets = t
        .fence
        .iter()
        .map(|target| fence::snap(conn, target, t.started_at_ms))
        .collect::<Result<Vec<_>>>()?;
    let promote = super::commands::state(conn, &ids::promote(&t.candidate, t.epoch))?;
    let granted = t.phase == Phase::Promoting
        || t.fence
            .iter()
            .any(|f| Some(&f.instance_id) != t.old.as_ref());
    let waiting_for = match t.phase {
        Phase::Promoting => format!(
            "{} to finish promoting at epoch {} (its promote command: {})",
            t.candidate,
            t.epoch,
            promote.map_or("not queued: no agent".to_owned(), |s| s.to_string())
        ),
        _ => {
            let open: Vec<String> = targets
                .iter()
                .filter(|x| !x.fenced)
                .map(|x| {
                    let demote = x.demote.map_or("none queued".to_owned(), |s| s.to_string());
                    let fence = match (&x.last_fence, &x.last_fence_code) {
                        (None, _) => "no EC2 fence yet".to_owned(),
                        (Some(s), Some(code)) => {
                            format!("{} EC2 fence(s), last {s} ({code})", x.fence_attempts)
                        }
                        (Some(s), None) => format!("{} EC2 fence(s), last {s}", x.fence_attempts),
                    };
                    format!("{} to be fenced (demote: {demote}; {fence})", x.instance_id)
                })
                .collect();
            if open.is_empty() && !super::unheard::ec2_seen_since(conn, group, t.heard_since_ms)? {
                format!(
                    "EC2's view of the group since the coordinator started (asked of its \
                     agents), then the grant of {} (every fence target is fenced)",
                    t.candidate
                )
            } else if open.is_empty() {
                format!(
                    "the grant of {} (every fence target is fenced)",
                    t.candidate
                )
            } else {
                open.join("; ")
            }
        }
    };
    Ok(Some(TransitionStatus {
        abortable: !granted,
        transition: t,
        targets,
        promote,
        waiting_for,
    }))
}

/// A committed promotion: the new PRIMARY, and the downtime of the manual
/// switch it completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub primary: String,
    pub switch_downtime_ms: Option<i64>,
    /// An interruption's or a lost PRIMARY's failover, not a planned one.
    pub emergency: bool,
    /// From the transition's start to this commit.
    pub duration_ms: i64,
}

impl Txn<'_> {
    /// Queue a role command of the transition `t` to `instance`'s agent;
    /// `None` when it has no agent.
    fn queue_role_command(
        &mut self,
        instance: &str,
        group: &str,
        request_id: String,
        action: CommandKind,
        t: &TransitionView,
        deadline_ms: i64,
    ) -> Result<Option<String>> {
        let Some(agent) = self.instance(instance)?.agent_id else {
            return Ok(None);
        };
        let cmd = Command {
            request_id,
            group: group.to_owned(),
            action,
            priority: t.priority,
            epoch: t.epoch,
            deadline_ms,
        };
        self.queue(Some(&agent), &cmd, Some(instance))?;
        Ok(Some(cmd.request_id))
    }

    fn demote(
        &mut self,
        instance: &str,
        group: &str,
        t: &TransitionView,
    ) -> Result<Option<String>> {
        let deadline = t.deadline_ms.max(self.now_ms() + 5_000);
        self.queue_role_command(
            instance,
            group,
            ids::demote(instance, t.epoch),
            CommandKind::Demote,
            t,
            deadline,
        )
    }

    pub(super) fn all_fenced(&self, t: &TransitionView) -> Result<bool> {
        for target in &t.fence {
            if !fenced(&self.tx, target, t.started_at_ms)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// T1: start replacing the PRIMARY (or, with none, promoting) by the
    /// candidate: the old PRIMARY is demoted at the new epoch and becomes
    /// the transition's fence target. With nothing to fence, granted at
    /// once.
    pub fn begin_replace(&mut self, req: &ReplaceRequest) -> Result<PromoteResult> {
        let group = req.group.as_str();
        let g = self.group(group)?;
        if let Some(t) = &g.transition {
            return Err(StoreError::InProgress(format!(
                "group {group} is already replacing its PRIMARY ({} -> {}, phase {})",
                t.old.as_deref().unwrap_or("-"),
                t.candidate,
                t.phase
            )));
        }
        check_epoch(g.epoch, req.expected_epoch)?;
        let cand = self.instance(&req.candidate)?;
        if cand.group != group {
            return Err(StoreError::NotFound {
                what: "instance",
                id: format!("{} in group {group}", req.candidate),
            });
        }
        spot_common::state::next(cand.role, RoleEvent::Promote)?;
        let unheard = self.unheard_since(group, req.heard_since_ms, &req.candidate)?;
        let mut epoch = self.next_epoch(group, g.epoch)?;
        if !unheard.is_empty() || !self.ec2_seen_since(group, req.heard_since_ms)? {
            // The store may be a restored copy: someone it cannot hear may
            // hold an epoch it never saw. Jump clear of any it could be.
            epoch = restored_epoch_floor(epoch, self.now_ms());
        }
        let now = self.now_ms();
        let fence: Vec<FenceTarget> = g
            .primary
            .iter()
            .cloned()
            .chain(
                unheard
                    .into_iter()
                    .filter(|i| g.primary.as_ref() != Some(i)),
            )
            .map(|instance_id| FenceTarget { instance_id, epoch })
            .collect();
        let t = TransitionView {
            phase: Phase::Demoting,
            old: g.primary.clone(),
            candidate: req.candidate.clone(),
            epoch,
            emergency: req.emergency,
            started_at_ms: now,
            phase_started_ms: now,
            deadline_ms: req.deadline_ms.unwrap_or(now + 60_000),
            notice_at_ms: req.deadline_ms,
            priority: if req.emergency {
                spot_common::PRIORITY_EMERGENCY
            } else {
                spot_common::PRIORITY_NORMAL
            },
            reason: req.reason.clone(),
            switch_id: req.switch_id,
            fence,
            // The agent moves the data volumes inside its promote window.
            promote_budget_ms: req.promote_budget_ms + g.config.volume_handover_ms(),
            heard_since_ms: req.heard_since_ms,
        };
        self.audit(
            Entity::Group(group),
            "replace",
            &json!({"epoch": g.epoch, "primary": g.primary}),
            &json!({"epoch": epoch, "candidate": req.candidate, "reason": req.reason}),
        )?;
        let mut result = PromoteResult {
            group: group.into(),
            epoch,
            phase: Phase::Demoting,
            promoted: req.candidate.clone(),
            demoted: g.primary.clone(),
            commands: Vec::new(),
        };
        for target in &t.fence {
            result
                .commands
                .extend(self.demote(&target.instance_id, group, &t)?);
        }
        if t.fence.len() > usize::from(g.primary.is_some()) {
            let unheard: Vec<&str> = t.fence.iter().map(|f| f.instance_id.as_str()).collect();
            self.audit(
                Entity::Group(group),
                "fence_unheard",
                &json!({"heard_since_ms": req.heard_since_ms}),
                &json!({"epoch": epoch, "fence": unheard}),
            )?;
        }
        self.write_transition(group, Some(&t), epoch)?;
        let mut t = t;
        if self.may_grant(group, &mut t)? == Ready::Grant {
            result.commands = self.grant_transition(group, &g.config.promotion, t)?;
            result.phase = Phase::Promoting;
        }
        Ok(result)
    }

    /// T2: every fence target is fenced; promote the candidate.
    pub fn grant(&mut self, group: &str, expected_epoch: u64) -> Result<()> {
        let g = self.group(group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(mut t) = g.transition.filter(|t| t.phase == Phase::Demoting) else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no demotion to grant"
            )));
        };
        match self.may_grant(group, &mut t)? {
            Ready::Grant => {}
            // Committed: the next pass fences the new targets.
            Ready::Extended => return Ok(()),
            Ready::Wait => {
                return Err(StoreError::NotFenced(format!(
                    "group {group}: not every fence target is shown not to serve, or EC2's view \
                     of the group since the coordinator started is not in yet"
                )));
            }
        }
        self.grant_transition(group, &g.config.promotion, t)
            .map(|_| ())
    }

    /// Returns the request ids of the role commands queued.
    fn grant_transition(
        &mut self,
        group: &str,
        promotion: &Promotion,
        mut t: TransitionView,
    ) -> Result<Vec<String>> {
        let mut queued = Vec::new();
        for target in &t.fence {
            if self.instance(&target.instance_id)?.role == Role::Primary {
                self.role_event(&target.instance_id, RoleEvent::Demote)?;
            }
        }
        let candidate = t.candidate.clone();
        let now = self.now_ms();
        let deadline = grant_window(&t, now);
        let config = self.group(group)?.config;
        let data_volumes = super::volumes::for_promote(&*self.tx, group, &config)?;
        queued.extend(self.queue_role_command(
            &candidate,
            group,
            ids::promote(&candidate, t.epoch),
            CommandKind::Promote {
                promotion: promotion.clone(),
                address_from: t.fence.iter().map(|f| f.instance_id.clone()).collect(),
                data_volumes,
            },
            &t,
            deadline,
        )?);
        t.phase = Phase::Promoting;
        t.phase_started_ms = now;
        self.audit(
            Entity::Group(group),
            "grant",
            &json!({"fenced": t.fence}),
            &json!({"candidate": t.candidate, "epoch": t.epoch}),
        )?;
        self.write_transition(group, Some(&t), t.epoch)?;
        Ok(queued)
    }

    /// Point a waiting transition at another candidate.
    pub fn retarget(&mut self, group: &str, expected_epoch: u64, candidate: &str) -> Result<()> {
        let g = self.group(group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(mut t) = g.transition.filter(|t| t.phase == Phase::Demoting) else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no demotion in progress"
            )));
        };
        if t.fence.iter().any(|f| f.instance_id == candidate) {
            return Err(StoreError::Invalid(format!(
                "{candidate} is being fenced; it cannot be the candidate"
            )));
        }
        self.audit(
            Entity::Group(group),
            "retarget",
            &json!({"candidate": t.candidate}),
            &json!({"candidate": candidate}),
        )?;
        t.candidate = candidate.to_owned();
        self.write_transition(group, Some(&t), g.epoch)
    }

    /// T3: the candidate confirmed; it is the PRIMARY. Returns it.
    pub fn commit_promotion(&mut self, group: &str, expected_epoch: u64) -> Result<Committed> {
        let g = self.group(group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(t) = g.transition.clone().filter(|t| t.phase == Phase::Promoting) else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no promotion to commit"
            )));
        };
        self.role_event(&t.candidate, RoleEvent::Promote)?;
        if g.config.auto_terminate
            && let Some(old) = &t.old
            && self.instance(old)?.role == Role::Zombie
        {
            self.role_event(old, RoleEvent::Retire)?;
            let deadline = self.now_ms() + 600_000;
            self.queue_role_command(
                &t.candidate,
                group,
                ids::terminate(old),
                CommandKind::Terminate {
                    instance_id: old.clone(),
                },
                &t,
                deadline,
            )?;
        }
        let switch_downtime_ms = match t.switch_id {
            Some(sw) => self.finish_switch(sw, &t)?,
            None => None,
        };
        let duration_ms = self.now_ms() - t.started_at_ms;
        self.audit(
            Entity::Group(group),
            "commit",
            &json!({"primary": t.old, "epoch": g.epoch}),
            &json!({
                "primary": t.candidate, "epoch": g.epoch, "emergency": t.emergency,
                "reason": t.reason, "duration_ms": duration_ms,
                "switch_downtime_ms": switch_downtime_ms,
            }),
        )?;
        self.write_transition(group, None, g.epoch)?;
        Ok(Committed {
            duration_ms,
            emergency: t.emergency,
            primary: t.candidate,
            switch_downtime_ms,
        })
    }

    /// The switch's downtime: promote done minus demote delivered.
    fn finish_switch(&mut self, switch_id: i64, t: &TransitionView) -> Result<Option<i64>> {
        let demote_started: Option<i64> = match &t.old {
            Some(o) => self
                .tx
                .query_row(
                    "SELECT delivered_at_ms FROM commands WHERE request_id = ?1",
                    [ids::demote(o, t.epoch)],
                    |r| r.get(0),
                )
                .optional()?
                .flatten(),
            None => None,
        };
        let promote_done: Option<i64> = self
            .tx
            .query_row(
                "SELECT finished_at_ms FROM commands WHERE request_id = ?1",
                [ids::promote(&t.candidate, t.epoch)],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        self.tx.execute(
            "UPDATE switches SET state = 'done', to_instance = ?1, demote_started_ms = ?2,
                 promote_done_ms = ?3, downtime_ms = ?3 - ?2 WHERE id = ?4",
            params![t.candidate, demote_started, promote_done, switch_id],
        )?;
        Ok(promote_done.zip(demote_started).map(|(p, d)| p - d))
    }

    /// The candidate failed or did not confirm: it may have half-promoted,
    /// so it becomes a fence target at a new epoch (demoted now, fenced
    /// through EC2 if that is not acknowledged), and the transition waits
    /// for it to be fenced before granting the next candidate.
    pub fn roll_over(&mut self, group: &str, expected_epoch: u64, reason: &str) -> Result<()> {
        let g = self.group(group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(mut t) = g.transition.clone() else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no transition"
            )));
        };
        self.tx.execute(
            "UPDATE commands SET state = 'cancelled', finished_at_ms = ?2
             WHERE request_id = ?1 AND state IN ('queued', 'delivered')",
            params![ids::promote(&t.candidate, t.epoch), self.now_ms()],
        )?;
        let epoch = self.next_epoch(group, g.epoch)?;
        t.epoch = epoch;
        let candidate = t.candidate.clone();
        if !t.fence.iter().any(|f| f.instance_id == candidate) {
            t.fence.push(FenceTarget {
                instance_id: candidate.clone(),
                epoch,
            });
        }
        self.demote(&candidate, group, &t)?;
        t.phase = Phase::Demoting;
        t.phase_started_ms = self.now_ms();
        if let Some(sw) = t.switch_id.take() {
            self.tx
                .execute("UPDATE switches SET state = 'failed' WHERE id = ?1", [sw])?;
        }
        self.audit(
            Entity::Group(group),
            "roll_over",
            &json!({"epoch": g.epoch, "candidate": candidate}),
            &json!({"epoch": epoch, "reason": reason, "fence": t.fence}),
        )?;
        self.write_transition(group, Some(&t), epoch)
    }

    /// An operator ends a transition that waits (a fence that never comes,
    /// a demote hook that keeps failing), before anything was granted in
    /// it: nobody can be PRIMARY at its epoch, so ending it cannot make a
    /// second one. The old PRIMARY's undelivered demote is cancelled and it
    /// stays the store's PRIMARY; the group is paused, so the planner does
    /// not start the same transition again before the operator has looked.
    /// Refused once a candidate was granted (it may be promoting: it must
    /// be fenced, which the transition is doing). Audited.
    pub fn abort_transition(&mut self, group: &str, expected_epoch: u64) -> Result<TransitionView> {
        let g = self.group(group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(t) = g.transition.clone() else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no transition to abort"
            )));
        };
        let granted: Vec<&str> = t
            .fence
            .iter()
            .map(|f| f.instance_id.as_str())
            .filter(|i| Some(*i) != t.old.as_deref())
            .chain((t.phase == Phase::Promoting).then_some(t.candidate.as_str()))
            .collect();
        let old_still_primary = match &t.old {
            Some(o) => self.instance(o)?.role == Role::Primary,
            None => true,
        };
        if !granted.is_empty() || !old_still_primary {
            return Err(StoreError::Refused {
                code: "transition_granted",
                message: format!(
                    "group {group}'s transition (epoch {}) granted {}: it may be promoting, and \
                     aborting would leave it unfenced. The transition fences it; declare it dead \
                     if you know it does not serve",
                    t.epoch,
                    if granted.is_empty() {
                        t.candidate.clone()
                    } else {
                        granted.join(", ")
                    }
                ),
            });
        }
        if let Some(old) = &t.old {
            self.tx.execute(
                "UPDATE commands SET state = 'cancelled', finished_at_ms = ?2
                 WHERE request_id = ?1 AND state = 'queued'",
                params![ids::demote(old, t.epoch), self.now_ms()],
            )?;
        }
        if let Some(sw) = t.switch_id {
            self.tx
                .execute("UPDATE switches SET state = 'failed' WHERE id = ?1", [sw])?;
        }
        let mut config = g.config.clone();
        config.paused = true;
        self.update_group(group, &config, g.version)?;
        self.audit(
            Entity::Group(group),
            "abort_transition",
            &json!({"transition": t}),
            &json!({"transition": null, "epoch": g.epoch, "paused": true}),
        )?;
        self.write_transition(group, None, g.epoch)?;
        Ok(t)
    }
}
