//! `spot-sim bench heartbeat`: many simulated agents heartbeating one real
//! coordinator; prints throughput, latency percentiles and missed beats.

use crate::harness::{Api, Coordinator};
use crate::imds_sim::InstanceMeta;
use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct HeartbeatBench {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Heartbeat interval of each agent.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Measured period (after registration).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Event streams (`/v1/events/stream`) held open meanwhile, as open
    /// dashboards and `spotctl watch` sessions (32 per viewer token).
    #[arg(long, default_value_t = 0)]
    pub streams: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The coordinator's store: sqlite, or postgres (a server of the
    /// bench's own, on this machine).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    pub store: String,
}

/// Open `n` event streams against `coord`, each reading its events as they
/// come; returns the tasks and a count of the events they received.
pub async fn open_streams(
    coord: &Coordinator,
    store: &[String],
    n: usize,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>)> {
    let received = Arc::new(AtomicU64::new(0));
    let mut tokens = Vec::new();
    for k in 0..n.div_ceil(spot_coordinator::state::STREAMS_PER_TOKEN) {
        let o = std::process::Command::new(crate::harness::bin_path("spot-coordinator")?)
            .args([
                "token",
                "create",
                "--name",
                &format!("bench-{k}"),
                "--role",
                "viewer",
            ])
            .arg("--data-dir")
            .arg(&coord.data_dir)
            .args(store)
            .output()?;
        if !o.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&o.stderr));
        }
        tokens.push(String::from_utf8(o.stdout)?.trim().to_owned());
    }
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let tok = &tokens[i / spot_coordinator::state::STREAMS_PER_TOKEN];
        let mut resp = client
            .get(format!("{}/v1/events/stream", coord.base))
            .bearer_auth(tok)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("stream {i}: {}", resp.status());
        }
        let received = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(chunk)) = resp.chunk().await {
                let events = chunk.windows(6).filter(|w| w == b"event:").count();
                received.fetch_add(events as u64, Ordering::Relaxed);
            }
        }));
    }
    Ok((tasks, received))
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn heartbeat(args: HeartbeatBench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let interval = humantime::format_duration(args.interval).to_string();
    // Every simulated agent registers from 127.0.0.1: no per-source limit;
    // each with a signed identity document, checked as in production.
    let identity_ca = crate::identity_sign::write_ca(dir.path())?;
    // On PostgreSQL: a server of its own, reached directly.
    let pg = if args.store == "postgres" {
        Some(crate::harness::cluster::PgSide::start(0).await?)
    } else {
        None
    };
    let store: Vec<String> = pg
        .as_ref()
        .map(|p| vec!["--store-url".to_owned(), p.direct_url()])
        .unwrap_or_default();
    let ca = identity_ca.display().to_string();
    let mut flags = vec![
        "--heartbeat-interval",
        &interval,
        "--registrations-per-source",
        "0",
        "--identity",
        "verify",
        "--identity-ca",
        &ca,
    ];
    flags.extend(store.iter().map(String::as_str));
    let coord = Coordinator::start(dir.path(), &flags)?;
    // On PostgreSQL the coordinator follows until it has taken the lease.
    crate::harness::eventually(
        "the coordinator to lead",
        Duration::from_secs(30),
        || async {
            let (_, h) = coord
                .api()
                .call(reqwest::Method::GET, "/healthz", None, None)
                .await
                .ok()?;
            (h["leader"] == true).then_some(())
        },
    )
    .await?;
    // One HTTP/1.1 connection pool shared by all simulated agents, as
    // through a NAT gateway; reqwest keeps connections alive.
    let api = Api {
        base: coord.base.clone(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .timeout(Duration::from_secs(30))
            .build()?,
        others: Vec::new(),
    };
    let (st, v) = api
        .post("/v1/groups", &coord.admin_token, &json!({"name": "bench"}))
        .await?;
    if st != StatusCode::CREATED {
        bail!("creating group: {st} {v}");
    }
    // Signed before the clock starts: signing is IMDS's work, not ours.
    let n = args.agents;
    let proofs = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|i| {
                let meta =
                    InstanceMeta::spot(&format!("i-{i:06}"), "m5.large", "us-east-1a", "bench");
                meta.proof()
            })
            .collect::<Result<Vec<_>>>()
    })
    .await??;
    let reg_start = Instant::now();
    let mut creds = Vec::with_capacity(args.agents);
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for (i, proof) in proofs.into_iter().enumerate() {
        let (api, tok, sem) = (
            api.clone(),
            coord.enrollment_token.clone(),
            Arc::clone(&sem),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let body = json!({"instance_id": format!("i-{i:06}"), "instance_type": "m5.large",
                "availability_zone": "us-east-1a", "region": "us-east-1",
                "lifecycle": "spot", "group": "bench", "identity": proof});
            let (st, v) = api.post("/v1/agents/register", &tok, &body).await?;
            if st != StatusCode::CREATED {
                bail!("register: {st} {v}");
            }
            Ok::<_, anyhow::Error>((
                i,
                v["agent_id"].as_str().context("agent_id")?.to_owned(),
                v["token"].as_str().context("token")?.to_owned(),
            ))
        }));
    }
    for t in tasks {
        creds.push(t.await??);
    }
    let reg_elapsed = reg_start.elapsed();
    let (streams, stream_events) = open_streams(&coord, &store, args.streams).await?;

    let errors = Arc::new(AtomicU64::new(0));
    // Errors by what the coordinator answered ("503", "timeout", ...).
    let why = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let late = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.duration;
    let mut tasks = Vec::new();
    for (i, id, tok) in creds {
        let (api, errors, late, why) = (
            api.clone(),
            Arc::clone(&errors),
            Arc::clone(&late),
            Arc::clone(&why),
        );
        let interval = args.interval;
        let n = args.agents;
        tasks.push(tokio::spawn(async move {
            // Spread the fleet evenly over one interval, as real agents
            // started at different times are.
            let offset = interval.mul_f64(i as f64 / n as f64);
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut lat = Vec::new();
            let mut first = None;
            let path = format!("/v1/agents/{id}/heartbeat");
            let body = json!({"instance_id": format!("i-{i:06}"), "highest_epoch": 0,
                              "healthy": true, "backlog": 0});
            loop {
                let scheduled = tick.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                match api.post(&path, &tok, &body).await {
                    // The first healthy beat commits LAUNCHING -> REPLICA (a
                    // durable write, once per instance lifetime): reported
                    // apart from the steady state.
                    Ok((StatusCode::OK, _)) if first.is_none() => {
                        first = Some(t.elapsed().as_secs_f64())
                    }
                    Ok((StatusCode::OK, _)) => lat.push(t.elapsed().as_secs_f64()),
                    other => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let key = match other {
                            Ok((st, _)) => st.as_u16().to_string(),
                            Err(e) if e.to_string().contains("timed out") => "timeout".into(),
                            Err(_) => "transport".into(),
                        };
                        *why.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(key)
                            .or_default() += 1;
                    }
                }
                // A beat that left more than half an interval late counts as
                // missed from the coordinator's point of view.
                if t.duration_since(scheduled.into_std()) > interval / 2 {
                    late.fetch_add(1, Ordering::Relaxed);
                }
            }
            (lat, first)
        }));
    }
    let mut lat = Vec::new();
    let mut firsts = Vec::new();
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        firsts.extend(f);
    }
    lat.sort_by(f64::total_cmp);
    firsts.sort_by(f64::total_cmp);
    let why = std::mem::take(&mut *why.lock().unwrap_or_else(|p| p.into_inner()));
    let rss_mib = coord
        .pid()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0);
    for s in &streams {
        s.abort();
    }
    let (_, agents) = api.get("/v1/agents", &coord.admin_token).await?;
    let offline = agents
        .as_array()
        .map(|a| a.iter().filter(|x| x["status"] != "online").count())
        .unwrap_or(0);
    let rate = (lat.len() + firsts.len()) as f64 / args.duration.as_secs_f64();
    let ms = |p| percentile(&lat, p) * 1000.0;
    let report = json!({
        "agents": args.agents,
        "store": args.store,
        "interval_s": args.interval.as_secs_f64(),
        "duration_s": args.duration.as_secs_f64(),
        "registration_s": reg_elapsed.as_secs_f64(),
        "heartbeats": lat.len() + firsts.len(),
        "first_beat_p50_ms": percentile(&firsts, 50.0) * 1000.0,
        "first_beat_p99_ms": percentile(&firsts, 99.0) * 1000.0,
        "heartbeats_per_s": rate,
        "p50_ms": ms(50.0), "p95_ms": ms(95.0), "p99_ms": ms(99.0),
        "max_ms": lat.last().map(|x| x * 1000.0),
        "errors": errors.load(Ordering::Relaxed),
        "errors_by_answer": why,
        "late_beats": late.load(Ordering::Relaxed),
        "agents_not_online_at_end": offline,
        "streams": args.streams,
        "stream_events": stream_events.load(Ordering::Relaxed),
        "coordinator_rss_mib": rss_mib,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "heartbeat bench: {} agents every {:?} for {:?} on {} (registration took {:.1}s)\n  \
             {} heartbeats, {:.0}/s; steady-state latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  \
             first beat per agent (commits LAUNCHING -> REPLICA): p50 {:.2} ms, p99 {:.2} ms\n  \
             errors {} {:?}, late beats {}, agents not online at end {}\n  \
             {} event streams open ({} events delivered to them); coordinator resident memory {:.0} MiB",
            args.agents,
            args.interval,
            args.duration,
            args.store,
            reg_elapsed.as_secs_f64(),
            lat.len() + firsts.len(),
            rate,
            ms(50.0),
            ms(95.0),
            ms(99.0),
            lat.last().copied().unwrap_or(f64::NAN) * 1000.0,
            percentile(&firsts, 50.0) * 1000.0,
            percentile(&firsts, 99.0) * 1000.0,
            errors.load(Ordering::Relaxed),
            why,
            late.load(Ordering::Relaxed),
            offline,
            args.streams,
            stream_events.load(Ordering::Relaxed),
            rss_mib.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
