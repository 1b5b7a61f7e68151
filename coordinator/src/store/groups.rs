//! Groups: creation, configuration changes (with what a change implies,
//! in the same transaction), listing.

use super::rows::{self, GROUP_COLS};
use super::{Read, Result, StoreError, Txn};
use crate::store::audit::Entity;
use crate::store::engine::{Conn, ConnExt, params};
use serde_json::Value;
use spot_common::wire::GroupView;
use spot_common::{GroupConfig, Role};

impl Txn<'_> {
    pub fn create_group(&mut self, name: &str, config: &GroupConfig) -> Result<GroupView> {
        spot_common::validate_group_name(name)?;
        config.validate()?;
        let exists: bool = self.tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM groups WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if exists {
            return Err(StoreError::AlreadyExists {
                what: "group",
                id: name.to_owned(),
            });
        }
        self.tx.execute(
            "INSERT INTO groups (name, config, created_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?3)",
            params![name, serde_json::to_string(config)?, self.now_ms()],
        )?;
        let g = self.group(name)?;
        self.audit(Entity::Group(name), "create", &Value::Null, &g)?;
        Ok(g)
    }

    /// Replace a group's configuration read at `expected_version`. Turning
    /// manual replica off retires the group's REPLICAs in the same
    /// transaction (terminated through the PRIMARY's agent).
    pub fn update_group(
        &mut self,
        name: &str,
        config: &GroupConfig,
        expected_version: i64,
    ) -> Result<GroupView> {
        config.validate()?;
        let before = self.group(name)?;
        if before.version != expected_version {
            return Err(StoreError::VersionConflict(format!(
                "group {name} is at version {}, request read version {expected_version}",
                before.version
            )));
        }
        self.tx.execute(
            "UPDATE groups SET config = ?1, version = version + 1, updated_at_ms = ?2
             WHERE name = ?3 AND version = ?4",
            params![
                serde_json::to_string(config)?,
                self.now_ms(),
                name,
                expected_version
            ],
        )?;
        let after = self.group(name)?;
        self.audit(Entity::Group(name), "update_config", &before, &after)?;
        if before.config.manual_replica && !after.config.manual_replica {
            let via = match &after.primary {
                Some(p) => self.instance(p)?.agent_id,
                None => None,
            };
            if let Some(via) = via {
                for r in self.instances(Some(name))? {
                    if r.role == Role::Replica {
                        self.retire(name, &r.instance_id, Some(&via))?;
                    }
                }
            }
        }
        Ok(after)
    }

    /// Group epoch and version bump with a new transition (or none).
    pub(super) fn write_transition(
        &mut self,
        group: &str,
        t: Option<&spot_common::wire::TransitionView>,
        epoch: u64,
    ) -> Result<()> {
        let json = t.map(serde_json::to_string).transpose()?;
        self.tx.execute(
            "UPDATE groups SET transition = ?1, epoch = ?2, version = version + 1, updated_at_ms = ?3
             WHERE name = ?4",
            params![json, super::to_i64(epoch), self.now_ms(), group],
        )?;
        Ok(())
    }
}

pub fn list(conn: &dyn Conn) -> Result<Vec<GroupView>> {
    let stmt = conn.prepare(&format!(
        "SELECT {GROUP_COLS} FROM groups g ORDER BY g.name"
    ))?;
    stmt.query_map([], rows::group_row)?.collect::<Result<_>>()
}

pub fn names(conn: &dyn Conn) -> Result<Vec<String>> {
    let stmt = conn.prepare("SELECT name FROM groups ORDER BY name")?;
    let rows = stmt.query_map([], |r| r.get(0))?.collect::<Result<_>>()?;
    Ok(rows)
}
