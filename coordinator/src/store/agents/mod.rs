//! Agents: registration (a new `agent_id` every time, invariant 4),
//! heartbeat data, ONLINE/OFFLINE, deletion.

use super::rows::{self, AGENT_COLS};
use super::{Read, Result, StoreError, Txn, parse_enum, to_i64, to_u64};
use crate::store::audit::Entity;
use crate::store::engine::from_row;
use crate::store::engine::{Conn, ConnExt, params};
pub use converge::Reported;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spot_common::wire::{AgentView, PricingHint, RegisterRequest, RegisterResponse};
use spot_common::{AgentStatus, Command, CommandKind, GroupConfig, Role, RoleEvent};

/// Agent data batched from heartbeats.
#[derive(Debug, Clone)]
pub struct HeartbeatRecord {
    pub agent_id: String,
    pub at_ms: i64,
    pub reported_role: Option<Role>,
    pub highest_epoch: u64,
    pub healthy: bool,
    pub backlog: u64,
}

/// What the in-memory liveness table starts from.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    pub agent_id: String,
    pub token_hash: String,
    pub status: AgentStatus,
    pub instance_id: String,
}

/// A registration and the earlier agents of the same instance it replaced
/// (their tokens die now).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub response: RegisterResponse,
    pub replaced: Vec<String>,
}

mod converge;

impl Txn<'_> {
    /// Register a new agent. Earlier agents of the same instance become
    /// `replaced` and point at the new one, so their history stays linked.
    pub fn register_agent(
        &mut self,
        req: &RegisterRequest,
        agent_id: &str,
        token: &str,
        heartbeat_interval_ms: u64,
        lease_ms: u64,
    ) -> Result<Registered> {
        self.group(&req.group)?;
        self.tx.execute(
            "INSERT INTO agents (agent_id, token_hash, instance_id, group_name, instance_type,
                 availability_zone, region, lifecycle, agent_version, status, registered_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'online', ?10)",
            params![
                agent_id,
                spot_common::token_hash(token),
                req.instance_id,
                req.group,
                req.instance_type,
                req.availability_zone,
                req.region,
                req.lifecycle,
                req.agent_version,
                self.now_ms()
            ],
        )?;
        let previous: Vec<String> = self
            .tx
            .prepare(
                "SELECT agent_id FROM agents WHERE instance_id = ?1 AND agent_id != ?2
                 AND (status IN ('online', 'offline')
                      OR (status = 'replaced' AND replaced_by IS NULL))",
            )?
            .query_map(params![req.instance_id, agent_id], |r| r.get(0))?
            .collect::<Result<_>>()?;
        for old in &previous {
            self.tx.execute(
                "UPDATE agents SET status = 'replaced', replaced_by = ?1 WHERE agent_id = ?2",
                params![agent_id, old],
            )?;
            self.audit(
                Entity::Agent(old),
                "replaced",
                &json!({"status": "online_or_offline"}),
                &json!({"status": "replaced", "replaced_by": agent_id}),
            )?;
        }
        match rows::find_instance(&self.tx, &req.instance_id)? {
            Some(inst) if inst.group != req.group => {
                return Err(StoreError::Invalid(format!(
                    "instance {} belongs to group {}, not {}",
                    inst.instance_id, inst.group, req.group
                )));
            }
            Some(inst) if inst.role == Role::Terminated => {
                return Err(StoreError::Invalid(format!(
                    "instance {} is terminated",
                    inst.instance_id
                )));
            }
            Some(inst) => {
                self.tx.execute(
                    "UPDATE instances SET agent_id = ?1, version = version + 1, updated_at_ms = ?2,
                         instance_type = CASE WHEN stranger = 1 THEN ?4 ELSE instance_type END,
                         availability_zone = CASE WHEN stranger = 1 THEN ?5 ELSE availability_zone END,
                         stranger = 0
                     WHERE instance_id = ?3",
                    params![agent_id, self.now_ms(), inst.instance_id, req.instance_type, req.availability_zone],
                )?;
            }
            None => {
                self.tx.execute(
                    "INSERT INTO instances (instance_id, group_name, role, agent_id, instance_type,
                         availability_zone, created_at_ms, updated_at_ms)
                     VALUES (?1, ?2, 'launching', ?3, ?4, ?5, ?6, ?6)",
                    params![
                        req.instance_id,
                        req.group,
                        agent_id,
                        req.instance_type,
                        req.availability_zone,
                        self.now_ms()
                    ],
                )?;
            }
        }
        let after = self.agent(agent_id)?;
        self.audit(Entity::Agent(agent_id), "register", &Value::Null, &after)?;
        Ok(Registered {
            response: RegisterResponse {
                agent_id: agent_id.to_owned(),
                token: token.to_owned(),
                heartbeat_interval_ms,
                lease_ms,
                api_version: spot_common::wire::API_VERSION,
            },
            replaced: previous,
        })
    }

    /// Persist a batch of heartbeats. The highest epoch kept is at most the
    /// group's: an epoch above it counts only once the agent has shown the
    /// grant for it (`converge_epoch` raises the group's epoch), so a
    /// forged report cannot push the group's next epochs out of reach.
    pub fn flush_heartbeats(&mut self, batch: &[HeartbeatRecord]) -> Result<()> {
        let stmt = self.tx.prepare_cached(
            "UPDATE agents SET last_heartbeat_ms = ?1, reported_role = ?2,
                 highest_epoch = (SELECT CASE WHEN ?3 < e THEN ?3 ELSE e END FROM (SELECT COALESCE(
                     (SELECT g.epoch FROM groups g WHERE g.name = agents.group_name), ?3) AS e) cap),
                 healthy = ?4, backlog = ?5 WHERE agent_id = ?6",
        )?;
        for h in batch {
            stmt.execute(params![
                h.at_ms,
                h.reported_role.map(Role::as_str),
                to_i64(h.highest_epoch),
                h.healthy,
                to_i64(h.backlog),
                h.agent_id
            ])?;
        }
        Ok(())
    }

    /// ONLINE <-> OFFLINE, audited. Returns false when the agent was not in
    /// `from` (already changed, replaced or deleted).
    pub fn set_agent_status(
        &mut self,
        agent_id: &str,
        from: AgentStatus,
        to: AgentStatus,
    ) -> Result<bool> {
        let n = self.tx.execute(
            "UPDATE agents SET status = ?1 WHERE agent_id = ?2 AND status = ?3",
            params![to.as_str(), agent_id, from.as_str()],
        )?;
        if n == 1 {
            self.audit(
                Entity::Agent(agent_id),
                "status",
                &json!({"status": from}),
                &json!({"status": to}),
            )?;
            if to == AgentStatus::Offline {
                let expired = self.expire_routable(agent_id)?;
                if expired > 0 {
                    tracing::info!(
                        agent_id,
                        expired,
                        "EC2 work queued for an offline agent expired; it will be routed elsewhere"
                    );
                }
            }
        }
        Ok(n == 1)
    }

    /// The agent reported healthy: a LAUNCHING instance becomes REPLICA.
    /// Returns the instance's role and the group's epoch.
    pub fn agent_healthy(&mut self, agent_id: &str) -> Result<(Role, u64)> {
        let agent = self.agent(agent_id)?;
        let inst = self.instance(&agent.instance_id)?;
        let group = self.group(&inst.group)?;
        let role = if inst.role == Role::Launching {
            self.role_event(&inst.instance_id, RoleEvent::RegisteredHealthy)?
        } else {
            inst.role
        };
        self.tx.execute(
            "UPDATE agents SET healthy = 1 WHERE agent_id = ?1",
            [agent_id],
        )?;
        Ok((role, group.epoch))
    }

    /// Operator deletes an agent: it stops being able to authenticate, a
    /// `cleanup` command is queued for it, its history stays linked.
    pub fn delete_agent(&mut self, agent_id: &str) -> Result<AgentView> {
        let before = self.agent(agent_id)?;
        if before.status == AgentStatus::Deleted {
            return Err(StoreError::NotFound {
                what: "agent",
                id: agent_id.to_owned(),
            });
        }
        self.tx.execute(
            "UPDATE agents SET status = 'deleted' WHERE agent_id = ?1",
            [agent_id],
        )?;
        let cmd = Command {
            request_id: spot_common::ids::cleanup(agent_id),
            group: before.group.clone(),
            action: CommandKind::Cleanup,
            priority: spot_common::PRIORITY_NORMAL,
            epoch: 0,
            deadline_ms: self.now_ms() + 24 * 3600 * 1000,
        };
        self.queue(Some(agent_id), &cmd, None)?;
        let after = self.agent(agent_id)?;
        self.audit(Entity::Agent(agent_id), "delete", &before, &after)?;
        Ok(after)
    }
}

impl Txn<'_> {
    /// Audit a registration refused because the instance has a live agent.
    pub fn registration_refused(&mut self, instance: &str, holder: &str) -> Result<()> {
        self.audit(
            Entity::Instance(instance),
            "registration_refused",
            &json!({"agent_id": holder}),
            &json!({"code": "instance_registered"}),
        )
    }

    /// A registration whose identity proof was missing, did not verify,
    /// named another instance or an account not allowed. Audited as
    /// `identity_refused` under the instance the request claimed.
    pub fn identity_refused(&mut self, claimed: &str, code: &str, reason: &str) -> Result<()> {
        self.audit(
            Entity::Instance(claimed),
            "identity_refused",
            &json!(null),
            &json!({"code": code, "reason": reason}),
        )
    }

    /// An operator says the agent is gone (its instance reinstalled, its
    /// journal lost): its token stops working and its instance may
    /// register afresh at once. Audited as `reset`.
    pub fn reset_agent(&mut self, agent_id: &str) -> Result<AgentView> {
        let before = self.agent(agent_id)?;
        if !matches!(before.status, AgentStatus::Online | AgentStatus::Offline) {
            return Err(StoreError::Refused {
                code: "agent_not_live",
                message: format!("agent {agent_id} is {}: nothing to reset", before.status),
            });
        }
        self.tx.execute(
            "UPDATE agents SET status = 'replaced' WHERE agent_id = ?1",
            [agent_id],
        )?;
        let after = self.agent(agent_id)?;
        self.audit(Entity::Agent(agent_id), "reset", &before, &after)?;
        Ok(after)
    }
}

/// Agents whose tokens are still valid, for the auth cache: live ones,
/// and deleted ones until they have fetched and finished their cleanup.
pub fn active(conn: &dyn Conn) -> Result<Vec<AgentAuth>> {
    let stmt = conn.prepare(
        "SELECT agent_id, token_hash, status, instance_id FROM agents WHERE status IN ('online', 'offline')
         OR (status = 'deleted' AND EXISTS (SELECT 1 FROM commands c
             WHERE c.agent_id = agents.agent_id AND c.kind = 'cleanup'
             AND c.state IN ('queued', 'delivered')))",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(from_row! { r => AgentAuth {
                agent_id, token_hash, status: text, instance_id
            }})
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

pub fn list(conn: &dyn Conn, group: Option<&str>) -> Result<Vec<AgentView>> {
    let stmt = conn.prepare(&format!(
        "SELECT {AGENT_COLS} FROM agents WHERE ?1 IS NULL OR group_name = ?1
         ORDER BY registered_at_ms, agent_id"
    ))?;
    let rows = stmt
        .query_map([group], rows::agent_row)?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// What the heartbeat answer is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleOf {
    pub instance_id: String,
    pub group: String,
    pub role: Role,
    /// Epoch of that role (for a PRIMARY: its promotion's).
    pub role_epoch: u64,
    /// The group's epoch.
    pub epoch: u64,
    /// This instance is the candidate whose promotion was granted, at this
    /// epoch (PRIMARY for the agent, not yet for the store).
    pub granted: Option<u64>,
    /// What to capture prices for; none for a ZOMBIE.
    pub pricing: Option<PricingHint>,
}

impl RoleOf {
    /// The role and epoch the agent is told: a granted candidate is
    /// PRIMARY at the transition's epoch.
    pub fn answer(&self) -> (Role, u64) {
        match self.granted {
            Some(e) => (Role::Primary, e),
            None => (self.role, self.role_epoch),
        }
    }
}

pub fn role_of(conn: &dyn Conn, agent_id: &str) -> Result<RoleOf> {
    let (instance_id, group, role, role_epoch, epoch, config, transition): (
        String,
        String,
        Role,
        u64,
        u64,
        String,
        Option<String>,
    ) = conn.query_row(
        "SELECT i.instance_id, g.name, i.role, i.role_epoch, g.epoch, g.config, g.transition
         FROM agents a
         JOIN instances i ON i.instance_id = a.instance_id
         JOIN groups g ON g.name = i.group_name
         WHERE a.agent_id = ?1",
        [agent_id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                parse_enum(2, r.get(2)?)?,
                to_u64(r.get(3)?),
                to_u64(r.get(4)?),
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    let config: GroupConfig = serde_json::from_str(&config)?;
    let transition: Option<spot_common::wire::TransitionView> =
        transition.map(|t| serde_json::from_str(&t)).transpose()?;
    let granted = transition
        .filter(|t| t.phase == spot_common::Phase::Promoting && t.candidate == instance_id)
        .map(|t| t.epoch);
    // A ZOMBIE stops reporting (its reports are not ingested either).
    let pricing = (matches!(role, Role::Primary | Role::Replica) && !config.pools.is_empty())
        .then(|| pricing_hint(&config));
    Ok(RoleOf {
        instance_id,
        group,
        role,
        role_epoch,
        epoch,
        granted,
        pricing,
    })
}

fn pricing_hint(config: &GroupConfig) -> PricingHint {
    let mut types: Vec<String> = config
        .pools
        .iter()
        .map(|p| p.instance_type.clone())
        .collect();
    let mut zones: Vec<String> = config
        .pools
        .iter()
        .map(|p| p.availability_zone.clone())
        .collect();
    types.sort();
    types.dedup();
    zones.sort();
    zones.dedup();
    PricingHint {
        instance_types: types,
        availability_zones: zones,
        product_description: config.product_description.clone(),
    }
}
