//! The promotion protocol's transactions (T1 replace, T2 grant, T3 commit,
//! roll-over), switches, gone and retired instances, and the group snapshot
//! the failover planner reads. See docs/STATE_MACHINE.md.
//!
//! The group's transition lives in `groups.transition` (JSON, one row): a
//! coordinator killed in the middle of a promotion resumes it from there.
//! Every step checks the epoch it was decided against.

use super::{
    Result, Store, StoreError, audit, get_group_tx, get_instance_tx, queue_command_tx, to_i64,
};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::json;
use spot_common::failover::{
    GroupSnap, InstanceSnap, NoticeSnap, Phase, SwitchSnap, TransitionSnap,
};
use spot_common::state::{Transition, next};
use spot_common::wire::{SwitchView, TransitionView};
use spot_common::{Actor, Command, CommandKind, NoticeKind, Pool, Role, TransitionError};
use std::collections::HashSet;

/// A candidate whose promotion failed is not tried again for this long.
const PROMOTE_FAILURE_COOLDOWN_MS: i64 = 5 * 60 * 1000;
/// A pool where a launch failed (capacity) is avoided for this long.
const FAILED_POOL_COOLDOWN_MS: i64 = 10 * 60 * 1000;

/// What a replacement started or became.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromoteResult {
    pub group: String,
    pub epoch: u64,
    /// `demoting` or `promoting`.
    pub phase: String,
    pub promoted: String,
    pub demoted: Option<String>,
    /// Commands queued.
    pub commands: Vec<String>,
}

fn promote_id(instance: &str, epoch: u64) -> String {
    format!("promote-{instance}-e{epoch}")
}

fn demote_id(instance: &str, epoch: u64) -> String {
    format!("demote-{instance}-e{epoch}")
}

fn set_role(
    tx: &Transaction<'_>,
    instance: &str,
    t: Transition,
    actor: &Actor,
    rid: Option<&str>,
    now_ms: i64,
) -> Result<Role> {
    let inst = get_instance_tx(tx, instance)?;
    let to = next(inst.role, t)?;
    let n = tx.execute(
        "UPDATE instances SET role = ?1, version = version + 1, updated_at_ms = ?2
         WHERE instance_id = ?3 AND version = ?4",
        params![to.as_str(), now_ms, instance, inst.version],
    )?;
    if n != 1 {
        return Err(StoreError::VersionConflict(format!(
            "instance {instance} changed concurrently"
        )));
    }
    audit(
        tx,
        now_ms,
        actor,
        rid,
        &format!("instance:{instance}"),
        t.as_str(),
        json!({"role": inst.role}),
        json!({"role": to}),
    )?;
    Ok(to)
}

fn agent_of(tx: &Transaction<'_>, instance: &str) -> Result<Option<String>> {
    Ok(tx
        .query_row(
            "SELECT agent_id FROM instances WHERE instance_id = ?1",
            [instance],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

fn queue(
    tx: &Transaction<'_>,
    instance: &str,
    group: &str,
    rid: String,
    action: CommandKind,
    t: &TransitionView,
    now_ms: i64,
) -> Result<Option<String>> {
    let Some(agent) = agent_of(tx, instance)? else {
        return Ok(None);
    };
    let cmd = Command {
        request_id: rid.clone(),
        group: group.to_owned(),
        action,
        priority: t.priority,
        epoch: t.epoch,
        deadline_ms: t.deadline_ms.max(now_ms + 5_000),
    };
    // Already queued (e.g. the old PRIMARY's demote, queued at T1 and
    // queued again at T2 in case it comes back): keep the first.
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM commands WHERE request_id = ?1)",
        [&rid],
        |r| r.get(0),
    )?;
    if !exists {
        queue_command_tx(tx, &agent, &cmd, now_ms)?;
    }
    Ok(Some(rid))
}

fn write_transition(
    tx: &Transaction<'_>,
    group: &str,
    t: Option<&TransitionView>,
    epoch: u64,
    now_ms: i64,
) -> Result<()> {
    let json = t.map(serde_json::to_string).transpose()?;
    tx.execute(
        "UPDATE groups SET transition = ?1, epoch = ?2, version = version + 1, updated_at_ms = ?3 WHERE name = ?4",
        params![json, to_i64(epoch), now_ms, group],
    )?;
    Ok(())
}

fn check_epoch(actual: u64, expected: u64) -> Result<()> {
    if actual != expected {
        return Err(TransitionError::StaleEpoch { expected, actual }.into());
    }
    Ok(())
}

impl Store {
    /// T1: start replacing the PRIMARY (or, with none, promoting) by
    /// `candidate`, decided against `expected_epoch`. `old_fenced`: the old
    /// PRIMARY is gone or past its lease, so grant at once.
    #[allow(clippy::too_many_arguments)]
    pub fn begin_replace(
        &mut self,
        request_id: Option<&str>,
        group: &str,
        candidate: &str,
        expected_epoch: u64,
        emergency: bool,
        old_fenced: bool,
        deadline_ms: Option<i64>,
        reason: &str,
        switch_id: Option<i64>,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<PromoteResult> {
        self.idempotent("promote", request_id, now_ms, |tx| {
            let g = get_group_tx(tx, group)?;
            if let Some(t) = &g.transition {
                return Err(StoreError::InProgress(format!(
                    "group {group} is already replacing its PRIMARY ({} -> {}, phase {})",
                    t.old.as_deref().unwrap_or("-"),
                    t.candidate,
                    t.phase
                )));
            }
            check_epoch(g.epoch, expected_epoch)?;
            let cand = get_instance_tx(tx, candidate)?;
            if cand.group != group {
                return Err(StoreError::NotFound {
                    what: "instance",
                    id: format!("{candidate} in group {group}"),
                });
            }
            next(cand.role, Transition::Promote)?;
            let epoch = g.epoch + 1;
            let t = TransitionView {
                phase: "demoting".into(),
                old: g.primary.clone(),
                candidate: candidate.to_owned(),
                epoch,
                emergency,
                started_at_ms: now_ms,
                phase_started_ms: now_ms,
                deadline_ms: deadline_ms.unwrap_or(now_ms + 60_000),
                priority: if emergency {
                    spot_common::PRIORITY_EMERGENCY
                } else {
                    spot_common::PRIORITY_NORMAL
                },
                reason: reason.to_owned(),
                switch_id,
            };
            audit(
                tx,
                now_ms,
                actor,
                request_id,
                &format!("group:{group}"),
                "replace",
                json!({"epoch": g.epoch, "primary": g.primary}),
                json!({"epoch": epoch, "candidate": candidate, "reason": reason}),
            )?;
            let mut commands = Vec::new();
            let old_has_agent = match &g.primary {
                Some(o) => agent_of(tx, o)?.is_some(),
                None => false,
            };
            if let Some(old) = &g.primary
                && !old_fenced
                && old_has_agent
            {
                commands.extend(queue(
                    tx,
                    old,
                    group,
                    demote_id(old, epoch),
                    CommandKind::Demote,
                    &t,
                    now_ms,
                )?);
                write_transition(tx, group, Some(&t), epoch, now_ms)?;
                return Ok(PromoteResult {
                    group: group.into(),
                    epoch,
                    phase: t.phase,
                    promoted: candidate.into(),
                    demoted: g.primary.clone(),
                    commands,
                });
            }
            // Nothing to wait for: grant now.
            write_transition(tx, group, Some(&t), epoch, now_ms)?;
            commands.extend(grant_tx(tx, group, &g.config.promotion, t, actor, now_ms)?);
            Ok(PromoteResult {
                group: group.into(),
                epoch,
                phase: "promoting".into(),
                promoted: candidate.into(),
                demoted: g.primary,
                commands,
            })
        })
    }

    /// T2: the old PRIMARY is fenced; promote the candidate.
    pub fn grant(
        &mut self,
        group: &str,
        expected_epoch: u64,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let g = get_group_tx(&tx, group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(t) = g.transition.filter(|t| t.phase == "demoting") else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no demotion to grant"
            )));
        };
        let cmds = grant_tx(&tx, group, &g.config.promotion, t, actor, now_ms)?;
        tx.commit()?;
        Ok(cmds)
    }

    /// Point a waiting transition at another candidate.
    pub fn retarget(
        &mut self,
        group: &str,
        expected_epoch: u64,
        candidate: &str,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let g = get_group_tx(&tx, group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(mut t) = g.transition.filter(|t| t.phase == "demoting") else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no demotion in progress"
            )));
        };
        audit(
            &tx,
            now_ms,
            actor,
            None,
            &format!("group:{group}"),
            "retarget",
            json!({"candidate": t.candidate}),
            json!({"candidate": candidate}),
        )?;
        t.candidate = candidate.to_owned();
        write_transition(&tx, group, Some(&t), g.epoch, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// T3: the candidate confirmed; it is the PRIMARY.
    pub fn commit_promotion(
        &mut self,
        group: &str,
        expected_epoch: u64,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<(String, Vec<String>)> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let g = get_group_tx(&tx, group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(t) = g.transition.clone().filter(|t| t.phase == "promoting") else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no promotion to commit"
            )));
        };
        set_role(&tx, &t.candidate, Transition::Promote, actor, None, now_ms)?;
        let mut cmds = Vec::new();
        if g.config.auto_terminate
            && let Some(old) = &t.old
            && get_instance_tx(&tx, old)?.role == Role::Zombie
        {
            set_role(&tx, old, Transition::Retire, actor, None, now_ms)?;
            cmds.extend(queue(
                &tx,
                &t.candidate,
                group,
                format!("terminate-{old}"),
                CommandKind::Terminate {
                    instance_id: old.clone(),
                },
                &t,
                now_ms,
            )?);
        }
        if let Some(sw) = t.switch_id {
            let demote_started: Option<i64> = match &t.old {
                Some(o) => tx
                    .query_row(
                        "SELECT delivered_at_ms FROM commands WHERE request_id = ?1",
                        [demote_id(o, t.epoch)],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten(),
                None => None,
            };
            let promote_done: Option<i64> = tx
                .query_row(
                    "SELECT finished_at_ms FROM commands WHERE request_id = ?1",
                    [promote_id(&t.candidate, t.epoch)],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            tx.execute(
                "UPDATE switches SET state = 'done', to_instance = ?1, demote_started_ms = ?2,
                     promote_done_ms = ?3, downtime_ms = ?3 - ?2 WHERE id = ?4",
                params![t.candidate, demote_started, promote_done, sw],
            )?;
        }
        audit(
            &tx,
            now_ms,
            actor,
            None,
            &format!("group:{group}"),
            "commit",
            json!({"primary": t.old, "epoch": g.epoch}),
            json!({"primary": t.candidate, "epoch": g.epoch}),
        )?;
        write_transition(&tx, group, None, g.epoch, now_ms)?;
        tx.commit()?;
        Ok((t.candidate, cmds))
    }

    /// The candidate failed or did not confirm: fence it at a new epoch and
    /// clear the transition; the next pass picks the next candidate.
    pub fn roll_over(
        &mut self,
        group: &str,
        expected_epoch: u64,
        reason: &str,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let g = get_group_tx(&tx, group)?;
        check_epoch(g.epoch, expected_epoch)?;
        let Some(mut t) = g.transition.clone() else {
            return Err(StoreError::InProgress(format!(
                "group {group} has no transition"
            )));
        };
        tx.execute(
            "UPDATE commands SET state = 'cancelled', finished_at_ms = ?2
             WHERE request_id = ?1 AND state IN ('queued', 'delivered')",
            params![promote_id(&t.candidate, t.epoch), now_ms],
        )?;
        let epoch = g.epoch + 1;
        t.epoch = epoch;
        let cmds: Vec<String> = queue(
            &tx,
            &t.candidate,
            group,
            demote_id(&t.candidate, epoch),
            CommandKind::Demote,
            &t,
            now_ms,
        )?
        .into_iter()
        .collect();
        if let Some(sw) = t.switch_id {
            tx.execute("UPDATE switches SET state = 'failed' WHERE id = ?1", [sw])?;
        }
        audit(
            &tx,
            now_ms,
            actor,
            None,
            &format!("group:{group}"),
            "roll_over",
            json!({"epoch": g.epoch, "candidate": t.candidate}),
            json!({"epoch": epoch, "reason": reason}),
        )?;
        write_transition(&tx, group, None, epoch, now_ms)?;
        tx.commit()?;
        Ok(cmds)
    }

    /// EC2 says the instance is gone: TERMINATED, history kept.
    pub fn mark_gone(
        &mut self,
        instance_id: &str,
        reason: &str,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        set_role(
            &tx,
            instance_id,
            Transition::InstanceGone,
            actor,
            None,
            now_ms,
        )?;
        audit(
            &tx,
            now_ms,
            actor,
            None,
            &format!("instance:{instance_id}"),
            "gone",
            json!({}),
            json!({"reason": reason}),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A launched instance never registered healthy in time: FAILED.
    pub fn launch_failed(&mut self, instance_id: &str, actor: &Actor, now_ms: i64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        set_role(
            &tx,
            instance_id,
            Transition::LaunchFailed,
            actor,
            None,
            now_ms,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Retire a REPLICA: TERMINATED, and `terminate` queued to `via_agent`.
    pub fn retire(
        &mut self,
        group: &str,
        instance_id: &str,
        via_agent: &str,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<String> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let g = get_group_tx(&tx, group)?;
        set_role(&tx, instance_id, Transition::Retire, actor, None, now_ms)?;
        let rid = format!("terminate-{instance_id}");
        let cmd = Command {
            request_id: rid.clone(),
            group: group.to_owned(),
            action: CommandKind::Terminate {
                instance_id: instance_id.to_owned(),
            },
            priority: spot_common::PRIORITY_NORMAL,
            epoch: g.epoch,
            deadline_ms: now_ms + 600_000,
        };
        queue_command_tx(&tx, via_agent, &cmd, now_ms)?;
        tx.commit()?;
        Ok(rid)
    }

    /// Operator asks to move the PRIMARY to `pool`.
    pub fn request_switch(
        &mut self,
        request_id: Option<&str>,
        group: &str,
        pool: &Pool,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<SwitchView> {
        self.idempotent("switch", request_id, now_ms, |tx| {
            let g = get_group_tx(tx, group)?;
            let Some(primary) = g.primary.clone() else {
                return Err(StoreError::Invalid(format!("group {group} has no PRIMARY to switch")));
            };
            if g.transition.is_some() || active_switch(tx, group)?.is_some() {
                return Err(StoreError::InProgress(format!("group {group} is already replacing its PRIMARY")));
            }
            tx.execute(
                "INSERT INTO switches (group_name, request_id, from_instance, target_pool, state, started_at_ms)
                 VALUES (?1, ?2, ?3, ?4, 'launching', ?5)",
                params![group, request_id, primary, serde_json::to_string(pool)?, now_ms],
            )?;
            let id = tx.last_insert_rowid();
            audit(tx, now_ms, actor, request_id, &format!("group:{group}"), "switch", json!({"primary": primary}), json!({"switch": id, "pool": pool}))?;
            get_switch(tx, id)
        })
    }

    pub fn switch_launch_queued(&mut self, id: i64, request_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE switches SET launch_request_id = ?1 WHERE id = ?2",
            params![request_id, id],
        )?;
        Ok(())
    }

    pub fn list_switches(&self, group: &str) -> Result<Vec<SwitchView>> {
        let ids: Vec<i64> = self
            .conn
            .prepare("SELECT id FROM switches WHERE group_name = ?1 ORDER BY id")?
            .query_map([group], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.into_iter()
            .map(|id| get_switch(&self.conn, id))
            .collect()
    }

    pub fn group_names(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM groups ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Everything the failover planner needs about one group.
    pub fn group_snapshot(
        &self,
        group: &str,
        online: &HashSet<String>,
        now_ms: i64,
        launch_timeout_ms: i64,
    ) -> Result<GroupSnap> {
        let g = get_group_tx(&self.conn, group)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT i.instance_id, i.role, i.instance_type, i.availability_zone, i.agent_id,
                    COALESCE(a.healthy, 0),
                    -- Never heartbeated yet (or not persisted yet: the
                    -- monitor flushes within a tick): silent since it
                    -- registered, not forever.
                    COALESCE(a.last_heartbeat_ms, a.registered_at_ms),
                    COALESCE(i.ec2_state IN ('shutting-down', 'terminated'), 0),
                    EXISTS (SELECT 1 FROM commands c WHERE c.group_name = i.group_name AND c.kind = 'promote'
                            AND c.request_id LIKE 'promote-' || i.instance_id || '-e%'
                            AND c.state IN ('failed', 'cancelled', 'expired', 'stale')
                            AND c.created_at_ms > ?2),
                    i.role = 'launching' AND i.created_at_ms < ?3
             FROM instances i LEFT JOIN agents a ON a.agent_id = i.agent_id
             WHERE i.group_name = ?1 AND i.role NOT IN ('terminated', 'failed')",
        )?;
        let instances: Vec<InstanceSnap> = stmt
            .query_map(
                params![
                    group,
                    now_ms - PROMOTE_FAILURE_COOLDOWN_MS,
                    now_ms - launch_timeout_ms
                ],
                |r| {
                    let agent: Option<String> = r.get(4)?;
                    Ok(InstanceSnap {
                        instance_id: r.get(0)?,
                        role: super::parse_enum(1, r.get(1)?)?,
                        instance_type: r.get(2)?,
                        availability_zone: r.get(3)?,
                        online: agent.as_ref().is_some_and(|a| online.contains(a)),
                        agent_id: agent,
                        healthy: r.get(5)?,
                        last_heartbeat_ms: r.get(6)?,
                        ec2_gone: r.get(7)?,
                        promote_failed_recently: r.get(8)?,
                        launch_overdue: r.get(9)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT n.instance_id, n.kind, n.effective_at_ms FROM notices n
             JOIN instances i ON i.instance_id = n.instance_id
             WHERE n.group_name = ?1 AND i.role NOT IN ('terminated', 'failed')
               AND n.kind IN ('interruption', 'rebalance')",
        )?;
        let notices: Vec<NoticeSnap> = stmt
            .query_map([group], |r| {
                let kind: String = r.get(1)?;
                Ok(NoticeSnap {
                    instance_id: r.get(0)?,
                    kind: if kind == "interruption" {
                        NoticeKind::Interruption
                    } else {
                        NoticeKind::Rebalance
                    },
                    effective_at_ms: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let transition = match &g.transition {
            None => None,
            Some(t) => {
                let old_fenced = match &t.old {
                    None => true,
                    Some(o) => {
                        let acked: bool = self.conn.query_row(
                            "SELECT EXISTS (SELECT 1 FROM commands WHERE request_id = ?1 AND state = 'done')",
                            [demote_id(o, t.epoch)], |r| r.get(0))?;
                        let self_demoted: bool = self.conn.query_row(
                            "SELECT EXISTS (SELECT 1 FROM events e JOIN instances i ON i.agent_id = e.agent_id
                               WHERE i.instance_id = ?1 AND e.kind = 'self_demoted' AND e.received_at_ms >= ?2)",
                            params![o, t.started_at_ms], |r| r.get(0))?;
                        acked || self_demoted
                    }
                };
                let candidate_outcome: Option<String> = self
                    .conn
                    .query_row(
                        "SELECT state FROM commands WHERE request_id = ?1",
                        [promote_id(&t.candidate, t.epoch)],
                        |r| r.get(0),
                    )
                    .optional()?
                    .filter(|s: &String| s != "queued" && s != "delivered");
                Some(TransitionSnap {
                    phase: if t.phase == "demoting" {
                        Phase::Demoting
                    } else {
                        Phase::Promoting
                    },
                    old: t.old.clone(),
                    candidate: t.candidate.clone(),
                    epoch: t.epoch,
                    phase_started_ms: t.phase_started_ms,
                    old_fenced,
                    candidate_outcome,
                })
            }
        };
        let switch = match active_switch(&self.conn, group)? {
            None => None,
            Some(sw) => {
                let rid: Option<String> = self.conn.query_row(
                    "SELECT launch_request_id FROM switches WHERE id = ?1",
                    [sw.id],
                    |r| r.get(0),
                )?;
                let launched: Option<String> = match &rid {
                    Some(r) => self
                        .conn
                        .query_row("SELECT json_extract(result, '$.instance_id') FROM commands WHERE request_id = ?1 AND state = 'done'", [r], |row| row.get(0))
                        .optional()?
                        .flatten(),
                    None => None,
                };
                Some(SwitchSnap {
                    id: sw.id,
                    pool: sw.target_pool,
                    launch_request_id: rid,
                    launched_instance: launched,
                })
            }
        };
        let launches_in_flight: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM commands c WHERE c.group_name = ?1 AND c.kind = 'launch'
               AND (c.state IN ('queued', 'delivered')
                    OR (c.state = 'done' AND c.created_at_ms > ?2 AND NOT EXISTS (
                        SELECT 1 FROM instances i
                        WHERE i.instance_id = json_extract(c.result, '$.instance_id')
                          AND i.role != 'launching')))",
            params![group, now_ms - launch_timeout_ms],
            |r| r.get(0),
        )?;
        let last_proactive_launch_ms: Option<i64> = self.conn.query_row(
            "SELECT MAX(created_at_ms) FROM commands WHERE group_name = ?1 AND kind = 'launch'
               AND json_extract(body, '$.action.emergency') = 0",
            [group],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT json_extract(c.body, '$.action.pool.instance_type'),
                    json_extract(c.body, '$.action.pool.availability_zone'),
                    AVG(a.at_ms - c.created_at_ms) / 1000.0
             FROM commands c JOIN audit a
               ON a.entity = 'instance:' || json_extract(c.result, '$.instance_id')
              AND a.action = 'registered_healthy'
             WHERE c.group_name = ?1 AND c.kind = 'launch' AND c.state = 'done'
             GROUP BY 1, 2",
        )?;
        let boot_secs = stmt
            .query_map([group], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // Pools whose launch failed (no capacity...) in the last 10 minutes.
        let failed_pools = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT json_extract(body, '$.action.pool.instance_type'),
                        json_extract(body, '$.action.pool.availability_zone')
                 FROM commands WHERE group_name = ?1 AND kind = 'launch' AND state = 'failed'
                   AND finished_at_ms > ?2",
            )?
            .query_map(params![group, now_ms - FAILED_POOL_COOLDOWN_MS], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(GroupSnap {
            name: g.name,
            epoch: g.epoch,
            paused: g.config.paused,
            manual_replica: g.config.manual_replica,
            pools: g.config.pools,
            instances,
            notices,
            transition,
            switch,
            launches_in_flight: usize::try_from(launches_in_flight).unwrap_or(0),
            last_proactive_launch_ms,
            boot_secs,
            failed_pools,
        })
    }
}

/// T2 inside the caller's transaction.
fn grant_tx(
    tx: &Transaction<'_>,
    group: &str,
    promotion: &spot_common::PromotionAction,
    mut t: TransitionView,
    actor: &Actor,
    now_ms: i64,
) -> Result<Vec<String>> {
    let mut cmds = Vec::new();
    if let Some(old) = &t.old
        && get_instance_tx(tx, old)?.role == Role::Primary
    {
        set_role(tx, old, Transition::Demote, actor, None, now_ms)?;
        // Should it come back, it must not serve: fence it too.
        cmds.extend(queue(
            tx,
            old,
            group,
            demote_id(old, t.epoch),
            CommandKind::Demote,
            &t,
            now_ms,
        )?);
    }
    cmds.extend(queue(
        tx,
        &t.candidate,
        group,
        promote_id(&t.candidate, t.epoch),
        CommandKind::Promote {
            promotion: promotion.clone(),
        },
        &t,
        now_ms,
    )?);
    t.phase = "promoting".into();
    t.phase_started_ms = now_ms;
    audit(
        tx,
        now_ms,
        actor,
        None,
        &format!("group:{group}"),
        "grant",
        json!({"old": t.old}),
        json!({"candidate": t.candidate, "epoch": t.epoch}),
    )?;
    write_transition(tx, group, Some(&t), t.epoch, now_ms)?;
    Ok(cmds
        .into_iter()
        .filter(|c| c.starts_with("promote-") || c.starts_with("demote-"))
        .collect())
}

fn active_switch(conn: &rusqlite::Connection, group: &str) -> Result<Option<SwitchView>> {
    let id: Option<i64> = conn
        .query_row("SELECT id FROM switches WHERE group_name = ?1 AND state = 'launching' ORDER BY id DESC LIMIT 1", [group], |r| r.get(0))
        .optional()?;
    id.map(|id| get_switch(conn, id)).transpose()
}

fn get_switch(conn: &rusqlite::Connection, id: i64) -> Result<SwitchView> {
    let (row, pool): (SwitchView, String) = conn.query_row(
        "SELECT id, group_name, target_pool, state, from_instance, to_instance, started_at_ms,
                demote_started_ms, promote_done_ms, downtime_ms FROM switches WHERE id = ?1",
        [id],
        |r| {
            Ok((
                SwitchView {
                    id: r.get(0)?,
                    group: r.get(1)?,
                    target_pool: Pool {
                        instance_type: String::new(),
                        availability_zone: String::new(),
                        subnet_id: None,
                    },
                    state: r.get(3)?,
                    from_instance: r.get(4)?,
                    to_instance: r.get(5)?,
                    started_at_ms: r.get(6)?,
                    demote_started_ms: r.get(7)?,
                    promote_done_ms: r.get(8)?,
                    downtime_ms: r.get(9)?,
                },
                r.get(2)?,
            ))
        },
    )?;
    Ok(SwitchView {
        target_pool: serde_json::from_str(&pool)?,
        ..row
    })
}
