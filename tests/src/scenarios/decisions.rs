//! The decision engine on the fleet: prices in the EC2 simulator make
//! another pool much cheaper for a day; in `auto` mode the group moves
//! there through the switch flow (downtime recorded), in `shadow` mode the
//! same decision is logged and nothing moves.

use super::{InvariantChecker, Timings, WAIT, group, launched, wait_confirmed};
use crate::ec2_sim::SimPrice;
use crate::fleet::{Fleet, FleetOptions};
use crate::harness::eventually;
use crate::model_server::{self, Answer, ModelArgs};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const H: i64 = 3_600_000;

/// A day of hourly prices: the PRIMARY's pool (m5.large/us-east-1a) at
/// $0.100, m5.large/us-east-1b at $0.050, c5.large/us-east-1a at $0.090.
fn a_cheaper_pool() -> Vec<SimPrice> {
    let now = crate::now_ms();
    let start = (now / H) * H - 24 * H;
    let mut v = Vec::new();
    for k in 0..=24 {
        for (itype, az, price) in [
            ("m5.large", "us-east-1a", "0.100000"),
            ("m5.large", "us-east-1b", "0.050000"),
            ("c5.large", "us-east-1a", "0.090000"),
        ] {
            v.push(SimPrice {
                instance_type: itype.into(),
                availability_zone: az.into(),
                product_description: "Linux/UNIX".into(),
                timestamp_ms: start + k * H,
                price: price.into(),
            });
        }
    }
    v
}

async fn fleet(mode: &str) -> Result<(Fleet, String)> {
    fleet_with(mode, &[]).await
}

/// A fleet whose coordinator consolidates prices every 2 s and decides
/// every second (plus `args`), group `db` in `mode`, and a day of prices.
async fn fleet_with(mode: &str, args: &[String]) -> Result<(Fleet, String)> {
    let mut opts = FleetOptions::default();
    opts.coordinator_args
        .extend(["--consolidate-interval", "2s", "--decision-interval", "1s"].map(String::from));
    opts.coordinator_args.extend(args.iter().cloned());
    let f = Fleet::start(opts).await?;
    let first = group(&f, json!({"decisions": mode}), None).await?;
    f.ec2.set_prices(a_cheaper_pool());
    Ok((f, first))
}

/// The latest decision with `action`, once there is one.
async fn decision(f: &Fleet, action: &str) -> Result<Value> {
    eventually(&format!("a {action} decision"), WAIT, || async {
        let list = f.get("/v1/groups/db/decisions").await.ok()?;
        list.as_array()?
            .iter()
            .find(|d| d["action"] == action)
            .cloned()
    })
    .await
}

pub async fn auto() -> Result<Timings> {
    let (f, first) = fleet("auto").await?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    let d = decision(&f, "SWITCH").await?;
    let decided = t.elapsed().as_secs_f64();
    ensure!(
        d["target_pool"]["availability_zone"] == "us-east-1b",
        "the cheapest pool: {d}"
    );
    ensure!(
        d["outcome"].as_str().unwrap_or("").starts_with("switch to"),
        "auto mode acts: {d}"
    );
    let new = wait_confirmed(&f, "db", None, Some(&first)).await?;
    let moved = t.elapsed().as_secs_f64();
    let inst = f.get(&format!("/v1/instances/{new}")).await?;
    ensure!(
        inst["availability_zone"] == "us-east-1b",
        "moved to the cheap pool: {inst}"
    );
    let sw = super::last_switch(&f, "done").await?;
    let downtime = sw["downtime_ms"]
        .as_f64()
        .context("the switch's downtime is recorded")?;
    // In the cheap pool now: the next decisions stay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let latest = f.get("/v1/groups/db/decisions?limit=1").await?;
    ensure!(latest[0]["action"] == "STAY", "stays once moved: {latest}");
    ensure!(launched(&f).len() == 1, "one launch: {:?}", launched(&f));
    checker.check().await?;
    Ok(vec![
        ("prices_to_decision_s", decided),
        ("prices_to_new_primary_s", moved),
        ("switch_downtime_s", downtime / 1000.0),
    ])
}

pub async fn shadow() -> Result<Timings> {
    let (f, first) = fleet("shadow").await?;
    let t = Instant::now();
    let d = decision(&f, "SWITCH").await?;
    let decided = t.elapsed().as_secs_f64();
    let outcome = d["outcome"].as_str().unwrap_or("");
    ensure!(
        outcome.starts_with("shadow: would switch to m5.large/us-east-1b"),
        "shadow mode only says what it would do: {d}"
    );
    ensure!(
        d["saving_per_hour"]
            .as_f64()
            .is_some_and(|s| (s - 0.05).abs() < 1e-6),
        "the estimated saving: {d}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        f.primary("db").await?.as_deref() == Some(first.as_str()),
        "shadow mode never moves the PRIMARY"
    );
    ensure!(
        launched(&f).is_empty(),
        "nothing launched: {:?}",
        launched(&f)
    );
    let switches = f.get("/v1/groups/db/switches").await?;
    ensure!(
        switches.as_array().is_some_and(Vec::is_empty),
        "no switch: {switches}"
    );
    // What the optimizer would have done over the stored history.
    let out = std::process::Command::new(crate::harness::bin_path("spot-coordinator")?)
        .args(["backtest", "--since", "2d", "--json"])
        .args(f.store_args())
        .output()?;
    ensure!(
        out.status.success(),
        "backtest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let policies: Vec<&str> = report[0]["outcomes"]
        .as_array()
        .context("outcomes")?
        .iter()
        .filter_map(|o| o["policy"].as_str())
        .collect();
    ensure!(
        report[0]["group"] == "db" && policies == ["builtin", "always-stay", "always-cheapest"],
        "{report}"
    );
    // The training rows carry the decision of the hour.
    let out = std::process::Command::new(crate::harness::bin_path("spot-coordinator")?)
        .args(["export-training", "--since", "2h", "--rows", "group-hours"])
        .args(["--format", "jsonl", "--out", "-"])
        .args(f.store_args())
        .output()?;
    ensure!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        rows.iter().any(|r| r["group"] == "db"
            && r["decision_action"] == "SWITCH"
            && r["decision_mode"] == "shadow"),
        "{rows:?}"
    );
    Ok(vec![("prices_to_decision_s", decided)])
}

/// The example model, answering `answer` after `delay`; its URL.
async fn model(delay: Option<Duration>, answer: Answer) -> Result<String> {
    model_server::start(ModelArgs {
        listen: "127.0.0.1:0".parse()?,
        delay,
        answer,
    })
    .await
}

/// The external model decides: its SWITCH is followed in auto mode.
pub async fn external() -> Result<Timings> {
    let url = model(None, Answer::Cheapest).await?;
    let (f, first) = fleet_with("auto", &["--decision-model-url".into(), url]).await?;
    let checker = InvariantChecker::start(&f);
    let d = decision(&f, "SWITCH").await?;
    ensure!(
        d["model"] == format!("{}/1", model_server::NAME) && d["fallback"].is_null(),
        "the external model decided: {d}"
    );
    let new = wait_confirmed(&f, "db", None, Some(&first)).await?;
    let inst = f.get(&format!("/v1/instances/{new}")).await?;
    ensure!(
        inst["availability_zone"] == "us-east-1b",
        "moved to the cheapest pool: {inst}"
    );
    checker.check().await?;
    Ok(vec![(
        "model_latency_ms",
        d["latency_us"].as_f64().unwrap_or(0.0) / 1000.0,
    )])
}

/// A model that takes 2 s, then one that answers a pool outside the
/// group: neither is followed; the built-in model decides within the
/// 500 ms deadline and the log says why.
pub async fn model_fallback() -> Result<Timings> {
    let slow = model(Some(Duration::from_secs(2)), Answer::Cheapest).await?;
    let (f, first) = fleet_with("shadow", &["--decision-model-url".into(), slow]).await?;
    let d = decision(&f, "SWITCH").await?;
    let fallback = d["fallback"].as_str().unwrap_or("");
    ensure!(
        fallback.contains("no answer within 500ms") && d["model"] == "builtin/1",
        "the built-in model decided after the deadline: {d}"
    );
    let latency_ms = d["latency_us"].as_f64().unwrap_or(f64::MAX) / 1000.0;
    ensure!(
        latency_ms <= 550.0,
        "a 2 s model cost {latency_ms:.0} ms (deadline 500 ms)"
    );
    ensure!(
        f.primary("db").await?.as_deref() == Some(first.as_str()),
        "shadow mode never moves the PRIMARY"
    );
    let (_, metrics) = f.api.get("/metrics", "").await?;
    ensure!(
        metrics.as_str().unwrap_or("").lines().any(|l| l
            .starts_with("spot_coordinator_decision_fallbacks_total ")
            && !l.ends_with(" 0")),
        "fallbacks are counted"
    );
    drop(f);

    let outside = model(None, Answer::Outside).await?;
    let (f, _) = fleet_with("shadow", &["--decision-model-url".into(), outside]).await?;
    let d = decision(&f, "SWITCH").await?;
    let fallback = d["fallback"].as_str().unwrap_or("");
    ensure!(
        fallback.contains("not one of the group's pools") && fallback.contains("mars-1a"),
        "an invalid answer is refused with the raw answer: {d}"
    );
    Ok(vec![("slow_model_decision_ms", latency_ms)])
}

/// A/B: group `db` assigned the external model, group `web` the built-in
/// one (both in shadow mode): each decision says which model made it, and
/// the comparison has a row per model.
pub async fn ab_models() -> Result<Timings> {
    let url = model(None, Answer::Cheapest).await?;
    let args = ["--decision-model-url".into(), url];
    let mut opts = FleetOptions::default();
    opts.coordinator_args
        .extend(["--consolidate-interval", "2s", "--decision-interval", "1s"].map(String::from));
    opts.coordinator_args.extend(args);
    let f = Fleet::start(opts).await?;
    group(
        &f,
        json!({"decisions": "shadow", "model": "external"}),
        None,
    )
    .await?;
    let web = f
        .group("web", json!({"decisions": "shadow", "model": "builtin"}))
        .await?;
    wait_confirmed(&f, "web", Some(&web), None).await?;
    f.ec2.set_prices(a_cheaper_pool());
    let t = Instant::now();
    let by = |g: &'static str| {
        let f = &f;
        async move {
            eventually(&format!("a SWITCH decision in {g}"), WAIT, || async {
                let list = f.get(&format!("/v1/groups/{g}/decisions")).await.ok()?;
                list.as_array()?
                    .iter()
                    .find(|d| d["action"] == "SWITCH")
                    .cloned()
            })
            .await
        }
    };
    let (db, web) = (by("db").await?, by("web").await?);
    let decided = t.elapsed().as_secs_f64();
    ensure!(
        db["assigned"] == "external" && db["model"] == format!("{}/1", model_server::NAME),
        "db is decided by the external model: {db}"
    );
    ensure!(
        web["assigned"] == "builtin" && web["model"] == "builtin/1",
        "web by the built-in one: {web}"
    );
    let rows = f.get("/v1/models/compare?since=1h").await?;
    let models: Vec<&str> = rows
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|r| r["model"].as_str())
        .collect();
    ensure!(models == ["builtin", "external"], "{rows}");
    ensure!(
        rows[0]["groups"] == 1
            && rows[1]["groups"] == 1
            && rows[0]["cost_per_instance_hour"]
                .as_f64()
                .is_some_and(|c| (c - 0.1).abs() < 1e-6),
        "one group each, the PRIMARY's price sampled: {rows}"
    );
    Ok(vec![("prices_to_both_decisions_s", decided)])
}
