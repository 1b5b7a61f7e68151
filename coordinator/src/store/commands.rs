//! The command queue: queued per agent, handed out highest priority
//! first, redelivered after silence, closed by the agent's result event.

use super::{Read, Result, StoreError, Txn, parse_enum, to_i64};
use crate::store::audit::Entity;
use crate::store::engine::col;
use crate::store::engine::{Conn, ConnExt, OptionalExtension, params};
use serde_json::{Value, json};
use spot_common::wire::{CommandView, QueuedCommand};
use spot_common::{AgentStatus, Command, CommandKind, CommandOutcome, EventBody, Pool};

/// Who runs a command the caller queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    /// The PRIMARY's agent, else the most recently seen online agent.
    Auto,
    Agent(&'a str),
    /// The coordinator's own EC2 executor.
    Coordinator,
}

impl<'a> Via<'a> {
    pub fn of(e: &'a spot_common::planner::Executor) -> Via<'a> {
        match e {
            spot_common::planner::Executor::Agent(a) => Via::Agent(a),
            spot_common::planner::Executor::Coordinator => Via::Coordinator,
        }
    }

    /// The agent id a command is stored under (`None`: the coordinator).
    pub fn agent(self) -> Option<&'a str> {
        match self {
            Via::Agent(a) => Some(a),
            Via::Auto | Via::Coordinator => None,
        }
    }
}

impl Txn<'_> {
    /// Queue `cmd` for `agent` (`None`: the coordinator's EC2 executor).
    /// `subject` is the instance the command is about (the promoted,
    /// demoted, fenced or terminated one). A request id is queued once: a
    /// derived id queued again (the old PRIMARY's demote at T1 and at T2)
    /// changes nothing.
    pub(super) fn queue(
        &mut self,
        agent: Option<&str>,
        cmd: &Command,
        subject: Option<&str>,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO commands (request_id, agent_id, group_name, kind, body, priority, epoch,
                                   deadline_ms, state, created_at_ms, subject)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10)
             ON CONFLICT (request_id) DO NOTHING",
            params![
                cmd.request_id,
                agent,
                cmd.group,
                cmd.action.name(),
                serde_json::to_string(cmd)?,
                cmd.priority,
                to_i64(cmd.epoch),
                cmd.deadline_ms,
                self.now_ms(),
                subject
            ],
        )?;
        self.wake(agent);
        Ok(())
    }

    /// The agent to run a group's EC2 work: the PRIMARY's if online, else
    /// the most recently heard online agent.
    pub(super) fn online_agent(&self, group: &str) -> Result<Option<String>> {
        self.tx
            .query_row(
                "SELECT a.agent_id FROM agents a
                 LEFT JOIN instances i ON i.agent_id = a.agent_id
                 WHERE a.group_name = ?1 AND a.status = 'online'
                 ORDER BY (i.role = 'primary') DESC, a.last_heartbeat_ms DESC NULLS LAST
                 LIMIT 1",
                [group],
                |r| r.get(0),
            )
            .optional()
    }

    /// A command's result, from its agent (`Some`) or the coordinator's
    /// executor (`None`): closes it, and a launch's instance is LAUNCHING
    /// from then on. A result for a command already closed (cancelled,
    /// or a duplicate) changes nothing.
    pub fn command_result(&mut self, agent: Option<&str>, body: &EventBody) -> Result<()> {
        let EventBody::CommandResult {
            request_id,
            outcome,
            instance_id,
            ..
        } = body
        else {
            return Ok(());
        };
        let n = self.tx.execute(
            "UPDATE commands SET state = ?1, finished_at_ms = ?2, result = ?3
             WHERE request_id = ?4 AND agent_id IS NOT DISTINCT FROM ?5 AND state IN ('queued', 'delivered')",
            params![
                outcome.as_str(),
                self.now_ms(),
                serde_json::to_string(body)?,
                request_id,
                agent
            ],
        )?;
        if n == 1 {
            // Every result is in the audit log (and so on the event stream).
            let group: String = self.tx.query_row(
                "SELECT group_name FROM commands WHERE request_id = ?1",
                [request_id],
                |r| r.get(0),
            )?;
            self.audit(
                Entity::Group(&group),
                "command_result",
                &json!({"request_id": request_id}),
                body,
            )?;
            if let (CommandOutcome::Done, Some(new_id)) = (outcome, instance_id) {
                self.insert_launched(new_id, request_id)?;
            }
            // A fence that worked: EC2 has terminated the instance.
            if *outcome == CommandOutcome::Done
                && let Some(spot_common::ids::Derived::Fence { instance, .. }) =
                    spot_common::ids::parse(request_id)
            {
                self.tx.execute(
                    "UPDATE instances SET ec2_state = 'terminated', ec2_state_at_ms = ?2
                     WHERE instance_id = ?1",
                    params![instance, self.now_ms()],
                )?;
            }
        }
        Ok(())
    }

    /// An agent went OFFLINE: the EC2 work queued for it (launches,
    /// terminations, fences) expires, so the planner routes it elsewhere;
    /// so do launches and terminations it took but never reported (its
    /// instance may be gone: such a launch must not count as in flight
    /// forever and block the group's emergency launch; a late result is
    /// ignored and an instance it created registers by itself). A fence
    /// it took is left to the transition's fence attempts. Role commands
    /// stay: an agent that comes back must see its demotion.
    pub(super) fn expire_routable(&mut self, agent_id: &str) -> Result<usize> {
        self.tx.execute(
            "UPDATE commands SET state = 'expired', finished_at_ms = ?2
             WHERE agent_id = ?1
               AND ((state = 'queued' AND kind IN ('launch', 'terminate', 'fence'))
                    OR (state = 'delivered' AND kind IN ('launch', 'terminate')))",
            params![agent_id, self.now_ms()],
        )
    }

    /// Hand the agent (`Some`) or the coordinator's executor (`None`) its
    /// queued commands, highest priority first, and mark them delivered.
    /// A delivered command without a result is handed out again after
    /// `redeliver_after_ms` (the agent dedups by `request_id`, so a lost
    /// answer never runs a command twice; the coordinator's EC2 calls are
    /// idempotent by ClientToken or by nature, so a crash mid-call is
    /// harmless). Commands past their deadline are marked expired instead.
    pub fn take_commands(
        &mut self,
        agent: Option<&str>,
        redeliver_after_ms: i64,
        limit: u32,
    ) -> Result<Vec<Command>> {
        let now_ms = self.now_ms();
        self.tx.execute(
            "UPDATE commands SET state = 'expired', finished_at_ms = ?2
             WHERE agent_id IS NOT DISTINCT FROM ?1 AND state = 'queued' AND deadline_ms < ?2",
            params![agent, now_ms],
        )?;
        let rows: Vec<(String, String)> = self
            .tx
            .prepare(
                "SELECT request_id, body FROM commands WHERE agent_id IS NOT DISTINCT FROM ?1 AND
                    (state = 'queued' OR (state = 'delivered' AND delivered_at_ms <= ?2))
                 ORDER BY priority DESC, created_at_ms, request_id LIMIT ?3",
            )?
            .query_map(params![agent, now_ms - redeliver_after_ms, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (rid, body) in rows {
            self.tx.execute(
                "UPDATE commands SET state = 'delivered', delivered_at_ms = ?1 WHERE request_id = ?2",
                params![now_ms, rid],
            )?;
            out.push(serde_json::from_str(&body)?);
        }
        Ok(out)
    }

    /// Queue a launch into `pool` for the group, made by `via`.
    pub fn queue_launch(
        &mut self,
        request_id: &str,
        group: &str,
        via: Via<'_>,
        pool: &Pool,
        emergency: bool,
    ) -> Result<QueuedCommand> {
        let g = self.group(group)?;
        let agent = match via {
            Via::Coordinator => None,
            Via::Agent(a) => {
                let v = self.agent(a)?;
                if v.group != group
                    || !matches!(v.status, AgentStatus::Online | AgentStatus::Offline)
                {
                    return Err(StoreError::Invalid(format!(
                        "agent {a} is not a live agent of group {group}"
                    )));
                }
                Some(a.to_owned())
            }
            Via::Auto => Some(self.online_agent(group)?.ok_or_else(|| {
                StoreError::Invalid(format!("group {group} has no online agent to launch with"))
            })?),
        };
        let cmd = Command {
            request_id: request_id.to_owned(),
            group: group.to_owned(),
            action: CommandKind::Launch {
                pool: pool.clone(),
                launch_template_id: g.config.launch_template_id.clone(),
                emergency,
            },
            priority: if emergency {
                spot_common::PRIORITY_EMERGENCY
            } else {
                spot_common::PRIORITY_NORMAL
            },
            epoch: g.epoch,
            deadline_ms: self.now_ms() + 120_000,
        };
        self.queue(agent.as_deref(), &cmd, None)?;
        self.audit(
            Entity::Group(group),
            "launch",
            &Value::Null,
            &json!({"agent_id": agent, "pool": pool, "emergency": emergency}),
        )?;
        Ok(QueuedCommand {
            agent_id: agent,
            command: cmd,
        })
    }
}

pub fn command_exists(conn: &dyn Conn, request_id: &str) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM commands WHERE request_id = ?1)",
        [request_id],
        |r| r.get(0),
    )
}

/// Whether the agent has anything to fetch (cheap, on the read side).
pub fn has_pending(
    conn: &dyn Conn,
    agent_id: &str,
    now_ms: i64,
    redeliver_after_ms: i64,
) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM commands WHERE agent_id = ?1 AND
            (state = 'queued' OR (state = 'delivered' AND delivered_at_ms <= ?2)))",
        params![agent_id, now_ms - redeliver_after_ms],
        |r| r.get(0),
    )
}

pub fn list(conn: &dyn Conn, agent_id: Option<&str>) -> Result<Vec<CommandView>> {
    let stmt = conn.prepare(
        "SELECT body, agent_id, state, created_at_ms, result FROM commands
         WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY created_at_ms, request_id",
    )?;
    /// body, agent, state, created, result
    type Row = (String, Option<String>, String, i64, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map([agent_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_>>()?;
    rows.into_iter()
        .map(|(body, agent_id, state, created_at_ms, result)| {
            Ok(CommandView {
                command: serde_json::from_str(&body)?,
                agent_id,
                state: parse_enum(2, state)?,
                created_at_ms,
                result: result.map(|r| serde_json::from_str(&r)).transpose()?,
            })
        })
        .collect()
}

/// The final state of a command, once it has one.
pub fn state(conn: &dyn Conn, request_id: &str) -> Result<Option<spot_common::CommandState>> {
    conn.query_row(
        "SELECT state FROM commands WHERE request_id = ?1",
        [request_id],
        |r| col::text(r, 0),
    )
    .optional()
}
