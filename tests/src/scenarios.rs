//! The failover flows as named scenarios on the fleet simulator, each
//! ending with a verdict and its timings. `spot-sim scenario NAME` runs
//! them from the command line; the end-to-end tests run the same code.
//!
//! Every scenario runs the invariant checker: it samples the store and
//! every running agent's journal every 50 ms and fails on two PRIMARIES in
//! a group (in either view) or an epoch going backwards.

use crate::fleet::{Fleet, FleetOptions, agent_primaries, default_pools};
use crate::harness::eventually;
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

const WAIT: Duration = Duration::from_secs(60);

pub const NAMES: &[&str] = &[
    "rebalance",
    "warm-failover",
    "cold-failover",
    "failed-promotion",
    "switch",
    "manual-replica",
    "terminated",
    "coordinator-crash",
    "partition",
];

/// Timings of a passed scenario, in seconds.
pub type Timings = Vec<(&'static str, f64)>;

/// Run one scenario by name.
pub async fn run(name: &str) -> Result<Timings> {
    match name {
        "rebalance" => rebalance().await,
        "warm-failover" => warm_failover().await,
        "cold-failover" => cold_failover().await,
        "failed-promotion" => failed_promotion().await,
        "switch" => switch().await,
        "manual-replica" => manual_replica().await,
        "terminated" => terminated().await,
        "coordinator-crash" => coordinator_crash().await,
        "partition" => partition().await,
        other => anyhow::bail!("no scenario {other:?}; known: {}", NAMES.join(", ")),
    }
}

/// Samples the store and the agents' own views until stopped.
pub struct InvariantChecker {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<String>>,
}

impl InvariantChecker {
    pub fn start(f: &Fleet) -> InvariantChecker {
        let stop = Arc::new(AtomicBool::new(false));
        let (api, adm, s, nodes) = (
            f.api.clone(),
            f.coord.admin_token.clone(),
            Arc::clone(&stop),
            Arc::clone(&f.nodes),
        );
        let handle = tokio::spawn(async move {
            let mut problems = Vec::new();
            let mut epochs: HashMap<String, u64> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, inst)) = api
                    .call(reqwest::Method::GET, "/v1/instances", Some(&adm), None)
                    .await
                {
                    let mut per: HashMap<String, usize> = HashMap::new();
                    for i in inst
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|i| i["role"] == "primary")
                    {
                        *per.entry(i["group"].as_str().unwrap_or("").to_owned())
                            .or_default() += 1;
                    }
                    problems.extend(
                        per.iter()
                            .filter(|(_, n)| **n > 1)
                            .map(|(g, n)| format!("{n} PRIMARIES in the store for {g}")),
                    );
                }
                if let Ok((_, groups)) = api
                    .call(reqwest::Method::GET, "/v1/groups", Some(&adm), None)
                    .await
                {
                    for g in groups.as_array().into_iter().flatten() {
                        let (name, e) = (
                            g["name"].as_str().unwrap_or("").to_owned(),
                            g["epoch"].as_u64().unwrap_or(0),
                        );
                        let last = epochs.entry(name.clone()).or_insert(e);
                        if e < *last {
                            problems.push(format!("epoch of {name} went back from {last} to {e}"));
                        }
                        *last = e;
                    }
                }
                for (g, p) in agent_primaries(&nodes) {
                    if p.len() > 1 {
                        problems.push(format!(
                            "agents of {g} that believe they are PRIMARY: {p:?}"
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            problems
        });
        InvariantChecker { stop, handle }
    }

    /// Stop and return the violations seen.
    pub async fn finish(self) -> Result<Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.handle.await?)
    }

    /// Stop; fail on any violation.
    pub async fn check(self) -> Result<()> {
        let v = self.finish().await?;
        ensure!(v.is_empty(), "invariant violations: {v:?}");
        Ok(())
    }
}

/// The confirmed PRIMARY once it is `want` (any when None) and not `not`.
pub async fn wait_confirmed(
    f: &Fleet,
    group: &str,
    want: Option<&str>,
    not: Option<&str>,
) -> Result<String> {
    eventually("a confirmed PRIMARY", WAIT, || async {
        let p = f.confirmed_primary(group).await.ok().flatten()?;
        (want.is_none_or(|w| w == p) && not.is_none_or(|n| n != p)).then_some(p)
    })
    .await
}

pub async fn wait_role(f: &Fleet, id: &str, role: &str) -> Result<()> {
    eventually(&format!("{id} to be {role}"), WAIT, || async {
        (f.role(id).await.ok()? == role).then_some(())
    })
    .await
}

fn write_hook(f: &Fleet, instance: &str, name: &str, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let nodes = f.nodes.lock().unwrap_or_else(|p| p.into_inner());
    let hook = nodes
        .get(instance)
        .context("no such instance")?
        .agent
        .hooks_dir
        .join(name);
    std::fs::write(&hook, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn launched(f: &Fleet) -> Vec<crate::ec2_sim::SimInstance> {
    f.ec2
        .instances()
        .into_iter()
        .filter(|i| i.client_token.is_some())
        .collect()
}

/// A group with a confirmed PRIMARY and (optionally) a REPLICA in another zone.
async fn group(f: &Fleet, config: Value, replica: Option<&str>) -> Result<String> {
    let first = f.group("db", config).await?;
    wait_confirmed(f, "db", Some(&first), None).await?;
    if let Some(r) = replica {
        f.add_instance(r, "m5.large", "us-east-1b", "db").await?;
        wait_role(f, r, "replica").await?;
        // A REPLICA joining must not displace a healthy PRIMARY (it once
        // did, when the PRIMARY's first heartbeat was not persisted yet).
        ensure!(
            f.primary("db").await?.as_deref() == Some(first.as_str()),
            "the PRIMARY changed when a REPLICA joined"
        );
    }
    Ok(first)
}

async fn rebalance() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), None).await?;
    let t = Instant::now();
    f.rebalance(&first)?;
    let replica = eventually("a replica from the rebalance", WAIT, || async {
        let inst = f.get("/v1/instances?group=db").await.ok()?;
        inst.as_array()?.iter().find(|i| i["role"] == "replica")?["instance_id"]
            .as_str()
            .map(str::to_owned)
    })
    .await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(replica != first);
    ensure!(
        f.primary("db").await?.as_deref() == Some(first.as_str()),
        "a rebalance does not switch by itself"
    );
    // A second recommendation inside the window launches nothing more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.rebalance(&first)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(launched(&f).len() == 1, "damped: one launch per window");
    Ok(vec![("notice_to_replica_registered_s", took)])
}

async fn warm_failover() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    f.ec2.add_address("eipalloc-db", "203.0.113.5");
    let first = group(
        &f,
        json!({"promotion": {"elastic_ip_allocation_id": "eipalloc-db"}}),
        Some("i-db-replica"),
    )
    .await?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    wait_confirmed(&f, "db", Some("i-db-replica"), None).await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(f.role(&first).await? == "zombie");
    ensure!(
        f.ec2
            .address("eipalloc-db")
            .and_then(|a| a.instance_id)
            .as_deref()
            == Some("i-db-replica"),
        "the address moved"
    );
    eventually("the old PRIMARY demoted itself", WAIT, || async {
        (f.journal_key(&first, "role")? == "zombie").then_some(())
    })
    .await?;
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took)])
}

async fn cold_failover() -> Result<Timings> {
    let f = Fleet::start(FleetOptions {
        boot_delay: Duration::from_secs(3),
        ..FleetOptions::default()
    })
    .await?;
    let first = group(&f, json!({}), None).await?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    let deadline = f.interrupt(&first, Duration::from_secs(40))?;
    let new = wait_confirmed(&f, "db", None, Some(&first)).await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(
        SystemTime::now() < deadline,
        "new PRIMARY {new} confirmed after the notice time"
    );
    let l = launched(&f);
    ensure!(l.len() == 1, "exactly one emergency launch: {l:?}");
    ensure!(
        !(l[0].instance_type == "m5.large" && l[0].availability_zone == "us-east-1a"),
        "not into the interrupted pool"
    );
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took), ("boot_s", 3.0)])
}

async fn failed_promotion() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-bad")).await?;
    f.add_instance("i-db-good", "c5.large", "us-east-1a", "db")
        .await?;
    wait_role(&f, "i-db-good", "replica").await?;
    // The preferred candidate (another zone) cannot serve.
    write_hook(&f, "i-db-bad", "promote", "echo cannot serve >&2\nexit 1")?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    wait_confirmed(&f, "db", Some("i-db-good"), None).await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(
        f.role("i-db-bad").await? == "replica",
        "it never became PRIMARY; fenced at a newer epoch"
    );
    let cmds = f.get("/v1/commands").await?;
    let failed = cmds.as_array().into_iter().flatten().any(|c| {
        c["command"]["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("promote-i-db-bad-"))
            && c["state"] == "failed"
    });
    ensure!(failed, "the bad candidate was tried first and failed");
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took)])
}

async fn switch() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    f.ec2.add_address("eipalloc-sw", "203.0.113.7");
    let first = group(
        &f,
        json!({"promotion": {"elastic_ip_allocation_id": "eipalloc-sw"}}),
        None,
    )
    .await?;
    let checker = InvariantChecker::start(&f);
    let (st, sw) = f
        .api
        .call(reqwest::Method::POST, "/v1/groups/db/switch", Some(&f.coord.admin_token),
            Some(&json!({"pool": {"instance_type": "c5.large", "availability_zone": "us-east-1a"}, "request_id": "sw-1"})))
        .await?;
    ensure!(st.is_success(), "switch refused: {st} {sw}");
    let done = eventually("switch done", WAIT, || async {
        let list = f.get("/v1/groups/db/switches").await.ok()?;
        let s = list.as_array()?.first()?.clone();
        (s["state"] == "done").then_some(s)
    })
    .await?;
    let new = done["to_instance"]
        .as_str()
        .context("to_instance")?
        .to_owned();
    ensure!(f.get(&format!("/v1/instances/{new}")).await?["instance_type"] == "c5.large");
    wait_confirmed(&f, "db", Some(&new), None).await?;
    ensure!(f.role(&first).await? == "zombie");
    ensure!(
        f.ec2
            .address("eipalloc-sw")
            .and_then(|a| a.instance_id)
            .as_deref()
            == Some(new.as_str())
    );
    let downtime = done["downtime_ms"].as_i64().context("downtime recorded")?;
    ensure!((0..10_000).contains(&downtime), "downtime {downtime} ms");
    checker.check().await?;
    Ok(vec![("downtime_s", downtime as f64 / 1000.0)])
}

async fn put_config(f: &Fleet, config: Value) -> Result<(reqwest::StatusCode, Value)> {
    let version = f.get("/v1/groups/db").await?["version"]
        .as_i64()
        .context("version")?;
    f.api
        .call(
            reqwest::Method::PUT,
            "/v1/groups/db",
            Some(&f.coord.admin_token),
            Some(&json!({"config": config, "version": version})),
        )
        .await
}

async fn manual_replica() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    group(&f, json!({}), None).await?;
    let t = Instant::now();
    let (st, g) = put_config(
        &f,
        json!({"pools": default_pools(), "manual_replica": true}),
    )
    .await?;
    ensure!(st.is_success(), "{g}");
    let replica = eventually("one replica", WAIT, || async {
        let inst = f.get("/v1/instances?group=db").await.ok()?;
        inst.as_array()?.iter().find(|i| i["role"] == "replica")?["instance_id"]
            .as_str()
            .map(str::to_owned)
    })
    .await?;
    let took = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(launched(&f).len() == 1, "exactly one REPLICA");
    let (st, v) = put_config(
        &f,
        json!({"pools": default_pools(), "manual_replica": true, "auto_switch": true}),
    )
    .await?;
    ensure!(
        st.as_u16() == 409 && v["rule"] == "auto_switch_excludes_manual_replica",
        "auto-switch refused: {v}"
    );
    let (st, v) = put_config(
        &f,
        json!({"pools": default_pools(), "manual_replica": false}),
    )
    .await?;
    ensure!(st.is_success(), "{v}");
    ensure!(
        f.role(&replica).await? == "terminated",
        "OFF retires the REPLICA"
    );
    eventually("the replica terminated in EC2", WAIT, || async {
        let i = f
            .ec2
            .instances()
            .into_iter()
            .find(|i| i.instance_id == replica)?;
        (i.state == "shutting-down" || i.state == "terminated").then_some(())
    })
    .await?;
    Ok(vec![("on_to_replica_registered_s", took)])
}

async fn terminated() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let t = Instant::now();
    // EC2 takes the replica away; its agent dies with it. The PRIMARY's
    // agent sees it in DescribeInstances.
    f.ec2.set_state("i-db-r", "terminated");
    if let Some(n) = f
        .nodes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut("i-db-r")
    {
        n.agent.kill9();
    }
    wait_role(&f, "i-db-r", "terminated").await?;
    let took = t.elapsed().as_secs_f64();
    let audit = f.get("/v1/audit?entity=instance:i-db-r&limit=100").await?;
    let actions: Vec<&str> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["action"].as_str())
        .collect();
    ensure!(
        actions.contains(&"registered_healthy") && actions.contains(&"instance_gone"),
        "history kept: {actions:?}"
    );
    ensure!(f.primary("db").await?.as_deref() == Some(first.as_str()));
    Ok(vec![("gone_to_terminated_s", took)])
}

async fn coordinator_crash() -> Result<Timings> {
    let mut f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    // A slow promote hook keeps the promotion in flight.
    write_hook(&f, "i-db-r", "promote", "sleep 2")?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    eventually("promotion in flight", WAIT, || async {
        (f.get("/v1/groups/db").await.ok()?["transition"]["phase"] == "promoting").then_some(())
    })
    .await?;
    f.coord.restart_same_port()?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(f.role(&first).await? == "zombie");
    ensure!(
        f.get("/v1/groups/db").await?["transition"].is_null(),
        "transition finished"
    );
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took)])
}

async fn partition() -> Result<Timings> {
    let f = Fleet::start(FleetOptions {
        coordinator_args: vec![
            "--heartbeat-interval".into(),
            "1s".into(),
            "--lease".into(),
            "3s".into(),
        ],
        ..FleetOptions::default()
    })
    .await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    let cut_at = crate::now_ms();
    f.partition(&first)?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    let demoted_at: i64 = f
        .journal_key(&first, "self_demoted_at_ms")
        .context("the partitioned PRIMARY demoted itself")?
        .parse()?;
    let audit = f.get("/v1/audit?entity=group:db&limit=1000").await?;
    let granted_at = audit
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|a| a["action"] == "grant")
        .and_then(|a| a["at_ms"].as_i64())
        .context("grant in the audit log")?;
    ensure!(
        demoted_at < granted_at,
        "self-demotion at {demoted_at}, replacement granted at {granted_at}"
    );
    // Worst case: 3 s lease + 1 s heartbeat phase + 0.5 s lease check;
    // headroom for a loaded 2-core CI machine.
    ensure!(
        demoted_at - cut_at <= 7_000,
        "demoted {} ms after the cut, lease is 3 s",
        demoted_at - cut_at
    );
    ensure!(f.journal_key(&first, "role").as_deref() == Some("zombie"));
    checker.check().await?;
    Ok(vec![
        (
            "cut_to_self_demotion_s",
            (demoted_at - cut_at) as f64 / 1000.0,
        ),
        ("cut_to_grant_s", (granted_at - cut_at) as f64 / 1000.0),
    ])
}
