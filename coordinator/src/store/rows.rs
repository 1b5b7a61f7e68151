//! Row mappers shared by the subject modules: the one place each table's
//! columns are turned into its view type.

use super::{Result, StoreError, parse_enum, to_u64};
use rusqlite::{Connection, OptionalExtension};
use spot_common::GroupConfig;
use spot_common::wire::{AgentView, GroupView, InstanceView};

pub const GROUP_COLS: &str =
    "g.name, g.config, g.epoch, g.version, g.created_at_ms, g.updated_at_ms,
    (SELECT instance_id FROM instances i WHERE i.group_name = g.name AND i.role = 'primary'),
    g.transition";

type GroupRow = (GroupView, String, Option<String>);

pub fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    let config: String = r.get(1)?;
    Ok((
        GroupView {
            name: r.get(0)?,
            config: GroupConfig::default(),
            epoch: to_u64(r.get(2)?),
            version: r.get(3)?,
            created_at_ms: r.get(4)?,
            updated_at_ms: r.get(5)?,
            primary: r.get(6)?,
            transition: None,
        },
        config,
        r.get(7)?,
    ))
}

pub fn finish_group((mut g, config, transition): GroupRow) -> Result<GroupView> {
    g.config = serde_json::from_str(&config)?;
    g.transition = transition.map(|t| serde_json::from_str(&t)).transpose()?;
    Ok(g)
}

pub const INSTANCE_COLS: &str = "instance_id, group_name, role, agent_id, instance_type,
    availability_zone, version, created_at_ms, updated_at_ms, ec2_state, role_epoch,
    declared_dead_at_ms";

pub fn instance_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceView> {
    Ok(InstanceView {
        instance_id: r.get(0)?,
        group: r.get(1)?,
        role: parse_enum(2, r.get(2)?)?,
        agent_id: r.get(3)?,
        instance_type: r.get(4)?,
        availability_zone: r.get(5)?,
        version: r.get(6)?,
        created_at_ms: r.get(7)?,
        updated_at_ms: r.get(8)?,
        ec2_state: r.get(9)?,
        role_epoch: to_u64(r.get(10)?),
        declared_dead_at_ms: r.get(11)?,
    })
}

pub const AGENT_COLS: &str = "agent_id, instance_id, group_name, status, registered_at_ms,
    last_heartbeat_ms, reported_role, highest_epoch, healthy, backlog, replaced_by";

pub fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentView> {
    let reported: Option<String> = r.get(6)?;
    Ok(AgentView {
        agent_id: r.get(0)?,
        instance_id: r.get(1)?,
        group: r.get(2)?,
        status: parse_enum(3, r.get(3)?)?,
        registered_at_ms: r.get(4)?,
        last_heartbeat_ms: r.get(5)?,
        reported_role: reported.map(|s| parse_enum(6, s)).transpose()?,
        highest_epoch: to_u64(r.get(7)?),
        healthy: r.get(8)?,
        backlog: to_u64(r.get(9)?),
        replaced_by: r.get(10)?,
    })
}

pub fn group(conn: &Connection, name: &str) -> Result<GroupView> {
    let row = conn
        .query_row(
            &format!("SELECT {GROUP_COLS} FROM groups g WHERE g.name = ?1"),
            [name],
            group_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "group",
            id: name.to_owned(),
        })?;
    finish_group(row)
}

pub fn agent(conn: &Connection, agent_id: &str) -> Result<AgentView> {
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

pub fn instance(conn: &Connection, instance_id: &str) -> Result<InstanceView> {
    find_instance(conn, instance_id)?.ok_or_else(|| StoreError::NotFound {
        what: "instance",
        id: instance_id.to_owned(),
    })
}

pub fn find_instance(conn: &Connection, instance_id: &str) -> Result<Option<InstanceView>> {
    Ok(conn
        .query_row(
            &format!("SELECT {INSTANCE_COLS} FROM instances WHERE instance_id = ?1"),
            [instance_id],
            instance_row,
        )
        .optional()?)
}
