//! The audit log: who changed what, from which state to which.

use super::{Result, Txn};
use rusqlite::{Connection, params};
use serde_json::Value;
use spot_common::wire::AuditEntry;

/// Filter of the audit query.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub entity: Option<String>,
    pub after_id: Option<i64>,
    pub limit: Option<u32>,
}

impl Txn<'_> {
    /// One audit row by this transaction's actor and request id.
    pub(super) fn audit(&self, entity: &str, action: &str, pre: Value, post: Value) -> Result<()> {
        self.tx.execute(
            "INSERT INTO audit (at_ms, actor, request_id, entity, action, pre_state, post_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                self.ctx.now_ms,
                self.ctx.actor.to_string(),
                self.ctx.request_id,
                entity,
                action,
                pre.to_string(),
                post.to_string()
            ],
        )?;
        Ok(())
    }
}

pub fn log(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    let mut stmt = conn.prepare(
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
