//! Row mappers shared by the subject modules: the one place each table's
//! columns are turned into its view type.

use super::{Result, StoreError};
use crate::store::engine::{Conn, ConnExt, OptionalExtension};
use crate::store::engine::{Row, from_row};
use spot_common::wire::{AgentView, GroupView, InstanceView};

pub const GROUP_COLS: &str =
    "g.name, g.config, g.epoch, g.version, g.created_at_ms, g.updated_at_ms,
    (SELECT instance_id FROM instances i WHERE i.group_name = g.name AND i.role = 'primary'),
    g.transition";

pub fn group_row(r: &Row<'_>) -> Result<GroupView> {
    Ok(from_row! { r => GroupView {
        name, config: json, epoch: u64, version, created_at_ms, updated_at_ms, primary,
        transition: opt_json
    }})
}

pub const INSTANCE_COLS: &str = "instance_id, group_name, role, agent_id, instance_type,
    availability_zone, version, created_at_ms, updated_at_ms, ec2_state, role_epoch,
    declared_dead_at_ms";

pub fn instance_row(r: &Row<'_>) -> Result<InstanceView> {
    Ok(from_row! { r => InstanceView {
        instance_id, group, role: text, agent_id, instance_type,
        availability_zone, version, created_at_ms, updated_at_ms, ec2_state,
        role_epoch: u64, declared_dead_at_ms
    }})
}

pub const AGENT_COLS: &str = "agent_id, instance_id, group_name, status, registered_at_ms,
    last_heartbeat_ms, reported_role, highest_epoch, healthy, backlog, replaced_by";

pub fn agent_row(r: &Row<'_>) -> Result<AgentView> {
    Ok(from_row! { r => AgentView {
        agent_id, instance_id, group, status: text, registered_at_ms, last_heartbeat_ms,
        reported_role: opt_text, highest_epoch: u64, healthy, backlog: u64, replaced_by
    }})
}

pub fn group(conn: &dyn Conn, name: &str) -> Result<GroupView> {
    conn.query_row(
        &format!("SELECT {GROUP_COLS} FROM groups g WHERE g.name = ?1"),
        [name],
        group_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound {
        what: "group",
        id: name.to_owned(),
    })
}

pub fn agent(conn: &dyn Conn, agent_id: &str) -> Result<AgentView> {
    conn.query_row(
        &format!("SELECT {AGENT_COLS} FROM agents WHERE agent_id = ?1"),
        [agent_id],
        agent_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound {
        what: "agent",
        id: agent_id.to_owned(),
    })
}

pub fn instance(conn: &dyn Conn, instance_id: &str) -> Result<InstanceView> {
    find_instance(conn, instance_id)?.ok_or_else(|| StoreError::NotFound {
        what: "instance",
        id: instance_id.to_owned(),
    })
}

pub fn find_instance(conn: &dyn Conn, instance_id: &str) -> Result<Option<InstanceView>> {
    conn.query_row(
        &format!("SELECT {INSTANCE_COLS} FROM instances WHERE instance_id = ?1"),
        [instance_id],
        instance_row,
    )
    .optional()
}
