//! The coordinator's store: the only module that writes SQL.
//!
//! The statements are written against `engine`'s small connection and
//! transaction interface, never a driver's: the embedded engine is SQLite
//! in WAL mode with `synchronous=FULL` (a committed role change survives
//! a power cut). Every change is made through a [`Txn`]: callers open one
//! (holding the write lock from its start), call its operations (one module per
//! subject: groups, agents, instances, commands, events, promotion,
//! switches, pricing, audit) and commit once, so a request that changes a
//! group and retires its replicas is one transaction. A `Txn` dropped
//! without `commit` rolls back, so an early return or a panic never
//! half-writes. Reads go through the [`Read`] trait, on a connection of
//! the reader pool or inside a `Txn`.
//!
//! Role changes are checked by `spot_common::state` and written by one
//! writer (`instances::write_role`) with optimistic `version` checks; the
//! partial unique index `one_primary_per_group` is the last line of
//! invariant 1.
//!
//! The store is synchronous; `Db` runs it on the blocking pool so no async
//! worker ever waits on the database.

mod agents;
mod audit;
mod commands;
mod copy;
mod db;
mod decisions;
pub mod engine;
mod events;
mod fence;
mod generation;
mod group;
mod groups;
mod instances;
mod pricing;
mod promotion;
mod retention;
mod rows;
mod snapshot;
mod switches;
mod term;
mod tokens;
mod training;
mod unheard;
mod volumes;

pub use agents::{AgentAuth, HeartbeatRecord, Registered, Reported, RoleOf};
pub use audit::AuditQuery;
pub use commands::Via;
pub use copy::{Copied, TABLES};
pub use db::{Db, READERS};
pub use decisions::Logged as LoggedDecision;
pub use engine::StoreUrl;
pub use engine::sqlite::LATEST as SCHEMA_VERSION;
pub use generation::{Generation, Stamp};
#[cfg(test)]
pub use group::generation_touched_all;
pub use group::{Request, Work};
pub use instances::BulkSelection;
pub use pricing::{ConsolidationConfig, SeriesKey};
pub use promotion::{Committed, PromoteResult, ReplaceRequest};
pub use retention::{Retention, Table};
pub use snapshot::{AgentLive, FleetHealth, PrimaryPrice, SnapshotInput};
pub use tokens::TokenView;
pub use training::{COLUMNS as TRAINING_COLUMNS, TrainingRow};
pub use volumes::VolumeState;

use engine::{Conn, ConnExt, Engine, OptionalExtension, Tx, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spot_common::planner::GroupSnap;
use spot_common::pricing::HourPoint;
use spot_common::wire::{
    AgentView, AuditEntry, CommandView, ConsolidationRun, GroupView, InstanceView, NoticeView,
    SwitchView, TransitionStatus,
};
use spot_common::{Actor, ConfigRuleError, RoleError};
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Engine(#[from] engine::Error),
    #[error("stored JSON does not parse")]
    Json(#[from] serde_json::Error),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error("version conflict: {0}")]
    VersionConflict(String),
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Rule(#[from] ConfigRuleError),
    #[error("request_id {request_id:?} was already used for {scope}")]
    RequestIdReuse { request_id: String, scope: String },
    #[error("request_id {0:?} was already used with a different request")]
    IdempotencyKeyReused(String),
    #[error("{0}")]
    NotFenced(String),
    /// A write on a coordinator that does not lead (PostgreSQL store):
    /// it never began, or its term ended before it could commit.
    #[error("{0}")]
    NotLeader(String),
    #[error("{0}")]
    Invalid(String),
    /// The request is well formed but the state refuses it now (409).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("store task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    InProgress(String),
    #[error("{0}")]
    NotIngested(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Who changes the store, when, and under which client request id (with
/// a hash of the request it names, so a reused id is recognised).
#[derive(Debug, Clone)]
pub struct Ctx {
    pub now_ms: i64,
    pub actor: Actor,
    pub request_id: Option<String>,
    pub request_hash: Option<String>,
}

impl Ctx {
    pub fn new(now_ms: i64, actor: Actor) -> Ctx {
        Ctx {
            now_ms,
            actor,
            request_id: None,
            request_hash: None,
        }
    }

    pub fn system(now_ms: i64) -> Ctx {
        Ctx::new(now_ms, Actor::System)
    }

    pub fn request(mut self, request_id: Option<String>) -> Ctx {
        self.request_id = request_id;
        self
    }

    /// The request's content, for idempotency: the same id with another
    /// content is refused (409 `idempotency_key_reused`).
    pub fn body<T: Serialize>(mut self, body: &T) -> Ctx {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.request_hash = Some(hex::encode(Sha256::digest(bytes)));
        self
    }
}

/// The wake target of the coordinator's own EC2 executor (commands with no
/// agent).
pub const COORDINATOR_EXECUTOR: &str = "coordinator";

/// A committed transaction's answer, and the agents whose long-polls
/// must wake because commands were queued for them.
#[derive(Debug)]
pub struct Done<T> {
    pub value: T,
    pub wake: Vec<String>,
}

/// One connection of the store, on whichever engine.
pub struct Store {
    engine: Box<dyn Engine>,
    /// Moved after a commit that wrote roles (see `generation`).
    roles: Generation,
}

/// One write transaction. Opened by [`Store::begin`], used through its
/// methods, committed once; dropped without `commit` it rolls back.
pub struct Txn<'a> {
    tx: Box<dyn Tx + 'a>,
    pub ctx: Ctx,
    /// The leader term this transaction writes in (0 on SQLite).
    leader_epoch: i64,
    /// Agents with newly queued commands.
    wake: HashSet<String>,
    /// What its statements wrote of the heartbeat answers.
    touched: std::sync::Arc<std::sync::Mutex<generation::Touched>>,
    roles: Generation,
}

impl Txn<'_> {
    pub fn now_ms(&self) -> i64 {
        self.ctx.now_ms
    }

    pub fn commit(self) -> Result<Vec<String>> {
        let committed = self.tx.commit();
        // Even when the commit failed: on a lost connection it may have
        // committed all the same, and a needless re-read costs little.
        self.roles
            .moved(&self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        committed?;
        Ok(self.wake.into_iter().collect())
    }

    /// Wake whoever runs commands queued for `agent` (the coordinator's
    /// executor for `None`).
    fn wake(&mut self, agent: Option<&str>) {
        self.wake
            .insert(agent.unwrap_or(COORDINATOR_EXECUTOR).to_owned());
    }
}

impl Store {
    pub fn new(engine: impl Engine + 'static) -> Store {
        Store {
            engine: Box::new(engine),
            roles: Generation::default(),
        }
    }

    /// The roles generation of this (writer) connection's commits.
    pub fn roles_generation(&self) -> Generation {
        self.roles.clone()
    }

    /// Open a write transaction (it holds the write lock from the start,
    /// so its reads see what it will write over).
    pub fn begin(&mut self, ctx: Ctx) -> Result<Txn<'_>> {
        let leader_epoch = self.engine.term_epoch();
        let touched = std::sync::Arc::default();
        Ok(Txn {
            tx: Box::new(generation::Marking {
                inner: self.engine.begin()?,
                touched: std::sync::Arc::clone(&touched),
            }),
            leader_epoch,
            ctx,
            wake: HashSet::new(),
            touched,
            roles: self.roles.clone(),
        })
    }

    /// Run `f` in one transaction and commit it.
    pub fn transact<T>(
        &mut self,
        ctx: Ctx,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T>,
    ) -> Result<Done<T>> {
        let mut tx = self.begin(ctx)?;
        let value = f(&mut tx)?;
        let wake = tx.commit()?;
        Ok(Done { value, wake })
    }

    /// Run `f` in one transaction, answering a repeated `ctx.request_id`
    /// with the first answer and changing nothing. Only successful answers
    /// are remembered: a refused request wrote nothing, so its retry is
    /// decided afresh.
    pub fn idempotent<T>(
        &mut self,
        scope: &str,
        ctx: Ctx,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T>,
    ) -> Result<Done<T>>
    where
        T: Serialize + DeserializeOwned,
    {
        let mut tx = self.begin(ctx)?;
        let value = tx.idempotent(scope, f)?;
        let wake = tx.commit()?;
        Ok(Done { value, wake })
    }
}

impl Txn<'_> {
    /// `f` in this transaction, answering a repeated `ctx.request_id` with
    /// its first answer (see [`Store::idempotent`]).
    pub fn idempotent<T>(
        &mut self,
        scope: &str,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T>,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
    {
        let rid = self.ctx.request_id.clone();
        let hash = self.ctx.request_hash.clone();
        if let Some(rid) = &rid {
            let seen: Option<(String, String, Option<String>)> = self
                .tx
                .query_row(
                    "SELECT scope, response, request_hash FROM idempotency WHERE request_id = ?1",
                    [rid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((seen_scope, response, seen_hash)) = seen {
                if seen_scope != scope {
                    return Err(StoreError::RequestIdReuse {
                        request_id: rid.clone(),
                        scope: seen_scope,
                    });
                }
                if let (Some(a), Some(b)) = (&seen_hash, &hash)
                    && a != b
                {
                    return Err(StoreError::IdempotencyKeyReused(rid.clone()));
                }
                return Ok(serde_json::from_str(&response)?);
            }
        }
        let value = f(self)?;
        if let Some(rid) = &rid {
            self.tx.execute(
                "INSERT INTO idempotency (request_id, scope, response, created_at_ms, request_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    rid,
                    scope,
                    serde_json::to_string(&value)?,
                    self.now_ms(),
                    hash
                ],
            )?;
        }
        Ok(value)
    }

    pub(super) fn run<T>(&mut self, r: &Request<T>) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
    {
        match r.scope {
            Some(scope) => self.idempotent(scope, |tx| (r.work)(tx)),
            None => (r.work)(self),
        }
    }
}

/// Read operations, on the reader connection (`Store`) or inside a write
/// transaction (`Txn`, which then sees its own changes). A read made of
/// several statements that must agree with each other (the planner's
/// snapshot, a transition's status, the fleet's health, a model's input)
/// runs on one snapshot (`ConnExt::consistent`).
pub trait Read {
    fn conn(&self) -> &dyn Conn;

    fn schema_version(&self) -> Result<i64> {
        self.conn().schema_version()
    }

    fn integrity_check(&self) -> Result<String> {
        self.conn().integrity_check()
    }

    fn group(&self, name: &str) -> Result<GroupView> {
        rows::group(self.conn(), name)
    }
    fn groups(&self) -> Result<Vec<GroupView>> {
        groups::list(self.conn())
    }
    fn group_names(&self) -> Result<Vec<String>> {
        groups::names(self.conn())
    }
    /// The group's transition and what it waits for; `None` without one.
    fn transition_status(&self, group: &str) -> Result<Option<TransitionStatus>> {
        self.conn().consistent(|c| promotion::status(c, group))
    }
    /// One group as the planner sees it, read on one snapshot of the store
    /// (never a switch's new instance without the instance).
    fn group_snapshot(&self, group: &str, input: &SnapshotInput) -> Result<GroupSnap> {
        self.conn().consistent(|c| snapshot::group(c, group, input))
    }
    /// What the alerts watch across the fleet.
    fn fleet_health(&self, now_ms: i64) -> Result<FleetHealth> {
        self.conn()
            .consistent(|c| snapshot::fleet_health(c, now_ms))
    }
    /// Each group's PRIMARY and its pool's newest hourly price.
    fn primary_prices(&self) -> Result<Vec<PrimaryPrice>> {
        snapshot::primary_prices(self.conn())
    }
    fn agent(&self, agent_id: &str) -> Result<AgentView> {
        rows::agent(self.conn(), agent_id)
    }
    fn agents(&self, group: Option<&str>) -> Result<Vec<AgentView>> {
        agents::list(self.conn(), group)
    }
    /// Agents whose tokens are valid, for the auth cache.
    fn active_agents(&self) -> Result<Vec<AgentAuth>> {
        agents::active(self.conn())
    }
    /// What a heartbeat answer is made of.
    fn agent_role(&self, agent_id: &str) -> Result<RoleOf> {
        agents::role_of(self.conn(), agent_id)
    }
    fn instance(&self, instance_id: &str) -> Result<InstanceView> {
        rows::instance(self.conn(), instance_id)
    }
    fn instances(&self, group: Option<&str>) -> Result<Vec<InstanceView>> {
        instances::list(self.conn(), group)
    }
    fn commands(&self, agent_id: Option<&str>) -> Result<Vec<CommandView>> {
        commands::list(self.conn(), agent_id)
    }
    fn has_pending_commands(
        &self,
        agent_id: &str,
        now_ms: i64,
        redeliver_after_ms: i64,
    ) -> Result<bool> {
        commands::has_pending(self.conn(), agent_id, now_ms, redeliver_after_ms)
    }
    fn notices(&self, group: Option<&str>) -> Result<Vec<NoticeView>> {
        events::notices(self.conn(), group)
    }
    /// The group's data volumes: where, latest snapshots, RPO.
    fn data_volumes(&self, group: &str, now_ms: i64) -> Result<spot_common::wire::DataVolumesView> {
        let config = self.group(group)?.config;
        self.conn()
            .consistent(|c| volumes::view(c, group, &config, now_ms))
    }
    fn switches(&self, group: &str) -> Result<Vec<SwitchView>> {
        switches::list(self.conn(), group)
    }
    /// Launches of `group` queued, running, or done since `since_ms` but
    /// not registered yet.
    fn launches_in_flight(&self, group: &str, since_ms: i64) -> Result<usize> {
        snapshot::launches_in_flight(self.conn(), group, since_ms)
    }
    /// What the decision engine's model is told about `group`.
    fn decision_input(
        &self,
        group: &str,
        now_ms: i64,
        on_demand: &std::collections::BTreeMap<String, f64>,
    ) -> Result<spot_common::decision::DecisionInput> {
        self.conn()
            .consistent(|c| decisions::input(c, group, now_ms, on_demand))
    }
    /// `group`'s price and interruption history, hour by hour, for a
    /// backtest.
    fn backtest_history(
        &self,
        group: &str,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<spot_common::decision::backtest::History> {
        decisions::history(self.conn(), group, since_ms, now_ms)
    }
    /// Per assigned model, how its groups fared since `since_ms` (A/B).
    fn compare_models(&self, since_ms: i64) -> Result<Vec<spot_common::wire::ModelStats>> {
        decisions::compare(self.conn(), since_ms)
    }
    /// The latest `limit` decisions of `group`, newest first.
    fn decisions(&self, group: &str, limit: u32) -> Result<Vec<spot_common::wire::DecisionView>> {
        decisions::list(self.conn(), group, limit)
    }
    fn audit_log(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        audit::log(self.conn(), q)
    }
    /// Named operator tokens (never the tokens themselves).
    fn tokens(&self) -> Result<Vec<TokenView>> {
        tokens::list(self.conn())
    }
    /// The name and role of the active named token with this hash.
    fn named_token(&self, hash: &str) -> Result<Option<(String, spot_common::TokenRole)>> {
        tokens::find(self.conn(), hash)
    }
    /// Enrollment tokens scoped to one group (never the tokens themselves).
    fn enroll_tokens(&self) -> Result<Vec<tokens::EnrollTokenView>> {
        tokens::enroll_list(self.conn())
    }
    /// The name and group of the active enrollment token with this hash.
    fn enroll_token(&self, hash: &str) -> Result<Option<(String, String)>> {
        tokens::find_enroll(self.conn(), hash)
    }
    /// The id of the latest audit entry (0 for none).
    fn last_audit_id(&self) -> Result<i64> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |r| r.get(0))
    }
    fn hourly_prices(&self, key: &SeriesKey, from_ms: i64, to_ms: i64) -> Result<Vec<HourPoint>> {
        pricing::hourly(self.conn(), key, from_ms, to_ms)
    }
    fn consolidation_runs(&self, limit: u32) -> Result<Vec<ConsolidationRun>> {
        pricing::consolidation_runs(self.conn(), limit)
    }
    /// Per group and hour since `since_ms`: features, decision, labels.
    fn training_rows(&self, since_ms: i64, now_ms: i64) -> Result<Vec<TrainingRow>> {
        training::rows(self.conn(), since_ms, now_ms)
    }
    /// Every canonical pool-hour since `since_ms`, for the training export.
    fn export_hourly(
        &self,
        since_ms: i64,
        row: &mut dyn FnMut(&SeriesKey, &HourPoint) -> std::io::Result<()>,
    ) -> Result<u64> {
        pricing::export_hourly(self.conn(), since_ms, row)
    }
}

impl Read for Store {
    fn conn(&self) -> &dyn Conn {
        self.engine.conn()
    }
}

impl Read for Txn<'_> {
    fn conn(&self) -> &dyn Conn {
        &*self.tx
    }
}

use engine::parse_text as parse_enum;
use spot_runtime::sql::to_u64;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The store's tests, once on each engine.
#[cfg(test)]
mod tests {
    mod sqlite {
        fn store() -> (tempfile::TempDir, crate::store::Store) {
            let dir = tempfile::tempdir().unwrap();
            let engine =
                crate::store::engine::sqlite::Sqlite::open(&dir.path().join("t.db"), false)
                    .unwrap();
            (dir, crate::store::Store::new(engine))
        }
        include!("tests.rs");
    }

    mod postgres {
        /// A new database on the test process's PostgreSQL server.
        fn store() -> ((), crate::store::Store) {
            use crate::store::engine::postgres::{Postgres, Target};
            let url = spot_runtime::pgtest::shared()
                .and_then(|s| s.fresh_database())
                .unwrap();
            let target = std::sync::Arc::new(Target::parse(&url).unwrap());
            (
                (),
                crate::store::Store::new(Postgres::open(target, None, true).unwrap()),
            )
        }
        include!("tests.rs");
    }
}
