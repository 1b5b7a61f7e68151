//! `spot-sim bench consolidate`: consolidation throughput of the real
//! coordinator store on a synthetic load (default: 1,000 pools x 7 days of
//! 5-minute reports from 3 agents, one of them the PRIMARY, with a
//! conflicting report every 10th point).

use anyhow::Result;
use spot_common::wire::RegisterRequest;
use spot_common::{GroupConfig, PoolKey};
use spot_coordinator::store::{ConsolidationConfig, Ctx, Db, SeriesKey};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct ConsolidateBench {
    #[arg(long, default_value_t = 1000)]
    pub pools: usize,
    #[arg(long, default_value_t = 7)]
    pub days: i64,
    /// Time between two reports of a pool.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ConsolidateBench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::open(&dir.path().join("bench.db"))?;
    let now = crate::now_ms();
    let agents = args.agents.max(1);
    db.transact(Ctx::system(now), move |tx| {
        tx.create_group("bench", &GroupConfig::default())?;
        for a in 0..agents {
            let req = RegisterRequest {
                instance_id: format!("i-{a}"),
                instance_type: "m5.large".into(),
                availability_zone: "us-east-1a".into(),
                region: "us-east-1".into(),
                lifecycle: "spot".into(),
                group: "bench".into(),
                agent_version: "bench".into(),
                request_id: None,
                identity: None,
            };
            tx.register_agent(&req, &format!("a-{a}"), &format!("t-{a}"), 5000, 15000)?;
        }
        Ok(())
    })
    .await?;
    let step = i64::try_from(args.interval.as_millis())?.max(1);
    let points = args.days * 86_400_000 / step;
    let start = now - args.days * 86_400_000;
    let stage_t = Instant::now();
    let mut staged = 0usize;
    for pool in 0..args.pools {
        let key = SeriesKey {
            pool: PoolKey::new(
                &format!("t{}.large", pool % 50),
                &format!("zone-{}", pool / 50),
            ),
            product: "Linux/UNIX".into(),
        };
        let mut rows = Vec::with_capacity(usize::try_from(points)? * agents);
        for i in 0..points {
            let base = 10_000 + ((pool as i64 * 7919 + i * 104_729) % 90_000);
            for a in 0..agents {
                // Every 10th point, the agents disagree.
                let price = if i % 10 == 0 {
                    base + a as i64 * 100
                } else {
                    base
                };
                let role = if a == 0 { "primary" } else { "replica" };
                rows.push((
                    key.clone(),
                    start + i * step,
                    price,
                    format!("a-{a}"),
                    role.to_owned(),
                ));
            }
        }
        staged += db
            .transact(Ctx::system(now), move |tx| tx.stage_raw(&rows))
            .await?
            .value;
    }
    let stage_s = stage_t.elapsed().as_secs_f64();
    let cfg = ConsolidationConfig {
        max_gap_ms: 24 * 3_600_000,
        staging_retention_ms: 14 * 86_400_000,
        canonical_retention_ms: 100 * 86_400_000,
    };
    let t = Instant::now();
    let run = db
        .transact(Ctx::system(now + 1), move |tx| tx.consolidate(&cfg))
        .await?
        .value;
    let secs = t.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "pools": args.pools, "days": args.days, "agents": agents,
        "rows_staged": staged, "staging_s": stage_s,
        "consolidation_s": secs, "rows_per_s": run.rows_read as f64 / secs,
        "hours_written": run.hours_written, "conflicts_median": run.conflicts_median,
        "primary_precedence": run.primary_precedence,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "consolidate bench: {} pools x {} days of {:?} reports from {} agents = {} rows (staged in {:.1} s)\n  consolidation: {:.1} s, {:.0} rows/s, {} pool-hours written, {} PRIMARY-precedence decisions",
            args.pools,
            args.days,
            args.interval,
            agents,
            staged,
            stage_s,
            secs,
            run.rows_read as f64 / secs,
            run.hours_written,
            run.primary_precedence
        );
    }
    Ok(())
}
