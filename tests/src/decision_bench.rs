//! `spot-sim bench decisions`: the decision engine over `--groups` groups
//! (default 1,000), each a PRIMARY with 3 candidate pools and 7 days of
//! hourly prices, in the real coordinator store:
//!
//! * the built-in model alone, per group (target: p99 <= 5 ms);
//! * a whole pass as the coordinator's decision task makes it: for every
//!   group, its input read from the store, the model, the decision logged
//!   (target: <= 1 s for 1,000 groups on 2 cores).

use crate::bench::percentile;
use anyhow::Result;
use spot_common::decision::{builtin, validate};
use spot_common::wire::RegisterRequest;
use spot_common::{CommandOutcome, DecisionMode, Event, EventBody, GroupConfig, Pool, ids};
use spot_coordinator::store::{
    ConsolidationConfig, Ctx, Db, LoggedDecision, Read, ReplaceRequest, SeriesKey,
};
use std::collections::BTreeMap;
use std::time::Instant;

const H: i64 = 3_600_000;

#[derive(Debug, Clone, clap::Args)]
pub struct DecisionBench {
    #[arg(long, default_value_t = 1000)]
    pub groups: usize,
    /// Distinct pools the groups draw their 3 candidates from.
    #[arg(long, default_value_t = 60)]
    pub pools: usize,
    #[arg(long)]
    pub json: bool,
}

fn pool(i: usize) -> Pool {
    Pool::new(
        &format!("t{}.large", i / 4),
        &format!("us-east-1{}", ["a", "b", "c", "d"][i % 4]),
    )
}

pub async fn run(args: DecisionBench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::open(&dir.path().join("bench.db"))?;
    let now = crate::now_ms();
    let (groups, npools) = (args.groups.max(1), args.pools.max(3));
    db.transact(Ctx::system(now - 8 * 24 * H), move |tx| {
        for g in 0..groups {
            let config = GroupConfig {
                pools: (0..3).map(|k| pool((g + k * 7) % npools)).collect(),
                decisions: DecisionMode::Shadow,
                ..GroupConfig::default()
            };
            tx.create_group(&format!("g{g}"), &config)?;
            let first = &config.pools[0];
            let req = RegisterRequest {
                instance_id: format!("i-{g}"),
                instance_type: first.instance_type.clone(),
                availability_zone: first.availability_zone.clone(),
                region: "us-east-1".into(),
                lifecycle: "spot".into(),
                group: format!("g{g}"),
                agent_version: "bench".into(),
                request_id: None,
                identity: None,
            };
            tx.register_agent(&req, &format!("a-{g}"), &format!("t-{g}"), 5000, 15000)?;
            tx.agent_healthy(&format!("a-{g}"))?;
            // Made PRIMARY the way the reconciler does: granted, confirmed,
            // committed.
            tx.begin_replace(&ReplaceRequest {
                group: format!("g{g}"),
                candidate: format!("i-{g}"),
                expected_epoch: 0,
                emergency: false,
                deadline_ms: None,
                reason: "bench".into(),
                switch_id: None,
                promote_budget_ms: 25_000,
                heard_since_ms: 0,
            })?;
            let confirm = Event {
                event_id: format!("a-{g}:1"),
                seq: 1,
                at_ms: now,
                body: EventBody::CommandResult {
                    request_id: ids::promote(&format!("i-{g}"), 1),
                    outcome: CommandOutcome::Done,
                    detail: None,
                    instance_id: None,
                    error_code: None,
                },
            };
            tx.apply_events(&format!("a-{g}"), &[confirm])?;
            tx.commit_promotion(&format!("g{g}"), 1)?;
        }
        Ok(())
    })
    .await?;
    // 7 days of hourly prices per pool, each pool on its own wave.
    let mut rows = Vec::new();
    for p in 0..npools {
        let key = SeriesKey {
            pool: pool(p).key(),
            product: "Linux/UNIX".into(),
        };
        for h in 0..=7 * 24 {
            let ts = (now / H) * H - h * H;
            let price = 50_000 + ((p as i64 * 7919 + h * 104_729) % 60_000);
            rows.push((
                key.clone(),
                ts,
                price,
                "a-0".to_owned(),
                "primary".to_owned(),
            ));
        }
    }
    db.transact(Ctx::system(now), move |tx| tx.stage_raw(&rows))
        .await?;
    let cfg = ConsolidationConfig {
        max_gap_ms: 24 * H,
        staging_retention_ms: 14 * 24 * H,
        canonical_retention_ms: 100 * 24 * H,
    };
    db.transact(Ctx::system(now), move |tx| tx.consolidate(&cfg))
        .await?;

    let params = builtin::Params::default();
    let none = BTreeMap::new();
    let names: Vec<String> = (0..groups).map(|g| format!("g{g}")).collect();
    // The model alone.
    let inputs = db
        .read(move |s| {
            names
                .iter()
                .map(|g| s.decision_input(g, now, &none))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mut model_ms = Vec::with_capacity(inputs.len());
    let mut actions: BTreeMap<&str, usize> = BTreeMap::new();
    for i in &inputs {
        let t = Instant::now();
        let d = builtin::decide(i, &params);
        let ok = validate(i, &d).is_ok();
        model_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        *actions
            .entry(if ok { d.action.name() } else { "INVALID" })
            .or_default() += 1;
    }
    model_ms.sort_by(f64::total_cmp);
    // A whole pass: read, decide, log, one group after another.
    let t = Instant::now();
    let mut read_s = 0.0;
    for g in 0..groups {
        let name = format!("g{g}");
        let n2 = name.clone();
        let r = Instant::now();
        let input = db
            .read(move |s| s.decision_input(&n2, now, &BTreeMap::new()))
            .await?;
        let d = builtin::decide(&input, &params);
        read_s += r.elapsed().as_secs_f64();
        db.transact(Ctx::system(now), move |tx| {
            tx.log_decision(&LoggedDecision {
                group: &name,
                mode: DecisionMode::Shadow,
                input_digest: "bench",
                output: &d,
                latency_us: 0,
                saving_per_hour: None,
                outcome: "bench",
                invalid: None,
                fallback: None,
                assigned: spot_common::ModelChoice::Builtin,
                primary_price: None,
            })
        })
        .await?;
    }
    let pass_s = t.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "groups": groups, "pools": npools,
        "model_p50_ms": percentile(&model_ms, 50.0),
        "model_p99_ms": percentile(&model_ms, 99.0),
        "model_max_ms": model_ms.last().copied().unwrap_or(0.0),
        "pass_s": pass_s, "pass_read_and_decide_s": read_s,
        "actions": actions,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "decisions bench: {groups} groups, 3 of {npools} pools each, 7 days of hourly prices\n  \
             built-in model per group: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 <= 5 ms)\n  \
             a whole pass (store read + model + log, per group): {:.2} s, of which reading and deciding {:.2} s\n    \
             (target <= 1 s for 1,000; a pass logs only what changed, so reading and deciding is the steady state)\n  \
             answers: {actions:?}",
            percentile(&model_ms, 50.0),
            percentile(&model_ms, 99.0),
            model_ms.last().copied().unwrap_or(0.0),
            pass_s,
            read_s,
        );
    }
    Ok(())
}
