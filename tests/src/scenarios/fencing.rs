//! The fencing scenarios: each reproduces a way two PRIMARIES (or none)
//! used to happen, and is judged by the workload ledger. See
//! docs/STATE_MACHINE.md, "Fencing".

use super::{
    InvariantChecker, Timings, WAIT, fleet_with_lease, group, wait_confirmed, wait_serving,
};
use crate::fleet::{Fleet, FleetOptions};
use crate::harness::eventually;
use crate::imds_sim::InstanceMeta;
use crate::ledger::{Ledger, monotonic_ns};
use anyhow::{Context, Result, ensure};
use serde_json::json;
use std::time::{Duration, Instant};

/// How `id`'s last serving interval in the ledger ended: `stop` (its
/// demote hook), `killed` (the instance died), or `None` (still serving).
fn how_it_ended(f: &Fleet, id: &str) -> Result<Option<String>> {
    let text = std::fs::read_to_string(&f.ledger).unwrap_or_default();
    let mut last = None;
    for line in text.lines() {
        let l: crate::ledger::Line = serde_json::from_str(line)?;
        if l.instance == id {
            last = (l.event != "start").then_some(l.event);
        }
    }
    Ok(last)
}

/// A group view's epoch.
pub(super) fn group_epoch(v: &serde_json::Value) -> u64 {
    v["epoch"].as_u64().unwrap_or(0)
}

/// A command of `kind` about `instance` finished `done`.
async fn command_done(f: &Fleet, prefix: &str) -> Result<bool> {
    let cmds = f.get("/v1/commands").await?;
    Ok(cmds.as_array().into_iter().flatten().any(|c| {
        c["command"]["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with(prefix))
            && c["state"] == "done"
    }))
}

/// A PRIMARY cut off from the coordinator keeps serving until EC2 has
/// terminated it (fenced by the REPLICA's agent); only then is the REPLICA
/// promoted.
pub async fn partition() -> Result<Timings> {
    let (f, first, checker) = short_lease_group(Some("i-db-r")).await?;
    let cut = Instant::now();
    f.partition(&first)?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving(&f, "db", "i-db-r").await?;
    let took = cut.elapsed().as_secs_f64();
    ensure!(
        how_it_ended(&f, &first)?.as_deref() == Some("killed"),
        "the partitioned PRIMARY served until EC2 terminated it"
    );
    ensure!(
        f.journal_key(&first, "self_demoted_at_ms").is_none(),
        "it never stopped on its own: a partition is not an outage"
    );
    ensure!(
        command_done(&f, &format!("fence-{first}-")).await?,
        "fenced through EC2"
    );
    checker.check().await?;
    Ok(vec![("cut_to_new_primary_serving_s", took)])
}

/// A promote hook slower than the promotion timeout: the candidate is
/// rolled over, its hook killed when it accepts the newer epoch, and the
/// next candidate is promoted only once it is fenced. It never serves.
pub async fn slow_promote() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-slow")).await?;
    f.add_instance("i-db-ok", "c5.large", "us-east-1a", "db")
        .await?;
    super::wait_role(&f, "i-db-ok", "replica").await?;
    f.slow_hook("i-db-slow", "promote", Some(Duration::from_secs(40)))?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    wait_confirmed(&f, "db", Some("i-db-ok"), None).await?;
    wait_serving(&f, "db", "i-db-ok").await?;
    let took = t.elapsed().as_secs_f64();
    let ledger = f.ledger()?;
    ensure!(
        ledger.groups["db"]
            .iter()
            .all(|i| i.instance != "i-db-slow"),
        "the slow candidate never served"
    );
    let cmds = f.get("/v1/commands").await?;
    let slow: Vec<String> = cmds
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["command"]["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("promote-i-db-slow-"))
        })
        .map(|c| c["state"].as_str().unwrap_or("").to_owned())
        .collect();
    ensure!(
        !slow.is_empty() && slow.iter().all(|s| s != "done"),
        "its late promotion never counted: {slow:?}"
    );
    // Long after, its hook would have finished: still not serving.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(f.ledger()?.serving_now("db").map(|i| i.instance.as_str()) == Some("i-db-ok"));
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took)])
}

/// A fleet with a 3 s lease whose group `db` has a serving PRIMARY (and
/// `replica` as REPLICA), watched by the invariant checker from now on.
async fn short_lease_group(replica: Option<&str>) -> Result<(Fleet, String, InvariantChecker)> {
    let f = fleet_with_lease("3s").await?;
    let first = group(&f, json!({}), replica).await?;
    let checker = InvariantChecker::start(&f);
    Ok((f, first, checker))
}

/// A SIGSTOPped agent on a PRIMARY whose workload keeps running: the
/// coordinator cannot demote it, so it fences it through EC2 first.
pub async fn frozen_agent() -> Result<Timings> {
    let (f, first, checker) = short_lease_group(Some("i-db-r")).await?;
    let t = Instant::now();
    f.with_node(&first, |n| n.agent.freeze(true))?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving(&f, "db", "i-db-r").await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(how_it_ended(&f, &first)?.as_deref() == Some("killed"));
    checker.check().await?;
    Ok(vec![("freeze_to_new_primary_serving_s", took)])
}

/// A coordinator frozen for 40 s (longer than the lease and the promotion
/// timeout): the PRIMARY keeps serving throughout, nothing fails over when
/// it resumes, and store and agents agree afterwards.
pub async fn frozen_coordinator() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let before = f.get("/v1/groups/db").await?;
    let checker = InvariantChecker::start(&f);
    let t0 = monotonic_ns();
    f.coord.freeze(true)?;
    tokio::time::sleep(Duration::from_secs(40)).await;
    f.coord.freeze(false)?;
    // Time for the coordinator to catch up and for any mistake to show.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = f.get("/v1/groups/db").await?;
    ensure!(
        group_epoch(&after) == group_epoch(&before) && after["primary"] == before["primary"],
        "nothing failed over: before {before}, after {after}"
    );
    ensure!(
        after["transition"].is_null(),
        "no replacement started: {after}"
    );
    let ledger: Ledger = f.ledger()?;
    let unserved = ledger.unserved_ns("db", t0, ledger.horizon_ns);
    ensure!(
        unserved == 0,
        "the PRIMARY stopped serving for {} ms",
        unserved / 1_000_000
    );
    ensure!(
        ledger.serving_now("db").map(|i| i.instance.as_str()) == Some(first.as_str()),
        "still the same PRIMARY serving"
    );
    let inst = f.get(&format!("/v1/instances/{first}")).await?;
    eventually("store and agent agree", WAIT, || async {
        let role = f.journal_key(&first, "role")?;
        let epoch: u64 = f.journal_key(&first, "role_epoch")?.parse().ok()?;
        (role == "primary" && Some(epoch) == inst["role_epoch"].as_u64()).then_some(())
    })
    .await?;
    checker.check().await?;
    Ok(vec![
        ("frozen_s", 40.0),
        ("unserved_s", unserved as f64 / 1e9),
    ])
}

/// A lone PRIMARY whose instance disappears without a notice, its agent
/// with it: no live agent in the group, so the coordinator's executor
/// launches a replacement, which is promoted once the old one is fenced.
pub async fn lost_primary() -> Result<Timings> {
    let (f, first, checker) = short_lease_group(None).await?;
    let t = Instant::now();
    f.lose(&first);
    let new = wait_confirmed(&f, "db", None, Some(&first)).await?;
    wait_serving(&f, "db", &new).await?;
    let took = t.elapsed().as_secs_f64();
    let cmds = f.get("/v1/commands").await?;
    ensure!(
        cmds.as_array()
            .into_iter()
            .flatten()
            .any(|c| { c["command"]["action"]["kind"] == "launch" && c["agent_id"].is_null() }),
        "the coordinator launched it itself"
    );
    checker.check().await?;
    Ok(vec![("lost_to_new_primary_serving_s", took)])
}

/// The journal of a PRIMARY's agent starts failing: the agent stops the
/// workload (demote hook) and exits; the coordinator fences the silent
/// instance and promotes the REPLICA.
pub async fn journal_failure() -> Result<Timings> {
    let (f, first, checker) = short_lease_group(Some("i-db-r")).await?;
    let t = Instant::now();
    f.with_node(&first, |n| n.journal_faults(true))?;
    let status = eventually("the agent to exit", WAIT, || async {
        f.with_node(&first, |n| Ok(n.agent.exited())).ok().flatten()
    })
    .await?;
    ensure!(
        !status.success(),
        "it exits non-zero for systemd to restart it"
    );
    ensure!(
        how_it_ended(&f, &first)?.as_deref() == Some("stop"),
        "it stopped serving before exiting"
    );
    let stopped = t.elapsed().as_secs_f64();
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving(&f, "db", "i-db-r").await?;
    let took = t.elapsed().as_secs_f64();
    checker.check().await?;
    Ok(vec![
        ("fault_to_stop_s", stopped),
        ("fault_to_new_primary_s", took),
    ])
}

/// A disk cloned from a running agent's instance: the clone's agent sees a
/// journal bound to another instance, sets it aside and registers afresh.
pub async fn shared_identity() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), None).await?;
    let original = f
        .journal_key(&first, "agent_id")
        .context("first agent id")?;
    let t = Instant::now();
    f.add_clone("i-db-clone", &first, "db").await?;
    let clone_id = eventually("the clone registered", WAIT, || async {
        let id = f.journal_key("i-db-clone", "agent_id")?;
        (id != original).then_some(id)
    })
    .await?;
    let took = t.elapsed().as_secs_f64();
    super::wait_role(&f, "i-db-clone", "replica").await?;
    let agents = f.get("/v1/agents?group=db").await?;
    let online: Vec<(&str, &str)> = agents
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["status"] == "online")
        .filter_map(|a| Some((a["agent_id"].as_str()?, a["instance_id"].as_str()?)))
        .collect();
    ensure!(
        online.contains(&(original.as_str(), first.as_str()))
            && online.contains(&(clone_id.as_str(), "i-db-clone")),
        "two instances, two identities: {online:?}"
    );
    let set_aside = std::fs::read_dir(f.root.join("i-db-clone"))?
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("journal.db.of-{first}-"))
        });
    ensure!(set_aside, "the cloned journal was set aside, not used");
    ensure!(f.primary("db").await?.as_deref() == Some(first.as_str()));
    Ok(vec![("clone_to_registered_s", took)])
}

/// A forger holding the fleet's enrollment token (every instance's user
/// data has it) attacks a group with a real serving PRIMARY through raw
/// HTTP: it registers as the PRIMARY's instance (with no identity
/// document, with its own instance's document, and by replaying the
/// PRIMARY's genuine one), then as an instance of its own from which it
/// reports the PRIMARY terminated and claims PRIMARY above the store's
/// epoch, without a grant and with a made-up one. Each is refused (with
/// its code, audited) or counts for nothing: the PRIMARY serves
/// throughout and the ledger shows no overlap.
pub async fn forger() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    let enroll = f.coord.enrollment_token.clone();
    let signed = |i: &str| InstanceMeta::spot(i, "m5.large", "us-east-1b", "db").proof();
    let reg = |i: &str, proof: Option<spot_common::wire::IdentityProof>| {
        json!({"instance_id": i, "instance_type": "m5.large", "availability_zone": "us-east-1b",
               "region": "us-east-1", "lifecycle": "spot", "group": "db", "identity": proof})
    };
    // 1. Take the serving PRIMARY's place (and so kill its agent's token):
    // without a document, with the forger's own, replaying the PRIMARY's.
    for (proof, want_status, want_code) in [
        (None, 403, "identity_required"),
        (Some(signed("i-forged")?), 403, "identity_mismatch"),
        (Some(signed(&first)?), 409, "instance_registered"),
    ] {
        let (st, v) = f
            .api
            .post("/v1/agents/register", &enroll, &reg(&first, proof))
            .await?;
        ensure!(
            st == want_status && v["code"] == want_code,
            "registering as the PRIMARY (want {want_code}): {st} {v}"
        );
    }
    // 2. A foothold: an instance of its own.
    let (st, v) = f
        .api
        .post(
            "/v1/agents/register",
            &enroll,
            &reg("i-forged", Some(signed("i-forged")?)),
        )
        .await?;
    ensure!(st == 201, "{st} {v}");
    let (id, token) = (
        v["agent_id"].as_str().context("agent_id")?.to_owned(),
        v["token"].as_str().context("token")?.to_owned(),
    );
    let beat = |body: serde_json::Value| {
        let (api, path, token) = (
            f.api.clone(),
            format!("/v1/agents/{id}/heartbeat"),
            token.clone(),
        );
        async move { api.post(&path, &token, &body).await }
    };
    let (st, v) =
        beat(json!({"instance_id": "i-forged", "highest_epoch": 0, "healthy": true, "backlog": 0}))
            .await?;
    ensure!(st == 200, "{st} {v}");
    // 3. Report the PRIMARY terminated, as its own DescribeInstances.
    let (st, v) = f
        .api
        .post(
            &format!("/v1/agents/{id}/events"),
            &token,
            &json!({"events": [{"event_id": format!("{id}:1"), "seq": 1, "at_ms": 1,
                "body": {"type": "ec2_states", "instances": [
                    {"instance_id": first, "state": "terminated"}]}}]}),
        )
        .await?;
    ensure!(st == 200, "{st} {v}");
    // 4. Claim PRIMARY above the store's epoch: no grant, a made-up one.
    let epoch = f.get("/v1/groups/db").await?["epoch"]
        .as_u64()
        .context("epoch")?;
    let made_up = format!("g1.00000000.1.{}", "00".repeat(32));
    for (e, grant) in [(epoch + 1, None), (epoch + 2, Some(made_up.as_str()))] {
        let mut body = json!({"instance_id": "i-forged", "role": "primary", "role_epoch": e,
                              "highest_epoch": e, "healthy": true, "backlog": 0});
        if let Some(g) = grant {
            body["grant"] = json!(g);
        }
        let (st, v) = beat(body).await?;
        ensure!(
            st == 200 && v["lease_ms"] == 0 && v["role"] != "primary",
            "a forged claim at {e} was answered {st} {v}"
        );
    }
    let took = t.elapsed().as_secs_f64();
    // The planner has looked (several reconcile rounds): nothing moved.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let g = f.get("/v1/groups/db").await?;
    ensure!(
        g["primary"] == first.as_str() && g["epoch"] == epoch && g["transition"].is_null(),
        "the group did not move: {g}"
    );
    ensure!(
        f.ledger()?.serving_now("db").map(|i| i.instance.as_str()) == Some(first.as_str()),
        "the real PRIMARY kept serving"
    );
    ensure!(
        f.audited(&format!("instance:{first}"), "registration_refused")
            .await?
            && f.audited(&format!("instance:{first}"), "identity_refused")
                .await?
            && f.audited("instance:i-forged", "claim_refused").await?,
        "each refusal is audited"
    );
    checker.check().await?;
    Ok(vec![("attacks_s", took)])
}

/// The coordinator's wall clock stepped by +5 min, then by -5 min, each
/// time as an interruption of a PRIMARY with a warm REPLICA arrives
/// (test builds only: the clock offset file). Commands carry budgets the
/// agent measures on its own monotonic clock, so the new PRIMARY serves
/// within seconds either way (a wall-clock deadline would be refused
/// as past and the group would wait for a launch).
pub async fn clock_step() -> Result<Timings> {
    let mut out = Vec::new();
    for (name, step_ms) in [
        ("step_forward_notice_to_primary_s", 300_000i64),
        ("step_back_notice_to_primary_s", -300_000),
    ] {
        let f = Fleet::start(FleetOptions::default()).await?;
        let first = group(&f, json!({}), Some("i-db-r")).await?;
        let checker = InvariantChecker::start(&f);
        let t = Instant::now();
        f.interrupt(&first, Duration::from_secs(120))?;
        // The coordinator sees the step within 200 ms: mid-failover.
        f.coordinator_clock_offset(step_ms)?;
        wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
        wait_serving(&f, "db", "i-db-r").await?;
        let took = t.elapsed().as_secs_f64();
        ensure!(
            took <= 10.0,
            "{name}: the new PRIMARY served {took:.2} s after the notice"
        );
        checker.check().await?;
        out.push((name, took));
    }
    Ok(out)
}
