//! A group's EBS data volumes: where each is now (a volume restored in
//! another zone is a new one), its latest snapshot, what a promote hands
//! over, and when the next snapshot is due.
//!
//! The configured volumes (`data_volumes` of the group's config) name the
//! devices. A row per device records the volume an agent last reported
//! attached for it; while the row's `configured_volume` is still the
//! configured one, the row's volume is the device's current volume (an
//! operator who configures another volume for a device starts over).

use super::engine::{Conn, ConnExt, OptionalExtension, params};
use super::{Read, Result, Txn};
use spot_common::{Command, CommandKind, DataVolume, GroupConfig, SnapshotTaken, VolumeAt, ids};

/// One device's volume, as the store knows it (the operator's view of it:
/// the zone is unknown until an agent attached it).
pub type VolumeState = spot_common::wire::VolumeStatus;

/// The group's data volumes now, in the order configured.
pub fn current(conn: &dyn Conn, group: &str, config: &GroupConfig) -> Result<Vec<VolumeState>> {
    let mut out = Vec::new();
    for dv in &config.data_volumes {
        let row = conn
            .query_row(
                "SELECT volume_id, availability_zone, holder, last_snapshot_id, last_snapshot_at_ms
                 FROM group_volumes
                 WHERE group_name = ?1 AND device = ?2 AND configured_volume = ?3",
                params![group, dv.device, dv.volume_id],
                |r| {
                    Ok(VolumeState {
                        device: dv.device.clone(),
                        volume_id: r.get(0)?,
                        availability_zone: r.get(1)?,
                        holder: r.get(2)?,
                        last_snapshot_id: r.get(3)?,
                        last_snapshot_at_ms: r.get(4)?,
                    })
                },
            )
            .optional()?;
        out.push(row.unwrap_or_else(|| VolumeState {
            device: dv.device.clone(),
            volume_id: dv.volume_id.clone(),
            availability_zone: None,
            holder: None,
            last_snapshot_id: None,
            last_snapshot_at_ms: None,
        }));
    }
    Ok(out)
}

/// The group's data volumes as an operator sees them.
pub fn view(
    conn: &dyn Conn,
    group: &str,
    config: &GroupConfig,
    now_ms: i64,
) -> Result<spot_common::wire::DataVolumesView> {
    let vols = current(conn, group, config)?;
    let oldest = vols
        .iter()
        .map(|v| v.last_snapshot_at_ms)
        .collect::<Option<Vec<i64>>>()
        .and_then(|v| v.into_iter().min());
    Ok(spot_common::wire::DataVolumesView {
        availability_zone: vols.iter().find_map(|v| v.availability_zone.clone()),
        snapshot_interval_s: config.snapshot_interval_s,
        snapshot_keep: config.snapshot_keep,
        rpo_s: oldest
            .filter(|_| !vols.is_empty())
            .map(|t| u64::try_from((now_ms - t).max(0) / 1000).unwrap_or(0)),
        volumes: vols,
        fast_restore: Vec::new(),
    })
}

/// What a promote command carries: each device's current volume.
pub fn for_promote(conn: &dyn Conn, group: &str, config: &GroupConfig) -> Result<Vec<DataVolume>> {
    Ok(current(conn, group, config)?
        .into_iter()
        .map(|v| DataVolume {
            volume_id: v.volume_id,
            device: v.device,
        })
        .collect())
}

/// For the planner: the volumes' zone (when known), and whether every
/// device has a snapshot to restore from in another zone.
pub fn placement(
    conn: &dyn Conn,
    group: &str,
    config: &GroupConfig,
) -> Result<(Option<String>, bool)> {
    if config.data_volumes.is_empty() {
        return Ok((None, false));
    }
    let vols = current(conn, group, config)?;
    let zone = vols.iter().find_map(|v| v.availability_zone.clone());
    let restorable = vols.iter().all(|v| v.last_snapshot_id.is_some());
    Ok((zone, restorable))
}

impl Txn<'_> {
    /// A promote attached these volumes to `holder`: record where each
    /// device's volume is now (audited when it changed).
    pub(super) fn volumes_attached(
        &mut self,
        group: &str,
        holder: &str,
        attached: &[VolumeAt],
    ) -> Result<()> {
        let config = self.group(group)?.config;
        for a in attached {
            let Some(dv) = config.data_volumes.iter().find(|d| d.device == a.device) else {
                continue;
            };
            let before: Option<String> = self
                .tx
                .query_row(
                    "SELECT volume_id FROM group_volumes WHERE group_name = ?1 AND device = ?2",
                    params![group, a.device],
                    |r| r.get(0),
                )
                .optional()?;
            self.tx.execute(
                "INSERT INTO group_volumes (group_name, device, configured_volume, volume_id,
                     availability_zone, holder, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (group_name, device) DO UPDATE SET
                     configured_volume = excluded.configured_volume,
                     volume_id = excluded.volume_id,
                     availability_zone = excluded.availability_zone,
                     holder = excluded.holder,
                     updated_at_ms = excluded.updated_at_ms,
                     last_snapshot_id = CASE WHEN group_volumes.configured_volume = excluded.configured_volume
                                             THEN group_volumes.last_snapshot_id END,
                     last_snapshot_at_ms = CASE WHEN group_volumes.configured_volume = excluded.configured_volume
                                                THEN group_volumes.last_snapshot_at_ms END",
                params![
                    group,
                    a.device,
                    dv.volume_id,
                    a.volume_id,
                    a.availability_zone,
                    holder,
                    self.now_ms()
                ],
            )?;
            if before.as_deref() != Some(a.volume_id.as_str()) {
                self.audit(
                    super::audit::Entity::Group(group),
                    "data_volume",
                    &serde_json::json!({"device": a.device, "volume_id": before}),
                    &serde_json::json!({"device": a.device, "volume_id": a.volume_id,
                        "availability_zone": a.availability_zone, "holder": holder}),
                )?;
            }
        }
        Ok(())
    }

    /// The PRIMARY started these snapshots.
    pub(super) fn snapshots_taken(&mut self, group: &str, snaps: &[SnapshotTaken]) -> Result<()> {
        for s in snaps {
            self.tx.execute(
                "UPDATE group_volumes SET last_snapshot_id = ?1, last_snapshot_at_ms = ?2
                 WHERE group_name = ?3 AND device = ?4 AND volume_id = ?5",
                params![s.snapshot_id, self.now_ms(), group, s.device, s.volume_id],
            )?;
        }
        Ok(())
    }

    /// Queue a snapshot of `group`'s data volumes to its PRIMARY's agent
    /// when one is due: the group has volumes whose zone is known, a
    /// confirmed PRIMARY with a live agent, no transition, no snapshot
    /// command open, and the oldest device's snapshot is `interval` old.
    /// The agents woken, or `None` when nothing is due.
    pub fn queue_snapshot(&mut self, group: &str) -> Result<Option<String>> {
        let g = self.group(group)?;
        if g.config.data_volumes.is_empty() || g.transition.is_some() || g.config.paused {
            return Ok(None);
        }
        let Some(primary) = g.primary.clone() else {
            return Ok(None);
        };
        let vols = current(&*self.tx, group, &g.config)?;
        if vols
            .iter()
            .any(|v| v.holder.as_deref() != Some(primary.as_str()))
        {
            // Not handed over to this PRIMARY yet (its promote reports it).
            return Ok(None);
        }
        let interval_ms =
            i64::try_from(g.config.snapshot_interval_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        // A device never snapshotted is due at once.
        let oldest = vols
            .iter()
            .map(|v| v.last_snapshot_at_ms)
            .collect::<Option<Vec<i64>>>()
            .and_then(|v| v.into_iter().min());
        let now = self.now_ms();
        if oldest.is_some_and(|t| now - t < interval_ms) {
            return Ok(None);
        }
        let open: bool = self.tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM commands WHERE group_name = ?1 AND kind = 'snapshot'
                              AND state IN ('queued', 'delivered'))",
            [group],
            |r| r.get(0),
        )?;
        let agent: Option<String> = self.tx.query_row(
            "SELECT agent_id FROM instances WHERE instance_id = ?1",
            [&primary],
            |r| r.get(0),
        )?;
        let Some(agent) = agent.filter(|_| !open) else {
            return Ok(None);
        };
        let cmd = Command {
            request_id: ids::snapshot(group, now),
            group: group.to_owned(),
            action: CommandKind::Snapshot {
                volumes: vols
                    .iter()
                    .map(|v| DataVolume {
                        volume_id: v.volume_id.clone(),
                        device: v.device.clone(),
                    })
                    .collect(),
                keep: g.config.snapshot_keep,
            },
            priority: 0,
            epoch: g.epoch,
            // A snapshot is worth taking for one interval.
            deadline_ms: now + interval_ms,
        };
        self.queue(Some(&agent), &cmd, Some(&primary))?;
        Ok(Some(agent))
    }
}
