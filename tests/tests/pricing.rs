#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The pricing pipeline end to end: real agents capture spot prices from
//! the EC2 simulator (each agent sees its own, deliberately conflicting,
//! history), the real coordinator stages and consolidates them (through
//! the `consolidate` subcommand), and the API returns the expected
//! canonical hourly series.

use serde_json::{Value, json};
use spot_tests::ec2_sim::SimPrice;
use spot_tests::fleet::{Fleet, FleetOptions};
use spot_tests::harness::{bin_path, eventually};
use std::time::Duration;

const H: i64 = 3_600_000;
const M: i64 = 60_000;
const WAIT: Duration = Duration::from_secs(60);

fn p(az: &str, ts: i64, price: &str) -> SimPrice {
    SimPrice {
        instance_type: "m5.large".into(),
        availability_zone: format!("us-east-{az}"),
        product_description: "Linux/UNIX".into(),
        timestamp_ms: ts,
        price: price.into(),
    }
}

fn iso(ms: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
        .to_string()
}

fn consolidate(f: &Fleet, config: &std::path::Path) -> Value {
    let out = std::process::Command::new(bin_path("spot-coordinator").unwrap())
        .arg("consolidate")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(&f.coord.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn series(f: &Fleet, az: &str, from: i64, to: i64) -> Vec<(i64, String, bool)> {
    let v = f
        .get(&format!(
            "/v1/prices?instance_type=m5.large&availability_zone=us-east-{az}&from={}&to={}",
            iso(from),
            iso(to)
        ))
        .await
        .unwrap();
    v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let hour = humantime::parse_rfc3339(x["hour"].as_str().unwrap()).unwrap();
            let ms = hour
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            (
                ms,
                x["price"].as_str().unwrap().to_owned(),
                x["interpolated"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_and_the_api_serves_the_canonical_series() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = cfg_dir.path().join("coordinator.toml");
    std::fs::write(&config, "[on_demand_prices]\n\"m5.large\" = \"1.000000\"\n").unwrap();
    let f = Fleet::start(FleetOptions {
        coordinator_args: vec![
            "--heartbeat-interval".into(),
            "1s".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        ..FleetOptions::default()
    })
    .await
    .unwrap();

    let now = spot_tests::now_ms();
    let t0 = (now / H) * H - 40 * H;
    // What the PRIMARY sees (and any agent without a view of its own).
    let base = vec![
        p("1a", t0, "0.100000"),
        p("1a", t0 + 30 * M, "0.200000"),
        p("1a", t0 + 2 * H + 10 * M, "0.400000"),
        p("1b", t0, "0.500000"),
        // 26 h later: longer than the 24 h gap limit.
        p("1b", t0 + 27 * H, "0.800000"),
    ];
    let first = f
        .group(
            "db",
            json!({"pools": [
            {"instance_type": "m5.large", "availability_zone": "us-east-1a"},
            {"instance_type": "m5.large", "availability_zone": "us-east-1b"}]}),
        )
        .await
        .unwrap();
    eventually("PRIMARY", WAIT, || async {
        f.confirmed_primary("db").await.ok().flatten()
    })
    .await
    .unwrap();
    // The history appears once the PRIMARY is confirmed, so that its
    // reports are staged as the PRIMARY's.
    f.ec2.set_prices(base.clone());
    // Replica 1 disagrees with the PRIMARY at t0+30m, and reports t0+1h
    // in 1b (which the PRIMARY never saw) as 0.5; replica 2 as 0.7.
    let mut r1 = base.clone();
    r1[1] = p("1a", t0 + 30 * M, "0.300000");
    r1.push(p("1b", t0 + H, "0.500000"));
    let mut r2 = base.clone();
    r2.push(p("1b", t0 + H, "0.700000"));
    f.ec2.set_prices_for("AKID-i-db-r1", r1);
    f.ec2.set_prices_for("AKID-i-db-r2", r2);

    f.add_instance("i-db-r1", "m5.large", "us-east-1b", "db")
        .await
        .unwrap();
    f.add_instance("i-db-r2", "m5.large", "us-east-1b", "db")
        .await
        .unwrap();

    // Consolidate (on demand, as an operator would) until every agent's
    // reports are in: the median point needs both replicas.
    let (from, to) = (t0, t0 + 40 * H);
    let b = eventually("all reports consolidated", WAIT, || async {
        consolidate(&f, &config);
        let b = series(&f, "1b", from, to).await;
        b.iter()
            .any(|(h, price, _)| *h == t0 + H && price == "0.600000")
            .then_some(b)
    })
    .await
    .unwrap();
    let a = series(&f, "1a", from, to).await;

    // 1a: 0.1 then the PRIMARY's 0.2 (not the replica's 0.3) at :30.
    assert_eq!(a[0], (t0, "0.150000".into(), false));
    assert_eq!(
        a[1],
        (t0 + H, "0.200000".into(), true),
        "no observation: filled, flagged"
    );
    assert_eq!(
        a[2],
        (t0 + 2 * H, "0.366667".into(), false),
        "10 min at 0.2, 50 at 0.4"
    );
    assert!(
        a[3..]
            .iter()
            .all(|(_, price, interp)| price == "0.400000" && *interp)
    );
    // 1b: 0.5, the median 0.6, then 26 hours left empty, then 0.8.
    assert_eq!(b[0], (t0, "0.500000".into(), false));
    assert_eq!(b[1], (t0 + H, "0.600000".into(), false));
    assert_eq!(
        b[2],
        (t0 + 27 * H, "0.800000".into(), false),
        "the gap stays empty: {b:?}"
    );
    assert!(
        b[3..]
            .iter()
            .all(|(_, price, interp)| price == "0.800000" && *interp)
    );

    // Idempotent: another run changes nothing.
    let again = consolidate(&f, &config);
    assert_eq!(again["pools"], 0, "{again}");
    assert_eq!(series(&f, "1a", from, to).await, a);
    assert_eq!(series(&f, "1b", from, to).await, b);
    // Exact duplicates are dropped on insert, and counted in the next run.
    let (agent, token) = (
        f.journal_key("i-db-r1", "agent_id").unwrap(),
        f.journal_key("i-db-r1", "token").unwrap(),
    );
    let batch = json!({"points": [{"instance_type": "m5.large", "availability_zone": "us-east-1a",
        "product_description": "Linux/UNIX", "timestamp": iso(t0), "price": "0.100000"}]});
    let path = format!("/v1/agents/{agent}/pricing");
    let (_, r) = f
        .api
        .call(reqwest::Method::POST, &path, Some(&token), Some(&batch))
        .await
        .unwrap();
    let (_, r2) = f
        .api
        .call(reqwest::Method::POST, &path, Some(&token), Some(&batch))
        .await
        .unwrap();
    assert_eq!(r2["duplicates"], 1, "{r} then {r2}");
    let bad = json!({"points": [{"instance_type": "m5.large", "availability_zone": "us-east-1a",
        "product_description": "Linux/UNIX", "timestamp": "yesterday", "price": "-1"}]});
    let (st, v) = f
        .api
        .call(reqwest::Method::POST, &path, Some(&token), Some(&bad))
        .await
        .unwrap();
    assert_eq!(
        (st.as_u16(), v["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
    consolidate(&f, &config);
    let runs = f.get("/v1/pricing/runs").await.unwrap();
    let total = |k: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .map(|r| r[k].as_i64().unwrap())
            .sum::<i64>()
    };
    assert!(
        total("primary_precedence") >= 1 && total("conflicts_median") >= 1,
        "{runs}"
    );
    assert!(
        total("points_interpolated") >= 1 && total("duplicates_dropped") >= 1,
        "{runs}"
    );

    // The group's view: both pools, cost and savings against on-demand.
    let g = f
        .get(&format!(
            "/v1/groups/db/prices?from={}&to={}",
            iso(from),
            iso(to)
        ))
        .await
        .unwrap();
    assert_eq!(g["pools"].as_array().unwrap().len(), 2);
    assert_eq!(g["cost"]["instance_type"], "m5.large");
    assert_eq!(g["cost"]["on_demand_price"], "1.000000");
    assert!(g["cost"]["savings_percent"].as_f64().unwrap() > 0.0, "{g}");
    let _ = first;

    // The training export: a header and one row per canonical pool-hour.
    let out = f.root.join("train.csv");
    let st = std::process::Command::new(bin_path("spot-coordinator").unwrap())
        .args(["export-training", "--since", "90d", "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(&f.coord.data_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let csv = std::fs::read_to_string(&out).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("instance_type,availability_zone,product_description,hour,price,interpolated")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= a.len() + b.len(), "{} rows", rows.len());
    assert!(
        rows.contains(
            &format!(
                "m5.large,us-east-1b,Linux/UNIX,{},0.600000,false",
                iso(t0 + H)
            )
            .as_str()
        )
    );
}
