//! The coordinator's store: the only module that writes SQL.
//!
//! SQLite in WAL mode with `synchronous=FULL`: a committed role change
//! survives a power cut. Every write is one `BEGIN IMMEDIATE` transaction
//! (rusqlite's `Transaction` rolls back on drop, so an early return or a
//! panic never half-writes). Role changes are decided by
//! `spot_common::GroupModel` and written with optimistic `version` checks;
//! the partial unique index `one_primary_per_group` is the last line of
//! invariant 1.
//!
//! The store is synchronous; `Db` runs it on the blocking pool so no async
//! worker ever waits on SQLite.

mod migrations;
mod pricing;
mod protocol;

pub use pricing::{ConsolidationConfig, PoolKey};

pub use protocol::PromoteResult;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use spot_common::state::{GroupModel, Transition};
use spot_common::wire::{
    AgentView, AuditEntry, CommandView, EventsResponse, GroupView, InstanceView, NoticeView,
    QueuedCommand, RegisterRequest, RegisterResponse,
};
use spot_common::{
    Actor, AgentStatus, Command, CommandKind, ConfigRuleError, Event, EventBody, GroupConfig, Role,
    TransitionError,
};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use migrations::LATEST as SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON does not parse")]
    Json(#[from] serde_json::Error),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error("version conflict: {0}")]
    VersionConflict(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Rule(#[from] ConfigRuleError),
    #[error("request_id {request_id:?} was already used for {scope}")]
    RequestIdReuse { request_id: String, scope: String },
    #[error("{0}")]
    Invalid(String),
    #[error("store task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    InProgress(String),
    #[error("{0}")]
    NotIngested(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Open a connection with the pragmas every connection needs.
fn open(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    // A writer holding the lock for a few ms must not fail a reader.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    Ok(conn)
}

/// Async handle: one writer connection and one reader connection (WAL lets
/// reads proceed while a write commits), each used on the blocking pool.
#[derive(Clone)]
pub struct Db {
    write: Arc<Mutex<Store>>,
    read: Arc<Mutex<Store>>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let mut conn = open(path, false)?;
        migrations::migrate(&mut conn)?;
        let read = open(path, true)?;
        Ok(Db {
            write: Arc::new(Mutex::new(Store { conn })),
            read: Arc::new(Mutex::new(Store { conn: read })),
        })
    }

    async fn run<R, F>(store: &Arc<Mutex<Store>>, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R> + Send + 'static,
    {
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-call; SQLite already rolled
            // that transaction back, so the connection is still sound.
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await?
    }

    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R> + Send + 'static,
    {
        Self::run(&self.write, f).await
    }

    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R> + Send + 'static,
    {
        Self::run(&self.read, f).await
    }
}

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
}

/// Filter of the audit query.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub entity: Option<String>,
    pub after_id: Option<i64>,
    pub limit: Option<u32>,
}

pub struct Store {
    conn: Connection,
}

/// One audit row: who changed what, from which state to which.
#[allow(clippy::too_many_arguments)]
fn audit(
    tx: &Transaction<'_>,
    now_ms: i64,
    actor: &Actor,
    request_id: Option<&str>,
    entity: &str,
    action: &str,
    pre: Value,
    post: Value,
) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (at_ms, actor, request_id, entity, action, pre_state, post_state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            now_ms,
            actor.to_string(),
            request_id,
            entity,
            action,
            pre.to_string(),
            post.to_string()
        ],
    )?;
    Ok(())
}

fn parse_enum<T: std::str::FromStr>(idx: usize, s: String) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const GROUP_COLS: &str = "g.name, g.config, g.epoch, g.version, g.created_at_ms, g.updated_at_ms,
    (SELECT instance_id FROM instances i WHERE i.group_name = g.name AND i.role = 'primary'),
    g.transition";

type GroupRow = (GroupView, String, Option<String>);

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    let config: String = r.get(1)?;
    Ok((
        GroupView {
            name: r.get(0)?,
            config: GroupConfig::default(),
            epoch: to_u64(r.get(2)?),
            version: r.get(3)?,
            created_at_ms: r.get(4)?,
            updated_at_ms: r.get(5)?,
            primary: r.get(6)?,
            transition: None,
        },
        config,
        r.get(7)?,
    ))
}

fn finish_group((mut g, config, transition): GroupRow) -> Result<GroupView> {
    g.config = serde_json::from_str(&config)?;
    g.transition = transition.map(|t| serde_json::from_str(&t)).transpose()?;
    Ok(g)
}

const INSTANCE_COLS: &str = "instance_id, group_name, role, agent_id, instance_type,
    availability_zone, version, created_at_ms, updated_at_ms, ec2_state";

fn instance_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceView> {
    Ok(InstanceView {
        instance_id: r.get(0)?,
        group: r.get(1)?,
        role: parse_enum(2, r.get(2)?)?,
        agent_id: r.get(3)?,
        instance_type: r.get(4)?,
        availability_zone: r.get(5)?,
        version: r.get(6)?,
        created_at_ms: r.get(7)?,
        updated_at_ms: r.get(8)?,
        ec2_state: r.get(9)?,
    })
}

const AGENT_COLS: &str = "agent_id, instance_id, group_name, status, registered_at_ms,
    last_heartbeat_ms, reported_role, highest_epoch, healthy, backlog, replaced_by";

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentView> {
    let reported: Option<String> = r.get(6)?;
    Ok(AgentView {
        agent_id: r.get(0)?,
        instance_id: r.get(1)?,
        group: r.get(2)?,
        status: parse_enum(3, r.get(3)?)?,
        registered_at_ms: r.get(4)?,
        last_heartbeat_ms: r.get(5)?,
        reported_role: reported.map(|s| parse_enum(6, s)).transpose()?,
        highest_epoch: to_u64(r.get(7)?),
        healthy: r.get(8)?,
        backlog: to_u64(r.get(9)?),
        replaced_by: r.get(10)?,
    })
}

fn get_group_tx(tx: &Connection, name: &str) -> Result<GroupView> {
    let row = tx
        .query_row(
            &format!("SELECT {GROUP_COLS} FROM groups g WHERE g.name = ?1"),
            [name],
            group_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "group",
            id: name.to_owned(),
        })?;
    finish_group(row)
}

fn get_agent_tx(tx: &Connection, agent_id: &str) -> Result<AgentView> {
    tx.query_row(
        &format!("SELECT {AGENT_COLS} FROM agents WHERE agent_id = ?1"),
        [agent_id],
        agent_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound {
        what: "agent",
        id: agent_id.to_owned(),
    })
}

fn get_instance_tx(tx: &Connection, instance_id: &str) -> Result<InstanceView> {
    tx.query_row(
        &format!("SELECT {INSTANCE_COLS} FROM instances WHERE instance_id = ?1"),
        [instance_id],
        instance_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound {
        what: "instance",
        id: instance_id.to_owned(),
    })
}

/// Queue a command in the caller's transaction.
pub(crate) fn queue_command_tx(
    tx: &Transaction<'_>,
    agent_id: &str,
    cmd: &Command,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO commands (request_id, agent_id, group_name, kind, body, priority, epoch,
                               deadline_ms, state, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9)",
        params![
            cmd.request_id,
            agent_id,
            cmd.group,
            cmd.action.name(),
            serde_json::to_string(cmd)?,
            cmd.priority,
            to_i64(cmd.epoch),
            cmd.deadline_ms,
            now_ms
        ],
    )?;
    Ok(())
}

impl Store {
    /// Run `f` in one immediate transaction, answering a repeated
    /// `request_id` with the first answer and changing nothing.
    ///
    /// Only successful answers are remembered: a refused request wrote
    /// nothing, so its retry is decided afresh.
    fn idempotent<T, F>(
        &mut self,
        scope: &str,
        request_id: Option<&str>,
        now_ms: i64,
        f: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(&Transaction<'_>) -> Result<T>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(rid) = request_id {
            let seen: Option<(String, String)> = tx
                .query_row(
                    "SELECT scope, response FROM idempotency WHERE request_id = ?1",
                    [rid],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((seen_scope, response)) = seen {
                if seen_scope != scope {
                    return Err(StoreError::RequestIdReuse {
                        request_id: rid.to_owned(),
                        scope: seen_scope,
                    });
                }
                return Ok(serde_json::from_str(&response)?);
            }
        }
        let out = f(&tx)?;
        if let Some(rid) = request_id {
            tx.execute(
                "INSERT INTO idempotency (request_id, scope, response, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![rid, scope, serde_json::to_string(&out)?, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(out)
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    // ---- groups -------------------------------------------------------

    pub fn create_group(
        &mut self,
        request_id: Option<&str>,
        name: &str,
        config: &GroupConfig,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<GroupView> {
        spot_common::validate_group_name(name)?;
        config.validate()?;
        self.idempotent("create_group", request_id, now_ms, |tx| {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM groups WHERE name = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if exists {
                return Err(StoreError::AlreadyExists {
                    what: "group",
                    id: name.to_owned(),
                });
            }
            tx.execute(
                "INSERT INTO groups (name, config, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?3)",
                params![name, serde_json::to_string(config)?, now_ms],
            )?;
            let g = get_group_tx(tx, name)?;
            audit(
                tx,
                now_ms,
                actor,
                request_id,
                &format!("group:{name}"),
                "create",
                Value::Null,
                serde_json::to_value(&g)?,
            )?;
            Ok(g)
        })
    }

    pub fn update_group(
        &mut self,
        request_id: Option<&str>,
        name: &str,
        config: &GroupConfig,
        expected_version: i64,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<GroupView> {
        config.validate()?;
        self.idempotent("update_group", request_id, now_ms, |tx| {
            let before = get_group_tx(tx, name)?;
            if before.version != expected_version {
                return Err(StoreError::VersionConflict(format!(
                    "group {name} is at version {}, request read version {expected_version}",
                    before.version
                )));
            }
            tx.execute(
                "UPDATE groups SET config = ?1, version = version + 1, updated_at_ms = ?2
                 WHERE name = ?3 AND version = ?4",
                params![
                    serde_json::to_string(config)?,
                    now_ms,
                    name,
                    expected_version
                ],
            )?;
            let after = get_group_tx(tx, name)?;
            audit(
                tx,
                now_ms,
                actor,
                request_id,
                &format!("group:{name}"),
                "update_config",
                serde_json::to_value(&before)?,
                serde_json::to_value(&after)?,
            )?;
            Ok(after)
        })
    }

    pub fn get_group(&self, name: &str) -> Result<GroupView> {
        get_group_tx(&self.conn, name)
    }

    pub fn list_groups(&self) -> Result<Vec<GroupView>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {GROUP_COLS} FROM groups g ORDER BY g.name"
        ))?;
        let rows = stmt
            .query_map([], group_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(finish_group).collect()
    }

    // ---- agents -------------------------------------------------------

    /// Register a new agent. Every registration creates a new `agent_id`
    /// (invariant 4); earlier agents of the same instance become `replaced`
    /// and point at the new one, so their history stays linked.
    #[allow(clippy::too_many_arguments)]
    pub fn register_agent(
        &mut self,
        req: &RegisterRequest,
        agent_id: &str,
        token: &str,
        heartbeat_interval_ms: u64,
        lease_ms: u64,
        now_ms: i64,
    ) -> Result<RegisterResponse> {
        let rid = req.request_id.as_deref();
        self.idempotent("register", rid, now_ms, |tx| {
            get_group_tx(tx, &req.group)?;
            let actor = Actor::Agent(agent_id.to_owned());
            tx.execute(
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
                    now_ms
                ],
            )?;
            let previous: Vec<String> = tx
                .prepare(
                    "SELECT agent_id FROM agents WHERE instance_id = ?1 AND agent_id != ?2
                     AND status IN ('online', 'offline')",
                )?
                .query_map(params![req.instance_id, agent_id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for old in &previous {
                tx.execute(
                    "UPDATE agents SET status = 'replaced', replaced_by = ?1 WHERE agent_id = ?2",
                    params![agent_id, old],
                )?;
                audit(tx, now_ms, &actor, rid, &format!("agent:{old}"), "replaced",
                    json!({"status": "online_or_offline"}),
                    json!({"status": "replaced", "replaced_by": agent_id}))?;
            }
            let existing = tx
                .query_row(
                    &format!("SELECT {INSTANCE_COLS} FROM instances WHERE instance_id = ?1"),
                    [&req.instance_id],
                    instance_row,
                )
                .optional()?;
            match existing {
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
                    tx.execute(
                        "UPDATE instances SET agent_id = ?1, version = version + 1, updated_at_ms = ?2
                         WHERE instance_id = ?3",
                        params![agent_id, now_ms, inst.instance_id],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO instances (instance_id, group_name, role, agent_id, instance_type,
                             availability_zone, created_at_ms, updated_at_ms)
                         VALUES (?1, ?2, 'launching', ?3, ?4, ?5, ?6, ?6)",
                        params![
                            req.instance_id,
                            req.group,
                            agent_id,
                            req.instance_type,
                            req.availability_zone,
                            now_ms
                        ],
                    )?;
                }
            }
            let after = get_agent_tx(tx, agent_id)?;
            audit(tx, now_ms, &actor, rid, &format!("agent:{agent_id}"), "register",
                Value::Null, serde_json::to_value(&after)?)?;
            Ok(RegisterResponse {
                agent_id: agent_id.to_owned(),
                token: token.to_owned(),
                heartbeat_interval_ms,
                lease_ms,
                api_version: spot_common::wire::API_VERSION,
            })
        })
    }

    /// Agents whose tokens are still valid, for the auth cache: live ones,
    /// and deleted ones until they have fetched and finished their cleanup.
    pub fn active_agents(&self) -> Result<Vec<AgentAuth>> {
        let mut stmt = self.conn.prepare(
            "SELECT agent_id, token_hash, status FROM agents WHERE status IN ('online', 'offline')
             OR (status = 'deleted' AND EXISTS (SELECT 1 FROM commands c
                 WHERE c.agent_id = agents.agent_id AND c.kind = 'cleanup'
                 AND c.state IN ('queued', 'delivered')))",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AgentAuth {
                    agent_id: r.get(0)?,
                    token_hash: r.get(1)?,
                    status: parse_enum(2, r.get(2)?)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn get_agent(&self, agent_id: &str) -> Result<AgentView> {
        get_agent_tx(&self.conn, agent_id)
    }

    pub fn list_agents(&self, group: Option<&str>) -> Result<Vec<AgentView>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {AGENT_COLS} FROM agents WHERE ?1 IS NULL OR group_name = ?1
             ORDER BY registered_at_ms, agent_id"
        ))?;
        let rows = stmt
            .query_map([group], agent_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Persist a batch of heartbeats in one transaction.
    pub fn flush_heartbeats(&mut self, batch: &[HeartbeatRecord]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE agents SET last_heartbeat_ms = ?1, reported_role = ?2, highest_epoch = ?3,
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
        }
        tx.commit()?;
        Ok(())
    }

    /// ONLINE <-> OFFLINE, audited. Returns false when the agent was not in
    /// `from` (already changed, replaced or deleted).
    pub fn set_agent_status(
        &mut self,
        agent_id: &str,
        from: AgentStatus,
        to: AgentStatus,
        now_ms: i64,
    ) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE agents SET status = ?1 WHERE agent_id = ?2 AND status = ?3",
            params![to.as_str(), agent_id, from.as_str()],
        )?;
        if n == 1 {
            audit(
                &tx,
                now_ms,
                &Actor::System,
                None,
                &format!("agent:{agent_id}"),
                "status",
                json!({"status": from}),
                json!({"status": to}),
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// The agent reported healthy: a LAUNCHING instance becomes REPLICA.
    /// Returns the instance's role and the group's epoch.
    pub fn agent_healthy(&mut self, agent_id: &str, now_ms: i64) -> Result<(Role, u64)> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let agent = get_agent_tx(&tx, agent_id)?;
        let inst = get_instance_tx(&tx, &agent.instance_id)?;
        let group = get_group_tx(&tx, &inst.group)?;
        let mut role = inst.role;
        if inst.role == Role::Launching {
            let model = GroupModel {
                epoch: group.epoch,
                roles: [(inst.instance_id.clone(), inst.role)]
                    .into_iter()
                    .collect(),
            };
            let outcome = model.plan(&inst.instance_id, Transition::RegisteredHealthy, None)?;
            apply_changes(
                &tx,
                &outcome.changes,
                &[(inst.instance_id.clone(), inst.version)],
                now_ms,
            )?;
            for c in &outcome.changes {
                audit(
                    &tx,
                    now_ms,
                    &Actor::Agent(agent_id.to_owned()),
                    None,
                    &format!("instance:{}", c.instance_id),
                    "registered_healthy",
                    json!({"role": c.from}),
                    json!({"role": c.to}),
                )?;
            }
            role = Role::Replica;
        }
        tx.execute(
            "UPDATE agents SET healthy = 1 WHERE agent_id = ?1",
            [agent_id],
        )?;
        tx.commit()?;
        Ok((role, group.epoch))
    }

    /// Role and epoch as the coordinator records them, and what to capture
    /// prices for, for the heartbeat answer.
    pub fn agent_role(
        &self,
        agent_id: &str,
    ) -> Result<(Role, u64, Option<spot_common::wire::PricingHint>)> {
        let (role, epoch, config): (Role, u64, String) = self.conn.query_row(
            "SELECT i.role, g.epoch, g.config FROM agents a
             JOIN instances i ON i.instance_id = a.instance_id
             JOIN groups g ON g.name = i.group_name
             WHERE a.agent_id = ?1",
            [agent_id],
            |r| Ok((parse_enum(0, r.get(0)?)?, to_u64(r.get(1)?), r.get(2)?)),
        )?;
        let config: GroupConfig = serde_json::from_str(&config)?;
        // A ZOMBIE stops reporting (its reports are not ingested either).
        let hint = (matches!(role, Role::Primary | Role::Replica) && !config.pools.is_empty())
            .then(|| {
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
                spot_common::wire::PricingHint {
                    instance_types: types,
                    availability_zones: zones,
                    product_description: config.product_description.clone(),
                }
            });
        Ok((role, epoch, hint))
    }

    /// Operator deletes an agent: it stops being able to authenticate, a
    /// `cleanup` command is queued for it, its history stays linked.
    pub fn delete_agent(
        &mut self,
        request_id: Option<&str>,
        agent_id: &str,
        actor: &Actor,
        now_ms: i64,
        command_request_id: &str,
    ) -> Result<AgentView> {
        self.idempotent("delete_agent", request_id, now_ms, |tx| {
            let before = get_agent_tx(tx, agent_id)?;
            if before.status == AgentStatus::Deleted {
                return Err(StoreError::NotFound {
                    what: "agent",
                    id: agent_id.to_owned(),
                });
            }
            tx.execute(
                "UPDATE agents SET status = 'deleted' WHERE agent_id = ?1",
                [agent_id],
            )?;
            let cmd = Command {
                request_id: command_request_id.to_owned(),
                group: before.group.clone(),
                action: CommandKind::Cleanup,
                priority: spot_common::PRIORITY_NORMAL,
                epoch: 0,
                deadline_ms: now_ms + 24 * 3600 * 1000,
            };
            queue_command_tx(tx, agent_id, &cmd, now_ms)?;
            let after = get_agent_tx(tx, agent_id)?;
            audit(
                tx,
                now_ms,
                actor,
                request_id,
                &format!("agent:{agent_id}"),
                "delete",
                serde_json::to_value(&before)?,
                serde_json::to_value(&after)?,
            )?;
            Ok(after)
        })
    }

    // ---- instances and roles -----------------------------------------

    pub fn get_instance(&self, instance_id: &str) -> Result<InstanceView> {
        get_instance_tx(&self.conn, instance_id)
    }

    pub fn list_instances(&self, group: Option<&str>) -> Result<Vec<InstanceView>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE ?1 IS NULL OR group_name = ?1
             ORDER BY group_name, created_at_ms, instance_id"
        ))?;
        let rows = stmt
            .query_map([group], instance_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- commands -----------------------------------------------------

    /// Whether the agent has anything to fetch (cheap, on the read side).
    pub fn has_pending_commands(
        &self,
        agent_id: &str,
        now_ms: i64,
        redeliver_after_ms: i64,
    ) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM commands WHERE agent_id = ?1 AND
                (state = 'queued' OR (state = 'delivered' AND delivered_at_ms <= ?2)))",
            params![agent_id, now_ms - redeliver_after_ms],
            |r| r.get(0),
        )?)
    }

    /// Hand the agent its queued commands, highest priority first, and
    /// mark them delivered. A delivered command without a result is handed
    /// out again after `redeliver_after_ms` (the agent dedups by
    /// `request_id`, so a lost answer never runs a command twice). Commands
    /// past their deadline are marked expired instead.
    pub fn take_commands(
        &mut self,
        agent_id: &str,
        now_ms: i64,
        redeliver_after_ms: i64,
        limit: u32,
    ) -> Result<Vec<Command>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE commands SET state = 'expired', finished_at_ms = ?2
             WHERE agent_id = ?1 AND state = 'queued' AND deadline_ms < ?2",
            params![agent_id, now_ms],
        )?;
        let rows: Vec<(String, String)> = tx
            .prepare(
                "SELECT request_id, body FROM commands WHERE agent_id = ?1 AND
                    (state = 'queued' OR (state = 'delivered' AND delivered_at_ms <= ?2))
                 ORDER BY priority DESC, created_at_ms, request_id LIMIT ?3",
            )?
            .query_map(params![agent_id, now_ms - redeliver_after_ms, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (rid, body) in rows {
            tx.execute(
                "UPDATE commands SET state = 'delivered', delivered_at_ms = ?1 WHERE request_id = ?2",
                params![now_ms, rid],
            )?;
            out.push(serde_json::from_str(&body)?);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Queue a launch into `pool` for the group, made by `agent_id` or by
    /// the PRIMARY's agent, else the most recently seen online agent.
    #[allow(clippy::too_many_arguments)]
    pub fn queue_launch(
        &mut self,
        request_id: &str,
        group: &str,
        agent_id: Option<&str>,
        pool: &spot_common::Pool,
        emergency: bool,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<QueuedCommand> {
        self.idempotent("launch", Some(request_id), now_ms, |tx| {
            let g = get_group_tx(tx, group)?;
            let agent = match agent_id {
                Some(a) => {
                    let v = get_agent_tx(tx, a)?;
                    if v.group != group
                        || !matches!(v.status, AgentStatus::Online | AgentStatus::Offline)
                    {
                        return Err(StoreError::Invalid(format!(
                            "agent {a} is not a live agent of group {group}"
                        )));
                    }
                    a.to_owned()
                }
                None => tx
                    .query_row(
                        "SELECT a.agent_id FROM agents a
                         LEFT JOIN instances i ON i.agent_id = a.agent_id
                         WHERE a.group_name = ?1 AND a.status = 'online'
                         ORDER BY (i.role = 'primary') DESC, a.last_heartbeat_ms DESC NULLS LAST
                         LIMIT 1",
                        [group],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "group {group} has no online agent to launch with"
                        ))
                    })?,
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
                deadline_ms: now_ms + 120_000,
            };
            queue_command_tx(tx, &agent, &cmd, now_ms)?;
            audit(
                tx,
                now_ms,
                actor,
                Some(request_id),
                &format!("group:{group}"),
                "launch",
                Value::Null,
                json!({"agent_id": agent, "pool": pool, "emergency": emergency}),
            )?;
            Ok(QueuedCommand {
                agent_id: agent,
                command: cmd,
            })
        })
    }

    pub fn list_notices(&self, group: Option<&str>) -> Result<Vec<NoticeView>> {
        let mut stmt = self.conn.prepare(
            "SELECT event_id, agent_id, instance_id, group_name, kind, effective_at_ms, seen_at_ms
             FROM notices WHERE ?1 IS NULL OR group_name = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([group], |r| {
                Ok(NoticeView {
                    event_id: r.get(0)?,
                    agent_id: r.get(1)?,
                    instance_id: r.get(2)?,
                    group: r.get(3)?,
                    kind: r.get(4)?,
                    effective_at_ms: r.get(5)?,
                    seen_at_ms: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Agents that the given commands are addressed to.
    pub fn command_agents(&self, request_ids: &[String]) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT agent_id FROM commands WHERE request_id = ?1")?;
        let mut out = Vec::new();
        for rid in request_ids {
            if let Some(a) = stmt
                .query_row([rid], |r| r.get::<_, String>(0))
                .optional()?
            {
                out.push(a);
            }
        }
        Ok(out)
    }

    pub fn list_commands(&self, agent_id: Option<&str>) -> Result<Vec<CommandView>> {
        let mut stmt = self.conn.prepare(
            "SELECT body, agent_id, state, created_at_ms, result FROM commands
             WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY created_at_ms, request_id",
        )?;
        let rows: Vec<(String, String, String, i64, Option<String>)> = stmt
            .query_map([agent_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(body, agent_id, state, created_at_ms, result)| {
                Ok(CommandView {
                    command: serde_json::from_str(&body)?,
                    agent_id,
                    state,
                    created_at_ms,
                    result: result.map(|r| serde_json::from_str(&r)).transpose()?,
                })
            })
            .collect()
    }

    // ---- events -------------------------------------------------------

    /// Apply a batch of events exactly once, in one transaction: an event
    /// id seen before is acknowledged again and changes nothing.
    pub fn apply_events(
        &mut self,
        agent_id: &str,
        events: &[Event],
        now_ms: i64,
    ) -> Result<EventsResponse> {
        let prefix = format!("{agent_id}:");
        if let Some(bad) = events.iter().find(|e| !e.event_id.starts_with(&prefix)) {
            return Err(StoreError::Invalid(format!(
                "event id {:?} must start with {prefix:?}",
                bad.event_id
            )));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let agent = get_agent_tx(&tx, agent_id)?;
        let mut resp = EventsResponse {
            acked: Vec::with_capacity(events.len()),
            applied: 0,
            duplicates: 0,
        };
        for e in events {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO events (event_id, agent_id, seq, kind, body, at_ms, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    e.event_id,
                    agent_id,
                    e.seq,
                    e.body.kind(),
                    serde_json::to_string(&e.body)?,
                    e.at_ms,
                    now_ms
                ],
            )?;
            resp.acked.push(e.event_id.clone());
            if inserted == 0 {
                resp.duplicates += 1;
                continue;
            }
            resp.applied += 1;
            match &e.body {
                EventBody::CommandResult {
                    request_id,
                    outcome,
                    instance_id,
                    ..
                } => {
                    tx.execute(
                        "UPDATE commands SET state = ?1, finished_at_ms = ?2, result = ?3
                         WHERE request_id = ?4 AND agent_id = ?5 AND state IN ('queued', 'delivered')",
                        params![
                            outcome.as_str(),
                            now_ms,
                            serde_json::to_string(&e.body)?,
                            request_id,
                            agent_id
                        ],
                    )?;
                    // A launched instance is LAUNCHING from now on, so one
                    // that never registers can be marked FAILED.
                    if let (spot_common::CommandOutcome::Done, Some(new_id)) =
                        (outcome, instance_id)
                    {
                        tx.execute(
                            "INSERT OR IGNORE INTO instances (instance_id, group_name, role, instance_type,
                                 availability_zone, created_at_ms, updated_at_ms)
                             SELECT ?1, group_name, 'launching',
                                    json_extract(body, '$.action.pool.instance_type'),
                                    json_extract(body, '$.action.pool.availability_zone'), ?2, ?2
                             FROM commands WHERE request_id = ?3 AND kind = 'launch'",
                            params![new_id, now_ms, request_id],
                        )?;
                    }
                }
                EventBody::Notice {
                    notice,
                    effective_at_ms,
                    ..
                } => {
                    tx.execute(
                        "INSERT INTO notices (event_id, agent_id, instance_id, group_name, kind,
                             effective_at_ms, seen_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            e.event_id,
                            agent_id,
                            agent.instance_id,
                            agent.group,
                            notice.as_str(),
                            effective_at_ms,
                            e.at_ms
                        ],
                    )?;
                }
                EventBody::Health { healthy, .. } => {
                    tx.execute(
                        "UPDATE agents SET healthy = ?1 WHERE agent_id = ?2",
                        params![healthy, agent_id],
                    )?;
                }
                // Read back by the group snapshot (the old PRIMARY fenced).
                EventBody::SelfDemoted { .. } => {}
                // Price batches are delivered to the pricing endpoint.
                EventBody::Prices { .. } => {}
                EventBody::Ec2States { instances } => {
                    for i in instances {
                        tx.execute(
                            "UPDATE instances SET ec2_state = ?1 WHERE instance_id = ?2 AND group_name = ?3",
                            params![i.state, i.instance_id, agent.group],
                        )?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(resp)
    }

    // ---- audit and housekeeping --------------------------------------

    pub fn audit_log(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let limit = q.limit.unwrap_or(100).min(1000);
        let mut stmt = self.conn.prepare(
            "SELECT id, at_ms, actor, request_id, entity, action, pre_state, post_state FROM audit
             WHERE (?1 IS NULL OR entity = ?1) AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows: Vec<(AuditEntry, String, String)> = stmt
            .query_map(params![q.entity, q.after_id.unwrap_or(0), limit], |r| {
                Ok((
                    AuditEntry {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        actor: r.get(2)?,
                        request_id: r.get(3)?,
                        entity: r.get(4)?,
                        action: r.get(5)?,
                        pre_state: Value::Null,
                        post_state: Value::Null,
                    },
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(mut e, pre, post)| {
                e.pre_state = serde_json::from_str(&pre)?;
                e.post_state = serde_json::from_str(&post)?;
                Ok(e)
            })
            .collect()
    }

    /// Forget idempotency answers older than `before_ms` (they hold the
    /// first answer, including a registration's token, so they must not
    /// live forever).
    pub fn prune_idempotency(&mut self, before_ms: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM idempotency WHERE created_at_ms < ?1",
            [before_ms],
        )?)
    }
}

/// Write role changes with optimistic version checks. Demotions come first
/// in every plan, so the partial unique index never sees two PRIMARIES even
/// between statements.
fn apply_changes(
    tx: &Transaction<'_>,
    changes: &[spot_common::state::RoleChange],
    versions: &[(String, i64)],
    now_ms: i64,
) -> Result<()> {
    for c in changes {
        let version = versions
            .iter()
            .find(|(id, _)| *id == c.instance_id)
            .map(|(_, v)| *v)
            .ok_or_else(|| StoreError::NotFound {
                what: "instance",
                id: c.instance_id.clone(),
            })?;
        let n = tx.execute(
            "UPDATE instances SET role = ?1, version = version + 1, updated_at_ms = ?2
             WHERE instance_id = ?3 AND version = ?4 AND role = ?5",
            params![
                c.to.as_str(),
                now_ms,
                c.instance_id,
                version,
                c.from.as_str()
            ],
        )?;
        if n != 1 {
            return Err(StoreError::VersionConflict(format!(
                "instance {} changed concurrently",
                c.instance_id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
