//! EBS data volumes and snapshots as EC2 answers them, with the
//! transitions moto skips: an attach is `attaching` for `attach_delay`,
//! a detach `detaching` for `detach_delay` (or `busy` for ever when the
//! fault `stuck_volume_detach` is set and the detach was not forced: the
//! volume is still mounted), a restored volume `creating` for
//! `create_delay`, a snapshot `pending` for `snapshot_delay`. A volume
//! attaches only to a running instance of its zone and only when free
//! (`VolumeInUse`); termination frees it. Fast snapshot restore is
//! `optimizing` for `fast_restore_delay`, then `enabled`; a volume
//! created in a zone where it is `enabled` is marked fast. Every attachment is recorded
//! with its times on the machine's monotonic clock, for the checker.

use super::{Inner, err, esc, list, missing, ok, running_zone, tag_items, tags};
use crate::ledger::monotonic_ns;
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// One attachment of a volume, as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentSpan {
    pub instance_id: String,
    /// When AttachVolume was accepted.
    pub attached_ns: u64,
    /// When the volume was free again (detached, or its holder terminated).
    pub detached_ns: Option<u64>,
}

#[derive(Debug, Clone)]
pub(super) struct SimVolume {
    zone: String,
    ready_at: Option<Instant>,
    holder: Option<(String, String)>,
    attached_at: Option<Instant>,
    detach_at: Option<Instant>,
    busy: bool,
    client_token: Option<String>,
    pub(super) source_snapshot: Option<String>,
    /// Created from a snapshot with fast snapshot restore `enabled` in
    /// the volume's zone.
    pub(super) fast: bool,
    tags: Vec<(String, String)>,
    pub(super) history: Vec<AttachmentSpan>,
}

#[derive(Debug, Clone)]
pub(super) struct SimSnapshot {
    volume: String,
    started: SystemTime,
    done_at: Instant,
    tags: Vec<(String, String)>,
    /// zone -> when fast snapshot restore is `enabled` there (`optimizing`
    /// until then).
    fast: HashMap<String, Instant>,
}

/// Delays and faults of the volumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EbsTiming {
    pub attach_delay: Duration,
    pub detach_delay: Duration,
    pub create_delay: Duration,
    pub snapshot_delay: Duration,
    /// How long fast snapshot restore is `optimizing` before `enabled`.
    pub fast_restore_delay: Duration,
    /// A detach without force never finishes (the volume is busy).
    pub stuck_detach: bool,
}

impl SimSnapshot {
    pub(super) fn enable_fast(&mut self, zone: &str) {
        self.fast.insert(zone.to_owned(), Instant::now());
    }

    pub(super) fn fast_zones(&self) -> Vec<String> {
        self.fast.keys().cloned().collect()
    }
}

impl SimVolume {
    pub(super) fn new(zone: &str) -> SimVolume {
        SimVolume {
            zone: zone.to_owned(),
            ready_at: None,
            holder: None,
            attached_at: None,
            detach_at: None,
            busy: false,
            client_token: None,
            source_snapshot: None,
            fast: false,
            tags: Vec::new(),
            history: Vec::new(),
        }
    }

    pub(super) fn tagged(&self, k: &str, v: &str) -> bool {
        self.tags.iter().any(|(a, b)| a == k && b == v)
    }

    pub(super) fn holder(&self) -> Option<&str> {
        self.holder.as_ref().map(|(i, _)| i.as_str())
    }

    /// Finish the transitions whose time has come.
    fn settle(&mut self) {
        let now = Instant::now();
        if self.ready_at.is_some_and(|t| now >= t) {
            self.ready_at = None;
        }
        if self.detach_at.is_some_and(|t| now >= t) {
            self.free();
        }
    }

    /// Free (detached, or its holder is gone).
    pub(super) fn free(&mut self) {
        self.holder = None;
        self.detach_at = None;
        self.attached_at = None;
        self.busy = false;
        if let Some(last) = self.history.last_mut()
            && last.detached_ns.is_none()
        {
            last.detached_ns = Some(monotonic_ns());
        }
    }

    fn state(&self) -> &'static str {
        if self.ready_at.is_some() {
            "creating"
        } else if self.holder.is_some() {
            "in-use"
        } else {
            "available"
        }
    }

    fn attachment_state(&self, attach_delay: Duration) -> &'static str {
        if self.busy {
            "busy"
        } else if self.detach_at.is_some() {
            "detaching"
        } else if self
            .attached_at
            .is_some_and(|t| Instant::now() < t + attach_delay)
        {
            "attaching"
        } else {
            "attached"
        }
    }
}

fn rfc3339_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(super) fn answer(g: &mut Inner, action: &str, p: &HashMap<String, String>) -> Response {
    for v in g.volumes.values_mut() {
        v.settle();
    }
    match action {
        "DescribeVolumes" => describe(g, p),
        "AttachVolume" => attach(g, p),
        "DetachVolume" => detach(g, p),
        "CreateVolume" => create(g, p),
        "CreateSnapshot" => snapshot(g, p),
        "DescribeSnapshots" => describe_snapshots(g, p),
        "EnableFastSnapshotRestores" | "DisableFastSnapshotRestores" => fast_restore(g, action, p),
        "DescribeFastSnapshotRestores" => describe_fast_restores(g, p),
        _ => delete_snapshot(g, p),
    }
}

fn no_volume(id: &str) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        "InvalidVolume.NotFound",
        &format!("The volume '{id}' does not exist."),
    )
}

fn volume_xml(id: &str, v: &SimVolume, attach_delay: Duration) -> String {
    let attachment = v
        .holder
        .as_ref()
        .map(|(i, d)| {
            format!(
                "<item><volumeId>{}</volumeId><instanceId>{}</instanceId><device>{}</device><status>{}</status><deleteOnTermination>false</deleteOnTermination></item>",
                esc(id),
                esc(i),
                esc(d),
                v.attachment_state(attach_delay)
            )
        })
        .unwrap_or_default();
    format!(
        "<volumeId>{}</volumeId><size>8</size><availabilityZone>{}</availabilityZone><status>{}</status><attachmentSet>{attachment}</attachmentSet><volumeType>gp3</volumeType>{}",
        esc(id),
        esc(&v.zone),
        v.state(),
        v.source_snapshot
            .as_ref()
            .map(|s| format!("<snapshotId>{}</snapshotId>", esc(s)))
            .unwrap_or_default()
    )
}

fn describe(g: &Inner, p: &HashMap<String, String>) -> Response {
    let mut items = String::new();
    for id in list(p, "VolumeId") {
        let Some(v) = g.volumes.get(&id) else {
            return no_volume(&id);
        };
        items.push_str(&format!(
            "<item>{}</item>",
            volume_xml(&id, v, g.ebs.attach_delay)
        ));
    }
    ok(
        "DescribeVolumes",
        &format!("<volumeSet>{items}</volumeSet>"),
    )
}

fn attach(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let (Some(vol), Some(inst), Some(device)) =
        (p.get("VolumeId"), p.get("InstanceId"), p.get("Device"))
    else {
        return missing("VolumeId, InstanceId and Device are required");
    };
    let zone = match running_zone(g, inst) {
        Ok(z) => z,
        Err(answer) => return *answer,
    };
    let Some(v) = g.volumes.get_mut(vol) else {
        return no_volume(vol);
    };
    if v.zone != zone {
        return err(
            StatusCode::BAD_REQUEST,
            "InvalidVolume.ZoneMismatch",
            &format!(
                "The volume '{vol}' is not in the same availability zone as instance '{inst}'"
            ),
        );
    }
    if v.ready_at.is_some() {
        return err(
            StatusCode::BAD_REQUEST,
            "IncorrectState",
            &format!("The volume '{vol}' is 'creating'"),
        );
    }
    if let Some((other, _)) = &v.holder {
        return err(
            StatusCode::BAD_REQUEST,
            "VolumeInUse",
            &format!("{vol} is already attached to an instance ({other})"),
        );
    }
    v.holder = Some((inst.clone(), device.clone()));
    v.attached_at = Some(Instant::now());
    v.history.push(AttachmentSpan {
        instance_id: inst.clone(),
        attached_ns: monotonic_ns(),
        detached_ns: None,
    });
    ok(
        "AttachVolume",
        &format!(
            "<volumeId>{}</volumeId><instanceId>{}</instanceId><device>{}</device><status>attaching</status>",
            esc(vol),
            esc(inst),
            esc(device)
        ),
    )
}

fn detach(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let Some(vol) = p.get("VolumeId") else {
        return missing("VolumeId is required");
    };
    let force = p.get("Force").is_some_and(|f| f == "true");
    let timing = g.ebs;
    let Some(v) = g.volumes.get_mut(vol) else {
        return no_volume(vol);
    };
    let Some((holder, device)) = v.holder.clone() else {
        return err(
            StatusCode::BAD_REQUEST,
            "IncorrectState",
            &format!("Volume '{vol}' is in the 'available' state."),
        );
    };
    if let Some(i) = p.get("InstanceId")
        && *i != holder
    {
        return err(
            StatusCode::BAD_REQUEST,
            "InvalidAttachment.NotFound",
            &format!("Volume '{vol}' is not attached to '{i}'"),
        );
    }
    if timing.stuck_detach && !force {
        v.busy = true;
    } else if v.detach_at.is_none() || force {
        v.busy = false;
        v.detach_at = Some(Instant::now() + timing.detach_delay);
    }
    if timing.detach_delay.is_zero() && !v.busy {
        v.free();
    }
    ok(
        "DetachVolume",
        &format!(
            "<volumeId>{}</volumeId><instanceId>{}</instanceId><device>{}</device><status>detaching</status>",
            esc(vol),
            esc(&holder),
            esc(&device)
        ),
    )
}

fn create(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let Some(zone) = p.get("AvailabilityZone") else {
        return missing("AvailabilityZone is required");
    };
    let token = p.get("ClientToken").cloned();
    if let Some(t) = &token
        && let Some((id, v)) = g
            .volumes
            .iter()
            .find(|(_, v)| v.client_token.as_ref() == Some(t))
    {
        return ok("CreateVolume", &volume_xml(id, v, g.ebs.attach_delay));
    }
    let snapshot = p.get("SnapshotId").cloned();
    if let Some(s) = &snapshot
        && !g.snapshots.contains_key(s)
    {
        return err(
            StatusCode::BAD_REQUEST,
            "InvalidSnapshot.NotFound",
            &format!("The snapshot '{s}' does not exist."),
        );
    }
    g.next += 1;
    let id = format!("vol-{:017x}", g.next);
    let mut v = SimVolume::new(zone);
    v.ready_at = Some(Instant::now() + g.ebs.create_delay);
    v.client_token = token;
    v.fast = snapshot
        .as_ref()
        .and_then(|s| g.snapshots.get(s))
        .and_then(|s| s.fast.get(zone.as_str()))
        .is_some_and(|at| Instant::now() >= *at);
    v.source_snapshot = snapshot;
    v.tags = tags(p, "TagSpecification.1.Tag");
    let xml = volume_xml(&id, &v, g.ebs.attach_delay);
    g.volumes.insert(id, v);
    ok("CreateVolume", &xml)
}

fn snapshot(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let Some(vol) = p.get("VolumeId") else {
        return missing("VolumeId is required");
    };
    if !g.volumes.contains_key(vol) {
        return no_volume(vol);
    }
    g.next += 1;
    let id = format!("snap-{:017x}", g.next);
    let s = SimSnapshot {
        volume: vol.clone(),
        started: SystemTime::now(),
        done_at: Instant::now() + g.ebs.snapshot_delay,
        tags: tags(p, "TagSpecification.1.Tag"),
        fast: HashMap::new(),
    };
    let xml = format!(
        "<snapshotId>{}</snapshotId><volumeId>{}</volumeId><status>pending</status><startTime>{}</startTime><volumeSize>8</volumeSize>",
        esc(&id),
        esc(vol),
        rfc3339_ms(s.started)
    );
    g.snapshots.insert(id, s);
    ok("CreateSnapshot", &xml)
}

/// `Filter.N.Name` = `tag:K` with `Filter.N.Value.1` = V, as pairs.
fn tag_filters(p: &HashMap<String, String>) -> Vec<(String, String)> {
    (1..)
        .map_while(|i| {
            let name = p.get(&format!("Filter.{i}.Name"))?;
            let value = p.get(&format!("Filter.{i}.Value.1")).cloned();
            Some((name.clone(), value.unwrap_or_default()))
        })
        .filter_map(|(n, v)| n.strip_prefix("tag:").map(|k| (k.to_owned(), v)))
        .collect()
}

fn describe_snapshots(g: &Inner, p: &HashMap<String, String>) -> Response {
    let want = tag_filters(p);
    let ids = list(p, "SnapshotId");
    let mut items = String::new();
    let mut all: Vec<(&String, &SimSnapshot)> = g.snapshots.iter().collect();
    all.sort_by_key(|(id, _)| *id);
    for (id, s) in all {
        if !ids.is_empty() && !ids.contains(id) {
            continue;
        }
        if !want.iter().all(|w| s.tags.contains(w)) {
            continue;
        }
        let state = if Instant::now() >= s.done_at {
            "completed"
        } else {
            "pending"
        };
        let tag_xml = tag_items(&s.tags);
        items.push_str(&format!(
            "<item><snapshotId>{}</snapshotId><volumeId>{}</volumeId><status>{state}</status><startTime>{}</startTime><volumeSize>8</volumeSize><tagSet>{tag_xml}</tagSet></item>",
            esc(id),
            esc(&s.volume),
            rfc3339_ms(s.started)
        ));
    }
    ok(
        "DescribeSnapshots",
        &format!("<snapshotSet>{items}</snapshotSet>"),
    )
}

/// Enable or disable fast snapshot restore of `SourceSnapshotId.N` in
/// `AvailabilityZone.N`: an unknown snapshot lands in `unsuccessful`, as
/// EC2 answers it.
fn fast_restore(g: &mut Inner, action: &str, p: &HashMap<String, String>) -> Response {
    let on = action == "EnableFastSnapshotRestores";
    let zones = list(p, "AvailabilityZone");
    let delay = g.ebs.fast_restore_delay;
    let (mut done, mut refused) = (String::new(), String::new());
    for id in list(p, "SourceSnapshotId") {
        let Some(s) = g.snapshots.get_mut(&id) else {
            let errors: String = zones
                .iter()
                .map(|z| format!(
                    "<item><availabilityZone>{}</availabilityZone><error><code>InvalidSnapshot.NotFound</code><message>The snapshot '{}' does not exist.</message></error></item>",
                    esc(z), esc(&id)
                ))
                .collect();
            refused.push_str(&format!(
                "<item><snapshotId>{}</snapshotId><fastSnapshotRestoreStateErrorSet>{errors}</fastSnapshotRestoreStateErrorSet></item>",
                esc(&id)
            ));
            continue;
        };
        for z in &zones {
            if on {
                s.fast
                    .entry(z.clone())
                    .or_insert_with(|| Instant::now() + delay);
            } else {
                s.fast.remove(z);
            }
            let state = if on { "enabling" } else { "disabling" };
            done.push_str(&format!(
                "<item><snapshotId>{}</snapshotId><availabilityZone>{}</availabilityZone><state>{state}</state></item>",
                esc(&id),
                esc(z)
            ));
        }
    }
    ok(
        action,
        &format!("<successful>{done}</successful><unsuccessful>{refused}</unsuccessful>"),
    )
}

/// `Filter.N.Name=snapshot-id` with its values: the states per zone.
fn describe_fast_restores(g: &Inner, p: &HashMap<String, String>) -> Response {
    let wanted: Vec<String> = (1..)
        .map_while(|i| p.get(&format!("Filter.{i}.Name")).map(|n| (i, n)))
        .filter(|(_, n)| n.as_str() == "snapshot-id")
        .flat_map(|(i, _)| list(p, &format!("Filter.{i}.Value")))
        .collect();
    let mut items = String::new();
    let mut ids: Vec<&String> = g.snapshots.keys().collect();
    ids.sort();
    for id in ids.into_iter().filter(|id| wanted.contains(id)) {
        let mut zones: Vec<(&String, &Instant)> = g.snapshots[id].fast.iter().collect();
        zones.sort();
        for (z, at) in zones {
            let state = if Instant::now() >= *at {
                "enabled"
            } else {
                "optimizing"
            };
            items.push_str(&format!(
                "<item><snapshotId>{}</snapshotId><availabilityZone>{}</availabilityZone><state>{state}</state></item>",
                esc(id),
                esc(z)
            ));
        }
    }
    ok(
        "DescribeFastSnapshotRestores",
        &format!("<fastSnapshotRestoreSet>{items}</fastSnapshotRestoreSet>"),
    )
}

fn delete_snapshot(g: &mut Inner, p: &HashMap<String, String>) -> Response {
    let Some(id) = p.get("SnapshotId") else {
        return missing("SnapshotId is required");
    };
    if g.snapshots.remove(id).is_none() {
        return err(
            StatusCode::BAD_REQUEST,
            "InvalidSnapshot.NotFound",
            &format!("The snapshot '{id}' does not exist."),
        );
    }
    ok("DeleteSnapshot", "<return>true</return>")
}
