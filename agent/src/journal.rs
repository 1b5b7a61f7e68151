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

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use spot_common::{Command, CommandOutcome, EventBody, NoticeKind};
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
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

const STEPS: &[&str] = &[r#"
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
"#];

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

    // ---- identity -----------------------------------------------------

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM identity WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Set several keys atomically (an identity is all or nothing).
    pub fn set_many(&mut self, kv: &[(&str, &str)]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (k, v) in kv {
            tx.execute(
                "INSERT INTO identity (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn delete_keys(&mut self, keys: &[&str]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for k in keys {
            tx.execute("DELETE FROM identity WHERE key = ?1", [k])?;
        }
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
        let highest: u64 = tx
            .query_row(
                "SELECT highest FROM epochs WHERE group_name = ?1",
                [&cmd.group],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map_or(0, |h| u64::try_from(h).unwrap_or(0));
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

    /// Mark a command running (one more attempt) before its side effect.
    pub fn start(&mut self, request_id: &str, now_ms: i64) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE commands SET state = 'running', attempts = attempts + 1, updated_at_ms = ?2
             WHERE request_id = ?1 AND state IN ('received', 'running')",
            params![request_id, now_ms],
        )?;
        let attempts = tx.query_row(
            "SELECT attempts FROM commands WHERE request_id = ?1",
            [request_id],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(attempts)
    }

    /// Final state and result event, in one transaction.
    pub fn finish(
        &mut self,
        request_id: &str,
        result: &EventBody,
        output: Option<&str>,
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

/// Async handle: the journal runs on the blocking pool.
#[derive(Clone)]
pub struct JournalHandle {
    inner: Arc<Mutex<Journal>>,
}

impl JournalHandle {
    pub fn new(j: Journal) -> JournalHandle {
        JournalHandle {
            inner: Arc::new(Mutex::new(j)),
        }
    }

    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Journal) -> Result<R> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_common::CommandKind;

    fn journal() -> (tempfile::TempDir, Journal) {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(&d.path().join("j.db")).unwrap();
        (d, j)
    }

    fn cmd(rid: &str, action: CommandKind, epoch: u64) -> Command {
        Command {
            request_id: rid.into(),
            group: "g".into(),
            action,
            priority: 100,
            epoch,
            deadline_ms: 1_000,
        }
    }

    #[test]
    fn a_command_is_accepted_once() {
        let (_d, mut j) = journal();
        let c = cmd("r1", CommandKind::Demote, 3);
        assert_eq!(j.accept(&c, 10).unwrap(), Accept::Run);
        assert_eq!(
            j.accept(&c, 11).unwrap(),
            Accept::Duplicate {
                state: "received".into()
            }
        );
        assert_eq!(j.unfinished().unwrap(), vec![c]);
    }

    #[test]
    fn stale_epoch_is_refused_and_reported() {
        let (_d, mut j) = journal();
        j.accept(&cmd("r1", CommandKind::Demote, 5), 10).unwrap();
        let v = j
            .accept(
                &cmd(
                    "r2",
                    CommandKind::Promote {
                        promotion: Default::default(),
                    },
                    4,
                ),
                11,
            )
            .unwrap();
        assert_eq!(v, Accept::Stale { highest: 5 });
        assert_eq!(j.command_state("r2").unwrap().as_deref(), Some("stale"));
        let out = j.pending(10).unwrap();
        assert!(matches!(
            &out[0].body,
            EventBody::CommandResult { outcome: CommandOutcome::Stale, request_id, .. } if request_id == "r2"
        ));
        // The highest epoch survives a reopen.
        assert_eq!(j.highest_epoch().unwrap(), 5);
    }

    #[test]
    fn expired_command_never_runs() {
        let (_d, mut j) = journal();
        assert_eq!(
            j.accept(&cmd("r1", CommandKind::Demote, 1), 5_000).unwrap(),
            Accept::Expired
        );
        assert!(j.unfinished().unwrap().is_empty());
        // An expired role change does not raise the epoch either.
        assert_eq!(j.highest_epoch().unwrap(), 0);
    }

    #[test]
    fn finish_writes_state_and_event_together_once() {
        let (_d, mut j) = journal();
        j.accept(&cmd("r1", CommandKind::Demote, 1), 10).unwrap();
        assert_eq!(j.start("r1", 11).unwrap(), 1);
        assert_eq!(j.start("r1", 12).unwrap(), 2);
        let res = EventBody::CommandResult {
            request_id: "r1".into(),
            outcome: CommandOutcome::Done,
            detail: None,
            instance_id: None,
            error_code: None,
        };
        j.finish("r1", &res, Some("hook ok"), 13).unwrap();
        j.finish("r1", &res, Some("hook ok"), 14).unwrap();
        assert_eq!(j.pending(10).unwrap().len(), 1);
        assert_eq!(j.command_state("r1").unwrap().as_deref(), Some("done"));
        assert!(j.unfinished().unwrap().is_empty());
    }

    #[test]
    fn notices_are_journaled_once_per_body() {
        let (_d, mut j) = journal();
        let raw = r#"{"action":"terminate","time":"2026-11-27T10:00:00Z"}"#;
        assert!(
            j.record_notice(NoticeKind::Interruption, raw, Some(1), Some("terminate"), 5)
                .unwrap()
        );
        assert!(
            !j.record_notice(NoticeKind::Interruption, raw, Some(1), Some("terminate"), 6)
                .unwrap()
        );
        assert_eq!(j.notices().unwrap().len(), 1);
        assert_eq!(j.backlog().unwrap(), 1);
    }

    #[test]
    fn outbox_keeps_everything_until_acked() {
        let (_d, mut j) = journal();
        for i in 0..5 {
            j.push_event(
                &EventBody::Health {
                    healthy: i % 2 == 0,
                    detail: None,
                },
                i,
            )
            .unwrap();
        }
        let p = j.pending(3).unwrap();
        assert_eq!(p.len(), 3);
        j.ack(&p.iter().map(|x| x.seq).collect::<Vec<_>>()).unwrap();
        assert_eq!(j.backlog().unwrap(), 2);
        let rest = j.pending(10).unwrap();
        assert!(rest[0].seq > p[2].seq, "order kept");
    }

    #[test]
    fn identity_is_set_atomically_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("j.db");
        {
            let mut j = Journal::open(&path).unwrap();
            j.set_many(&[("agent_id", "a"), ("token", "t")]).unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.get("agent_id").unwrap().as_deref(), Some("a"));
        assert_eq!(j.integrity_check().unwrap(), "ok");
    }
}
