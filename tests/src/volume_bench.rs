//! `spot-sim bench volume`: data volumes with realistic EBS delays.
//!
//! 1. A lone PRIMARY with one data volume gets the 2-minute interruption
//!    notice; its replacement boots in `--boot` (60 s); detaches and
//!    attaches take 5-20 s (drawn per run, seeded). Measured: notice ->
//!    new PRIMARY serving with the volume, against the reclaim.
//! 2. A switch to another pool of the volume's zone: the downtime, and
//!    its steps from EC2's and the ledger's clocks (old stops serving ->
//!    volume detached -> attach requested -> attached -> new serves).

use crate::ec2_sim::EbsTiming;
use crate::fleet::{Fleet, FleetOptions};
use crate::scenarios::volumes::{volume_violations, wait_volumes};
use crate::scenarios::{switch_to, wait_confirmed, wait_confirmed_within, wait_serving};
use anyhow::{Context, Result, ensure};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct VolumeBench {
    /// Interruption runs (each a fresh fleet).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The notice's lead.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub notice: Duration,
    /// Boot time of a replacement.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub boot: Duration,
    /// Seed of the drawn detach and attach delays (5-20 s each).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A fleet with EBS delays `timing` whose group `db` keeps its data on
/// `vol-db` (us-east-1a); its first PRIMARY serving with the volume.
async fn serving_with_volume(opts: FleetOptions, timing: EbsTiming) -> Result<(Fleet, String)> {
    let f = Fleet::start(opts).await?;
    f.ec2.set_ebs(timing);
    let first = f
        .group_with_volume("db", json!({"snapshot_interval_s": 3600}), "vol-db")
        .await?;
    wait_confirmed(&f, "db", Some(&first), None).await?;
    wait_serving(&f, "db", &first).await?;
    wait_volumes(&f, |v| v["availability_zone"] == "us-east-1a").await?;
    Ok((f, first))
}

pub async fn run(args: VolumeBench) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut runs = Vec::new();
    for r in 0..args.runs {
        let timing = EbsTiming {
            attach_delay: Duration::from_millis(rng.random_range(5_000..=20_000)),
            detach_delay: Duration::from_millis(rng.random_range(5_000..=20_000)),
            create_delay: Duration::from_secs(10),
            snapshot_delay: Duration::from_secs(5),
            fast_restore_delay: Duration::from_secs(60),
            stuck_detach: false,
        };
        let opts = FleetOptions {
            boot_delay: args.boot,
            ..FleetOptions::default()
        };
        let (f, first) = serving_with_volume(opts, timing).await?;
        let t = Instant::now();
        f.interrupt(&first, args.notice)?;
        let new = wait_confirmed_within(&f, "db", None, Some(&first), args.notice * 2).await?;
        wait_serving(&f, "db", &new).await?;
        let took = t.elapsed();
        ensure!(
            f.ec2.volume_holder("vol-db").as_deref() == Some(new.as_str()),
            "the new PRIMARY serves without its volume"
        );
        let v = volume_violations(&f, "db", "vol-db")?;
        ensure!(v.is_empty(), "volume violations: {v:?}");
        f.check_no_overlap()?;
        eprintln!(
            "volume bench: run {r}: detach {:?}, attach {:?}: new PRIMARY serving with its volume {:.1} s after the notice ({:.1} s before the reclaim)",
            timing.detach_delay,
            timing.attach_delay,
            took.as_secs_f64(),
            args.notice.as_secs_f64() - took.as_secs_f64()
        );
        runs.push(json!({
            "detach_s": timing.detach_delay.as_secs_f64(),
            "attach_s": timing.attach_delay.as_secs_f64(),
            "notice_to_serving_s": took.as_secs_f64(),
            "before_reclaim_s": args.notice.as_secs_f64() - took.as_secs_f64(),
        }));
    }

    // The switch, its steps.
    let timing = EbsTiming {
        attach_delay: Duration::from_secs(5),
        detach_delay: Duration::from_secs(5),
        create_delay: Duration::from_secs(10),
        snapshot_delay: Duration::from_secs(5),
        fast_restore_delay: Duration::from_secs(60),
        stuck_detach: false,
    };
    let (f, first) = serving_with_volume(FleetOptions::default(), timing).await?;
    let (done, new) = switch_to(
        &f,
        json!({"instance_type": "c5.large", "availability_zone": "us-east-1a"}),
    )
    .await?;
    wait_serving(&f, "db", &new).await?;
    let ledger = f.ledger()?;
    let iv = ledger.groups.get("db").context("ledger")?;
    let old_stop = iv
        .iter()
        .find(|i| i.instance == first)
        .and_then(|i| i.end_ns)
        .context("the old PRIMARY stopped")?;
    let new_start = iv
        .iter()
        .find(|i| i.instance == new)
        .map(|i| i.start_ns)
        .context("the new PRIMARY started")?;
    let spans = f.ec2.volume_history("vol-db");
    let old_span = spans
        .iter()
        .find(|s| s.instance_id == first)
        .context("old span")?;
    let new_span = spans
        .iter()
        .find(|s| s.instance_id == new)
        .context("new span")?;
    let detached = old_span.detached_ns.context("detached")?;
    let attached = new_span.attached_ns + u64::try_from(timing.attach_delay.as_nanos())?;
    let steps = json!({
        "downtime_s": secs(new_start - old_stop),
        "switch_downtime_s": done["downtime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        "demoted_to_detached_s": secs(detached.saturating_sub(old_stop)),
        "detached_to_attach_requested_s": secs(new_span.attached_ns.saturating_sub(detached)),
        "attach_s": timing.attach_delay.as_secs_f64(),
        "attached_to_serving_s": secs(new_start.saturating_sub(attached)),
    });
    let report = json!({"interruptions": runs, "switch": steps});
    if args.json {
        println!("{report}");
    } else {
        println!(
            "volume bench: lone PRIMARY, one data volume, {:?} notice, {:?} boot, detach/attach 5-20 s",
            args.notice, args.boot
        );
        for r in &runs {
            println!(
                "  detach {:>4.1} s, attach {:>4.1} s: new PRIMARY serving with its data {:>5.1} s after the notice, {:>5.1} s before the reclaim",
                r["detach_s"].as_f64().unwrap_or(0.0),
                r["attach_s"].as_f64().unwrap_or(0.0),
                r["notice_to_serving_s"].as_f64().unwrap_or(0.0),
                r["before_reclaim_s"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "  switch in the volume's zone (detach 5 s, attach 5 s): downtime {:.2} s = old stopped -> detached {:.2} s + -> attach requested {:.2} s + attach {:.2} s + attached -> serving (promote hook) {:.2} s",
            steps["downtime_s"].as_f64().unwrap_or(0.0),
            steps["demoted_to_detached_s"].as_f64().unwrap_or(0.0),
            steps["detached_to_attach_requested_s"]
                .as_f64()
                .unwrap_or(0.0),
            steps["attach_s"].as_f64().unwrap_or(0.0),
            steps["attached_to_serving_s"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
