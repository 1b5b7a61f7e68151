//! EBS data volumes that follow the PRIMARY.
//!
//! [`hand_over`] runs in the new PRIMARY's promote, after the coordinator
//! granted it (every fence target is shown not to serve) and before the
//! `promote` hook (which mounts). Per volume:
//!
//! * in our zone: detach it from its holder if that holder is one of the
//!   fenced targets (forced only when EC2 shows the holder stopped or
//!   terminated: a holder that acknowledged its demotion unmounted, and
//!   one that may still run must never lose a volume it could write to),
//!   wait for `available`, attach it here, wait for `attached`;
//! * in another zone: a new volume from the newest completed snapshot of
//!   that device (tagged by the group), created with a ClientToken derived
//!   from the promote's request id (a retried promote finds the same
//!   volume), then attached here.
//!
//! Every step is idempotent: a volume already attached here is done, one
//! held by an instance that was not fenced is refused (`UnexpectedHolder`).
//! Each wait has a bound (`VOLUME_WAIT`); a step that does not finish
//! fails the promote, which the coordinator rolls over to the next
//! candidate. [`snapshot`] is the PRIMARY's periodic snapshot and pruning.

use super::{Ec2Api, Ec2Error, ErrorClass};
use spot_common::{DataVolume, SnapshotTaken, VolumeAt};
use std::time::Duration;

/// A volume as DescribeVolumes shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub volume_id: String,
    pub availability_zone: String,
    /// `creating`, `available`, `in-use`, `deleting`, `error`.
    pub state: String,
    pub attachment: Option<VolumeAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAttachment {
    pub instance_id: String,
    pub device: String,
    /// `attaching`, `attached`, `detaching`, `busy`.
    pub state: String,
}

/// A snapshot of a data volume, as DescribeSnapshots shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub volume_id: String,
    /// `pending`, `completed`, `error`.
    pub state: String,
    pub started_ms: i64,
}

/// What the tags of a snapshot or restored volume say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeTags<'a> {
    pub group: &'a str,
    pub device: &'a str,
    /// The request that made it (the promote, the snapshot command).
    pub request_id: &'a str,
}

/// Longest a detach, an attach or a new volume may take: EBS usually
/// needs seconds; past this the promote fails and the coordinator rolls
/// the transition over (safely: nothing was attached twice).
pub const VOLUME_WAIT: Duration = Duration::from_secs(45);

fn refused(code: &str, message: String) -> Ec2Error {
    Ec2Error {
        op: "HandOverVolume",
        class: ErrorClass::Client,
        code: code.into(),
        message,
    }
}

async fn volume(ec2: &dyn Ec2Api, id: &str) -> Result<Volume, Ec2Error> {
    ec2.volume(id)
        .await?
        .ok_or_else(|| refused("VolumeNotFound", format!("data volume {id} does not exist")))
}

/// Poll `id` until `done` says so, within [`VOLUME_WAIT`].
async fn wait_for(
    ec2: &dyn Ec2Api,
    id: &str,
    what: &str,
    poll: Duration,
    done: impl Fn(&Volume) -> bool,
) -> Result<Volume, Ec2Error> {
    let wait = async {
        loop {
            match ec2.volume(id).await {
                Ok(Some(v)) if done(&v) => return Ok(v),
                Ok(Some(v)) if v.state == "error" => {
                    return Err(refused("VolumeError", format!("{id} is in state error")));
                }
                Ok(_) => {}
                Err(e) if e.class.retryable() => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(poll).await;
        }
    };
    tokio::time::timeout(VOLUME_WAIT, wait)
        .await
        .unwrap_or_else(|_| {
            Err(Ec2Error {
                op: "HandOverVolume",
                class: ErrorClass::Transport,
                code: "VolumeTimeout".into(),
                message: format!("{id} not {what} after {VOLUME_WAIT:?}"),
            })
        })
}

fn attached_to(v: &Volume, me: &str) -> bool {
    v.attachment
        .as_ref()
        .is_some_and(|a| a.instance_id == me && a.state == "attached")
}

/// Who takes the volumes over, for which promote.
#[derive(Debug, Clone, Copy)]
pub struct Handover<'a> {
    pub group: &'a str,
    /// The promote's request id (new volumes' ClientToken, tags).
    pub request_id: &'a str,
    /// This instance, and its zone.
    pub me: &'a str,
    pub zone: &'a str,
    /// The transition's fence targets: the only instances a volume may be
    /// taken from.
    pub fenced: &'a [String],
    pub poll: Duration,
}

/// Hand the group's data volumes over to `h.me`; see the module docs.
/// Returns the volumes now attached here.
pub async fn hand_over(
    ec2: &dyn Ec2Api,
    volumes: &[DataVolume],
    h: &Handover<'_>,
) -> Result<Vec<VolumeAt>, Ec2Error> {
    let Handover {
        group,
        request_id,
        me,
        zone,
        fenced,
        poll,
    } = *h;
    let mut out = Vec::new();
    for dv in volumes {
        let v = volume(ec2, &dv.volume_id).await?;
        let id = if v.availability_zone == zone {
            take_over(ec2, &v, me, fenced, poll).await?;
            v.volume_id
        } else {
            restore(ec2, group, request_id, dv, zone, poll).await?
        };
        let now = volume(ec2, &id).await?;
        if !attached_to(&now, me) {
            if now.attachment.is_none() {
                ec2.attach_volume(&id, me, &dv.device).await?;
            }
            wait_for(ec2, &id, "attached here", poll, |v| attached_to(v, me)).await?;
        }
        tracing::info!(volume = %id, device = %dv.device, "data volume attached");
        out.push(VolumeAt {
            volume_id: id,
            device: dv.device.clone(),
            availability_zone: zone.to_owned(),
        });
    }
    Ok(out)
}

/// A volume of our zone: free it from a fenced holder.
async fn take_over(
    ec2: &dyn Ec2Api,
    v: &Volume,
    me: &str,
    fenced: &[String],
    poll: Duration,
) -> Result<(), Ec2Error> {
    let id = &v.volume_id;
    let Some(a) = &v.attachment else {
        return Ok(());
    };
    if a.instance_id == me {
        return Ok(());
    }
    if !fenced.contains(&a.instance_id) {
        return Err(refused(
            "UnexpectedHolder",
            format!(
                "{id} is attached to {}, which was not fenced (expected one of {fenced:?}): refusing to take it",
                a.instance_id
            ),
        ));
    }
    if a.state != "detaching" {
        // Forced only when the holder cannot write any more.
        let gone = matches!(
            ec2.instance_state(&a.instance_id).await?.as_deref(),
            None | Some("stopped" | "terminated" | "shutting-down")
        );
        tracing::info!(volume = %id, holder = %a.instance_id, force = gone, "detaching the data volume from the fenced holder");
        ec2.detach_volume(id, &a.instance_id, gone).await?;
    }
    wait_for(ec2, id, "available", poll, |v| {
        v.attachment.is_none() && v.state == "available"
    })
    .await?;
    Ok(())
}

/// A volume in another zone: a new one from the newest completed snapshot
/// of its device, in `zone`.
async fn restore(
    ec2: &dyn Ec2Api,
    group: &str,
    request_id: &str,
    dv: &DataVolume,
    zone: &str,
    poll: Duration,
) -> Result<String, Ec2Error> {
    let mut snaps: Vec<Snapshot> = ec2
        .snapshots(group, &dv.device)
        .await?
        .into_iter()
        .filter(|s| s.state == "completed")
        .collect();
    snaps.sort_by_key(|s| std::cmp::Reverse(s.started_ms));
    let Some(latest) = snaps.first() else {
        return Err(refused(
            "NoSnapshot",
            format!(
                "{} ({}) lives in another zone than {zone} and has no completed snapshot to restore from",
                dv.volume_id, dv.device
            ),
        ));
    };
    tracing::warn!(volume = %dv.volume_id, snapshot = %latest.snapshot_id, %zone, "restoring the data volume in this zone from its latest snapshot");
    let tags = VolumeTags {
        group,
        device: &dv.device,
        request_id,
    };
    let token = format!("{request_id}-{}", dv.device.trim_start_matches("/dev/"));
    let id = ec2
        .create_volume(&latest.snapshot_id, zone, &tags, &token)
        .await?;
    wait_for(ec2, &id, "available", poll, |v| {
        v.state == "available" || v.attachment.is_some()
    })
    .await?;
    Ok(id)
}

/// Snapshot each volume attached here, then keep the newest `keep`
/// completed snapshots of each device (pending ones are never deleted).
pub async fn snapshot(
    ec2: &dyn Ec2Api,
    group: &str,
    request_id: &str,
    volumes: &[DataVolume],
    me: &str,
    keep: u32,
) -> Result<Vec<SnapshotTaken>, Ec2Error> {
    let mut out = Vec::new();
    for dv in volumes {
        let v = volume(ec2, &dv.volume_id).await?;
        if v.attachment.as_ref().is_none_or(|a| a.instance_id != me) {
            return Err(refused(
                "NotAttachedHere",
                format!(
                    "{} is not attached to {me}: only the PRIMARY snapshots",
                    dv.volume_id
                ),
            ));
        }
        let tags = VolumeTags {
            group,
            device: &dv.device,
            request_id,
        };
        let snapshot_id = ec2.create_snapshot(&dv.volume_id, &tags).await?;
        out.push(SnapshotTaken {
            volume_id: dv.volume_id.clone(),
            device: dv.device.clone(),
            snapshot_id,
        });
        let mut done: Vec<Snapshot> = ec2
            .snapshots(group, &dv.device)
            .await?
            .into_iter()
            .filter(|s| s.state == "completed")
            .collect();
        done.sort_by_key(|s| std::cmp::Reverse(s.started_ms));
        for old in done.iter().skip(usize::try_from(keep.max(1)).unwrap_or(1)) {
            match ec2.delete_snapshot(&old.snapshot_id).await {
                Ok(()) => tracing::info!(snapshot = %old.snapshot_id, "pruned an old snapshot"),
                Err(e) if e.class == ErrorClass::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeEc2;
    use super::*;

    fn dv() -> Vec<DataVolume> {
        vec![DataVolume {
            volume_id: "vol-1".into(),
            device: "/dev/sdf".into(),
        }]
    }

    async fn over(
        ec2: &FakeEc2,
        me: &str,
        zone: &str,
        fenced: &[&str],
    ) -> Result<Vec<VolumeAt>, Ec2Error> {
        let fenced: Vec<String> = fenced.iter().map(|s| (*s).to_owned()).collect();
        let h = Handover {
            group: "g",
            request_id: "promote-x",
            me,
            zone,
            fenced: &fenced,
            poll: Duration::from_millis(5),
        };
        hand_over(ec2, &dv(), &h).await
    }

    #[tokio::test]
    async fn a_volume_moves_from_a_fenced_holder_and_again_is_a_no_op() {
        let ec2 = FakeEc2::new();
        ec2.add_volume("vol-1", "az-a", Some(("i-old", "/dev/sdf")));
        ec2.add_instance("i-old", "running");
        let at = over(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap();
        assert_eq!(at[0].volume_id, "vol-1");
        assert_eq!(ec2.volume_holder("vol-1").as_deref(), Some("i-new"));
        assert!(
            ec2.calls()
                .iter()
                .any(|c| c == "DetachVolume(vol-1 i-old force=false)"),
            "a holder that may run is never force-detached: {:?}",
            ec2.calls()
        );
        let n = ec2.calls().len();
        over(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap();
        assert!(
            !ec2.calls()[n..]
                .iter()
                .any(|c| c.starts_with("Attach") || c.starts_with("Detach")),
            "a retried promote changes nothing"
        );
    }

    #[tokio::test]
    async fn a_terminated_holder_is_force_detached_and_an_unfenced_one_is_refused() {
        let ec2 = FakeEc2::new();
        ec2.add_volume("vol-1", "az-a", Some(("i-old", "/dev/sdf")));
        ec2.add_instance("i-old", "terminated");
        over(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap();
        assert!(
            ec2.calls()
                .iter()
                .any(|c| c == "DetachVolume(vol-1 i-old force=true)")
        );

        let ec2 = FakeEc2::new();
        ec2.add_volume("vol-1", "az-a", Some(("i-live", "/dev/sdf")));
        let e = over(&ec2, "i-new", "az-a", &["i-old"]).await.unwrap_err();
        assert_eq!(e.code, "UnexpectedHolder");
        assert_eq!(ec2.volume_holder("vol-1").as_deref(), Some("i-live"));
    }

    #[tokio::test]
    async fn in_another_zone_the_latest_snapshot_is_restored_once() {
        let ec2 = FakeEc2::new();
        ec2.add_volume("vol-1", "az-a", None);
        let e = over(&ec2, "i-new", "az-b", &[]).await.unwrap_err();
        assert_eq!(e.code, "NoSnapshot");
        ec2.add_snapshot("snap-old", "vol-1", "g", "/dev/sdf", 1_000);
        ec2.add_snapshot("snap-new", "vol-1", "g", "/dev/sdf", 2_000);
        let at = over(&ec2, "i-new", "az-b", &[]).await.unwrap();
        assert_ne!(at[0].volume_id, "vol-1");
        assert_eq!(at[0].availability_zone, "az-b");
        assert_eq!(
            ec2.volume_source(&at[0].volume_id).as_deref(),
            Some("snap-new")
        );
        let again = over(&ec2, "i-new", "az-b", &[]).await.unwrap();
        assert_eq!(again, at, "the ClientToken finds the same new volume");
    }

    #[tokio::test]
    async fn snapshots_keep_the_newest_and_only_the_primary_takes_them() {
        let ec2 = FakeEc2::new();
        ec2.add_volume("vol-1", "az-a", Some(("i-p", "/dev/sdf")));
        for (i, t) in [1_000, 2_000, 3_000].iter().enumerate() {
            ec2.add_snapshot(&format!("snap-{i}"), "vol-1", "g", "/dev/sdf", *t);
        }
        let taken = snapshot(&ec2, "g", "snap-cmd", &dv(), "i-p", 2)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        let left: Vec<String> = ec2.snapshot_ids();
        assert!(left.contains(&taken[0].snapshot_id));
        assert_eq!(
            left.len(),
            3,
            "the new one and the newest completed two: {left:?}"
        );
        assert!(!left.contains(&"snap-0".to_owned()));
        let e = snapshot(&ec2, "g", "snap-cmd", &dv(), "i-other", 2)
            .await
            .unwrap_err();
        assert_eq!(e.code, "NotAttachedHere");
    }
}
