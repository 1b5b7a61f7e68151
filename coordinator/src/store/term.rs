//! What a coordinator does to the store as it starts leading (a start, a
//! restart, a leader change), before its reconciler's first pass.
//!
//! The reconciler's phase timers start again with each term (they run on
//! this process's clock), so a promotion granted by the last leader gets
//! its whole timeout from the new one. The candidate's promote command
//! must get its whole window too: it is queued with a deadline from the
//! grant, and a coordinator down for longer than the promote budget (a
//! leader change, a restart by systemd on a slow disk) would find it
//! expired before the candidate could fetch it, roll the promotion over,
//! fence a warm REPLICA that never heard of it and launch a cold one.

use super::promotion::grant_window;
use super::{Read, Result, Txn};
use crate::store::audit::Entity;
use crate::store::engine::{ConnExt, OptionalExtension, col, params};
use serde_json::json;
use spot_common::{Command, CommandState, Phase, ids};

impl Txn<'_> {
    /// Every granted transition's promote that no agent has taken yet
    /// (queued, or expired undelivered) gets a fresh window from now: an
    /// agent that never received it knows nothing of the old one. A
    /// promote already delivered keeps its deadline (its agent holds it).
    /// Returns the groups whose promote was renewed (audited).
    pub fn renew_undelivered_promotes(&mut self) -> Result<Vec<String>> {
        let mut renewed = Vec::new();
        let now = self.now_ms();
        for group in self.group_names()? {
            let Some(t) = self.group(&group)?.transition else {
                continue;
            };
            if t.phase != Phase::Promoting {
                continue;
            }
            let rid = ids::promote(&t.candidate, t.epoch);
            let row: Option<(CommandState, Option<i64>, String, Option<String>)> = self
                .tx
                .query_row(
                    "SELECT state, delivered_at_ms, body, agent_id FROM commands
                     WHERE request_id = ?1",
                    [&rid],
                    |r| Ok((col::text(r, 0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((state, None, body, agent)) = row else {
                continue;
            };
            if !matches!(state, CommandState::Queued | CommandState::Expired) {
                continue;
            }
            let mut cmd: Command = serde_json::from_str(&body)?;
            let before = cmd.deadline_ms;
            cmd.deadline_ms = grant_window(&t, now);
            self.tx.execute(
                "UPDATE commands SET state = 'queued', finished_at_ms = NULL, deadline_ms = ?2,
                        body = ?3
                 WHERE request_id = ?1",
                params![rid, cmd.deadline_ms, serde_json::to_string(&cmd)?],
            )?;
            self.audit(
                Entity::Group(&group),
                "promote_renewed",
                &json!({"request_id": rid, "state": state, "deadline_ms": before}),
                &json!({"request_id": rid, "state": "queued", "deadline_ms": cmd.deadline_ms}),
            )?;
            self.wake(agent.as_deref());
            renewed.push(group);
        }
        Ok(renewed)
    }
}
