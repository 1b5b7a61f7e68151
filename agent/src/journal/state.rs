//! The agent's own state (one typed row: identity, role, link, prices)
//! and the notices it has seen.

use super::{Journal, Result, to_i64};
use rusqlite::{TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use spot_common::{EventBody, NoticeKind, Role};
use spot_runtime::from_row;

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
    /// The credentials, when registered with the coordinators of
    /// `coordinator_url` (a comma-separated list): the list they were
    /// registered with shares a URL with it, so adding or removing a
    /// coordinator of the same store keeps the identity.
    pub fn creds_for(&self, coordinator_url: &str) -> Option<Creds> {
        let urls = |s: &str| -> Vec<String> {
            s.split(',')
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty())
                .collect()
        };
        let wanted = urls(coordinator_url);
        let same_fleet = |u: &str| urls(u).iter().any(|x| wanted.contains(x));
        match (&self.agent_id, &self.token, &self.coordinator_url) {
            (Some(a), Some(t), Some(u)) if same_fleet(u) => Some(Creds {
                agent_id: a.clone(),
                token: t.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRow {
    pub kind: String,
    pub effective_at_ms: Option<i64>,
    pub first_seen_ms: i64,
    pub raw: String,
}

impl Journal {
    pub fn state(&self) -> Result<LocalState> {
        Ok(self.conn.query_row(
            "SELECT instance_id, group_name, agent_id, token, coordinator_url, register_request_id,
                    heartbeat_interval_ms, role, role_epoch, link_state, link_last_ok_ms,
                    link_last_error, decommissioned_at_ms, pricing_since_ms, self_demoted_at_ms
             FROM agent_state WHERE id = 1",
            [],
            |r| {
                Ok(from_row! { r => LocalState {
                    instance_id, group, agent_id, token, coordinator_url, register_request_id,
                    heartbeat_interval_ms, role: opt_text, role_epoch: u64, link_state,
                    link_last_ok_ms, link_last_error, decommissioned_at_ms, pricing_since_ms,
                    self_demoted_at_ms
                }})
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
                Ok(from_row! { r => NoticeRow {
                    kind, effective_at_ms, first_seen_ms, raw
                }})
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
