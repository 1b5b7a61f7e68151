//! The agent's journal: the only module that writes SQL.
//!
//! SQLite in WAL mode with `synchronous=FULL`, one transaction per step:
//! * a command is journaled (`received`) before any side effect, and the
//!   group's highest epoch is raised in that same transaction, so a stale
//!   command is refused even across restarts;
//! * it goes `running` (attempt counted) before its side effect, and
//!   `done`/`failed` together with its result event in the outbox;
//! * notices are journaled once per distinct body, with their event;
//! * outbox rows are deleted only when the coordinator acknowledged them.
//!
//! On restart, a command found `received` or `running` is resumed; launches
//! reuse the `ClientToken` derived from the `request_id`, so a crash
//! between the EC2 call and the journal commit never launches twice.
//! Before every start (first run or resumed), a role-changing command's
//! epoch is checked against the highest accepted and its deadline against
//! the clock, in the transaction that marks it running.
//!
//! The agent's own state (identity, role, link) is one typed row,
//! [`LocalState`]; every read and write returns a `Result`.

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use spot_common::{Command, CommandOutcome, EventBody, NoticeKind, Role};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("journal JSON does not parse")]
    Json(#[from] serde_json::Error),
    #[error("journal task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("journal I/O error injected by the test fault {0}")]
    Injected(String),
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

const STEPS: &[&str] = &[
    r#"
    CREATE TABLE identity (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE commands (
        request_id     TEXT PRIMARY KEY,
        group_name     TEXT NOT NULL,
        kind           TEXT NOT NULL,
        body           TEXT NOT NULL,
        epoch          INTEGER NOT NULL,
        state          TEXT NOT NULL CHECK (state IN
            ('received', 'running', 'done', 'failed', 'stale', 'expired')),
        attempts       INTEGER NOT NULL DEFAULT 0,
        result         TEXT,
        output         TEXT,
        received_at_ms INTEGER NOT NULL,
        updated_at_ms  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE outbox (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        body          TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE notices (
        id              INTEGER PRIMARY KEY,
        kind            TEXT NOT NULL,
        raw             TEXT NOT NULL,
        effective_at_ms INTEGER,
        first_seen_ms   INTEGER NOT NULL,
        UNIQUE (kind, raw)
    ) STRICT;
    CREATE TABLE epochs (
        group_name TEXT PRIMARY KEY,
        highest    INTEGER NOT NULL
    ) STRICT;
"#,
    // 1 -> 2: the key-value identity table becomes one typed row.
    r#"
    CREATE TABLE agent_state (
        id                    INTEGER PRIMARY KEY CHECK (id = 1),
        instance_id           TEXT,
        group_name            TEXT,
        agent_id              TEXT,
        token                 TEXT,
        coordinator_url       TEXT,
        register_request_id   TEXT,
        heartbeat_interval_ms INTEGER,
        role                  TEXT CHECK (role IN ('launching', 'replica', 'primary', 'zombie')),
        role_epoch            INTEGER NOT NULL DEFAULT 0,
        link_state            TEXT,
        link_last_ok_ms       INTEGER,
        link_last_error       TEXT,
        decommissioned_at_ms  INTEGER,
        pricing_since_ms      INTEGER,
        self_demoted_at_ms    INTEGER
    ) STRICT;
    INSERT INTO agent_state (id) VALUES (1);
    UPDATE agent_state SET
        instance_id = (SELECT value FROM identity WHERE key = 'instance_id'),
        group_name = (SELECT value FROM identity WHERE key = 'group'),
        agent_id = (SELECT value FROM identity WHERE key = 'agent_id'),
        token = (SELECT value FROM identity WHERE key = 'token'),
        coordinator_url = (SELECT value FROM identity WHERE key = 'coordinator_url'),
        register_request_id = (SELECT value FROM identity WHERE key = 'register_request_id'),
        heartbeat_interval_ms = CAST((SELECT value FROM identity WHERE key = 'heartbeat_interval_ms') AS INTEGER),
        role = (SELECT value FROM identity WHERE key = 'role'
                AND value IN ('launching', 'replica', 'primary', 'zombie')),
        link_state = (SELECT value FROM identity WHERE key = 'link_state'),
        link_last_ok_ms = CAST((SELECT value FROM identity WHERE key = 'link_last_ok_ms') AS INTEGER),
        link_last_error = (SELECT value FROM identity WHERE key = 'link_last_error'),
        decommissioned_at_ms = CAST((SELECT value FROM identity WHERE key = 'decommissioned') AS INTEGER),
        pricing_since_ms = CAST((SELECT value FROM identity WHERE key = 'pricing_since_ms') AS INTEGER),
        self_demoted_at_ms = CAST((SELECT value FROM identity WHERE key = 'self_demoted_at_ms') AS INTEGER);
    UPDATE agent_state SET role_epoch = COALESCE((SELECT MAX(highest) FROM epochs), 0)
        WHERE role IN ('primary', 'zombie');
    DROP TABLE identity;
"#,
];

/// The agent's own state: one row, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalState {
    /// The instance this journal belongs to (bound at first start).
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub agent_id: Option<String>,
    #[serde(skip)]
    pub token: Option<String>,
    pub coordinator_url: Option<String>,
    pub register_request_id: Option<String>,
    pub heartbeat_interval_ms: Option<i64>,
    /// The role this agent has executed (promote/demote hooks run).
    pub role: Option<Role>,
    /// Epoch of the command that gave it that role.
    pub role_epoch: u64,
    /// `connected`, `unreachable`, `unregistered`.
    pub link_state: Option<String>,
    pub link_last_ok_ms: Option<i64>,
    pub link_last_error: Option<String>,
    /// An operator deleted this agent (its cleanup ran).
    pub decommissioned_at_ms: Option<i64>,
    /// Spot prices are captured up to this AWS timestamp.
    pub pricing_since_ms: Option<i64>,
    pub self_demoted_at_ms: Option<i64>,
}

/// Registered credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub agent_id: String,
    pub token: String,
}

impl LocalState {
    /// The credentials, when registered with `coordinator_url`.
    pub fn creds_for(&self, coordinator_url: &str) -> Option<Creds> {
        match (&self.agent_id, &self.token, &self.coordinator_url) {
            (Some(a), Some(t), Some(u)) if u == coordinator_url => Some(Creds {
                agent_id: a.clone(),
                token: t.clone(),
            }),
            _ => None,
        }
    }
}

/// Verdict of `start`: run it, or it was refused (and its result queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Run {
        attempts: i64,
    },
    /// A newer epoch was accepted since: refused as stale.
    Stale {
        highest: u64,
    },
    /// Its deadline passed before it could start.
    Expired,
    /// Already finished (a duplicate resume).
    Finished,
}

/// What happened to a command offered to the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// New: run it.
    Run,
    /// Already journaled (redelivery): nothing to do.
    Duplicate { state: String },
    /// Epoch below the highest seen: refused, result queued.
    Stale { highest: u64 },
    /// Past its deadline: refused, result queued.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRow {
    pub kind: String,
    pub effective_at_ms: Option<i64>,
    pub first_seen_ms: i64,
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRow {
    pub request_id: String,
    pub kind: String,
    pub epoch: u64,
    pub state: String,
    pub attempts: i64,
    pub updated_at_ms: i64,
}

/// An outbox row waiting for acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub seq: i64,
    pub at_ms: i64,
    pub body: EventBody,
}

pub struct Journal {
    conn: Connection,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn highest_tx(conn: &Connection, group: &str) -> Result<u64> {
    Ok(conn
        .query_row(
            "SELECT highest FROM epochs WHERE group_name = ?1",
            [group],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map_or(0, |h| u64::try_from(h).unwrap_or(0)))
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let Some(step) = usize::try_from(v).ok().and_then(|i| STEPS.get(i)) else {
                break;
            };
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", v + 1)?;
            tx.commit()?;
        }
        Ok(Journal { conn })
    }

    /// Read-only view for `spot-agent status` while the daemon runs.
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        Ok(Journal { conn })
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    // ---- local state --------------------------------------------------

    pub fn state(&self) -> Result<LocalState> {
        Ok(self.conn.query_row(
            "SELECT instance_id, group_name, agent_id, token, coordinator_url, register_request_id,
                    heartbeat_interval_ms, role, role_epoch, link_state, link_last_ok_ms,
                    link_last_error, decommissioned_at_ms, pricing_since_ms, self_demoted_at_ms
             FROM agent_state WHERE id = 1",
            [],
            |r| {
                let role: Option<String> = r.get(7)?;
                Ok(LocalState {
                    instance_id: r.get(0)?,
                    group: r.get(1)?,
                    agent_id: r.get(2)?,
                    token: r.get(3)?,
                    coordinator_url: r.get(4)?,
                    register_request_id: r.get(5)?,
                    heartbeat_interval_ms: r.get(6)?,
                    role: role.and_then(|r| r.parse().ok()),
                    role_epoch: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
                    link_state: r.get(9)?,
                    link_last_ok_ms: r.get(10)?,
                    link_last_error: r.get(11)?,
                    decommissioned_at_ms: r.get(12)?,
                    pricing_since_ms: r.get(13)?,
                    self_demoted_at_ms: r.get(14)?,
                })
            },
        )?)
    }

    /// Bind the journal to the instance and group it serves.
    pub fn bind(&mut self, instance_id: &str, group: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET instance_id = ?1, group_name = ?2 WHERE id = 1",
            params![instance_id, group],
        )?;
        Ok(())
    }

    /// The registration's request id, created once: a retry after a lost
    /// answer gets the same identity, not a second one.
    pub fn register_request_id(&mut self, fresh: &str) -> Result<String> {
        self.conn.execute(
            "UPDATE agent_state SET register_request_id = COALESCE(register_request_id, ?1)
             WHERE id = 1",
            [fresh],
        )?;
        Ok(self.conn.query_row(
            "SELECT register_request_id FROM agent_state WHERE id = 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// A registration answer (all or nothing).
    pub fn set_identity(
        &mut self,
        creds: &Creds,
        coordinator_url: &str,
        heartbeat_interval_ms: u64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET agent_id = ?1, token = ?2, coordinator_url = ?3,
                 heartbeat_interval_ms = ?4 WHERE id = 1",
            params![
                creds.agent_id,
                creds.token,
                coordinator_url,
                to_i64(heartbeat_interval_ms)
            ],
        )?;
        Ok(())
    }

    /// The coordinator no longer knows us: register afresh.
    pub fn forget_identity(&mut self) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET agent_id = NULL, token = NULL, register_request_id = NULL
             WHERE id = 1",
            [],
        )?;
        Ok(())
    }

    /// A role learned from the coordinator (launching -> replica).
    pub fn set_role(&mut self, role: Role, epoch: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET role = ?1, role_epoch = ?2 WHERE id = 1",
            params![role.as_str(), to_i64(epoch)],
        )?;
        Ok(())
    }

    pub fn set_link(&mut self, state: &str, ok_ms: Option<i64>, error: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET link_state = ?1,
                 link_last_ok_ms = COALESCE(?2, link_last_ok_ms),
                 link_last_error = COALESCE(?3, link_last_error) WHERE id = 1",
            params![state, ok_ms, error],
        )?;
        Ok(())
    }

    pub fn set_decommissioned(&mut self, at_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET decommissioned_at_ms = ?1 WHERE id = 1",
            [at_ms],
        )?;
        Ok(())
    }

    /// Journal price batches and the capture watermark in one transaction.
    pub fn record_prices(
        &mut self,
        batches: &[EventBody],
        since_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for b in batches {
            tx.execute(
                "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
                params![serde_json::to_string(b)?, now_ms],
            )?;
        }
        tx.execute(
            "UPDATE agent_state SET pricing_since_ms = ?1 WHERE id = 1",
            [since_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The agent stopped serving on its own (the coordinator answered that
    /// it is not PRIMARY at its epoch, or its journal failed and it
    /// recovered): ZOMBIE at `epoch`, with the event for the coordinator.
    pub fn self_demoted(&mut self, epoch: u64, event: &EventBody, now_ms: i64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE agent_state SET role = 'zombie', role_epoch = ?1, self_demoted_at_ms = ?2
             WHERE id = 1",
            params![to_i64(epoch), now_ms],
        )?;
        tx.execute(
            "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
            params![serde_json::to_string(event)?, now_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    // ---- notices ------------------------------------------------------

    /// Journal a notice and its event once per distinct (kind, body).
    /// Returns true when it is new.
    pub fn record_notice(
        &mut self,
        kind: NoticeKind,
        raw: &str,
        effective_at_ms: Option<i64>,
        action: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO notices (kind, raw, effective_at_ms, first_seen_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![kind.as_str(), raw, effective_at_ms, now_ms],
        )?;
        if n == 1 {
            let body = EventBody::Notice {
                notice: kind,
                effective_at_ms,
                action: action.map(str::to_owned),
                raw: raw.to_owned(),
            };
            tx.execute(
                "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
                params![serde_json::to_string(&body)?, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    pub fn notices(&self) -> Result<Vec<NoticeRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, effective_at_ms, first_seen_ms, raw FROM notices ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NoticeRow {
                    kind: r.get(0)?,
                    effective_at_ms: r.get(1)?,
                    first_seen_ms: r.get(2)?,
                    raw: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- commands -----------------------------------------------------

    /// Offer a command. New commands are journaled `received` (and the
    /// group's highest epoch raised) before anything else happens.
    pub fn accept(&mut self, cmd: &Command, now_ms: i64) -> Result<Accept> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seen: Option<String> = tx
            .query_row(
                "SELECT state FROM commands WHERE request_id = ?1",
                [&cmd.request_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(state) = seen {
            return Ok(Accept::Duplicate { state });
        }
        let highest = highest_tx(&tx, &cmd.group)?;
        let (state, outcome, verdict) = if cmd.action.is_role_change() && cmd.epoch < highest {
            (
                "stale",
                Some(CommandOutcome::Stale),
                Accept::Stale { highest },
            )
        } else if now_ms > cmd.deadline_ms {
            ("expired", Some(CommandOutcome::Expired), Accept::Expired)
        } else {
            ("received", None, Accept::Run)
        };
        if verdict == Accept::Run && cmd.action.is_role_change() {
            tx.execute(
                "INSERT INTO epochs (group_name, highest) VALUES (?1, ?2)
                 ON CONFLICT (group_name) DO UPDATE SET highest = MAX(highest, excluded.highest)",
                params![cmd.group, to_i64(cmd.epoch)],
            )?;
        }
        tx.execute(
            "INSERT INTO commands (request_id, group_name, kind, body, epoch, state,
                 received_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                cmd.request_id,
                cmd.group,
                cmd.action.name(),
                serde_json::to_string(cmd)?,
                to_i64(cmd.epoch),
                state,
                now_ms
            ],
        )?;
        if let Some(outcome) = outcome {
            let detail = match &verdict {
                Accept::Stale { highest } => {
                    format!("epoch {} is below the highest seen, {highest}", cmd.epoch)
                }
                _ => format!(
                    "deadline {} passed before the command started",
                    cmd.deadline_ms
                ),
            };
            let body = EventBody::CommandResult {
                request_id: cmd.request_id.clone(),
                outcome,
                detail: Some(detail),
                instance_id: None,
                error_code: None,
            };
            tx.execute(
                "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
                params![serde_json::to_string(&body)?, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(verdict)
    }

    /// Mark a command running (one more attempt) right before its side
    /// effect, after checking it is still wanted: a role change whose epoch
    /// is below the highest accepted is stale; a command past its deadline
    /// has expired (except a demote, which is always safe to run, and a
    /// launch already attempted, which must be resumed with its
    /// ClientToken to learn what it created). A refused command gets its
    /// result event in the same transaction.
    pub fn start(&mut self, request_id: &str, now_ms: i64) -> Result<Start> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, i64)> = tx
            .query_row(
                "SELECT body, state, attempts FROM commands WHERE request_id = ?1",
                [request_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((body, state, attempts)) = row else {
            return Ok(Start::Finished);
        };
        if !matches!(state.as_str(), "received" | "running") {
            return Ok(Start::Finished);
        }
        let cmd: Command = serde_json::from_str(&body)?;
        let highest = highest_tx(&tx, &cmd.group)?;
        let (verdict, outcome, detail) = if cmd.action.is_role_change() && cmd.epoch < highest {
            (
                Start::Stale { highest },
                CommandOutcome::Stale,
                format!("epoch {} was superseded by epoch {highest}", cmd.epoch),
            )
        } else if now_ms > cmd.deadline_ms
            && !matches!(cmd.action, spot_common::CommandKind::Demote)
            && !(matches!(cmd.action, spot_common::CommandKind::Launch { .. }) && attempts > 0)
        {
            (
                Start::Expired,
                CommandOutcome::Expired,
                format!("deadline {} passed before it could start", cmd.deadline_ms),
            )
        } else {
            tx.execute(
                "UPDATE commands SET state = 'running', attempts = attempts + 1, updated_at_ms = ?2
                 WHERE request_id = ?1",
                params![request_id, now_ms],
            )?;
            tx.commit()?;
            return Ok(Start::Run {
                attempts: attempts + 1,
            });
        };
        let result = EventBody::CommandResult {
            request_id: request_id.to_owned(),
            outcome,
            detail: Some(detail),
            instance_id: None,
            error_code: None,
        };
        let result = serde_json::to_string(&result)?;
        tx.execute(
            "UPDATE commands SET state = ?1, result = ?2, updated_at_ms = ?3 WHERE request_id = ?4",
            params![outcome.as_str(), result, now_ms, request_id],
        )?;
        tx.execute(
            "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
            params![result, now_ms],
        )?;
        tx.commit()?;
        Ok(verdict)
    }

    /// Final state and result event, and the role the command gave this
    /// agent (promote: PRIMARY, demote: ZOMBIE), in one transaction.
    pub fn finish(
        &mut self,
        request_id: &str,
        result: &EventBody,
        output: Option<&str>,
        role: Option<(Role, u64)>,
        now_ms: i64,
    ) -> Result<()> {
        let state = match result {
            EventBody::CommandResult { outcome, .. } => outcome.as_str(),
            _ => "failed",
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let body = serde_json::to_string(result)?;
        let n = tx.execute(
            "UPDATE commands SET state = ?1, result = ?2, output = COALESCE(?3, output),
                 updated_at_ms = ?4
             WHERE request_id = ?5 AND state IN ('received', 'running')",
            params![state, body, output, now_ms, request_id],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
                params![body, now_ms],
            )?;
            if let Some((role, epoch)) = role {
                tx.execute(
                    "UPDATE agent_state SET role = ?1, role_epoch = ?2 WHERE id = 1",
                    params![role.as_str(), to_i64(epoch)],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Commands to resume after a restart, oldest first.
    pub fn unfinished(&self) -> Result<Vec<Command>> {
        let mut stmt = self.conn.prepare(
            "SELECT body FROM commands WHERE state IN ('received', 'running')
             ORDER BY received_at_ms, request_id",
        )?;
        let bodies: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(JournalError::from))
            .collect()
    }

    pub fn command_state(&self, request_id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT state FROM commands WHERE request_id = ?1",
                [request_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn commands(&self, limit: u32) -> Result<Vec<CommandRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT request_id, kind, epoch, state, attempts, updated_at_ms FROM commands
             ORDER BY received_at_ms DESC, request_id LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(CommandRow {
                    request_id: r.get(0)?,
                    kind: r.get(1)?,
                    epoch: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    state: r.get(3)?,
                    attempts: r.get(4)?,
                    updated_at_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn highest_epoch(&self) -> Result<u64> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MAX(highest) FROM epochs", [], |r| r.get(0))?;
        Ok(v.map_or(0, |h| u64::try_from(h).unwrap_or(0)))
    }

    // ---- outbox -------------------------------------------------------

    /// Record an event for delivery.
    pub fn push_event(&mut self, body: &EventBody, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
            params![serde_json::to_string(body)?, now_ms],
        )?;
        Ok(())
    }

    /// Oldest unacknowledged events, at most `limit`.
    pub fn pending(&self, limit: u32) -> Result<Vec<Pending>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, created_at_ms, body FROM outbox ORDER BY seq LIMIT ?1")?;
        let rows: Vec<(i64, i64, String)> = stmt
            .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(seq, at_ms, body)| {
                Ok(Pending {
                    seq,
                    at_ms,
                    body: serde_json::from_str(&body)?,
                })
            })
            .collect()
    }

    /// Delete acknowledged events.
    pub fn ack(&mut self, seqs: &[i64]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for s in seqs {
                stmt.execute([s])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn backlog(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Async handle: the journal runs on the blocking pool. The first journal
/// error of any caller trips `failed()`, on which the agent fails closed
/// (a PRIMARY that cannot journal stops serving, then the process exits
/// for systemd to restart it): no caller turns a journal error into "not
/// registered" or "not PRIMARY".
#[derive(Clone)]
pub struct JournalHandle {
    inner: Arc<Mutex<Journal>>,
    failed: tokio_util::sync::CancellationToken,
    first_error: Arc<Mutex<Option<String>>>,
    /// Test builds only: while this file exists, every call fails.
    fault_file: Option<std::path::PathBuf>,
}

impl JournalHandle {
    pub fn new(j: Journal) -> JournalHandle {
        JournalHandle {
            inner: Arc::new(Mutex::new(j)),
            failed: tokio_util::sync::CancellationToken::new(),
            first_error: Arc::default(),
            fault_file: None,
        }
    }

    /// Test builds: calls fail while `path` exists (the nemesis's journal
    /// I/O errors). Ignored without the `failpoints` feature.
    pub fn with_fault_file(mut self, path: std::path::PathBuf) -> JournalHandle {
        if cfg!(feature = "failpoints") {
            self.fault_file = Some(path);
        }
        self
    }

    /// Cancelled on the first journal error.
    pub fn failed(&self) -> tokio_util::sync::CancellationToken {
        self.failed.clone()
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Journal) -> Result<R> + Send + 'static,
    {
        let result = match &self.fault_file {
            Some(p) if p.exists() => Err(JournalError::Injected(p.display().to_string())),
            _ => {
                let inner = Arc::clone(&self.inner);
                tokio::task::spawn_blocking(move || {
                    let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                    f(&mut g)
                })
                .await
                .map_err(JournalError::from)
                .and_then(|r| r)
            }
        };
        if let Err(e) = &result {
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(crate::error_chain(e));
            }
            self.failed.cancel();
        }
        result
    }
}

#[cfg(test)]
mod tests;
