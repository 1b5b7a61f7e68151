//! Data volumes that follow the PRIMARY, judged from EC2's side (the
//! simulator's record of every attachment, on the machine's monotonic
//! clock) against the workloads' ledger: a volume is never attached to
//! two instances at once, never attached to an instance while another
//! instance of its group still serves (the old PRIMARY was fenced first),
//! and attached whenever a PRIMARY's promote hook started its workload.

use super::{InvariantChecker, Timings, WAIT, wait_confirmed, wait_role, wait_serving};
use crate::ec2_sim::EbsTiming;
use crate::fleet::{Fleet, FleetOptions, default_pools};
use crate::harness::eventually;
use crate::ledger::Ledger;
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// What the volumes of `group` (the configured `original` and every one
/// restored for the group) went through that they never should have.
pub fn volume_violations(f: &Fleet, group: &str, original: &str) -> Result<Vec<String>> {
    let ledger = f.ledger()?;
    let mut out = Vec::new();
    let vols = f.ec2.group_volumes(group, original);
    let mut spans = Vec::new();
    for v in &vols {
        let h = f.ec2.volume_history(v);
        for w in h.windows(2) {
            if w[0].detached_ns.is_none_or(|d| d > w[1].attached_ns) {
                out.push(format!(
                    "{v} attached to {} while still attached to {}",
                    w[1].instance_id, w[0].instance_id
                ));
            }
        }
        for s in &h {
            let others: Vec<String> = ledger
                .serving_at(group, s.attached_ns)
                .into_iter()
                .filter(|i| i.instance != s.instance_id)
                .map(|i| i.instance.clone())
                .collect();
            if !others.is_empty() {
                out.push(format!(
                    "{v} attached to {} while {others:?} still served {group}: before the fence",
                    s.instance_id
                ));
            }
            spans.push((v.clone(), s.clone()));
        }
    }
    out.extend(unmounted_starts(&ledger, group, &spans));
    Ok(out)
}

/// Workload starts (promote hooks) with no volume of the group attached.
fn unmounted_starts(
    ledger: &Ledger,
    group: &str,
    spans: &[(String, crate::ec2_sim::AttachmentSpan)],
) -> Vec<String> {
    let mut out = Vec::new();
    for i in ledger.groups.get(group).into_iter().flatten() {
        let covered = spans.iter().any(|(_, s)| {
            s.instance_id == i.instance
                && s.attached_ns <= i.start_ns
                && s.detached_ns.is_none_or(|d| d >= i.start_ns)
        });
        if !covered {
            out.push(format!(
                "{} started serving {group} with no data volume attached",
                i.instance
            ));
        }
    }
    out
}

/// Realistic enough to see every transition, short enough for a test.
pub const TEST_EBS: EbsTiming = EbsTiming {
    attach_delay: Duration::from_millis(800),
    detach_delay: Duration::from_millis(800),
    create_delay: Duration::from_millis(800),
    snapshot_delay: Duration::from_millis(500),
    fast_restore_delay: Duration::from_millis(1_000),
    stuck_detach: false,
};

/// A fleet whose group `db` keeps its data on `vol-db` (in us-east-1a,
/// attached to the first PRIMARY), optionally with a REPLICA `replica` in
/// `replica_zone`; waits until the store knows where the volume is.
pub async fn volume_group(
    opts: FleetOptions,
    replica: Option<(&str, &str)>,
) -> Result<(Fleet, String)> {
    let f = Fleet::start(opts).await?;
    f.ec2.set_ebs(TEST_EBS);
    // The first instance exists before the group's config names the
    // volume attached to it (as an operator sets it up).
    let (st, v) = f
        .api
        .post(
            "/v1/groups",
            &f.coord.admin_token,
            &json!({"name": "db", "config": {"pools": default_pools(),
                "data_volumes": [{"volume_id": "vol-db", "device": "/dev/sdf"}],
                "snapshot_interval_s": 60}}),
        )
        .await?;
    // With the coordinator's own EC2 access the volume is checked first:
    // it does not exist yet.
    ensure!(
        st == 409 && v["rule"] == "data_volumes_valid",
        "a missing volume is refused with the reason: {st} {v}"
    );
    let first = f
        .group_with_volume("db", json!({"snapshot_interval_s": 60}), "vol-db")
        .await?;
    let first = first.as_str();
    wait_confirmed(&f, "db", Some(first), None).await?;
    wait_serving(&f, "db", first).await?;
    wait_volumes(&f, |v| v["availability_zone"] == "us-east-1a").await?;
    if let Some((r, zone)) = replica {
        f.add_instance(r, "m5.large", zone, "db").await?;
        wait_role(&f, r, "replica").await?;
    }
    Ok((f, first.to_owned()))
}

/// Group `db`'s data volumes once `ok` says so.
pub async fn wait_volumes(f: &Fleet, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    eventually("the data volumes", WAIT, || async {
        let v = f.get("/v1/groups/db/volumes").await.ok()?;
        ok(&v).then_some(v)
    })
    .await
}

fn holder_is(f: &Fleet, volume: &str, id: &str) -> bool {
    f.ec2.volume_holder(volume).as_deref() == Some(id)
}

pub async fn data_volume() -> Result<Timings> {
    let mut out = Vec::new();

    // 1. A lone PRIMARY interrupted: its replacement gets the volume, in
    // the volume's zone, before the reclaim.
    let (f, first) = volume_group(FleetOptions::default(), None).await?;
    let checker = InvariantChecker::start(&f);
    let lead = Duration::from_secs(30);
    let t = Instant::now();
    f.interrupt(&first, lead)?;
    let new = wait_confirmed(&f, "db", None, Some(&first)).await?;
    wait_serving(&f, "db", &new).await?;
    let took = t.elapsed();
    ensure!(
        took < lead,
        "the replacement served after the reclaim: {took:?}"
    );
    ensure!(
        holder_is(&f, "vol-db", &new),
        "the volume is on the new PRIMARY"
    );
    let zone = f.get(&format!("/v1/instances/{new}")).await?["availability_zone"].clone();
    ensure!(
        zone == "us-east-1a",
        "the replacement is in the volume's zone: {zone}"
    );
    out.push(("lone_notice_to_primary_with_volume_s", took.as_secs_f64()));
    let v = volume_violations(&f, "db", "vol-db")?;
    ensure!(v.is_empty(), "volume violations: {v:?}");
    checker.check().await?;
    drop(f);

    // 2. A switch to another pool of the volume's zone moves the volume.
    let (f, first) = volume_group(FleetOptions::default(), None).await?;
    let checker = InvariantChecker::start(&f);
    let (done, new) = super::switch_to(
        &f,
        json!({"instance_type": "c5.large", "availability_zone": "us-east-1a"}),
    )
    .await?;
    wait_serving(&f, "db", &new).await?;
    ensure!(new != first && holder_is(&f, "vol-db", &new));
    out.push((
        "switch_downtime_s",
        done["downtime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
    ));
    let v = volume_violations(&f, "db", "vol-db")?;
    ensure!(v.is_empty(), "volume violations: {v:?}");
    checker.check().await?;
    drop(f);

    // 3. The only REPLICA is in another zone: once a snapshot exists, an
    // interruption promotes it with a volume restored from that snapshot.
    let (mut f, first) =
        volume_group(FleetOptions::default(), Some(("i-db-b", "us-east-1b"))).await?;
    let checker = InvariantChecker::start(&f);
    let snap = wait_volumes(&f, |v| v["volumes"][0]["last_snapshot_id"].is_string()).await?;
    let snapshot_id = snap["volumes"][0]["last_snapshot_id"]
        .as_str()
        .context("snapshot")?
        .to_owned();
    // Fast snapshot restore: the coordinator turns it on for the newest
    // completed snapshot in the pools' other zone (us-east-1b), once it
    // completed (restores read completed snapshots only).
    let mut config = f.get("/v1/groups/db").await?["config"].clone();
    config["fast_snapshot_restore"] = json!(true);
    let (st, v) = super::put_config(&f, config).await?;
    ensure!(st.is_success(), "fast_snapshot_restore turned on: {st} {v}");
    eventually("fast snapshot restore enabled", WAIT, || async {
        (f.ec2.fast_restore_zones(&snapshot_id) == ["us-east-1b"]).then_some(())
    })
    .await?;
    // The operator sees it where the volumes are shown.
    let shown = wait_volumes(&f, |v| v["fast_restore"].is_array()).await?;
    let fast = &shown["fast_restore"];
    ensure!(
        fast.as_array().map(Vec::len) == Some(1)
            && fast[0]["availability_zone"] == "us-east-1b"
            && fast[0]["snapshot_id"] == snapshot_id.as_str()
            && fast[0]["device"] == "/dev/sdf",
        "fast snapshot restore shown: {shown}"
    );
    tokio::time::sleep(TEST_EBS.fast_restore_delay * 2).await;
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(30))?;
    let new = wait_confirmed(&f, "db", Some("i-db-b"), None).await?;
    wait_serving(&f, "db", &new).await?;
    out.push(("cross_zone_notice_to_primary_s", t.elapsed().as_secs_f64()));
    let now = wait_volumes(&f, |v| v["availability_zone"] == "us-east-1b").await?;
    let restored = now["volumes"][0]["volume_id"]
        .as_str()
        .context("volume")?
        .to_owned();
    ensure!(restored != "vol-db", "a new volume in us-east-1b");
    ensure!(holder_is(&f, &restored, "i-db-b"));
    let source = f
        .ec2
        .volumes()
        .into_iter()
        .find(|(id, _)| *id == restored)
        .and_then(|(_, s)| s);
    ensure!(
        source.as_deref() == Some(snapshot_id.as_str()),
        "restored from the latest snapshot {snapshot_id}, not {source:?}"
    );
    ensure!(
        f.ec2.volume_restored_fast(&restored),
        "restored where fast snapshot restore was enabled"
    );
    // Turned off: off for every snapshot, at the next tick.
    let mut config = f.get("/v1/groups/db").await?["config"].clone();
    config["fast_snapshot_restore"] = json!(false);
    let (st, v) = super::put_config(&f, config).await?;
    ensure!(
        st.is_success(),
        "fast_snapshot_restore turned off: {st} {v}"
    );
    let all_off = || async {
        f.ec2
            .fast_restore_zones(&snapshot_id)
            .is_empty()
            .then_some(())
    };
    eventually("fast snapshot restore disabled", WAIT, all_off).await?;
    wait_volumes(&f, |v| v.get("fast_restore").is_none()).await?;
    // Left on by an earlier coordinator (turned off while none ran): the
    // next one to lead turns it off.
    f.ec2.enable_fast_restore(&snapshot_id, "us-east-1a");
    f.coord.kill9();
    f.coord.start_again()?;
    eventually(
        "fast snapshot restore disabled by the next coordinator",
        WAIT,
        all_off,
    )
    .await?;
    let v = volume_violations(&f, "db", "vol-db")?;
    ensure!(v.is_empty(), "volume violations: {v:?}");
    checker.check().await?;
    Ok(out)
}

/// With fencing switched off (a test-build-only coordinator flag), a
/// PRIMARY cut off from the coordinator is replaced while it still serves:
/// the volume checker must see the volume moved before the fence. Returns
/// the violations it saw.
pub async fn volume_without_fencing() -> Result<Vec<String>> {
    let mut opts = FleetOptions::default();
    opts.coordinator_args.extend([
        "--lease".into(),
        "3s".into(),
        "--unsafe-silence-is-death".into(),
    ]);
    let (f, first) = volume_group(opts, Some(("i-db-r", "us-east-1a"))).await?;
    f.partition(&first)?;
    let new = wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    eventually("the volume on the replacement", WAIT, || async {
        holder_is(&f, "vol-db", &new).then_some(())
    })
    .await?;
    volume_violations(&f, "db", "vol-db")
}
