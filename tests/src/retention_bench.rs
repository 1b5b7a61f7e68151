//! `spot-sim bench retention`: the real coordinator store under a simulated
//! fleet's write load for months of simulated time, with the coordinator's
//! own retention pass (`spot_coordinator::tasks::retention::pass`) and price
//! consolidation running on their schedules. Prints the database size as
//! the days go by: it grows while the retention windows fill, then stays
//! flat.
//!
//! The load, per simulated hour, for `--agents` agents in groups of two:
//! every agent's health events (`--events-per-day`), every agent's spot
//! price reports (4 pools per group, `--price-changes-per-day` each), and
//! `--interruptions-per-day` (a share of the fleet) replacements, each a
//! notice, a launch and its result, a new registration, and the old
//! instance retired through a `terminate` command and its result, with
//! their audit entries.

use anyhow::Result;
use spot_common::wire::RegisterRequest;
use spot_common::{CommandOutcome, Event, EventBody, GroupConfig, NoticeKind, Pool, PoolKey};
use spot_coordinator::store::{ConsolidationConfig, Ctx, Db, Retention, SeriesKey, Txn, Via};
use std::time::Instant;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, Clone, clap::Args)]
pub struct RetentionBench {
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Simulated days.
    #[arg(long, default_value_t = 150)]
    pub days: i64,
    /// Health events per agent per day.
    #[arg(long, default_value_t = 12)]
    pub events_per_day: i64,
    /// Price changes per pool per day (each reported by both agents of a
    /// group).
    #[arg(long, default_value_t = 6)]
    pub price_changes_per_day: i64,
    /// Share of the fleet interrupted and replaced per day.
    #[arg(long, default_value_t = 0.05)]
    pub interruptions_per_day: f64,
    /// Print the size every this many days.
    #[arg(long, default_value_t = 10)]
    pub report_every: i64,
    #[arg(long)]
    pub json: bool,
}

/// One agent slot of the simulated fleet (replaced on interruption).
struct Slot {
    group: String,
    agent: String,
    instance: String,
    seq: i64,
}

fn register(tx: &mut Txn<'_>, slot: &Slot) -> spot_coordinator::store::Result<()> {
    let req = RegisterRequest {
        instance_id: slot.instance.clone(),
        instance_type: "m5.large".into(),
        availability_zone: "us-east-1a".into(),
        region: "us-east-1".into(),
        lifecycle: "spot".into(),
        group: slot.group.clone(),
        agent_version: "bench".into(),
        request_id: None,
        identity: None,
    };
    tx.register_agent(
        &req,
        &slot.agent,
        &format!("tok-{}", slot.agent),
        5000,
        15000,
    )?;
    tx.agent_healthy(&slot.agent)?;
    Ok(())
}

fn event(slot: &mut Slot, at_ms: i64, body: EventBody) -> Event {
    slot.seq += 1;
    Event {
        event_id: format!("{}:{}", slot.agent, slot.seq),
        seq: slot.seq,
        at_ms,
        body,
    }
}

fn done(request_id: String, instance_id: Option<String>) -> EventBody {
    EventBody::CommandResult {
        request_id,
        outcome: CommandOutcome::Done,
        detail: None,
        instance_id,
        error_code: None,
    }
}

/// Size of the database file and its WAL.
fn file_bytes(path: &std::path::Path) -> u64 {
    let wal = path.with_extension("db-wal");
    [path, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

pub async fn run(args: RetentionBench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let db = Db::open(&path)?;
    let retention = Retention::default();
    let agents = args.agents.max(2) / 2 * 2;
    let start = crate::now_ms() - args.days * DAY;
    let mut slots: Vec<Slot> = (0..agents)
        .map(|i| Slot {
            group: format!("g{}", i / 2),
            agent: format!("a-{i}"),
            instance: format!("i-{i}"),
            seq: 0,
        })
        .collect();
    slots = db
        .transact(Ctx::system(start), move |tx| {
            for g in 0..agents / 2 {
                tx.create_group(&format!("g{g}"), &GroupConfig::default())?;
            }
            for s in &slots {
                register(tx, s)?;
            }
            Ok(slots)
        })
        .await?
        .value;

    let t0 = Instant::now();
    let mut rows = Vec::new();
    let mut next_victim = 0usize;
    let per_hour = args.interruptions_per_day * agents as f64 / 24.0;
    let mut owed = 0.0;
    let mut pruned_total = 0usize;
    let health_every = (24 / args.events_per_day.clamp(1, 24)).max(1);
    let price_every = (24 / args.price_changes_per_day.clamp(1, 24)).max(1);
    for hour in 0..args.days * 24 {
        let now = start + hour * HOUR;
        // Health events: each agent on its own phase of the day.
        let mut batch = Vec::new();
        for (i, s) in slots.iter_mut().enumerate() {
            if (hour + i as i64) % health_every == 0 {
                let body = EventBody::Health {
                    healthy: true,
                    detail: None,
                };
                batch.push((s.agent.clone(), event(s, now, body)));
            }
        }
        // Price reports: 4 pools per group, each agent reports each change.
        let mut prices = Vec::new();
        if hour % price_every == 0 {
            for (i, s) in slots.iter().enumerate() {
                for p in 0..4 {
                    let key = SeriesKey {
                        pool: PoolKey::new(
                            &format!("t{}.large", (i / 2) % 25),
                            &format!("us-east-1{}", ["a", "b", "c", "d"][p]),
                        ),
                        product: "Linux/UNIX".into(),
                    };
                    let price = 10_000 + (hour * 7919 + i as i64 * 104_729) % 90_000;
                    prices.push((key, now, price, s.agent.clone(), "replica".to_owned()));
                }
            }
        }
        // Interruptions: a notice, a launch through the sibling, the new
        // instance registers, the old one is retired through the sibling.
        owed += per_hour;
        let mut victims = Vec::new();
        while owed >= 1.0 {
            owed -= 1.0;
            victims.push(next_victim);
            next_victim = (next_victim + 7) % agents;
        }
        let gen_id = hour;
        slots = db
            .transact(Ctx::system(now), move |tx| {
                let mut slots = slots;
                for (agent, e) in &batch {
                    tx.apply_events(agent, std::slice::from_ref(e))?;
                }
                tx.stage_raw(&prices)?;
                for (k, &v) in victims.iter().enumerate() {
                    let sib = v ^ 1;
                    let notice = EventBody::Notice {
                        notice: NoticeKind::Interruption,
                        effective_at_ms: Some(now + 120_000),
                        action: Some("terminate".into()),
                        raw: "{}".into(),
                    };
                    let e = event(&mut slots[v], now, notice);
                    tx.apply_events(&slots[v].agent.clone(), &[e])?;
                    let launch = format!("launch-{gen_id}-{k}");
                    let sib_agent = slots[sib].agent.clone();
                    tx.queue_launch(
                        &launch,
                        &slots[v].group.clone(),
                        Via::Agent(&sib_agent),
                        &Pool::new("m5.large", "us-east-1a"),
                        true,
                    )?;
                    let new_instance = format!("i-{gen_id}-{k}");
                    let e = event(
                        &mut slots[sib],
                        now,
                        done(launch, Some(new_instance.clone())),
                    );
                    tx.apply_events(&sib_agent, &[e])?;
                    let group = slots[v].group.clone();
                    let old = std::mem::replace(
                        &mut slots[v],
                        Slot {
                            group,
                            agent: format!("a-{gen_id}-{k}"),
                            instance: new_instance,
                            seq: 0,
                        },
                    );
                    register(tx, &slots[v])?;
                    let rid = tx.retire(&old.group, &old.instance, Some(&sib_agent))?;
                    let e = event(&mut slots[sib], now, done(rid, None));
                    tx.apply_events(&sib_agent, &[e])?;
                    tx.set_agent_status(
                        &old.agent,
                        spot_common::AgentStatus::Online,
                        spot_common::AgentStatus::Offline,
                    )?;
                }
                Ok(slots)
            })
            .await?
            .value;
        if hour % 12 == 11 {
            let cfg = ConsolidationConfig {
                max_gap_ms: DAY,
                staging_retention_ms: 14 * DAY,
                canonical_retention_ms: 100 * DAY,
            };
            db.transact(Ctx::system(now), move |tx| tx.consolidate(&cfg))
                .await?;
        }
        // The coordinator prunes every 10 minutes; hourly is plenty here.
        let pruned = spot_coordinator::tasks::retention::pass(&db, &retention, now).await?;
        pruned_total += pruned.iter().map(|(_, n)| n).sum::<usize>();
        let day = hour / 24;
        if hour % 24 == 23 && ((day + 1) % args.report_every == 0 || day + 1 == args.days) {
            let used = db.read(|s| s.used_bytes()).await?;
            let counts = db.read(spot_coordinator::store::Store::row_counts).await?;
            rows.push(serde_json::json!({
                "day": day + 1,
                "used_bytes": used,
                "file_bytes": file_bytes(&path),
                "rows": counts,
            }));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let size = |r: &serde_json::Value| r["used_bytes"].as_f64().unwrap_or(0.0);
    let last = rows.last().map(size).unwrap_or(0.0);
    let month_ago = rows
        .iter()
        .rev()
        .find(|r| r["day"].as_i64().unwrap_or(0) <= args.days - 30)
        .map(size)
        .unwrap_or(0.0);
    let growth = if month_ago > 0.0 {
        (last - month_ago) / month_ago * 100.0
    } else {
        f64::NAN
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "agents": agents, "days": args.days, "wall_s": secs,
                "pruned_rows": pruned_total, "last_month_growth_pct": growth,
                "samples": rows,
            })
        );
        return Ok(());
    }
    println!(
        "retention bench: {agents} agents, {} simulated days in {secs:.1} s ({pruned_total} rows pruned)",
        args.days
    );
    println!(
        "{:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "day",
        "used MiB",
        "file MiB",
        "events",
        "commands",
        "staging",
        "audit",
        "agents",
        "instances"
    );
    let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1_048_576.0;
    for r in &rows {
        let n = |table: &str| r["rows"][table].as_i64().unwrap_or(0);
        println!(
            "{:>5} {:>10.1} {:>10.1} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
            r["day"].as_i64().unwrap_or(0),
            mib(&r["used_bytes"]),
            mib(&r["file_bytes"]),
            n("events"),
            n("commands"),
            n("price_staging"),
            n("audit"),
            n("agents"),
            n("instances")
        );
    }
    println!("growth over the last 30 days: {growth:+.1} %");
    Ok(())
}
