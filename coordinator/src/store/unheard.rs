//! What a coordinator cannot vouch for after a start: its store may be a
//! copy older than the fleet (restored from a backup), so an instance it
//! has not heard from since, or one EC2 runs from a launch it never made
//! (a stranger), may hold an epoch it never granted. Such instances are
//! fence targets, nothing is granted before EC2's view of the group since
//! the start is in, and the new epoch jumps clear of any they may hold.

use super::audit::Entity;
use super::{Result, Txn};
use crate::store::engine::{Conn, ConnExt, params};
use serde_json::json;
use spot_common::wire::{FenceTarget, TransitionView};

/// The epoch of a transition begun while the store may be a restored copy
/// (an instance it cannot hear, or no EC2 view yet since the start): at
/// least the coordinator's clock in Unix milliseconds. An unheard instance
/// may hold an epoch granted after the copy, which no count kept in the
/// copy can be sure to clear; the clock moved on since that grant was made
/// (and a second restore from the same copy, later, lands higher again).
/// Epochs only go up, so the jump costs nothing but bigger numbers.
pub fn restored_epoch_floor(next: u64, now_ms: i64) -> u64 {
    next.max(u64::try_from(now_ms).unwrap_or(0))
}

/// Whether a waiting transition may be granted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ready {
    Grant,
    /// New fence targets were added (and written): not yet.
    Extended,
    Wait,
}

/// Whether EC2's view of `group` (an agent's report of its instances)
/// arrived since `since_ms`, or need not have. A group created since
/// `since_ms` is known whole to this coordinator: no copy of the store can
/// be behind it. The grant checks it; the planner's snapshot shows it
/// (`TransitionSnap::ec2_view_pending`), so both wait for the same thing.
pub fn ec2_seen_since(conn: &dyn Conn, group: &str, since_ms: i64) -> Result<bool> {
    let (created, seen): (i64, Option<i64>) = conn.query_row(
        "SELECT created_at_ms, ec2_seen_at_ms FROM groups WHERE name = ?1",
        [group],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(since_ms <= 0 || created >= since_ms || seen.is_some_and(|s| s >= since_ms))
}

impl Txn<'_> {
    /// The epoch of a new grant: above the group's and above anything any
    /// of its agents is recorded holding (a store restored from an older
    /// copy must not hand out an epoch an instance already holds; an epoch
    /// an agent proves with its grant converges the group's first, and one
    /// it cannot prove is not recorded above the group's).
    pub(super) fn next_epoch(&self, group: &str, epoch: u64) -> Result<u64> {
        let reported: i64 = self.tx.query_row(
            "SELECT COALESCE(MAX(highest_epoch), 0) FROM agents WHERE group_name = ?1",
            [group],
            |r| r.get(0),
        )?;
        Ok(epoch.max(u64::try_from(reported).unwrap_or(0)) + 1)
    }

    /// Instances of `group` (but `candidate`) that may serve at an epoch
    /// the store never saw: created before `since_ms` (or strangers: from
    /// a launch the store has no record of), not shown gone, and with no
    /// agent heard since `since_ms`.
    pub(super) fn unheard_since(
        &self,
        group: &str,
        since_ms: i64,
        candidate: &str,
    ) -> Result<Vec<String>> {
        let stmt = self.tx.prepare_cached(
            "SELECT i.instance_id FROM instances i
             WHERE i.group_name = ?1 AND i.instance_id != ?3
               AND (i.created_at_ms < ?2 OR i.stranger = 1)
               -- ZOMBIE and FAILED lead only to TERMINATED: never to a later epoch.
               AND i.role NOT IN ('zombie', 'failed', 'terminated')
               AND COALESCE(i.ec2_state, '') != 'terminated'
               AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.instance_id = i.instance_id
                                 AND a.last_heartbeat_ms >= ?2)
             ORDER BY i.instance_id",
        )?;
        let ids = stmt
            .query_map(params![group, since_ms, candidate], |r| r.get(0))?
            .collect::<Result<_>>()?;
        Ok(ids)
    }

    pub(super) fn ec2_seen_since(&self, group: &str, since_ms: i64) -> Result<bool> {
        ec2_seen_since(&self.tx, group, since_ms)
    }

    /// Before a grant: instances that turned up unheard since the
    /// transition began (a stranger in EC2's view) become fence targets
    /// too, and nothing is granted until EC2's view of the group since the
    /// coordinator started is in.
    pub(super) fn may_grant(&mut self, group: &str, t: &mut TransitionView) -> Result<Ready> {
        let mut added = Vec::new();
        for id in self.unheard_since(group, t.heard_since_ms, &t.candidate)? {
            if !t.fence.iter().any(|f| f.instance_id == id) {
                t.fence.push(FenceTarget {
                    instance_id: id.clone(),
                    epoch: t.epoch,
                });
                added.push(id);
            }
        }
        if !added.is_empty() {
            self.audit(
                Entity::Group(group),
                "fence_unheard",
                &json!({"heard_since_ms": t.heard_since_ms}),
                &json!({"epoch": t.epoch, "fence": added}),
            )?;
            let epoch = t.epoch;
            self.write_transition(group, Some(t), epoch)?;
            return Ok(Ready::Extended);
        }
        if self.ec2_seen_since(group, t.heard_since_ms)? && self.all_fenced(t)? {
            Ok(Ready::Grant)
        } else {
            Ok(Ready::Wait)
        }
    }
}
