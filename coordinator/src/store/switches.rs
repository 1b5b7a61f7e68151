//! Manual switches: a planned move of the PRIMARY to another pool, with
//! its measured downtime.

use super::{Read, Result, StoreError, Txn};
use crate::store::audit::Entity;
use crate::store::engine::from_row;
use crate::store::engine::{Conn, ConnExt, OptionalExtension, params};
use serde_json::json;
use spot_common::wire::SwitchView;
use spot_common::{Pool, SwitchState};

impl Txn<'_> {
    /// Operator asks to move the PRIMARY to `pool`.
    pub fn request_switch(&mut self, group: &str, pool: &Pool) -> Result<SwitchView> {
        let g = self.group(group)?;
        let Some(primary) = g.primary.clone() else {
            return Err(StoreError::Invalid(format!(
                "group {group} has no PRIMARY to switch"
            )));
        };
        if !g.config.pools.iter().any(|p| p.key() == pool.key()) {
            return Err(StoreError::Invalid(format!(
                "pool {pool} is not one of group {group}'s pools"
            )));
        }
        // The data volumes stay in their zone: a switch elsewhere would
        // restore them from a snapshot and lose what was written since.
        let volumes = super::volumes::current(&*self.tx, group, &g.config)?;
        if let Some(zone) = volumes.iter().find_map(|v| v.availability_zone.as_deref())
            && pool.availability_zone != zone
        {
            return Err(StoreError::Refused {
                code: "data_volumes_zone",
                message: format!(
                    "group {group}'s data volumes are in {zone}: a switch to {pool} would restore \
                     them from the latest snapshot and lose what was written since; switch within {zone}"
                ),
            });
        }
        if g.transition.is_some() || active(&self.tx, group)?.is_some() {
            return Err(StoreError::InProgress(format!(
                "group {group} is already replacing its PRIMARY"
            )));
        }
        let id: i64 = self.tx.query_row(
            "INSERT INTO switches (group_name, request_id, from_instance, target_pool, state, started_at_ms)
             VALUES (?1, ?2, ?3, ?4, 'launching', ?5) RETURNING id",
            params![
                group,
                self.ctx.request_id,
                primary,
                serde_json::to_string(pool)?,
                self.now_ms()
            ],
            |r| r.get(0),
        )?;
        self.audit(
            Entity::Group(group),
            "switch",
            &json!({"primary": primary}),
            &json!({"switch": id, "pool": pool}),
        )?;
        get(&self.tx, id)
    }

    /// The switch cannot finish (or an operator cancelled it): FAILED with
    /// `reason`; the PRIMARY stays. A switch already finished is left as
    /// it is.
    pub fn fail_switch(&mut self, group: &str, id: i64, reason: &str) -> Result<SwitchView> {
        let n = self.tx.execute(
            "UPDATE switches SET state = 'failed', failure = ?1
             WHERE id = ?2 AND group_name = ?3 AND state = 'launching'",
            params![reason, id, group],
        )?;
        if n == 1 {
            let after = json!({"switch": id, "reason": reason});
            self.audit(Entity::Group(group), "switch_failed", &json!({}), &after)?;
        }
        get(&self.tx, id)
    }

    /// An operator cancels the group's switch in progress. Refused once
    /// the replacement has started (it completes or rolls back by itself).
    pub fn cancel_switch(&mut self, group: &str) -> Result<SwitchView> {
        let g = self.group(group)?;
        let Some((sw, _)) = active(&self.tx, group)? else {
            return Err(StoreError::NotFound {
                what: "switch in progress of group",
                id: group.to_owned(),
            });
        };
        if g.transition
            .as_ref()
            .is_some_and(|t| t.switch_id == Some(sw.id))
        {
            return Err(StoreError::InProgress(format!(
                "switch {} is already replacing the PRIMARY of {group}; it completes or rolls back by itself",
                sw.id
            )));
        }
        self.fail_switch(group, sw.id, "cancelled by an operator")
    }

    pub fn switch_launch_queued(&mut self, id: i64, request_id: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE switches SET launch_request_id = ?1 WHERE id = ?2",
            params![request_id, id],
        )?;
        Ok(())
    }
}

pub fn list(conn: &dyn Conn, group: &str) -> Result<Vec<SwitchView>> {
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM switches WHERE group_name = ?1 ORDER BY id")?
        .query_map([group], |r| r.get(0))?
        .collect::<Result<_>>()?;
    ids.into_iter().map(|id| get(conn, id)).collect()
}

/// The group's switch in progress, with its launch's request id.
pub fn active(conn: &dyn Conn, group: &str) -> Result<Option<(SwitchView, Option<String>)>> {
    let row: Option<(i64, Option<String>)> = conn
        .query_row(
            "SELECT id, launch_request_id FROM switches WHERE group_name = ?1 AND state = ?2
             ORDER BY id DESC LIMIT 1",
            params![group, SwitchState::Launching.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(id, rid)| Ok((get(conn, id)?, rid))).transpose()
}

fn get(conn: &dyn Conn, id: i64) -> Result<SwitchView> {
    conn.query_row(
        "SELECT id, group_name, target_pool, state, from_instance, to_instance, started_at_ms,
                demote_started_ms, promote_done_ms, downtime_ms, failure FROM switches WHERE id = ?1",
        [id],
        |r| {
            Ok(from_row! { r => SwitchView {
                id, group, target_pool: json, state: text, from_instance, to_instance,
                started_at_ms, demote_started_ms, promote_done_ms, downtime_ms, failure
            }})
        },
    )
}
