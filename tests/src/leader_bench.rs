//! `spot-sim bench leader`: three coordinators on one PostgreSQL (a server
//! of the bench's own). Kills the leader with `kill -9` again and again
//! and measures how long until a write is accepted again (through any
//! coordinator), then, with a warm group, kills the leader as an
//! interruption notice arrives and measures notice -> new PRIMARY serving
//! against the notice's deadline.

use crate::fleet::{Fleet, FleetOptions};
use crate::harness::eventually;
use crate::scenarios::leadership::wait_leader;
use crate::scenarios::{WAIT, wait_confirmed, wait_role, wait_serving};
use anyhow::{Context, Result, ensure};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct LeaderBench {
    /// Leader kills measured.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// The coordinators' leader lease.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Interruptions of a PRIMARY, each as its leader is killed.
    #[arg(long, default_value_t = 3)]
    pub interruptions: usize,
    /// The notice's lead (AWS: 2 minutes).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub notice: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Restart coordinator `i` and wait until it follows.
async fn bring_back(f: &mut Fleet, i: usize) -> Result<()> {
    f.coordinator_mut(i).context("coordinator")?.start_again()?;
    let api = f.coordinator_mut(i).context("coordinator")?.api();
    eventually("the old leader to follow", WAIT, || async {
        let (_, h) = api
            .call(reqwest::Method::GET, "/healthz", None, None)
            .await
            .ok()?;
        (h["leader"] == false && h["leader_url"].is_string()).then_some(())
    })
    .await
}

pub async fn run(args: LeaderBench) -> Result<()> {
    let mut opts = FleetOptions {
        coordinators: 3,
        postgres: true,
        ..FleetOptions::default()
    };
    let lease = humantime::format_duration(args.lease).to_string();
    opts.coordinator_args
        .extend(["--leader-lease".into(), lease]);
    let mut f = Fleet::start(opts).await?;
    wait_leader(&f, None).await?;
    let mut kill_to_write = Vec::new();
    for t in 0..args.trials {
        let leader = wait_leader(&f, None).await?;
        let start = Instant::now();
        f.coordinator_mut(leader).context("leader")?.kill9();
        crate::scenarios::leadership::first_write(&f, &format!("probe-{t}")).await?;
        kill_to_write.push(start.elapsed().as_secs_f64());
        eprintln!(
            "leader bench: kill {t}: coordinator {leader}, write accepted after {:.2} s",
            kill_to_write[t]
        );
        bring_back(&mut f, leader).await?;
    }

    // An interruption as the leader dies: the new PRIMARY before the deadline.
    let first = f.group("db", json!({})).await?;
    wait_confirmed(&f, "db", Some(&first), None).await?;
    let mut primary = first;
    let mut failovers = Vec::new();
    for t in 0..args.interruptions {
        let replica = format!("i-db-r{t}");
        f.add_instance(&replica, "m5.large", "us-east-1b", "db")
            .await?;
        wait_role(&f, &replica, "replica").await?;
        wait_serving(&f, "db", &primary).await?;
        let leader = wait_leader(&f, None).await?;
        let start = Instant::now();
        f.coordinator_mut(leader).context("leader")?.kill9();
        f.interrupt(&primary, args.notice)?;
        let new = wait_confirmed(&f, "db", Some(&replica), None).await?;
        wait_serving(&f, "db", &new).await?;
        let took = start.elapsed();
        ensure!(
            took < args.notice,
            "the new PRIMARY served {took:?} after the notice, past its {:?}",
            args.notice
        );
        failovers.push(took.as_secs_f64());
        eprintln!(
            "leader bench: interruption {t} during a leader change: new PRIMARY serving after {:.2} s",
            took.as_secs_f64()
        );
        bring_back(&mut f, leader).await?;
        primary = new;
    }
    f.check_no_overlap()?;
    let terms = crate::scenarios::leadership::check_terms(&f).await?;

    let mut k = kill_to_write.clone();
    k.sort_by(f64::total_cmp);
    let p = |v: &[f64], q| crate::bench::percentile(v, q);
    let mut fo = failovers.clone();
    fo.sort_by(f64::total_cmp);
    let report = json!({
        "lease_s": args.lease.as_secs_f64(),
        "kills": k.len(),
        "kill_to_write_p50_s": p(&k, 50.0),
        "kill_to_write_p99_s": p(&k, 99.0),
        "kill_to_write_max_s": k.last(),
        "interruptions": fo.len(),
        "notice_s": args.notice.as_secs_f64(),
        "notice_to_new_primary_max_s": fo.last(),
        "leader_terms": terms,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "leader bench: 3 coordinators on PostgreSQL, lease {:?}\n  \
             kill -9 of the leader -> a write accepted: n {}, p50 {:.2} s, p99 {:.2} s, max {:.2} s (target: lease + 2 s = {:.0} s)\n  \
             interruption as the leader dies -> new PRIMARY serving: n {}, max {:.2} s (notice {:?})\n  \
             leader terms: {terms}; no overlap; audit terms never went back",
            args.lease,
            k.len(),
            p(&k, 50.0),
            p(&k, 99.0),
            k.last().copied().unwrap_or(f64::NAN),
            args.lease.as_secs_f64() + 2.0,
            fo.len(),
            fo.last().copied().unwrap_or(f64::NAN),
            args.notice,
        );
    }
    Ok(())
}
