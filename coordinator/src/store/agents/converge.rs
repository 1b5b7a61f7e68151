//! The store converges to what agents report. When an agent reports a
//! higher epoch than the store's (a store restored from an older copy, a
//! coordinator restarted onto a stale file), the store is behind reality:
//! its group epoch jumps above every epoch reported, a transition it holds
//! is abandoned (it belongs to the stale world; its commands are refused
//! as stale by agents anyway), and an agent that reports PRIMARY at the
//! reported epoch becomes the store's PRIMARY. Audited as `converged`.
//!
//! Only with proof: the agent shows the grant this coordinator signed with
//! the command that gave it its highest epoch (`crate::grants`). A report
//! without one changes nothing and is audited as `claim_refused`: an
//! instance can neither forge an epoch nor claim a PRIMARY it was not
//! granted.

use super::super::{Read, Result, Txn, to_i64};
use crate::grants::GrantError;
use crate::store::audit::Entity;
use crate::store::engine::{ConnExt, params};
use serde_json::json;
use spot_common::{Role, RoleEvent};

/// What an agent's heartbeat says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub role: Option<Role>,
    pub role_epoch: u64,
    pub highest_epoch: u64,
    /// Whether the grant the agent showed verifies for its group, its
    /// highest epoch and its instance.
    pub proof: std::result::Result<(), GrantError>,
}

impl Reported {
    /// Claims PRIMARY at the highest epoch it has seen.
    fn claims_primary(&self) -> bool {
        self.role == Some(Role::Primary) && self.role_epoch == self.highest_epoch
    }
}

impl Txn<'_> {
    /// Bring the group of `instance` up to what its agent reported; true
    /// when the store was behind and changed.
    pub fn converge_epoch(&mut self, instance: &str, reported: Reported) -> Result<bool> {
        let inst = self.instance(instance)?;
        let g = self.group(&inst.group)?;
        // The role epoch of the store's PRIMARY (0 with none, or when it is
        // the reporter itself).
        let primary_epoch = match g.primary.as_deref() {
            Some(p) if p != instance => self.instance(p)?.role_epoch,
            _ => 0,
        };
        // A PRIMARY claim above the store's PRIMARY, at or above the store's
        // epoch, with no transition of the store's own under way: the store
        // lost it (a restored copy that another agent's report already
        // raised to this epoch). It wins whichever heartbeat came first.
        let claim = reported.claims_primary()
            && reported.role_epoch >= g.epoch
            && reported.role_epoch > primary_epoch;
        let stranger = g.primary.as_deref() != Some(instance);
        let behind = reported.highest_epoch > g.epoch;
        // An epoch the store has not seen, or a PRIMARY it does not know:
        // only with the grant this coordinator signed for it (a forged
        // epoch would abandon transitions, block the real PRIMARY's claim
        // or make a stranger PRIMARY).
        if (behind || (claim && stranger))
            && let Err(e) = reported.proof
        {
            self.audit(
                Entity::Instance(instance),
                "claim_refused",
                &json!({"epoch": g.epoch, "primary": g.primary}),
                &json!({"code": e.code(), "reason": e.to_string(),
                       "role": reported.role, "claimed_epoch": reported.highest_epoch}),
            )?;
            tracing::warn!(group = %g.name, instance, epoch = reported.highest_epoch, code = e.code(),
                "an epoch or PRIMARY claim without a valid grant: refused");
            return Ok(false);
        }
        let claims_primary = claim && stranger && g.transition.is_none();
        if !behind && !claims_primary {
            return Ok(false);
        }
        let before = json!({"epoch": g.epoch, "primary": g.primary, "transition": g.transition});
        if let Some(t) = &g.transition {
            self.tx.execute(
                "UPDATE commands SET state = 'cancelled', finished_at_ms = ?2
                 WHERE group_name = ?1 AND state IN ('queued', 'delivered') AND epoch <= ?3
                   AND kind IN ('promote', 'demote', 'fence')",
                params![g.name, self.now_ms(), to_i64(t.epoch)],
            )?;
        }
        self.write_transition(&g.name, None, reported.highest_epoch.max(g.epoch))?;
        let mut adopted = false;
        if claim {
            if let Some(other) = g.primary.as_deref().filter(|p| *p != instance) {
                self.role_event(other, RoleEvent::Demote)?;
            }
            let mut role = self.instance(instance)?.role;
            if role == Role::Launching {
                role = self.role_event(instance, RoleEvent::RegisteredHealthy)?;
            }
            if role == Role::Replica {
                self.role_event(instance, RoleEvent::Promote)?;
            }
            self.tx.execute(
                "UPDATE instances SET role_epoch = ?1 WHERE instance_id = ?2",
                params![to_i64(reported.role_epoch), instance],
            )?;
            adopted = self.instance(instance)?.role == Role::Primary;
        }
        let after = self.group(&g.name)?;
        self.audit(
            Entity::Group(&g.name),
            "converged",
            &before,
            &json!({"epoch": after.epoch, "primary": after.primary,
                   "reported_by": instance, "adopted_primary": adopted}),
        )?;
        tracing::warn!(group = %g.name, from = g.epoch, to = after.epoch, reported_by = instance, adopted,
            "the store was behind an agent's epoch (restored or stale store): converged");
        Ok(true)
    }

    /// Audit a disagreement between an agent's report and the store.
    pub fn record_disagreement(
        &mut self,
        instance: &str,
        kind: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.audit(
            Entity::Instance(instance),
            "disagreement",
            &json!({"kind": kind}),
            &detail,
        )
    }
}
