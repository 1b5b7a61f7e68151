//! An in-memory EC2 for unit tests: instances with states, Elastic IPs,
//! ClientToken idempotency, injected errors, and a log of calls. It is a
//! fake of the trait, not of the wire: protocol fidelity is the EC2
//! simulator's and moto's job (in `tests/`).

use super::{
    Attachment, Ec2Api, Ec2Error, ErrorClass, FastRestore, Interface, LaunchSpec, Snapshot,
    SpotPrice, Volume, VolumeAttachment, VolumeTags,
};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

#[derive(Default)]
struct State {
    /// instance id -> state name
    instances: HashMap<String, String>,
    /// allocation id -> holder
    addresses: HashMap<String, Option<String>>,
    /// eni -> (zone, holder)
    interfaces: HashMap<String, (String, Option<String>)>,
    /// A detach leaves the ENI `detaching` forever.
    stuck_detach: bool,
    /// client token -> instance id
    tokens: HashMap<String, String>,
    /// instance id -> the request id it was launched for (its tag)
    launched_by: HashMap<String, String>,
    /// volume id -> (zone, holder and device, the snapshot it came from)
    volumes: HashMap<String, FakeVolume>,
    /// snapshot id -> its record
    snapshots: HashMap<String, FakeSnapshot>,
    /// CreateVolume client token -> volume id
    volume_tokens: HashMap<String, String>,
    failures: HashMap<&'static str, VecDeque<Ec2Error>>,
    calls: Vec<String>,
    next: u64,
    /// Polls of `instance_state` a terminating instance stays
    /// `shutting-down` for.
    shutdown_polls: u32,
    polls_left: HashMap<String, u32>,
}

#[derive(Clone)]
struct FakeVolume {
    zone: String,
    holder: Option<(String, String)>,
    source: Option<String>,
}

#[derive(Clone)]
struct FakeSnapshot {
    volume: String,
    group: String,
    device: String,
    state: String,
    started_ms: i64,
    /// zone -> fast snapshot restore state (enabled at once here).
    fast: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
pub struct FakeEc2 {
    state: Mutex<State>,
}

impl FakeEc2 {
    pub fn new() -> FakeEc2 {
        FakeEc2::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_instance(&self, id: &str, state: &str) {
        self.lock()
            .instances
            .insert(id.to_owned(), state.to_owned());
    }

    pub fn add_address(&self, allocation_id: &str, holder: Option<&str>) {
        self.lock()
            .addresses
            .insert(allocation_id.to_owned(), holder.map(str::to_owned));
    }

    pub fn holder(&self, allocation_id: &str) -> Option<String> {
        self.lock().addresses.get(allocation_id).cloned().flatten()
    }

    pub fn add_interface(&self, eni: &str, zone: &str, holder: Option<&str>) {
        self.lock()
            .interfaces
            .insert(eni.to_owned(), (zone.to_owned(), holder.map(str::to_owned)));
    }

    pub fn interface_holder(&self, eni: &str) -> Option<String> {
        self.lock().interfaces.get(eni).and_then(|(_, h)| h.clone())
    }

    /// A volume in `zone`, attached to (instance, device) or free.
    pub fn add_volume(&self, id: &str, zone: &str, holder: Option<(&str, &str)>) {
        self.lock().volumes.insert(
            id.to_owned(),
            FakeVolume {
                zone: zone.to_owned(),
                holder: holder.map(|(i, d)| (i.to_owned(), d.to_owned())),
                source: None,
            },
        );
    }

    pub fn volume_holder(&self, id: &str) -> Option<String> {
        self.lock()
            .volumes
            .get(id)
            .and_then(|v| v.holder.as_ref().map(|h| h.0.clone()))
    }

    /// The snapshot a volume was created from.
    pub fn volume_source(&self, id: &str) -> Option<String> {
        self.lock().volumes.get(id).and_then(|v| v.source.clone())
    }

    /// A completed snapshot of `volume`, tagged for `group` and `device`.
    pub fn add_snapshot(&self, id: &str, volume: &str, group: &str, device: &str, started_ms: i64) {
        self.lock().snapshots.insert(
            id.to_owned(),
            FakeSnapshot {
                volume: volume.to_owned(),
                group: group.to_owned(),
                device: device.to_owned(),
                state: "completed".into(),
                started_ms,
                fast: Default::default(),
            },
        );
    }

    /// The zones where `snapshot` has fast snapshot restore on.
    pub fn fast_zones(&self, snapshot: &str) -> Vec<String> {
        self.lock()
            .snapshots
            .get(snapshot)
            .map(|s| s.fast.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Complete a pending snapshot.
    pub fn complete_snapshot(&self, snapshot: &str) {
        if let Some(s) = self.lock().snapshots.get_mut(snapshot) {
            s.state = "completed".into();
        }
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().snapshots.keys().cloned().collect();
        v.sort();
        v
    }

    /// Detaches are accepted but never finish.
    pub fn stuck_detach(&self) {
        self.lock().stuck_detach = true;
    }

    pub fn state(&self, id: &str) -> Option<String> {
        self.lock().instances.get(id).cloned()
    }

    /// A terminated instance reads `shutting-down` for this many polls.
    pub fn slow_termination(&self, polls: u32) {
        self.lock().shutdown_polls = polls;
    }

    /// The next call of `op` (e.g. "TerminateInstances") fails so.
    pub fn fail_next(&self, op: &'static str, class: ErrorClass, code: &str) {
        self.lock()
            .failures
            .entry(op)
            .or_default()
            .push_back(Ec2Error {
                op,
                class,
                code: code.to_owned(),
                message: format!("injected {code}"),
            });
    }

    /// Every call made, as `Op(args)`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    fn enter(
        &self,
        op: &'static str,
        args: String,
    ) -> Result<std::sync::MutexGuard<'_, State>, Ec2Error> {
        let mut g = self.lock();
        g.calls.push(format!("{op}({args})"));
        if let Some(e) = g.failures.get_mut(op).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        Ok(g)
    }
}

fn not_found(op: &'static str, id: &str) -> Ec2Error {
    Ec2Error {
        op,
        class: ErrorClass::NotFound,
        code: "InvalidInstanceID.NotFound".into(),
        message: format!("{id} not found"),
    }
}

#[async_trait]
impl Ec2Api for FakeEc2 {
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, Ec2Error> {
        let mut g = self.enter("RunInstances", spec.request_id.clone())?;
        let token = spot_common::client_token(&spec.request_id);
        if let Some(id) = g.tokens.get(&token) {
            return Ok(id.clone());
        }
        g.next += 1;
        let id = format!("i-fake{:04}", g.next);
        g.instances.insert(id.clone(), "pending".into());
        g.tokens.insert(token, id.clone());
        g.launched_by.insert(id.clone(), spec.request_id.clone());
        Ok(id)
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), Ec2Error> {
        let mut g = self.enter("TerminateInstances", instance_id.to_owned())?;
        if !g.instances.contains_key(instance_id) {
            return Err(not_found("TerminateInstances", instance_id));
        }
        let polls = g.shutdown_polls;
        let next = if polls == 0 {
            "terminated"
        } else {
            "shutting-down"
        };
        g.instances.insert(instance_id.to_owned(), next.into());
        g.polls_left.insert(instance_id.to_owned(), polls);
        for holder in g.addresses.values_mut() {
            if holder.as_deref() == Some(instance_id) {
                *holder = None;
            }
        }
        for (_, holder) in g.interfaces.values_mut() {
            if holder.as_deref() == Some(instance_id) {
                *holder = None;
            }
        }
        Ok(())
    }

    async fn instance_state(&self, instance_id: &str) -> Result<Option<String>, Ec2Error> {
        let mut g = self.enter("DescribeInstances", instance_id.to_owned())?;
        if let Some(left) = g.polls_left.get_mut(instance_id) {
            if *left == 0 {
                g.polls_left.remove(instance_id);
                g.instances
                    .insert(instance_id.to_owned(), "terminated".into());
            } else {
                *left -= 1;
            }
        }
        Ok(g.instances.get(instance_id).cloned())
    }

    async fn group_instances(&self, group: &str) -> Result<Vec<spot_common::Ec2State>, Ec2Error> {
        let g = self.enter("DescribeInstances", group.to_owned())?;
        let mut v: Vec<spot_common::Ec2State> = g
            .instances
            .iter()
            .map(|(k, v)| spot_common::Ec2State {
                instance_id: k.clone(),
                state: v.clone(),
                request_id: g.launched_by.get(k).cloned(),
            })
            .collect();
        v.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(v)
    }

    async fn move_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
        allowed_holders: &[String],
    ) -> Result<String, Ec2Error> {
        let mut g = self.enter("MoveAddress", format!("{allocation_id}->{instance_id}"))?;
        let holder = g
            .addresses
            .get(allocation_id)
            .cloned()
            .ok_or_else(|| Ec2Error {
                op: "MoveAddress",
                class: ErrorClass::NotFound,
                code: "InvalidAllocationID.NotFound".into(),
                message: allocation_id.to_owned(),
            })?;
        if let Some(h) = &holder
            && h != instance_id
            && !allowed_holders.contains(h)
        {
            return Err(Ec2Error {
                op: "MoveAddress",
                class: ErrorClass::Client,
                code: "UnexpectedHolder".into(),
                message: format!("{allocation_id} is held by {h}"),
            });
        }
        g.addresses
            .insert(allocation_id.to_owned(), Some(instance_id.to_owned()));
        Ok(format!("eipassoc-{instance_id}"))
    }

    async fn interface(&self, eni: &str) -> Result<Interface, Ec2Error> {
        let g = self.enter("DescribeNetworkInterfaces", eni.to_owned())?;
        let (zone, holder) = g.interfaces.get(eni).cloned().ok_or_else(|| Ec2Error {
            op: "DescribeNetworkInterfaces",
            class: ErrorClass::NotFound,
            code: "InvalidNetworkInterfaceID.NotFound".into(),
            message: eni.to_owned(),
        })?;
        let status = if g.stuck_detach
            && g.calls
                .iter()
                .any(|c| c == &format!("DetachNetworkInterface(attach-{eni})"))
        {
            "detaching"
        } else {
            "attached"
        };
        Ok(Interface {
            availability_zone: zone,
            attachment: holder.map(|instance_id| Attachment {
                attachment_id: format!("attach-{eni}"),
                instance_id,
                status: status.into(),
            }),
        })
    }

    async fn detach_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let mut g = self.enter("DetachNetworkInterface", attachment_id.to_owned())?;
        if g.stuck_detach {
            return Ok(());
        }
        let eni = attachment_id.trim_start_matches("attach-").to_owned();
        if let Some((_, holder)) = g.interfaces.get_mut(&eni) {
            *holder = None;
        }
        Ok(())
    }

    async fn attach_interface(&self, eni: &str, instance_id: &str) -> Result<String, Ec2Error> {
        let mut g = self.enter("AttachNetworkInterface", format!("{eni}->{instance_id}"))?;
        match g.interfaces.get_mut(eni) {
            Some((_, Some(h))) => Err(Ec2Error {
                op: "AttachNetworkInterface",
                class: ErrorClass::Client,
                code: "InvalidParameterValue".into(),
                message: format!("Interface {eni} is currently in use by {h}"),
            }),
            Some((_, slot)) => {
                *slot = Some(instance_id.to_owned());
                Ok(format!("attach-{eni}"))
            }
            None => Err(Ec2Error {
                op: "AttachNetworkInterface",
                class: ErrorClass::NotFound,
                code: "InvalidNetworkInterfaceID.NotFound".into(),
                message: eni.to_owned(),
            }),
        }
    }

    async fn spot_prices(
        &self,
        instance_types: &[String],
        _product_description: &str,
        _start_ms: i64,
    ) -> Result<Vec<SpotPrice>, Ec2Error> {
        drop(self.enter("DescribeSpotPriceHistory", instance_types.join(","))?);
        Ok(Vec::new())
    }
    async fn volume(&self, volume_id: &str) -> Result<Option<Volume>, Ec2Error> {
        let g = self.enter("DescribeVolumes", volume_id.to_owned())?;
        Ok(g.volumes.get(volume_id).map(|v| Volume {
            volume_id: volume_id.to_owned(),
            availability_zone: v.zone.clone(),
            state: if v.holder.is_some() {
                "in-use"
            } else {
                "available"
            }
            .into(),
            attachment: v.holder.as_ref().map(|(i, d)| VolumeAttachment {
                instance_id: i.clone(),
                device: d.clone(),
                state: "attached".into(),
            }),
        }))
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), Ec2Error> {
        let mut g = self.enter(
            "AttachVolume",
            format!("{volume_id} {instance_id} {device}"),
        )?;
        let v = g
            .volumes
            .get_mut(volume_id)
            .ok_or_else(|| not_found("AttachVolume", volume_id))?;
        if let Some((h, _)) = &v.holder {
            return Err(Ec2Error {
                op: "AttachVolume",
                class: ErrorClass::Client,
                code: "VolumeInUse".into(),
                message: format!("{volume_id} is attached to {h}"),
            });
        }
        v.holder = Some((instance_id.to_owned(), device.to_owned()));
        Ok(())
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), Ec2Error> {
        let mut g = self.enter(
            "DetachVolume",
            format!("{volume_id} {instance_id} force={force}"),
        )?;
        if g.stuck_detach {
            return Ok(());
        }
        if let Some(v) = g.volumes.get_mut(volume_id)
            && v.holder.as_ref().is_some_and(|(h, _)| h == instance_id)
        {
            v.holder = None;
        }
        Ok(())
    }

    async fn create_volume(
        &self,
        snapshot_id: &str,
        zone: &str,
        _tags: &VolumeTags<'_>,
        client_token: &str,
    ) -> Result<String, Ec2Error> {
        let mut g = self.enter(
            "CreateVolume",
            format!("{snapshot_id} {zone} {client_token}"),
        )?;
        if let Some(id) = g.volume_tokens.get(client_token) {
            return Ok(id.clone());
        }
        if !g.snapshots.contains_key(snapshot_id) {
            return Err(not_found("CreateVolume", snapshot_id));
        }
        g.next += 1;
        let id = format!("vol-fake{}", g.next);
        g.volumes.insert(
            id.clone(),
            FakeVolume {
                zone: zone.to_owned(),
                holder: None,
                source: Some(snapshot_id.to_owned()),
            },
        );
        g.volume_tokens.insert(client_token.to_owned(), id.clone());
        Ok(id)
    }

    async fn create_snapshot(
        &self,
        volume_id: &str,
        tags: &VolumeTags<'_>,
    ) -> Result<String, Ec2Error> {
        let mut g = self.enter("CreateSnapshot", volume_id.to_owned())?;
        g.next += 1;
        let id = format!("snap-fake{}", g.next);
        let started_ms = i64::try_from(g.next).unwrap_or(0) * 1_000_000;
        g.snapshots.insert(
            id.clone(),
            FakeSnapshot {
                volume: volume_id.to_owned(),
                group: tags.group.to_owned(),
                device: tags.device.to_owned(),
                state: "pending".into(),
                started_ms,
                fast: Default::default(),
            },
        );
        Ok(id)
    }

    async fn snapshots(&self, group: &str, device: &str) -> Result<Vec<Snapshot>, Ec2Error> {
        let g = self.enter("DescribeSnapshots", format!("{group} {device}"))?;
        Ok(g.snapshots
            .iter()
            .filter(|(_, s)| s.group == group && s.device == device)
            .map(|(id, s)| Snapshot {
                snapshot_id: id.clone(),
                volume_id: s.volume.clone(),
                state: s.state.clone(),
                started_ms: s.started_ms,
            })
            .collect())
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error> {
        let mut g = self.enter("DeleteSnapshot", snapshot_id.to_owned())?;
        g.snapshots
            .remove(snapshot_id)
            .map(|_| ())
            .ok_or_else(|| not_found("DeleteSnapshot", snapshot_id))
    }

    async fn fast_restores(&self, snapshot_ids: &[String]) -> Result<Vec<FastRestore>, Ec2Error> {
        let g = self.enter("DescribeFastSnapshotRestores", snapshot_ids.join(" "))?;
        Ok(snapshot_ids
            .iter()
            .filter_map(|id| g.snapshots.get(id).map(|s| (id, s)))
            .flat_map(|(id, s)| {
                s.fast.iter().map(|(zone, state)| FastRestore {
                    snapshot_id: id.clone(),
                    zone: zone.clone(),
                    state: state.clone(),
                })
            })
            .collect())
    }

    async fn set_fast_restore(
        &self,
        snapshot_id: &str,
        zones: &[String],
        on: bool,
    ) -> Result<(), Ec2Error> {
        let action = if on {
            "EnableFastSnapshotRestores"
        } else {
            "DisableFastSnapshotRestores"
        };
        let mut g = self.enter(action, format!("{snapshot_id} {}", zones.join(",")))?;
        let s = g
            .snapshots
            .get_mut(snapshot_id)
            .ok_or_else(|| not_found(action, snapshot_id))?;
        for z in zones {
            if on {
                s.fast.insert(z.clone(), "enabled".into());
            } else {
                s.fast.remove(z);
            }
        }
        Ok(())
    }
}
