//! Fast snapshot restore (`fast_snapshot_restore` in a group's config):
//! with the coordinator's own EC2 access, each such group's newest
//! completed snapshot per data volume has it on in the zones of the
//! group's pools other than the volumes' own (where a replacement would
//! restore), and every older snapshot has it off (a restore takes the
//! newest; each snapshot-zone hour is billed). A group checked every
//! quarter of its snapshot interval (10 s to 5 min). A group whose
//! setting was turned off (or that was deleted, or lost a volume) is
//! turned off at the next tick; at the start of each term of this
//! coordinator every group with data volumes and the setting off is
//! turned off once (it may have been turned off while no coordinator
//! ran, or under another leader). A failed check is logged and tried
//! again at the group's next turn (a failed turn-off a minute later).

use super::Schedule;
use crate::state::AppState;
use crate::store::Read;
use spot_common::wire::{FastRestoreStatus, GroupView};
use spot_runtime::ec2::{Ec2Api, keep_fast_restore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_secs(5);
/// How soon turning a group off is tried again after EC2 refused.
const OFF_RETRY: Duration = Duration::from_secs(60);

fn devices(g: &GroupView) -> Vec<String> {
    g.config
        .data_volumes
        .iter()
        .map(|d| d.device.clone())
        .collect()
}

/// How often a group is checked: a new snapshot gets fast restore within
/// this of completing.
fn period(g: &GroupView) -> Duration {
    Duration::from_secs(g.config.snapshot_interval_s / 4)
        .clamp(Duration::from_secs(10), Duration::from_secs(300))
}

/// The zones a replacement of `g` would restore in: its pools' zones but
/// the volumes' own (unknown until an agent attached them: none yet).
fn restore_zones(g: &GroupView, volumes_zone: Option<&str>) -> Vec<String> {
    let Some(own) = volumes_zone else {
        return Vec::new();
    };
    let mut zones: Vec<String> = g
        .config
        .pools
        .iter()
        .map(|p| p.availability_zone.clone())
        .filter(|z| z != own)
        .collect();
    zones.sort();
    zones.dedup();
    zones
}

pub async fn run(state: Arc<AppState>, ec2: Arc<dyn Ec2Api>) -> anyhow::Result<()> {
    let ec2 = ec2.as_ref();
    let mut schedule = Schedule::after(TICK, &state);
    let mut checked: HashMap<String, Instant> = HashMap::new();
    // Groups with it on, as last seen, and their devices: one turned off
    // (or deleted, or its volumes removed) is turned off in EC2.
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    // When turning a group off last failed.
    let mut refused: HashMap<String, Instant> = HashMap::new();
    // Whether this term's first pass has run.
    let mut swept = false;
    while schedule.next().await {
        let Some(groups) = super::acting_groups(&state, "fast snapshot restore").await else {
            swept = false;
            continue;
        };
        if !swept {
            // A group whose option was turned off while no coordinator ran
            // (or while another one led) may still have it on in EC2.
            for g in groups
                .iter()
                .filter(|g| !g.config.fast_snapshot_restore && !g.config.data_volumes.is_empty())
            {
                on.entry(g.name.clone()).or_insert_with(|| devices(g));
            }
            swept = true;
        }
        checked.retain(|name, _| groups.iter().any(|g| &g.name == name));
        refused.retain(|name, _| on.contains_key(name));
        let mut off: Vec<(String, Vec<String>)> = on
            .iter()
            .filter(|(name, _)| {
                !groups
                    .iter()
                    .any(|g| &g.name == *name && g.config.fast_snapshot_restore)
            })
            .map(|(name, devices)| (name.clone(), devices.clone()))
            .collect();
        for g in groups.iter().filter(|g| g.config.fast_snapshot_restore) {
            let due = checked
                .get(&g.name)
                .is_none_or(|at| at.elapsed() >= period(g));
            if !due {
                continue;
            }
            checked.insert(g.name.clone(), Instant::now());
            let devices = devices(g);
            let (name, now) = (g.name.clone(), crate::state::now_ms());
            let zones = match state.db.read(move |s| s.data_volumes(&name, now)).await {
                Ok(v) => restore_zones(g, v.availability_zone.as_deref()),
                Err(e) => {
                    tracing::warn!(group = %g.name, error = %spot_common::error_chain(&e), "reading the data volumes for fast snapshot restore; again at the group's next turn");
                    continue;
                }
            };
            // A device no longer configured is turned off.
            if let Some(before) = on.get(&g.name) {
                let gone: Vec<String> = before
                    .iter()
                    .filter(|d| !devices.contains(d))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    off.push((g.name.clone(), gone));
                }
            }
            if let Some(newest) = apply(ec2, &g.name, &devices, &zones).await {
                state.fast_restores.set(&g.name, newest);
                on.insert(g.name.clone(), devices);
            }
        }
        for (name, devices) in off {
            // Turned off at once; after a failure, a minute later.
            if refused
                .get(&name)
                .is_some_and(|at| at.elapsed() < OFF_RETRY)
            {
                continue;
            }
            if apply(ec2, &name, &devices, &[]).await.is_none() {
                refused.insert(name, Instant::now());
                continue;
            }
            refused.remove(&name);
            state.fast_restores.set(&name, Vec::new());
            let still = groups
                .iter()
                .any(|g| g.name == name && g.config.fast_snapshot_restore);
            if !still {
                on.remove(&name);
            }
        }
    }
    Ok(())
}

/// Fast snapshot restore of `group`'s `devices` in `zones` (none: off
/// everywhere): where the newest snapshots have it now; `None` when EC2
/// refused or failed (logged; tried again).
async fn apply(
    ec2: &dyn Ec2Api,
    group: &str,
    devices: &[String],
    zones: &[String],
) -> Option<Vec<FastRestoreStatus>> {
    match keep_fast_restore(ec2, group, devices, zones).await {
        Ok(kept) => {
            if !kept.changed.is_empty() {
                let changed = &kept.changed;
                tracing::info!(%group, ?changed, "fast snapshot restore follows the newest snapshot");
            }
            let mut now: Vec<FastRestoreStatus> = kept
                .newest
                .into_iter()
                .map(|(device, f)| FastRestoreStatus {
                    device,
                    snapshot_id: f.snapshot_id,
                    availability_zone: f.zone,
                    state: f.state,
                })
                .collect();
            now.sort_by(|a, b| {
                (&a.device, &a.availability_zone).cmp(&(&b.device, &b.availability_zone))
            });
            Some(now)
        }
        Err(e) => {
            tracing::warn!(%group, error = %e, "fast snapshot restore; again at the group's next turn");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_common::{GroupConfig, Pool};

    fn group(zones: &[&str], interval_s: u64) -> GroupView {
        GroupView {
            name: "g".into(),
            config: GroupConfig {
                pools: zones
                    .iter()
                    .map(|z| Pool {
                        instance_type: "m5.large".into(),
                        availability_zone: (*z).into(),
                        subnet_id: None,
                    })
                    .collect(),
                snapshot_interval_s: interval_s,
                ..GroupConfig::default()
            },
            epoch: 0,
            version: 1,
            primary: None,
            transition: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn fast_restore_goes_to_the_other_zones_of_the_pools_once_the_volumes_zone_is_known() {
        let g = group(&["a", "b", "a", "c"], 900);
        assert!(restore_zones(&g, None).is_empty());
        assert_eq!(restore_zones(&g, Some("a")), ["b", "c"]);
        assert_eq!(restore_zones(&g, Some("z")), ["a", "b", "c"]);
    }

    #[test]
    fn a_group_is_checked_every_quarter_interval_within_bounds() {
        assert_eq!(period(&group(&["a"], 60)), Duration::from_secs(15));
        assert_eq!(period(&group(&["a"], 900)), Duration::from_secs(225));
        assert_eq!(period(&group(&["a"], 86_400)), Duration::from_secs(300));
        assert_eq!(period(&group(&["a"], 20)), Duration::from_secs(10));
    }
}
