//! `spot-sim bench backtest`: a seeded price-and-interruption history
//! (regimes with price spikes; interruptions far likelier during a spike;
//! spikes shared by the pools of a zone), replayed through the built-in
//! model and the two baselines (`spot_common::decision::backtest`).

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spot_common::PoolKey;
use spot_common::decision::backtest::{Downtime, History, Outcome, compare};
use spot_common::decision::builtin;

#[derive(Debug, Clone, clap::Args)]
pub struct BacktestBench {
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Days of history (the first week is the model's first evidence).
    #[arg(long, default_value_t = 90)]
    pub days: usize,
    /// Candidate pools (3 zones x types).
    #[arg(long, default_value_t = 6)]
    pub pools: usize,
    /// Independent histories (seeds seed, seed+1, ...), summed.
    #[arg(long, default_value_t = 20)]
    pub runs: u64,
    #[arg(long)]
    pub json: bool,
}

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// A history of `days` for `pools` pools from `seed`.
pub fn generate(seed: u64, pools: usize, days: usize) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let hours = days * 24;
    let pools = pools.max(2);
    let keys: Vec<PoolKey> = (0..pools)
        .map(|p| PoolKey::new(&format!("m{}.large", 5 + p / 3), ZONES[p % 3]))
        .collect();
    let base: Vec<f64> = (0..pools).map(|_| rng.random_range(0.03..0.12)).collect();
    // Spikes per zone: start with a small chance each hour, last 6-48 h,
    // multiply prices by 1.5-3 and interruptions by 40.
    let mut spike = vec![vec![1.0f64; hours]; ZONES.len()];
    for z in &mut spike {
        let mut h = 0;
        while h < hours {
            if rng.random_bool(0.003) {
                let len = rng.random_range(6..=48);
                let factor = rng.random_range(1.5..3.0);
                for x in z.iter_mut().skip(h).take(len) {
                    *x = factor;
                }
                h += len;
            } else {
                h += 1;
            }
        }
    }
    let mut prices = vec![vec![None; hours]; pools];
    let mut interrupted = vec![vec![false; hours]; pools];
    for p in 0..pools {
        let mut level = base[p];
        for h in 0..hours {
            // Mean-reverting drift around the pool's base price.
            level += 0.05 * (base[p] - level) + rng.random_range(-0.002..0.002);
            level = level.max(0.005);
            let s = spike[p % 3][h];
            prices[p][h] = Some((level * s * 1e6).round() / 1e6);
            let risk = if s > 1.0 { 0.02 } else { 0.0005 };
            interrupted[p][h] = rng.random_bool(risk);
        }
    }
    History {
        pools: keys,
        start_ms: crate::now_ms() - i64::try_from(hours).unwrap_or(0) * 3_600_000,
        prices,
        interrupted,
    }
}

/// Sum the outcomes of several replays, policy by policy.
fn add(total: &mut Vec<Outcome>, more: Vec<Outcome>) {
    if total.is_empty() {
        *total = more;
        return;
    }
    for (t, m) in total.iter_mut().zip(more) {
        t.hours += m.hours;
        t.cost += m.cost;
        t.switches += m.switches;
        t.max_switches_per_day = t.max_switches_per_day.max(m.max_switches_per_day);
        t.interruptions_hit += m.interruptions_hit;
        t.downtime_s += m.downtime_s;
    }
}

pub async fn run(args: BacktestBench) -> Result<()> {
    let params = builtin::Params::default();
    let model = |i: &_| builtin::decide(i, &params);
    let mut total = Vec::new();
    for k in 0..args.runs.max(1) {
        let h = generate(args.seed + k, args.pools, args.days);
        add(
            &mut total,
            compare(&h, "builtin", &model, &Downtime::default()),
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"seed": args.seed, "runs": args.runs, "days": args.days,
                "pools": args.pools, "params": params, "outcomes": total})
        );
        return Ok(());
    }
    println!(
        "backtest: {} histories of {} days x {} pools (seeds {}..{}), built-in model {params:?}",
        args.runs,
        args.days,
        args.pools,
        args.seed,
        args.seed + args.runs.max(1) - 1
    );
    println!(
        "{:<16} {:>10} {:>12} {:>9} {:>13} {:>13} {:>11}",
        "policy", "cost $", "$/inst-hour", "switches", "max/24h", "interrupted", "downtime s"
    );
    for o in &total {
        println!(
            "{:<16} {:>10.2} {:>12.5} {:>9} {:>13} {:>13} {:>11.0}",
            o.policy,
            o.cost,
            o.cost / f64::from(o.hours.max(1)),
            o.switches,
            o.max_switches_per_day,
            o.interruptions_hit,
            o.downtime_s
        );
    }
    Ok(())
}
