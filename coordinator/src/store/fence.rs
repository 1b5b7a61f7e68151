//! Fencing: the evidence that an instance does not serve, the EC2 fence
//! command (STONITH), and an operator's "declared dead".
//!
//! An instance is *fenced* when one of these holds, and only then:
//! * its agent acknowledged a demotion (`demote` at the target's epoch or
//!   later, finished `done`: the `demote` hook succeeded);
//! * its agent reported a self-demotion with a successful hook since the
//!   transition started;
//! * EC2 reports it `terminated` (a `fence` command finished, or an
//!   agent's DescribeInstances saw it);
//! * an operator declared it dead.
//!
//! No clock appears here: silence only makes the planner send a fence.

use super::{Read, Result, StoreError, Txn};
use crate::store::audit::Entity;
use rusqlite::{Connection, params};
use serde_json::json;
use spot_common::planner::FenceSnap;
use spot_common::wire::FenceTarget;
use spot_common::{Command, CommandKind, CommandState, ids};

/// Whether `target` is shown not to serve (see the module docs).
pub fn fenced(conn: &Connection, target: &FenceTarget, since_ms: i64) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM instances WHERE instance_id = ?1
                          AND (ec2_state = 'terminated' OR declared_dead_at_ms IS NOT NULL))
             OR EXISTS (SELECT 1 FROM commands WHERE subject = ?1 AND kind IN ('demote', 'fence')
                          AND state = 'done' AND epoch >= ?2)
             OR EXISTS (SELECT 1 FROM events e JOIN agents a ON a.agent_id = e.agent_id
                          WHERE a.instance_id = ?1 AND e.kind = 'self_demoted'
                            AND json_extract(e.body, '$.hook_ok') = 1 AND e.received_at_ms >= ?3)",
        params![target.instance_id, super::to_i64(target.epoch), since_ms],
        |r| r.get(0),
    )?)
}

/// What the planner needs to know about one fence target.
pub fn snap(conn: &Connection, target: &FenceTarget, since_ms: i64) -> Result<FenceSnap> {
    let demote = super::commands::state(conn, &ids::demote(&target.instance_id, target.epoch))?;
    let mut stmt = conn.prepare_cached(
        "SELECT state, json_extract(result, '$.error_code') FROM commands
         WHERE subject = ?1 AND kind = 'fence' AND epoch >= ?2 AND created_at_ms >= ?3
         ORDER BY created_at_ms, request_id",
    )?;
    let fences: Vec<(String, Option<String>)> = stmt
        .query_map(
            params![target.instance_id, super::to_i64(target.epoch), since_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let last = fences.last().cloned();
    Ok(FenceSnap {
        instance_id: target.instance_id.clone(),
        epoch: target.epoch,
        fenced: fenced(conn, target, since_ms)?,
        demote,
        fence_attempts: u32::try_from(fences.len()).unwrap_or(u32::MAX),
        last_fence: last
            .as_ref()
            .and_then(|(s, _)| s.parse::<CommandState>().ok()),
        last_fence_code: last.and_then(|(_, c)| c),
    })
}

impl Txn<'_> {
    /// Queue the `attempt`-th EC2 fence of `instance` (demoted at `epoch`)
    /// for `via` (an agent; `None`: the coordinator's executor).
    #[allow(clippy::too_many_arguments)]
    pub fn queue_fence(
        &mut self,
        group: &str,
        expected_epoch: u64,
        instance: &str,
        epoch: u64,
        attempt: u32,
        via: Option<&str>,
        timeout_ms: i64,
    ) -> Result<String> {
        let g = self.group(group)?;
        if g.epoch != expected_epoch {
            return Err(spot_common::RoleError::StaleEpoch {
                expected: expected_epoch,
                actual: g.epoch,
            }
            .into());
        }
        let cmd = Command {
            request_id: ids::fence(instance, epoch, attempt),
            group: group.to_owned(),
            action: CommandKind::Fence {
                instance_id: instance.to_owned(),
            },
            priority: spot_common::PRIORITY_EMERGENCY,
            epoch: g.epoch,
            deadline_ms: self.now_ms() + timeout_ms,
        };
        if super::commands::command_exists(&self.tx, &cmd.request_id)? {
            return Err(StoreError::InProgress(format!(
                "{} is already queued",
                cmd.request_id
            )));
        }
        self.queue(via, &cmd, Some(instance))?;
        self.audit(Entity::Instance(instance), "fence", &json!({}), &json!({"epoch": epoch, "attempt": attempt, "via": via.unwrap_or(super::COORDINATOR_EXECUTOR)}))?;
        Ok(cmd.request_id)
    }

    /// An operator vouches that `instance` does not serve (stopped by hand,
    /// cut off from its data): it counts as fenced. Audited.
    pub fn declare_dead(&mut self, group: &str, instance: &str) -> Result<()> {
        let inst = self.instance(instance)?;
        if inst.group != group {
            return Err(StoreError::NotFound {
                what: "instance",
                id: format!("{instance} in group {group}"),
            });
        }
        self.tx.execute(
            "UPDATE instances SET declared_dead_at_ms = ?1 WHERE instance_id = ?2",
            params![self.now_ms(), instance],
        )?;
        self.audit(
            Entity::Instance(instance),
            "declared_dead",
            &json!({"role": inst.role}),
            &json!({"declared_dead": true}),
        )
    }
}
