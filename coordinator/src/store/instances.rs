//! Instances and their roles. `write_role` is the one writer of
//! `instances.role`: every change is checked by the state machine
//! (`spot_common::state::next`), written with an optimistic version and
//! from-role check, and audited.

use super::rows::{self, INSTANCE_COLS};
use super::{Read, Result, StoreError, Txn};
use crate::store::audit::Entity;
use crate::store::engine::{Conn, ConnExt, params};
use serde_json::json;
use spot_common::state::next;
use spot_common::wire::{BulkTerminateItem, InstanceView};
use spot_common::{Command, CommandKind, Role, RoleEvent};

impl Txn<'_> {
    /// Apply `event` to `instance` and return its new role.
    pub fn role_event(&mut self, instance: &str, event: RoleEvent) -> Result<Role> {
        let inst = self.instance(instance)?;
        let to = next(inst.role, event)?;
        self.write_role(&inst, to, event)?;
        Ok(to)
    }

    /// Write a checked role change; the role's epoch is the group's epoch
    /// at the change (for a promotion: the epoch it was granted at).
    fn write_role(&mut self, inst: &InstanceView, to: Role, event: RoleEvent) -> Result<()> {
        let epoch = self.group(&inst.group)?.epoch;
        let n = self.tx.execute(
            "UPDATE instances SET role = ?1, version = version + 1, updated_at_ms = ?2,
                 role_epoch = ?6
             WHERE instance_id = ?3 AND version = ?4 AND role = ?5",
            params![
                to.as_str(),
                self.now_ms(),
                inst.instance_id,
                inst.version,
                inst.role.as_str(),
                super::to_i64(epoch)
            ],
        )?;
        if n != 1 {
            return Err(StoreError::VersionConflict(format!(
                "instance {} changed concurrently",
                inst.instance_id
            )));
        }
        self.audit(
            Entity::Instance(&inst.instance_id),
            event.as_str(),
            &json!({"role": inst.role}),
            &json!({"role": to}),
        )
    }

    /// EC2 says the instance is gone: TERMINATED, history kept.
    pub fn mark_gone(&mut self, instance_id: &str, reason: &str) -> Result<()> {
        self.role_event(instance_id, RoleEvent::InstanceGone)?;
        self.audit(
            Entity::Instance(instance_id),
            "gone",
            &json!({}),
            &json!({"reason": reason}),
        )
    }

    /// A launched instance never registered healthy in time: FAILED.
    pub fn launch_failed(&mut self, instance_id: &str) -> Result<()> {
        self.role_event(instance_id, RoleEvent::LaunchFailed)
            .map(|_| ())
    }

    /// Retire a REPLICA (or ZOMBIE, FAILED): TERMINATED, and `terminate`
    /// queued to `via` (an agent; `None`: the coordinator's executor).
    /// Returns the command's request id.
    pub fn retire(&mut self, group: &str, instance_id: &str, via: Option<&str>) -> Result<String> {
        self.role_event(instance_id, RoleEvent::Retire)?;
        let rid = spot_common::ids::terminate(instance_id);
        self.queue_terminate(group, instance_id, &rid, via)?;
        Ok(rid)
    }

    /// Terminate again a TERMINATED instance EC2 still runs (its earlier
    /// termination ended without effect), with the next attempt's id.
    pub fn terminate_again(
        &mut self,
        group: &str,
        instance_id: &str,
        via: Option<&str>,
    ) -> Result<String> {
        let attempts: u32 = self.tx.query_row(
            "SELECT COUNT(*) FROM commands WHERE subject = ?1 AND kind = 'terminate'",
            [instance_id],
            |r| r.get(0),
        )?;
        let rid = spot_common::ids::terminate_retry(instance_id, attempts);
        self.queue_terminate(group, instance_id, &rid, via)?;
        let after = json!({"attempts": attempts + 1, "request_id": rid});
        self.audit(
            Entity::Instance(instance_id),
            "terminate_again",
            &json!({}),
            &after,
        )?;
        Ok(rid)
    }

    /// Terminate ZOMBIE and FAILED instances in bulk: those named, or
    /// those `sel` selects. Each goes through an online agent of its group,
    /// else the coordinator's executor (when `coordinator_executor`), else
    /// is skipped with the reason; other roles are skipped too. With
    /// `dry_run` nothing changes. An unknown id refuses the whole request.
    pub fn bulk_terminate(
        &mut self,
        sel: &BulkSelection,
        coordinator_executor: bool,
        dry_run: bool,
    ) -> Result<Vec<BulkTerminateItem>> {
        let now = self.now_ms();
        let views: Vec<InstanceView> = if sel.ids.is_empty() {
            list(&self.tx, sel.group.as_deref())?
                .into_iter()
                .filter(|i| Some(i.role) == sel.role)
                .filter(|i| {
                    sel.older_than_ms
                        .is_none_or(|ms| now - i.updated_at_ms >= ms)
                })
                .collect()
        } else {
            let mut v = Vec::new();
            for id in &sel.ids {
                v.push(self.instance(id)?);
            }
            v
        };
        let mut out = Vec::new();
        for v in views {
            let mut item = BulkTerminateItem {
                instance_id: v.instance_id.clone(),
                group: v.group.clone(),
                role: v.role,
                in_role_s: (now - v.updated_at_ms) / 1000,
                action: "skip".into(),
                reason: None,
                request_id: None,
            };
            let gone = matches!(v.ec2_state.as_deref(), Some("shutting-down" | "terminated"));
            let via = self.online_agent(&v.group)?;
            item.reason = if !matches!(v.role, Role::Zombie | Role::Failed) {
                Some(format!(
                    "only ZOMBIE and FAILED instances are terminated in bulk; this one is {}",
                    v.role
                ))
            } else if gone {
                Some("EC2 already reports it terminated".into())
            } else if via.is_none() && !coordinator_executor {
                Some(
                    "no online agent in its group and the coordinator's EC2 executor is off".into(),
                )
            } else {
                None
            };
            if item.reason.is_none() {
                item.action = "terminate".into();
                item.request_id = Some(if dry_run {
                    spot_common::ids::terminate(&v.instance_id)
                } else {
                    self.retire(&v.group, &v.instance_id, via.as_deref())?
                });
            }
            out.push(item);
        }
        Ok(out)
    }

    /// Queue the termination `rid` of `instance_id` (10 minutes to start).
    fn queue_terminate(
        &mut self,
        group: &str,
        instance_id: &str,
        rid: &str,
        via: Option<&str>,
    ) -> Result<()> {
        let cmd = Command {
            request_id: rid.to_owned(),
            group: group.to_owned(),
            action: CommandKind::Terminate {
                instance_id: instance_id.to_owned(),
            },
            priority: spot_common::PRIORITY_NORMAL,
            epoch: self.group(group)?.epoch,
            deadline_ms: self.now_ms() + 600_000,
        };
        self.queue(via, &cmd, Some(instance_id))
    }

    /// EC2's view of `group` (its instances by the `spot:group` tag), from
    /// one of its agents or the coordinator's own EC2 executor: each known
    /// instance's state is recorded, an unknown one made by a launch of the
    /// group adopted, any other from a launch a stranger; and the group's
    /// view is current as of now (`unheard::ec2_seen_since`).
    pub fn ec2_view(&mut self, group: &str, instances: &[spot_common::Ec2State]) -> Result<()> {
        self.tx.execute(
            "UPDATE groups SET ec2_seen_at_ms = ?1 WHERE name = ?2",
            params![self.now_ms(), group],
        )?;
        for i in instances {
            if !self.set_ec2_state(group, &i.instance_id, &i.state)?
                && !self.adopt_launched(group, i)?
            {
                self.adopt_stranger(group, i)?;
            }
        }
        Ok(())
    }

    /// Record what an agent of the group saw EC2 say of a known instance,
    /// and when; `false`: the store does not know it.
    pub fn set_ec2_state(&mut self, group: &str, instance_id: &str, state: &str) -> Result<bool> {
        Ok(self.tx.execute(
            "UPDATE instances SET ec2_state = ?1, ec2_state_at_ms = ?4
             WHERE instance_id = ?2 AND group_name = ?3",
            params![state, instance_id, group, self.now_ms()],
        )? == 1)
    }

    /// An instance EC2 runs for `group`, made by one of the group's
    /// launches (its `spot:request-id` tag), that the store never heard of:
    /// the launch's result was lost (an agent killed between RunInstances
    /// and reporting). It becomes LAUNCHING as of the launch, so one that
    /// never registers is FAILED once the launch timeout has passed, and
    /// then terminated like every FAILED instance: nothing is left billing.
    pub(super) fn adopt_launched(
        &mut self,
        group: &str,
        seen: &spot_common::Ec2State,
    ) -> Result<bool> {
        let Some(rid) = &seen.request_id else {
            return Ok(false);
        };
        if !matches!(
            seen.state.as_str(),
            "pending" | "running" | "stopping" | "stopped"
        ) {
            return Ok(false);
        }
        let n = self.tx.execute(
            "INSERT INTO instances (instance_id, group_name, role, instance_type,
                 availability_zone, created_at_ms, updated_at_ms, ec2_state)
             SELECT ?1, group_name, 'launching',
                    json_extract(body, '$.action.pool.instance_type'),
                    json_extract(body, '$.action.pool.availability_zone'), created_at_ms, ?2, ?3
             FROM commands WHERE request_id = ?4 AND kind = 'launch' AND group_name = ?5
             ON CONFLICT DO NOTHING",
            params![seen.instance_id, self.now_ms(), seen.state, rid, group],
        )?;
        if n == 1 {
            self.audit(
                Entity::Instance(&seen.instance_id),
                "adopted",
                &json!(null),
                &json!({"role": "launching", "request_id": rid, "ec2_state": seen.state}),
            )?;
        }
        Ok(n == 1)
    }

    /// An instance EC2 runs for `group` from a launch (its
    /// `spot:request-id` tag) this store has no record of: the store was
    /// restored from a copy older than that launch, and the instance may
    /// hold an epoch granted after the copy. It becomes LAUNCHING, marked
    /// a stranger (of unknown pool until it registers), so a replacement
    /// fences it unless it is heard first (`unheard_since`).
    pub(super) fn adopt_stranger(
        &mut self,
        group: &str,
        seen: &spot_common::Ec2State,
    ) -> Result<bool> {
        if seen.request_id.is_none()
            || !matches!(
                seen.state.as_str(),
                "pending" | "running" | "stopping" | "stopped"
            )
        {
            return Ok(false);
        }
        let n = self.tx.execute(
            "INSERT INTO instances (instance_id, group_name, role, instance_type,
                 availability_zone, created_at_ms, updated_at_ms, ec2_state, stranger)
             VALUES (?1, ?2, 'launching', '', '', ?3, ?3, ?4, 1) ON CONFLICT DO NOTHING",
            params![seen.instance_id, group, self.now_ms(), seen.state],
        )?;
        if n == 1 {
            tracing::warn!(%group, instance = %seen.instance_id, request_id = ?seen.request_id, "EC2 runs an instance of the group from a launch this store never made (restored from an older copy?): it is fenced before any grant unless heard");
            self.audit(
                Entity::Instance(&seen.instance_id),
                "stranger",
                &json!(null),
                &json!({"role": "launching", "request_id": seen.request_id, "ec2_state": seen.state}),
            )?;
        }
        Ok(n == 1)
    }

    /// A launch created `instance_id`: it is LAUNCHING from now on (so one
    /// that never registers can be marked FAILED), in the launch's pool.
    pub(super) fn insert_launched(&mut self, instance_id: &str, launch_rid: &str) -> Result<()> {
        self.tx.execute(
            "INSERT INTO instances (instance_id, group_name, role, instance_type,
                 availability_zone, created_at_ms, updated_at_ms)
             SELECT ?1, group_name, 'launching',
                    json_extract(body, '$.action.pool.instance_type'),
                    json_extract(body, '$.action.pool.availability_zone'), ?2, ?2
             FROM commands WHERE request_id = ?3 AND kind = 'launch'
             ON CONFLICT DO NOTHING",
            params![instance_id, self.now_ms(), launch_rid],
        )?;
        Ok(())
    }
}

/// What a bulk terminate selects when it names no ids.
#[derive(Debug, Clone, Default)]
pub struct BulkSelection {
    pub ids: Vec<String>,
    pub role: Option<Role>,
    pub group: Option<String>,
    pub older_than_ms: Option<i64>,
}

pub fn list(conn: &dyn Conn, group: Option<&str>) -> Result<Vec<InstanceView>> {
    let stmt = conn.prepare(&format!(
        "SELECT {INSTANCE_COLS} FROM instances WHERE ?1 IS NULL OR group_name = ?1
         ORDER BY group_name, created_at_ms, instance_id"
    ))?;
    let rows = stmt
        .query_map([group], rows::instance_row)?
        .collect::<Result<_>>()?;
    Ok(rows)
}
