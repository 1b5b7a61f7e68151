//! Fencing: the evidence that an instance does not serve, the EC2 fence
//! command (STONITH), and an operator's "declared dead".
//!
//! An instance is *fenced* when one of these holds, and only then:
//! * its agent acknowledged a demotion (`demote` at the target's epoch or
//!   later, finished `done`: the `demote` hook succeeded);
//! * its agent reported a self-demotion with a successful hook since the
//!   transition started;
//! * a `fence` command about it finished `done`, reported by the agent it
//!   was given to (or the coordinator's executor): EC2 terminated it. An
//!   agent's DescribeInstances report that it is terminated is no
//!   evidence (any enrolled instance could send one): it only makes the
//!   planner look, through a fence command;
//! * an operator declared it dead during this transition, as one of its
//!   fence targets, and its agent has not been heard since.
//!
//! No clock appears here: silence only makes the planner send a fence.

use super::{Read, Result, StoreError, Txn};
use crate::store::audit::Entity;
use crate::store::engine::{Conn, ConnExt, params};
use serde_json::json;
use spot_common::planner::FenceSnap;
use spot_common::wire::FenceTarget;
use spot_common::{Command, CommandKind, CommandState, ids};

/// Whether `target` is shown not to serve (see the module docs).
pub fn fenced(conn: &dyn Conn, target: &FenceTarget, since_ms: i64) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = ?1
                          AND i.declared_dead_at_ms >= ?3
                          AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.instance_id = ?1
                                            AND a.last_heartbeat_ms > i.declared_dead_at_ms))
             OR EXISTS (SELECT 1 FROM commands WHERE subject = ?1 AND kind IN ('demote', 'fence')
                          AND state = 'done' AND epoch >= ?2)
             OR EXISTS (SELECT 1 FROM events e JOIN agents a ON a.agent_id = e.agent_id
                          WHERE a.instance_id = ?1 AND e.kind = 'self_demoted'
                            AND CAST(json_extract(e.body, '$.hook_ok') AS BIGINT) = 1 AND e.received_at_ms >= ?3)",
        params![target.instance_id, super::to_i64(target.epoch), since_ms],
        |r| r.get(0),
    )
}

/// What the planner needs to know about one fence target.
pub fn snap(conn: &dyn Conn, target: &FenceTarget, since_ms: i64) -> Result<FenceSnap> {
    let demote = super::commands::state(conn, &ids::demote(&target.instance_id, target.epoch))?;
    let stmt = conn.prepare_cached(
        "SELECT state, json_extract(result, '$.error_code') FROM commands
         WHERE subject = ?1 AND kind = 'fence' AND epoch >= ?2 AND created_at_ms >= ?3
         ORDER BY created_at_ms, request_id",
    )?;
    let fences: Vec<(String, Option<String>)> = stmt
        .query_map(
            params![target.instance_id, super::to_i64(target.epoch), since_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_>>()?;
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
    /// cut off from its data). The declaration is scoped: `instance` must be
    /// a fence target of the group's transition, and it counts as fenced
    /// only for that transition and only until its agent is heard again.
    /// `heard_ms_ago` is how long its agent has been silent (`None`: no
    /// agent, or never heard); one heard within `lease_ms` is refused
    /// unless `force` (audited as forced). Returns the transition's epoch.
    pub fn declare_dead(
        &mut self,
        group: &str,
        instance: &str,
        heard_ms_ago: Option<i64>,
        lease_ms: i64,
        force: bool,
    ) -> Result<u64> {
        let inst = self.instance(instance)?;
        if inst.group != group {
            return Err(StoreError::NotFound {
                what: "instance",
                id: format!("{instance} in group {group}"),
            });
        }
        let g = self.group(group)?;
        let Some(t) = g.transition else {
            return Err(StoreError::Refused {
                code: "no_transition",
                message: format!(
                    "group {group} has no transition: declaring {instance} dead would fence nothing"
                ),
            });
        };
        if !t.fence.iter().any(|f| f.instance_id == instance) {
            let targets: Vec<&str> = t.fence.iter().map(|f| f.instance_id.as_str()).collect();
            return Err(StoreError::Refused {
                code: "not_a_fence_target",
                message: format!(
                    "{instance} is not a fence target of group {group}'s transition (epoch {}, targets: {})",
                    t.epoch,
                    if targets.is_empty() {
                        "none".to_owned()
                    } else {
                        targets.join(", ")
                    }
                ),
            });
        }
        let live = heard_ms_ago.is_some_and(|ms| ms < lease_ms);
        if live && !force {
            return Err(StoreError::Refused {
                code: "instance_live",
                message: format!(
                    "{instance}'s agent was heard {} ms ago, within its lease ({lease_ms} ms): it \
                     may still serve. Fence it through EC2, or pass force if you know it does not",
                    heard_ms_ago.unwrap_or_default()
                ),
            });
        }
        self.tx.execute(
            "UPDATE instances SET declared_dead_at_ms = ?1 WHERE instance_id = ?2",
            params![self.now_ms(), instance],
        )?;
        self.audit(
            Entity::Instance(instance),
            "declared_dead",
            &json!({"role": inst.role, "heard_ms_ago": heard_ms_ago}),
            &json!({"declared_dead": true, "transition_epoch": t.epoch, "forced": live && force}),
        )?;
        Ok(t.epoch)
    }
}
