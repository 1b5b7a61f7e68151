//! Fast snapshot restore of the data volumes' snapshots: on for each
//! device's newest completed snapshot in the zones a replacement would
//! restore in, off everywhere else (`keep_fast_restore`, which the
//! coordinator's task calls for each group that asks for it).

use super::{Ec2Api, Ec2Error, Snapshot};

/// Fast snapshot restore of a snapshot in one zone, as
/// DescribeFastSnapshotRestores shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastRestore {
    pub snapshot_id: String,
    pub zone: String,
    /// `enabling`, `optimizing`, `enabled`, `disabling`, `disabled`.
    pub state: String,
}

impl FastRestore {
    /// On or on its way (and billed).
    pub(super) fn active(&self) -> bool {
        matches!(self.state.as_str(), "enabling" | "optimizing" | "enabled")
    }
}

/// What `keep_fast_restore` changed, and what it leaves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FastRestoreKept {
    /// One line a change.
    pub changed: Vec<String>,
    /// Each device's newest completed snapshot (device, state) in the
    /// zones it is on or on its way in (`enabling` where it was just
    /// turned on).
    pub newest: Vec<(String, FastRestore)>,
}

/// Keep fast snapshot restore on the newest completed snapshot of each of
/// the group's `devices`, in `zones` (the zones of the group's pools
/// other than the volumes' own: where a replacement would restore), and
/// off everywhere else: on older snapshots (a restore takes the newest)
/// and in zones no longer wanted (`zones` empty: off for every snapshot).
/// Each call converges.
pub async fn keep_fast_restore(
    ec2: &dyn Ec2Api,
    group: &str,
    devices: &[String],
    zones: &[String],
) -> Result<FastRestoreKept, Ec2Error> {
    let mut kept = FastRestoreKept::default();
    for device in devices {
        let mut done: Vec<Snapshot> = ec2
            .snapshots(group, device)
            .await?
            .into_iter()
            .filter(|s| s.state == "completed")
            .collect();
        done.sort_by_key(|s| std::cmp::Reverse(s.started_ms));
        if done.is_empty() {
            continue;
        }
        let ids: Vec<String> = done.iter().map(|s| s.snapshot_id.clone()).collect();
        let states = ec2.fast_restores(&ids).await?;
        for (i, snap) in ids.iter().enumerate() {
            let active: Vec<&str> = states
                .iter()
                .filter(|f| &f.snapshot_id == snap && f.active())
                .map(|f| f.zone.as_str())
                .collect();
            let wanted: &[String] = if i == 0 { zones } else { &[] };
            kept.newest.extend(
                states
                    .iter()
                    .filter(|f| &f.snapshot_id == snap && f.active())
                    .filter(|f| wanted.contains(&f.zone))
                    .map(|f| (device.clone(), f.clone())),
            );
            let on: Vec<String> = wanted
                .iter()
                .filter(|z| !active.contains(&z.as_str()))
                .cloned()
                .collect();
            let off: Vec<String> = active
                .iter()
                .filter(|z| !wanted.iter().any(|w| w == *z))
                .map(|z| (*z).to_owned())
                .collect();
            for (zones, enable) in [(on, true), (off, false)] {
                if zones.is_empty() {
                    continue;
                }
                ec2.set_fast_restore(snap, &zones, enable).await?;
                let what = if enable { "enabled" } else { "disabled" };
                tracing::info!(%group, %device, snapshot = %snap, ?zones, "fast snapshot restore {what}");
                kept.changed
                    .push(format!("{device} {snap}: {what} in {}", zones.join(", ")));
                if enable {
                    kept.newest.extend(zones.iter().map(|zone| {
                        let state = "enabling".to_owned();
                        let (snapshot_id, zone) = (snap.clone(), zone.clone());
                        (
                            device.clone(),
                            FastRestore {
                                snapshot_id,
                                zone,
                                state,
                            },
                        )
                    }));
                }
            }
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::super::VolumeTags;
    use super::super::fake::FakeEc2;
    use super::*;

    #[tokio::test]
    async fn fast_restore_follows_the_newest_completed_snapshot_and_only_there() {
        let ec2 = FakeEc2::new();
        let devices = ["/dev/sdf".to_owned()];
        let zones = ["az-b".to_owned(), "az-c".to_owned()];
        let none = keep_fast_restore(&ec2, "g", &devices, &zones)
            .await
            .unwrap();
        assert_eq!(
            none,
            FastRestoreKept::default(),
            "no snapshot yet: nothing to enable"
        );
        ec2.add_snapshot("snap-1", "vol-1", "g", "/dev/sdf", 1_000);
        let first = keep_fast_restore(&ec2, "g", &devices, &zones)
            .await
            .unwrap();
        assert_eq!(ec2.fast_zones("snap-1"), zones);
        let shown = |kept: &FastRestoreKept| -> Vec<(String, String, String)> {
            let mut v: Vec<_> = kept
                .newest
                .iter()
                .map(|(d, f)| (d.clone(), f.zone.clone(), f.state.clone()))
                .collect();
            v.sort();
            v
        };
        let enabling = |zones: &[String], state: &str| -> Vec<(String, String, String)> {
            zones
                .iter()
                .map(|z| ("/dev/sdf".to_owned(), z.clone(), state.to_owned()))
                .collect()
        };
        assert_eq!(shown(&first), enabling(&zones, "enabling"));
        let again = keep_fast_restore(&ec2, "g", &devices, &zones)
            .await
            .unwrap();
        assert!(again.changed.is_empty(), "converged: {again:?}");
        assert_eq!(shown(&again).len(), 2, "still shown once on: {again:?}");
        // A newer snapshot, still pending: the completed one keeps it.
        let pending = ec2
            .create_snapshot(
                "vol-1",
                &VolumeTags {
                    group: "g",
                    device: "/dev/sdf",
                    request_id: "r",
                },
            )
            .await
            .unwrap();
        keep_fast_restore(&ec2, "g", &devices, &zones)
            .await
            .unwrap();
        assert_eq!(ec2.fast_zones("snap-1"), zones);
        assert!(ec2.fast_zones(&pending).is_empty());
        // Completed: it takes over, the older one is off.
        ec2.complete_snapshot(&pending);
        let newest = keep_fast_restore(&ec2, "g", &devices, &zones[..1])
            .await
            .unwrap();
        assert_eq!(ec2.fast_zones(&pending), ["az-b"]);
        assert!(ec2.fast_zones("snap-1").is_empty());
        assert_eq!(shown(&newest), enabling(&zones[..1], "enabling"));
        assert!(newest.newest.iter().all(|(_, f)| f.snapshot_id == pending));
        // Turned off: off everywhere, and shown nowhere.
        let off = keep_fast_restore(&ec2, "g", &devices, &[]).await.unwrap();
        assert!(ec2.fast_zones(&pending).is_empty());
        assert!(off.newest.is_empty(), "{off:?}");
    }
}
