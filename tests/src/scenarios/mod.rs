//! The failover and fencing flows as named scenarios on the fleet
//! simulator, each ending with a verdict and its timings. `spot-sim
//! scenario NAME` runs them from the command line; the end-to-end tests
//! run the same code.
//!
//! Every scenario is judged by what the **workloads** did (the fleet's
//! ledger): no two instances of a group ever served at once. A checker
//! also samples every running agent's journal: an agent's highest accepted
//! epoch never goes backwards.

mod decisions;
mod failover;
mod fencing;
mod interface;
pub mod leadership;
pub mod restarts;
pub mod volumes;

use crate::fleet::{Fleet, FleetOptions};
use crate::harness::eventually;
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(60);

/// Timings of a passed scenario, in seconds.
pub type Timings = Vec<(&'static str, f64)>;

type Run = fn() -> Pin<Box<dyn Future<Output = Result<Timings>> + Send>>;

macro_rules! scenarios {
    ($($name:literal => $run:path,)*) => {
        /// Every scenario, by name.
        pub const SCENARIOS: &[(&str, Run)] = &[$(($name, || Box::pin($run()))),*];
    };
}

scenarios! {
    "rebalance" => failover::rebalance,
    "warm-failover" => failover::warm_failover,
    "cold-failover" => failover::cold_failover,
    "late-replacement" => failover::late_replacement,
    "failed-promotion" => failover::failed_promotion,
    "switch" => failover::switch,
    "secondary-eni" => interface::secondary_eni,
    "manual-replica" => failover::manual_replica,
    "zombie-cleanup" => failover::zombie_cleanup,
    "switch-failure" => failover::switch_failure,
    "maintenance" => failover::maintenance,
    "auto-switch" => decisions::auto,
    "shadow-decisions" => decisions::shadow,
    "external-model" => decisions::external,
    "model-fallback" => decisions::model_fallback,
    "ab-models" => decisions::ab_models,
    "terminated" => failover::terminated,
    "coordinator-crash" => failover::coordinator_crash,
    "partition" => fencing::partition,
    "slow-promote" => fencing::slow_promote,
    "frozen-agent" => fencing::frozen_agent,
    "frozen-coordinator" => fencing::frozen_coordinator,
    "coordinator-restart" => restarts::coordinator_restart,
    "promote-after-its-window" => restarts::promote_fetched_after_its_window,
    "interruption-after-restart" => restarts::interruption_after_restart,
    "interruption-after-restart-blind" => restarts::interruption_after_restart_blind,
    "restored-store" => restarts::restored_store,
    "restored-store-partitioned" => restarts::restored_store_partitioned,
    "lost-primary" => fencing::lost_primary,
    "journal-failure" => fencing::journal_failure,
    "shared-identity" => fencing::shared_identity,
    "forger" => fencing::forger,
    "clock-step" => fencing::clock_step,
    "data-volume" => volumes::data_volume,
    "follower-routes" => leadership::follower_routes,
    "leader-kill" => leadership::leader_kill,
    "leader-freeze" => leadership::leader_freeze,
    "leader-change-interruption" => leadership::leader_change_interruption,
    "store-restart" => leadership::store_restart,
}

pub fn names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|(n, _)| *n).collect()
}

/// Scenarios that need the store to be a file (a copy restored in its
/// place): SQLite only.
pub const SQLITE_ONLY: &[&str] = &["restored-store", "restored-store-partitioned"];

/// Run one scenario by name.
pub async fn run(name: &str) -> Result<Timings> {
    match SCENARIOS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => f().await,
        None => anyhow::bail!("no scenario {name:?}; known: {}", names().join(", ")),
    }
}

/// Run one scenario with its fleets on `store`.
pub async fn run_on(name: &str, store: crate::fleet::StoreChoice) -> Result<Timings> {
    if store.postgres && SQLITE_ONLY.contains(&name) {
        anyhow::bail!("scenario {name} restores a copy of the SQLite file: SQLite only");
    }
    crate::fleet::STORE.scope(store, run(name)).await
}

/// Samples every running agent's journal until stopped; at the end, reads
/// the ledger.
pub struct InvariantChecker {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<String>>,
    ledger: std::path::PathBuf,
}

impl InvariantChecker {
    pub fn start(f: &Fleet) -> InvariantChecker {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, nodes) = (Arc::clone(&stop), Arc::clone(&f.nodes));
        let handle = tokio::spawn(async move {
            let mut problems = Vec::new();
            let mut epochs: HashMap<String, u64> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let seen: Vec<(String, Option<u64>)> = crate::lock(&nodes)
                    .iter()
                    .filter(|(_, n)| n.alive)
                    .map(|(id, n)| (id.clone(), n.agent.highest_epoch()))
                    .collect();
                for (id, e) in seen {
                    let Some(e) = e else { continue };
                    let last = epochs.entry(id.clone()).or_insert(e);
                    if e < *last {
                        problems.push(format!("{id}'s highest epoch went back from {last} to {e}"));
                    }
                    *last = e;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            problems
        });
        InvariantChecker {
            stop,
            handle,
            ledger: f.ledger.clone(),
        }
    }

    /// Stop and return the epochs seen going backwards in journals.
    pub async fn epoch_problems(self) -> Result<Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.handle.await?)
    }

    /// Stop and return the violations seen, overlaps of serving included.
    pub async fn finish(self) -> Result<Vec<String>> {
        let ledger = self.ledger.clone();
        let mut v = self.epoch_problems().await?;
        for o in crate::ledger::Ledger::read(&ledger)?.overlaps() {
            v.push(format!(
                "{} and {} of {} served at once for {:.3} s",
                o.a.instance,
                o.b.instance,
                o.group,
                (o.to_ns - o.from_ns) as f64 / 1e9
            ));
        }
        Ok(v)
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
    wait_confirmed_within(f, group, want, not, WAIT).await
}

/// As `wait_confirmed`, waiting up to `bound`.
pub async fn wait_confirmed_within(
    f: &Fleet,
    group: &str,
    want: Option<&str>,
    not: Option<&str>,
    bound: Duration,
) -> Result<String> {
    eventually("a confirmed PRIMARY", bound, || async {
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

/// Wait until `id`'s workload serves `group` (per the ledger).
pub async fn wait_serving(f: &Fleet, group: &str, id: &str) -> Result<()> {
    eventually(&format!("{id} serving {group}"), WAIT, || async {
        let l = f.ledger().ok()?;
        (l.serving_now(group)?.instance == id).then_some(())
    })
    .await
}

/// A hook file flag: `promote.fail`, `demote.fail`.
pub fn hook_flag(f: &Fleet, instance: &str, name: &str, on: bool) -> Result<()> {
    f.with_node(instance, |n| {
        let p = n.agent.hooks_dir.join(name);
        if on {
            std::fs::write(p, "1")?;
        } else if p.exists() {
            std::fs::remove_file(p)?;
        }
        Ok(())
    })
}

pub fn launched(f: &Fleet) -> Vec<crate::ec2_sim::SimInstance> {
    f.ec2
        .instances()
        .into_iter()
        .filter(|i| i.client_token.is_some())
        .collect()
}

/// A group `db` with a confirmed, serving PRIMARY and (optionally) a
/// REPLICA in another zone.
pub async fn group(f: &Fleet, config: Value, replica: Option<&str>) -> Result<String> {
    let first = f.group("db", config).await?;
    wait_confirmed(f, "db", Some(&first), None).await?;
    wait_serving(f, "db", &first).await?;
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

/// Wait for group `db`'s latest switch to be in `state`; the switch.
pub async fn last_switch(f: &Fleet, state: &str) -> Result<Value> {
    eventually(&format!("the switch {state}"), WAIT, || async {
        let list = f.get("/v1/groups/db/switches").await.ok()?;
        let s = list.as_array()?.last()?.clone();
        (s["state"] == state).then_some(s)
    })
    .await
}

/// Wait for group `db`'s latest switch to be done; it and its new PRIMARY.
pub async fn switch_done(f: &Fleet) -> Result<(Value, String)> {
    let done = last_switch(f, "done").await?;
    let new = done["to_instance"].as_str().context("to_instance")?;
    Ok((done.clone(), new.to_owned()))
}

/// Switch group `db` to `pool` (an operator's request) and wait for it to
/// be done; the switch and its new PRIMARY.
pub async fn switch_to(f: &Fleet, pool: Value) -> Result<(Value, String)> {
    let (st, sw) = f
        .api
        .post(
            "/v1/groups/db/switch",
            &f.coord.admin_token,
            &json!({"pool": pool}),
        )
        .await?;
    ensure!(st.is_success(), "switch: {st} {sw}");
    switch_done(f).await
}

/// Wait for a REPLICA in group `db`; its instance id.
pub async fn wait_replica(f: &Fleet, what: &str) -> Result<String> {
    eventually(what, WAIT, || async {
        let inst = f.get("/v1/instances?group=db").await.ok()?;
        inst.as_array()?.iter().find(|i| i["role"] == "replica")?["instance_id"]
            .as_str()
            .map(str::to_owned)
    })
    .await
}

/// A fleet whose group `db` moves the Elastic IP `allocation` (at `ip`)
/// to each new PRIMARY; its first PRIMARY is serving, and `replica` (if
/// any) is a REPLICA.
pub async fn group_with_address(
    allocation: &str,
    ip: &str,
    replica: Option<&str>,
) -> Result<(Fleet, String)> {
    let f = Fleet::start(FleetOptions::default()).await?;
    f.ec2.add_address(allocation, ip);
    let config = json!({"promotion": {"elastic_ip_allocation_id": allocation}});
    let first = group(&f, config, replica).await?;
    Ok((f, first))
}

pub async fn put_config(f: &Fleet, config: Value) -> Result<(reqwest::StatusCode, Value)> {
    let version = f.get("/v1/groups/db").await?["version"]
        .as_i64()
        .context("version")?;
    let body = json!({"config": config, "version": version});
    f.api
        .put("/v1/groups/db", &f.coord.admin_token, &body)
        .await
}

/// The partition scenario with fencing switched off (a test-build-only
/// coordinator flag): the checker must report the two PRIMARIES. Returns
/// the violations it saw.
pub async fn partition_without_fencing() -> Result<Vec<String>> {
    let mut opts = FleetOptions::default();
    opts.coordinator_args.extend([
        "--lease".into(),
        "3s".into(),
        "--unsafe-silence-is-death".into(),
    ]);
    let f = Fleet::start(opts).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    f.partition(&first)?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving_too(&f, "i-db-r").await?;
    checker.finish().await
}

async fn wait_serving_too(f: &Fleet, id: &str) -> Result<()> {
    eventually(&format!("{id} serving"), WAIT, || async {
        let l = f.ledger().ok()?;
        l.groups
            .get("db")?
            .iter()
            .any(|i| i.instance == id && i.end_ns.is_none())
            .then_some(())
    })
    .await
}

/// A fleet with the default options and a lease of `lease`.
pub async fn fleet_with_lease(lease: &str) -> Result<Fleet> {
    let mut opts = FleetOptions::default();
    opts.coordinator_args
        .extend(["--lease".into(), lease.into()]);
    Fleet::start(opts).await
}
