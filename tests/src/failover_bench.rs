//! `spot-sim bench failover` and `spot-sim demo`, on the fleet simulator.

use crate::bench::percentile;
use crate::fleet::{Fleet, FleetOptions};
use crate::harness::eventually;
use crate::scenarios::{InvariantChecker, wait_role};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverBench {
    /// Groups failing over concurrently.
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    /// Interruptions per group with a warm REPLICA.
    #[arg(long, default_value_t = 5)]
    pub interruptions: usize,
    /// Simulated boot time of a launched instance (the cold case).
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub boot: Duration,
    /// Cold interruptions (no REPLICA) per group.
    #[arg(long, default_value_t = 1)]
    pub cold: usize,
    /// Manual switches per group (downtime = promote done - demote start).
    #[arg(long, default_value_t = 3)]
    pub switches: usize,
    /// Event streams (`/v1/events/stream`) held open meanwhile, as open
    /// dashboards and `spotctl watch` sessions.
    #[arg(long, default_value_t = 0)]
    pub streams: usize,
    #[arg(long)]
    pub json: bool,
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({"p50_s": percentile(&v, 50.0), "p95_s": percentile(&v, 95.0),
           "p99_s": percentile(&v, 99.0), "n": v.len()})
}

async fn confirmed(f: &Fleet, group: &str, not: &str, timeout: Duration) -> Result<String> {
    eventually("a new confirmed PRIMARY", timeout, || async {
        let p = f.confirmed_primary(group).await.ok().flatten()?;
        (p != not).then_some(p)
    })
    .await
}

pub async fn failover(args: FailoverBench) -> Result<()> {
    let f = Arc::new(
        Fleet::start(FleetOptions {
            boot_delay: args.boot,
            ..FleetOptions::default()
        })
        .await?,
    );
    let checker = InvariantChecker::start(&f);
    let (_streams, _events) =
        crate::bench::open_streams(&f.coord, &f.store_args()[2..], args.streams).await?;

    // Warm: each group has a REPLICA when its PRIMARY is interrupted.
    let mut tasks = Vec::new();
    for g in 0..args.groups {
        let (f, n) = (Arc::clone(&f), args.interruptions);
        tasks.push(tokio::spawn(async move {
            let name = format!("warm{g}");
            let mut primary = f.group(&name, json!({})).await?;
            confirmed(&f, &name, "", Duration::from_secs(60)).await?;
            let mut out = Vec::new();
            for i in 0..n {
                let az = if i % 2 == 0 {
                    "us-east-1b"
                } else {
                    "us-east-1a"
                };
                let replica = format!("i-{name}-r{i}");
                f.add_instance(&replica, "m5.large", az, &name).await?;
                wait_role(&f, &replica, "replica").await?;
                let t = Instant::now();
                f.interrupt(&primary, Duration::from_secs(120))?;
                primary = confirmed(&f, &name, &primary, Duration::from_secs(60)).await?;
                out.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut warm = Vec::new();
    for t in tasks {
        warm.extend(t.await??);
    }

    // Cold: no REPLICA; the replacement boots in `boot`.
    let mut tasks = Vec::new();
    for g in 0..args.groups.min(4) {
        let (f, n) = (Arc::clone(&f), args.cold);
        tasks.push(tokio::spawn(async move {
            let name = format!("cold{g}");
            let mut primary = f.group(&name, json!({})).await?;
            confirmed(&f, &name, "", Duration::from_secs(60)).await?;
            let mut out = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                let deadline = f.interrupt(&primary, Duration::from_secs(120))?;
                primary = confirmed(&f, &name, &primary, Duration::from_secs(150)).await?;
                let before_deadline = SystemTime::now() < deadline;
                out.push((t.elapsed().as_secs_f64(), before_deadline));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut cold = Vec::new();
    let mut cold_late = 0;
    for t in tasks {
        for (s, ok) in t.await?? {
            cold.push(s);
            cold_late += usize::from(!ok);
        }
    }
    let mut violations = checker.finish().await?;
    drop(f);

    // Switches, on a fleet whose launches boot fast: the boot does not
    // count in the downtime, only in how long the bench takes.
    let fs = Arc::new(
        Fleet::start(FleetOptions {
            boot_delay: Duration::from_secs(1),
            ..FleetOptions::default()
        })
        .await?,
    );
    let sw_checker = InvariantChecker::start(&fs);
    let mut tasks = Vec::new();
    for g in 0..args.groups {
        let (f, n) = (Arc::clone(&fs), args.switches);
        tasks.push(tokio::spawn(async move {
            let name = format!("switch{g}");
            f.group(&name, json!({})).await?;
            confirmed(&f, &name, "", Duration::from_secs(60)).await?;
            let pools = [("c5.large", "us-east-1a"), ("m5.large", "us-east-1b")];
            let mut out = Vec::new();
            for i in 0..n {
                let (t, az) = pools[i % 2];
                let (st, v) = f
                    .api
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/groups/{name}/switch"),
                        Some(&f.coord.admin_token),
                        Some(&json!({"pool": {"instance_type": t, "availability_zone": az}})),
                    )
                    .await?;
                anyhow::ensure!(st.is_success(), "switch refused: {st} {v}");
                let id = v["id"].as_i64().context("switch id")?;
                let done = eventually("switch done", Duration::from_secs(90), || async {
                    let list = f.get(&format!("/v1/groups/{name}/switches")).await.ok()?;
                    let s = list.as_array()?.iter().find(|s| s["id"] == id)?.clone();
                    (s["state"] == "done" || s["state"] == "failed").then_some(s)
                })
                .await?;
                anyhow::ensure!(
                    done["state"] == "done",
                    "switch {id} of {name} failed: {}",
                    done["failure"]
                );
                out.push(done["downtime_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut switch_downtime = Vec::new();
    for t in tasks {
        switch_downtime.extend(t.await??);
    }
    violations.extend(sw_checker.finish().await?);
    for v in &violations {
        eprintln!("invariant violation: {v}");
    }
    let report = json!({
        "warm": stats(warm),
        "cold": stats(cold),
        "cold_after_notice_time": cold_late,
        "cold_boot_s": args.boot.as_secs_f64(),
        "switch_downtime": stats(switch_downtime),
        "invariant_violations": violations.len(),
        "streams": args.streams,
    });
    if args.json {
        println!("{report}");
    } else {
        let fmt = |k: &str| {
            let s = &report[k];
            format!(
                "p50 {:.2} s, p95 {:.2} s, p99 {:.2} s (n={})",
                s["p50_s"].as_f64().unwrap_or(f64::NAN),
                s["p95_s"].as_f64().unwrap_or(f64::NAN),
                s["p99_s"].as_f64().unwrap_or(f64::NAN),
                s["n"]
            )
        };
        println!(
            "failover bench: notice -> new PRIMARY confirmed (promote command done), {} event streams open",
            args.streams
        );
        println!("  warm REPLICA:  {}", fmt("warm"));
        println!(
            "  no REPLICA:    {} with a {:?} boot; {} confirmed after the notice time",
            fmt("cold"),
            args.boot,
            cold_late
        );
        println!(
            "  switch downtime (promote done - demote start): {}",
            fmt("switch_downtime")
        );
        println!(
            "  invariant violations (two PRIMARIES / epoch backwards): {}",
            report["invariant_violations"]
        );
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct Demo {
    /// Coordinator address to watch.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Groups to run; the first half keep a warm REPLICA.
    #[arg(long, default_value_t = 3)]
    pub groups: usize,
    /// Time between injected interruptions.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Simulated boot time of launched instances.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub boot: Duration,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// Three days of spot prices for the demo's pools, a point every 3 hours
/// (the hours between are interpolated, as the dashboard's chart shows).
fn demo_prices() -> Vec<crate::ec2_sim::SimPrice> {
    const H: i64 = 3_600_000;
    let now = crate::now_ms() / H * H;
    let mut v = Vec::new();
    for (k, (t, az, base)) in [
        ("m5.large", "us-east-1a", 0.034),
        ("m5.large", "us-east-1b", 0.037),
        ("c5.large", "us-east-1a", 0.031),
    ]
    .into_iter()
    .enumerate()
    {
        for step in 0..24 {
            let wave = ((step as f64 + k as f64 * 2.0) / 3.0).sin() * 0.004;
            v.push(crate::ec2_sim::SimPrice {
                instance_type: t.into(),
                availability_zone: az.into(),
                product_description: "Linux/UNIX".into(),
                timestamp_ms: now - 72 * H + step * 3 * H,
                price: format!("{:.6}", base + wave),
            });
        }
    }
    v
}

pub async fn demo(args: Demo) -> Result<()> {
    let root = std::env::temp_dir().join(format!("spot-sim-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    // On-demand prices (us-east-1, Linux) so that savings show; prices
    // consolidated every 30 s instead of 12 h so the chart fills at once.
    let config = root.join("coordinator.toml");
    std::fs::write(
        &config,
        "[on_demand_prices]\n\"m5.large\" = \"0.096\"\n\"c5.large\" = \"0.085\"\n",
    )?;
    let mut opts = FleetOptions {
        boot_delay: args.boot,
        listen: args.listen.clone(),
        ..FleetOptions::default()
    };
    opts.coordinator_args.extend([
        "--config".into(),
        config.display().to_string(),
        "--consolidate-interval".into(),
        "30s".into(),
    ]);
    let f = Fleet::start_in(root.clone(), opts).await?;
    f.ec2.set_prices(demo_prices());
    println!(
        "spot-sim demo: coordinator at {} (state in {})",
        f.coord.base,
        root.display()
    );
    println!("  admin token: {}", f.coord.admin_token);
    println!(
        "  dashboard: {}/ui (log in with the admin token)",
        f.coord.base
    );
    println!(
        "  watch:  curl -s -H 'Authorization: Bearer {}' {}/v1/instances | python3 -m json.tool",
        f.coord.admin_token, f.coord.base
    );
    println!("  metrics: curl -s {}/metrics", f.coord.base);
    let mut primaries = Vec::new();
    for g in 0..args.groups.max(1) {
        let name = format!("demo{g}");
        f.ec2.add_address(
            &format!("eipalloc-{name}"),
            &format!("203.0.113.{}", 10 + g),
        );
        let mut config =
            json!({"promotion": {"elastic_ip_allocation_id": format!("eipalloc-{name}")}});
        // The first group's PRIMARY also holds a secondary ENI, which pins
        // it to one zone.
        if g == 0 {
            f.ec2.add_eni(&format!("eni-{name}"), "us-east-1a");
            config["promotion"]["network_interface_id"] = json!(format!("eni-{name}"));
            config["pools"] = crate::fleet::one_zone_pools();
        }
        let first = f.group(&name, config).await?;
        confirmed(&f, &name, "", Duration::from_secs(60)).await?;
        if g < args.groups.div_ceil(2) {
            f.rebalance(&first)?; // a rebalance makes the coordinator launch a REPLICA
        }
        println!("  group {name}: PRIMARY {first}");
        primaries.push((name, first));
    }
    let start = Instant::now();
    let mut round = 0usize;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if args.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(args.every) => {}
            _ = &mut ctrl_c => break,
        }
        let idx = round % primaries.len();
        round += 1;
        let (name, _) = primaries[idx].clone();
        let Some(p) = f.confirmed_primary(&name).await? else {
            println!("  {name}: no confirmed PRIMARY right now, skipping");
            continue;
        };
        let t = Instant::now();
        f.interrupt(&p, Duration::from_secs(120))?;
        println!("  {name}: interruption notice on PRIMARY {p} (terminates in 120 s)");
        match confirmed(&f, &name, &p, Duration::from_secs(110)).await {
            Ok(new) => {
                println!(
                    "  {name}: new PRIMARY {new} confirmed after {:.1} s",
                    t.elapsed().as_secs_f64()
                );
                if let Some(holder) = f.ec2.eni_holder(&format!("eni-{name}")) {
                    println!("  {name}: secondary ENI eni-{name} on {holder}");
                }
                primaries[idx].1 = new.clone();
                f.rebalance(&new)?; // keep a REPLICA coming for the next round
            }
            Err(e) => println!("  {name}: failover did not complete: {e}"),
        }
    }
    println!("spot-sim demo: stopping");
    Ok(())
}
