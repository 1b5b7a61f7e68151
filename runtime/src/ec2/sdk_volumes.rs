//! The real client's EBS calls: data volumes and their snapshots (the
//! handover's logic is in `volumes.rs`; these are its EC2 actions).

use super::{Ec2, filter, missing};
use crate::ec2::{
    Ec2Error, ErrorClass, FastRestore, Snapshot, Volume, VolumeAttachment, VolumeTags, to_error,
};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

fn tagged(kind: ResourceType, tags: &VolumeTags<'_>) -> TagSpecification {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    TagSpecification::builder()
        .resource_type(kind)
        .tags(tag("spot:group", tags.group))
        .tags(tag("spot:device", tags.device))
        .tags(tag("spot:request-id", tags.request_id))
        .build()
}

impl Ec2 {
    pub(super) async fn describe_volume(
        &self,
        volume_id: &str,
    ) -> Result<Option<Volume>, Ec2Error> {
        let found = ec2_call!(self, "DescribeVolumes", |c| c
            .describe_volumes()
            .volume_ids(volume_id))
        .await;
        let out = match found {
            Ok(o) => o,
            Err(e) if e.class == ErrorClass::NotFound || e.code.starts_with("InvalidVolume") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(v) = out.volumes().first() else {
            return Ok(None);
        };
        let attachment = v
            .attachments()
            .iter()
            .find(|a| a.state().is_some_and(|s| s.as_str() != "detached"))
            .map(|a| VolumeAttachment {
                instance_id: a.instance_id().unwrap_or_default().to_owned(),
                device: a.device().unwrap_or_default().to_owned(),
                state: a.state().map_or("attached", |s| s.as_str()).to_owned(),
            });
        Ok(Some(Volume {
            volume_id: v.volume_id().unwrap_or(volume_id).to_owned(),
            availability_zone: v.availability_zone().unwrap_or_default().to_owned(),
            state: v.state().map_or("", |s| s.as_str()).to_owned(),
            attachment,
        }))
    }

    pub(super) async fn attach(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), Ec2Error> {
        ec2_call!(self, "AttachVolume", |c| c
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device))
        .await
        .map(|_| ())
    }

    pub(super) async fn detach(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), Ec2Error> {
        let r = ec2_call!(self, "DetachVolume", |c| c
            .detach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .force(force))
        .await
        .map(|_| ());
        match r {
            // Already detached (a retry, or EC2 freed it on termination).
            Err(e) if e.code == "IncorrectState" || e.class == ErrorClass::NotFound => Ok(()),
            r => r,
        }
    }

    pub(super) async fn volume_from_snapshot(
        &self,
        snapshot_id: &str,
        zone: &str,
        tags: &VolumeTags<'_>,
        client_token: &str,
    ) -> Result<String, Ec2Error> {
        let out = ec2_call!(self, "CreateVolume", |c| c
            .create_volume()
            .snapshot_id(snapshot_id)
            .availability_zone(zone)
            .client_token(client_token)
            .tag_specifications(tagged(ResourceType::Volume, tags)))
        .await?;
        out.volume_id()
            .map(str::to_owned)
            .ok_or_else(|| missing("CreateVolume", "InvalidVolume", snapshot_id))
    }

    pub(super) async fn snapshot_of(
        &self,
        volume_id: &str,
        tags: &VolumeTags<'_>,
    ) -> Result<String, Ec2Error> {
        let out = ec2_call!(self, "CreateSnapshot", |c| c
            .create_snapshot()
            .volume_id(volume_id)
            .description(format!("spot-optimizer {} {}", tags.group, tags.device))
            .tag_specifications(tagged(ResourceType::Snapshot, tags)))
        .await?;
        out.snapshot_id()
            .map(str::to_owned)
            .ok_or_else(|| missing("CreateSnapshot", "InvalidSnapshot", volume_id))
    }

    pub(super) async fn group_snapshots(
        &self,
        group: &str,
        device: &str,
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        let out = ec2_call!(self, "DescribeSnapshots", |c| c
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("tag:spot:group", &[group]))
            .filters(filter("tag:spot:device", &[device])))
        .await?;
        Ok(out
            .snapshots()
            .iter()
            .map(|s| Snapshot {
                snapshot_id: s.snapshot_id().unwrap_or_default().to_owned(),
                volume_id: s.volume_id().unwrap_or_default().to_owned(),
                state: s.state().map_or("", |x| x.as_str()).to_owned(),
                started_ms: s.start_time().and_then(|t| t.to_millis().ok()).unwrap_or(0),
            })
            .collect())
    }

    pub(super) async fn fast_restore_states(
        &self,
        snapshot_ids: &[String],
    ) -> Result<Vec<FastRestore>, Ec2Error> {
        if snapshot_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = snapshot_ids.iter().map(String::as_str).collect();
        let out = ec2_call!(self, "DescribeFastSnapshotRestores", |c| c
            .describe_fast_snapshot_restores()
            .filters(filter("snapshot-id", &ids)))
        .await?;
        Ok(out
            .fast_snapshot_restores()
            .iter()
            .map(|f| FastRestore {
                snapshot_id: f.snapshot_id().unwrap_or_default().to_owned(),
                zone: f.availability_zone().unwrap_or_default().to_owned(),
                state: f.state().map_or("", |x| x.as_str()).to_owned(),
            })
            .filter(|f| f.state != "disabled")
            .collect())
    }

    /// Enable or disable; EC2 answers a zone it refuses in `unsuccessful`
    /// (a quota, a snapshot not completed), which is an error here.
    pub(super) async fn fast_restore_set(
        &self,
        snapshot_id: &str,
        zones: &[String],
        on: bool,
    ) -> Result<(), Ec2Error> {
        // The two answers have their own types, of the same shape.
        macro_rules! refusals {
            ($out:expr) => {
                $out.unsuccessful()
                    .iter()
                    .flat_map(|u| u.fast_snapshot_restore_state_errors())
                    .filter_map(|e| e.error())
                    .map(|e| {
                        let text = |x: Option<&str>| x.unwrap_or_default().to_owned();
                        (text(e.code()), text(e.message()))
                    })
                    .collect()
            };
        }
        let refused: Vec<(String, String)> = if on {
            let out = ec2_call!(self, "EnableFastSnapshotRestores", |c| c
                .enable_fast_snapshot_restores()
                .source_snapshot_ids(snapshot_id)
                .set_availability_zones(Some(zones.to_vec())))
            .await?;
            refusals!(out)
        } else {
            let out = ec2_call!(self, "DisableFastSnapshotRestores", |c| c
                .disable_fast_snapshot_restores()
                .source_snapshot_ids(snapshot_id)
                .set_availability_zones(Some(zones.to_vec())))
            .await?;
            refusals!(out)
        };
        match refused.into_iter().next() {
            None => Ok(()),
            Some((code, message)) => Err(Ec2Error {
                op: if on {
                    "EnableFastSnapshotRestores"
                } else {
                    "DisableFastSnapshotRestores"
                },
                class: crate::ec2::classify(&code, None),
                code,
                message: format!("{snapshot_id}: {message}"),
            }),
        }
    }

    pub(super) async fn remove_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error> {
        ec2_call!(self, "DeleteSnapshot", |c| c
            .delete_snapshot()
            .snapshot_id(snapshot_id))
        .await
        .map(|_| ())
    }
}
