//! `spot-sim bench agent`: notice -> journal latency over many injected
//! notices, then the agent's resident memory and CPU while idle.
//!
//! Latency is measured from the moment the notice becomes visible in the
//! IMDS simulator to the `first_seen_ms` the agent journaled (same host,
//! same clock). Memory is VmRSS from /proc; CPU is utime+stime over the
//! idle window divided by its length.

use crate::bench::percentile;
use crate::ec2_sim::Ec2Sim;
use crate::harness::{AgentProc, Coordinator};
use crate::imds_sim::{ImdsSim, InstanceMeta};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, clap::Args)]
pub struct AgentBench {
    /// Notices injected one after another.
    #[arg(long, default_value_t = 40)]
    pub notices: usize,
    /// The agent's IMDS poll interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Idle window for the memory and CPU figures.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    #[arg(long)]
    pub json: bool,
}

/// (rss KiB, utime+stime clock ticks)
fn proc_sample(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((rss, ticks))
}

pub async fn run(args: AgentBench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord"), &[])?;
    let api = coord.api();
    let (st, v) = api
        .post("/v1/groups", &coord.admin_token, &json!({"name": "bench"}))
        .await?;
    if !st.is_success() {
        bail!("creating group: {st} {v}");
    }
    let imds = ImdsSim::start(InstanceMeta::spot(
        "i-0bench",
        "m5.large",
        "us-east-1a",
        "bench",
    ))
    .await?;
    let ec2 = Ec2Sim::start().await?;
    let mut agent = AgentProc::with_sims(&dir.path().join("agent"), &coord, &imds, &ec2);
    let poll = humantime::format_duration(args.poll_interval).to_string();
    agent.arg("--imds-poll-interval").arg(&poll);
    agent.env("RUST_LOG", "warn");
    agent.start(None)?;
    let pid = agent.pid().context("agent pid")?;
    let journal = agent.state_dir.join("journal.db");
    crate::harness::wait_for_file(&journal, Duration::from_secs(30)).ok();

    let mut lat = Vec::with_capacity(args.notices);
    for i in 0..args.notices {
        // A distinct body each time: the agent journals each body once.
        let t = SystemTime::now() + Duration::from_secs(i as u64);
        let visible = crate::now_ms();
        imds.rebalance(t);
        let body = format!(
            r#"{{"noticeTime": "{}"}}"#,
            humantime::format_rfc3339_seconds(t)
        );
        let start = Instant::now();
        let seen: i64 = loop {
            let c = rusqlite::Connection::open_with_flags(
                &journal,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let r: Option<i64> = c
                .query_row(
                    "SELECT first_seen_ms FROM notices WHERE raw = ?1",
                    [&body],
                    |r| r.get(0),
                )
                .ok();
            if let Some(s) = r {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("notice {i} was not journaled within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        lat.push((seen - visible) as f64 / 1000.0);
        // Land the next notice at a random phase of the poll cycle.
        let jitter = rand::random::<u64>()
            % u64::try_from(args.poll_interval.as_millis())
                .unwrap_or(1000)
                .max(1);
        tokio::time::sleep(Duration::from_millis(50 + jitter)).await;
    }
    lat.sort_by(f64::total_cmp);

    // Idle: no notices, 1 s polling, heartbeats every 5 s, one long-poll open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, t0) = proc_sample(pid)?;
    let w0 = Instant::now();
    let mut rss_max = 0;
    while w0.elapsed() < args.idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(proc_sample(pid)?.0);
    }
    let (rss, t1) = proc_sample(pid)?;
    // USER_HZ: 100 on every Linux this runs on.
    let hz = 100.0;
    let cpu_pct = (t1 - t0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
    let report = json!({
        "notices": lat.len(),
        "poll_interval_s": args.poll_interval.as_secs_f64(),
        "notice_to_journal_p50_s": percentile(&lat, 50.0),
        "notice_to_journal_p99_s": percentile(&lat, 99.0),
        "notice_to_journal_max_s": lat.last(),
        "idle_rss_mib": rss as f64 / 1024.0,
        "idle_rss_max_mib": rss_max as f64 / 1024.0,
        "idle_cpu_percent_of_one_core": cpu_pct,
        "idle_window_s": w0.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "agent bench: {} notices at {:?} polling\n  notice visible in IMDS -> journaled: p50 {:.3} s, p99 {:.3} s, max {:.3} s\n  idle over {:.0} s: RSS {:.1} MiB (max {:.1}), CPU {:.2} % of one core",
            lat.len(),
            args.poll_interval,
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(f64::NAN),
            w0.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            rss_max as f64 / 1024.0,
            cpu_pct
        );
    }
    agent.terminate()?;
    drop(coord);
    Ok(())
}
