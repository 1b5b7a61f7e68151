//! The audit log: who changed what, from which state to which.

use super::{Result, Txn};
use crate::store::engine::from_row;
use crate::store::engine::{Conn, ConnExt, params};
use serde::Serialize;
use spot_common::wire::AuditEntry;

/// Filter of the audit query.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub entity: Option<String>,
    pub after_id: Option<i64>,
    pub limit: Option<u32>,
    /// Only this action (`commit`: each PRIMARY change).
    #[serde(default)]
    pub action: Option<String>,
    /// Newest first (the last `limit` entries) instead of oldest first.
    #[serde(default)]
    pub newest_first: bool,
}

/// What an audit row is about: `group:db`, `instance:i-1`, `agent:agt-1`.
#[derive(Debug, Clone, Copy)]
pub enum Entity<'a> {
    Group(&'a str),
    Instance(&'a str),
    Agent(&'a str),
    /// A named operator token.
    Token(&'a str),
}

impl std::fmt::Display for Entity<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Group(g) => write!(f, "group:{g}"),
            Entity::Instance(i) => write!(f, "instance:{i}"),
            Entity::Agent(a) => write!(f, "agent:{a}"),
            Entity::Token(t) => write!(f, "token:{t}"),
        }
    }
}

impl Txn<'_> {
    /// One audit row by this transaction's actor and request id: what
    /// `entity` was before `action` and what it is after.
    pub(super) fn audit(
        &self,
        entity: Entity<'_>,
        action: &str,
        pre: &impl Serialize,
        post: &impl Serialize,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO audit (at_ms, actor, request_id, entity, action, pre_state, post_state,
                                leader_epoch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                self.ctx.now_ms,
                self.ctx.actor.to_string(),
                self.ctx.request_id,
                entity.to_string(),
                action,
                serde_json::to_string(pre)?,
                serde_json::to_string(post)?,
                self.leader_epoch
            ],
        )?;
        Ok(())
    }
}

pub fn log(conn: &dyn Conn, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    let order = if q.newest_first { "DESC" } else { "ASC" };
    let stmt = conn.prepare_cached(&format!(
        "SELECT id, at_ms, actor, request_id, entity, action, pre_state, post_state, leader_epoch
         FROM audit
         WHERE (?1 IS NULL OR entity = ?1) AND (?4 IS NULL OR action = ?4) AND id > ?2
         ORDER BY id {order} LIMIT ?3"
    ))?;
    stmt.query_map(
        params![q.entity, q.after_id.unwrap_or(0), limit, q.action],
        |r| {
            Ok(from_row! { r => AuditEntry {
                id, at_ms, actor, request_id, entity, action, pre_state: json, post_state: json,
                leader_epoch
            }})
        },
    )?
    .collect::<Result<_>>()
}
