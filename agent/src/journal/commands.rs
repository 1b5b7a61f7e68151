//! Commands, exactly once: journaled before any side effect, started in
//! the transaction that checks their epoch and deadline, finished together
//! with their result event; and the outbox those events wait in.

use super::{Journal, JournalError, Result, highest_tx, to_i64};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use spot_common::{Command, CommandOutcome, EventBody, Role};
use spot_runtime::from_row;

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
    /// Already journaled (redelivery): nothing to run. A finished one's
    /// result is queued again (`reported_again`) unless it is still in the
    /// outbox: the coordinator asks again only when it has no result (an
    /// answer lost after the outbox was acknowledged, or a store restored
    /// from a copy taken before the result).
    Duplicate { state: String, reported_again: bool },
    /// Epoch below the highest seen: refused, result queued.
    Stale { highest: u64 },
    /// Past its deadline: refused, result queued.
    Expired,
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

impl Journal {
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
            let reported_again = tx.execute(
                "INSERT INTO outbox (body, created_at_ms)
                 SELECT result, ?2 FROM commands
                 WHERE request_id = ?1 AND result IS NOT NULL
                   AND state IN ('done', 'failed', 'stale', 'expired')
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.body = commands.result)",
                params![cmd.request_id, now_ms],
            )? == 1;
            tx.commit()?;
            return Ok(Accept::Duplicate {
                state,
                reported_again,
            });
        }
        let highest = highest_tx(&tx, &cmd.group)?;
        let (state, outcome, verdict) = if cmd.action.is_role_change() && cmd.epoch < highest {
            (
                "stale",
                Some(CommandOutcome::Stale),
                Accept::Stale { highest },
            )
        } else if now_ms > cmd.deadline_ms && cmd.action.expires() {
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
        // A refusal's result, kept with the command (a redelivery reports
        // it again) and queued.
        let result = outcome
            .map(|outcome| {
                let detail = match &verdict {
                    Accept::Stale { highest } => {
                        format!("epoch {} is below the highest seen, {highest}", cmd.epoch)
                    }
                    _ => format!(
                        "deadline {} passed before the command started",
                        cmd.deadline_ms
                    ),
                };
                serde_json::to_string(&EventBody::CommandResult {
                    request_id: cmd.request_id.clone(),
                    outcome,
                    detail: Some(detail),
                    instance_id: None,
                    error_code: None,
                })
            })
            .transpose()?;
        tx.execute(
            "INSERT INTO commands (request_id, group_name, kind, body, epoch, state, result,
                 received_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                cmd.request_id,
                cmd.group,
                cmd.action.name(),
                serde_json::to_string(cmd)?,
                to_i64(cmd.epoch),
                state,
                result,
                now_ms
            ],
        )?;
        if let Some(body) = &result {
            tx.execute(
                "INSERT INTO outbox (body, created_at_ms) VALUES (?1, ?2)",
                params![body, now_ms],
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
            && cmd.action.expires()
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
                Ok(from_row! { r => CommandRow {
                    request_id, kind, epoch: u64, state, attempts, updated_at_ms
                }})
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Keep the grant that came with the role change at `epoch` (the last
    /// few only: a heartbeat shows the one of the highest epoch).
    pub fn keep_grant(&mut self, epoch: u64, grant: &str, now_ms: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO grants (epoch, value, received_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (epoch) DO UPDATE SET value = excluded.value,
                 received_at_ms = excluded.received_at_ms",
            params![to_i64(epoch), grant, now_ms],
        )?;
        tx.execute(
            "DELETE FROM grants WHERE epoch NOT IN
                 (SELECT epoch FROM grants ORDER BY epoch DESC LIMIT 8)",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The grant of the role change at `epoch`, if one came with it.
    pub fn grant(&self, epoch: u64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM grants WHERE epoch = ?1",
                [to_i64(epoch)],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn highest_epoch(&self) -> Result<u64> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MAX(highest) FROM epochs", [], |r| r.get(0))?;
        Ok(v.map_or(0, |h| u64::try_from(h).unwrap_or(0)))
    }

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
