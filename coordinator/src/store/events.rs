//! Agent events: applied exactly once (the event id is the dedup key),
//! each with its effect in the same transaction; and the notices they
//! carry.

use super::{Read, Result, StoreError, Txn};
use crate::store::audit::Entity;
use crate::store::engine::from_row;
use crate::store::engine::{Conn, ConnExt, params};
use spot_common::wire::{EventsResponse, NoticeView};
use spot_common::{Event, EventBody};

impl Txn<'_> {
    /// Apply a batch of events exactly once: an event id seen before is
    /// acknowledged again and changes nothing.
    pub fn apply_events(&mut self, agent_id: &str, events: &[Event]) -> Result<EventsResponse> {
        let prefix = format!("{agent_id}:");
        if let Some(bad) = events.iter().find(|e| !e.event_id.starts_with(&prefix)) {
            return Err(StoreError::Invalid(format!(
                "event id {:?} must start with {prefix:?}",
                bad.event_id
            )));
        }
        let agent = self.agent(agent_id)?;
        let mut resp = EventsResponse {
            acked: Vec::with_capacity(events.len()),
            applied: 0,
            duplicates: 0,
        };
        for e in events {
            let inserted = self.tx.execute(
                "INSERT INTO events (event_id, agent_id, seq, kind, body, at_ms, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                params![
                    e.event_id,
                    agent_id,
                    e.seq,
                    e.body.kind(),
                    serde_json::to_string(&e.body)?,
                    e.at_ms,
                    self.now_ms()
                ],
            )?;
            resp.acked.push(e.event_id.clone());
            if inserted == 0 {
                resp.duplicates += 1;
                continue;
            }
            resp.applied += 1;
            match &e.body {
                EventBody::CommandResult { .. } => self.command_result(Some(agent_id), &e.body)?,
                EventBody::Notice {
                    notice,
                    effective_at_ms,
                    ..
                } => {
                    self.audit(
                        Entity::Instance(&agent.instance_id),
                        "notice",
                        &serde_json::Value::Null,
                        &serde_json::json!({
                            "group": agent.group,
                            "kind": notice.as_str(),
                            "effective_at_ms": effective_at_ms,
                        }),
                    )?;
                    self.tx.execute(
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
                    self.tx.execute(
                        "UPDATE agents SET healthy = ?1 WHERE agent_id = ?2",
                        params![healthy, agent_id],
                    )?;
                }
                // Read back by the group snapshot (evidence of a fence
                // when the hook succeeded); the store converges to it.
                EventBody::SelfDemoted { epoch, hook_ok, .. } => {
                    self.audit(
                        Entity::Instance(&agent.instance_id),
                        "self_demoted",
                        &serde_json::json!({}),
                        &serde_json::json!({"epoch": epoch, "hook_ok": hook_ok}),
                    )?;
                }
                // Price batches are delivered to the pricing endpoint.
                EventBody::Prices { .. } => {}
                EventBody::DataVolumes {
                    attached,
                    snapshots,
                    ..
                } => {
                    if !attached.is_empty() {
                        self.volumes_attached(&agent.group, &agent.instance_id, attached)?;
                    }
                    if !snapshots.is_empty() {
                        self.snapshots_taken(&agent.group, snapshots)?;
                    }
                }
                EventBody::Ec2States { instances } => self.ec2_view(&agent.group, instances)?,
            }
        }
        Ok(resp)
    }
}

pub fn notices(conn: &dyn Conn, group: Option<&str>) -> Result<Vec<NoticeView>> {
    let stmt = conn.prepare(
        "SELECT event_id, agent_id, instance_id, group_name, kind, effective_at_ms, seen_at_ms
         FROM notices WHERE ?1 IS NULL OR group_name = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([group], |r| {
            Ok(from_row! { r => NoticeView {
                event_id, agent_id, instance_id, group, kind: text, effective_at_ms,
                seen_at_ms
            }})
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}
