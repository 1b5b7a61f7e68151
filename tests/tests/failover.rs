#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Failover flows end to end: real coordinator, real agents (one process
//! per simulated instance), IMDS and EC2 simulators.

use serde_json::json;
use spot_tests::fleet::{Fleet, FleetOptions};
use spot_tests::harness::eventually;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

const WAIT: Duration = Duration::from_secs(60);

/// Samples the store and every running agent's journal every 50 ms: fails
/// on two PRIMARIES in a group (in either view) or an epoch going backwards.
fn invariant_checker(
    f: &Fleet,
    group: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (api, adm, g, s) = (
        f.api.clone(),
        f.coord.admin_token.clone(),
        group.to_owned(),
        Arc::clone(&stop),
    );
    let nodes = Arc::clone(&f.nodes);
    let h = tokio::spawn(async move {
        let mut problems = Vec::new();
        let mut last_epoch = 0;
        while !s.load(Ordering::Relaxed) {
            let inst = api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/instances?group={g}"),
                    Some(&adm),
                    None,
                )
                .await;
            if let Ok((_, inst)) = inst {
                let n = inst
                    .as_array()
                    .map(|a| a.iter().filter(|i| i["role"] == "primary").count())
                    .unwrap_or(0);
                if n > 1 {
                    problems.push(format!("{n} primaries in the store: {inst}"));
                }
            }
            let gv = api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/groups/{g}"),
                    Some(&adm),
                    None,
                )
                .await;
            if let Ok((_, gv)) = gv
                && let Some(e) = gv["epoch"].as_u64()
            {
                if e < last_epoch {
                    problems.push(format!("epoch went back from {last_epoch} to {e}"));
                }
                last_epoch = e;
            }
            if let Some(p) = spot_tests::fleet::agent_primaries(&nodes).get(&g)
                && p.len() > 1
            {
                problems.push(format!("agents that believe they are PRIMARY: {p:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        problems
    });
    (stop, h)
}

async fn finish(stop: Arc<AtomicBool>, h: tokio::task::JoinHandle<Vec<String>>) {
    stop.store(true, Ordering::Relaxed);
    let problems = h.await.unwrap();
    assert!(problems.is_empty(), "invariant violations: {problems:?}");
}

async fn wait_confirmed(f: &Fleet, group: &str, want: Option<&str>, not: Option<&str>) -> String {
    eventually("confirmed primary", WAIT, || async {
        let p = f.confirmed_primary(group).await.ok().flatten()?;
        let ok = want.is_none_or(|w| w == p) && not.is_none_or(|n| n != p);
        ok.then_some(p)
    })
    .await
    .unwrap()
}

async fn wait_role(f: &Fleet, id: &str, role: &str) {
    eventually(&format!("{id} to be {role}"), WAIT, || async {
        (f.role(id).await.ok()? == role).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interruption_with_a_warm_replica_promotes_it_and_moves_the_address() {
    let f = Fleet::start(FleetOptions::default()).await.unwrap();
    f.ec2.add_address("eipalloc-db", "203.0.113.5");
    let first = f
        .group(
            "db",
            json!({"promotion": {"elastic_ip_allocation_id": "eipalloc-db"}}),
        )
        .await
        .unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    assert_eq!(
        f.ec2.address("eipalloc-db").unwrap().instance_id.as_deref(),
        Some(first.as_str())
    );
    f.add_instance("i-db-replica", "m5.large", "us-east-1b", "db")
        .await
        .unwrap();
    wait_role(&f, "i-db-replica", "replica").await;
    let (stop, h) = invariant_checker(&f, "db");

    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120)).unwrap();
    wait_confirmed(&f, "db", Some("i-db-replica"), None).await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "warm failover took {took:?}"
    );
    assert_eq!(f.role(&first).await.unwrap(), "zombie");
    assert_eq!(
        f.ec2.address("eipalloc-db").unwrap().instance_id.as_deref(),
        Some("i-db-replica")
    );
    // The old PRIMARY ran its demote.
    eventually("old primary demoted itself", WAIT, || async {
        let nodes = f.nodes.lock().unwrap();
        (nodes.get(&first)?.agent.status().ok()?["role"] == "zombie").then_some(())
    })
    .await
    .unwrap();
    finish(stop, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interruption_without_replica_launches_and_promotes_before_the_deadline() {
    let f = Fleet::start(FleetOptions {
        boot_delay: Duration::from_secs(3),
        ..FleetOptions::default()
    })
    .await
    .unwrap();
    let first = f.group("db", json!({})).await.unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    let (stop, h) = invariant_checker(&f, "db");
    let deadline = f.interrupt(&first, Duration::from_secs(40)).unwrap();
    let new = wait_confirmed(&f, "db", None, Some(&first)).await;
    assert!(
        SystemTime::now() < deadline,
        "new PRIMARY {new} confirmed after the notice time"
    );
    // Exactly one emergency launch, never into the interrupted pool.
    let launched: Vec<_> = f
        .ec2
        .instances()
        .into_iter()
        .filter(|i| i.client_token.is_some())
        .collect();
    assert_eq!(launched.len(), 1, "{launched:?}");
    assert!(
        !(launched[0].instance_type == "m5.large" && launched[0].availability_zone == "us-east-1a")
    );
    finish(stop, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_launches_one_replica_and_is_damped() {
    let f = Fleet::start(FleetOptions::default()).await.unwrap();
    let first = f.group("db", json!({})).await.unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    f.rebalance(&first).unwrap();
    let replica = eventually("a replica from the rebalance", WAIT, || async {
        let inst = f.get("/v1/instances?group=db").await.ok()?;
        inst.as_array()?.iter().find(|i| i["role"] == "replica")?["instance_id"]
            .as_str()
            .map(str::to_owned)
    })
    .await
    .unwrap();
    assert_ne!(replica, first);
    assert_eq!(
        f.primary("db").await.unwrap().as_deref(),
        Some(first.as_str()),
        "a rebalance does not switch by itself"
    );
    // A second recommendation inside the window launches nothing more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.rebalance(&first).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let launched = f
        .ec2
        .instances()
        .into_iter()
        .filter(|i| i.client_token.is_some())
        .count();
    assert_eq!(launched, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_promotion_rolls_over_to_the_next_candidate() {
    let f = Fleet::start(FleetOptions::default()).await.unwrap();
    let first = f.group("db", json!({})).await.unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    // Preferred candidate (another zone) whose promote hook fails...
    f.add_instance("i-db-bad", "m5.large", "us-east-1b", "db")
        .await
        .unwrap();
    // ... and a second one in the same zone, another type.
    f.add_instance("i-db-good", "c5.large", "us-east-1a", "db")
        .await
        .unwrap();
    wait_role(&f, "i-db-bad", "replica").await;
    wait_role(&f, "i-db-good", "replica").await;
    {
        use std::os::unix::fs::PermissionsExt;
        let nodes = f.nodes.lock().unwrap();
        let hook = nodes["i-db-bad"].agent.hooks_dir.join("promote");
        std::fs::write(&hook, "#!/bin/sh\necho cannot serve >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (stop, h) = invariant_checker(&f, "db");
    f.interrupt(&first, Duration::from_secs(120)).unwrap();
    wait_confirmed(&f, "db", Some("i-db-good"), None).await;
    // It never became PRIMARY: it stays a REPLICA, fenced at a newer epoch.
    assert_eq!(f.role("i-db-bad").await.unwrap(), "replica");
    let cmds = f.get("/v1/commands").await.unwrap();
    let failed = cmds.as_array().unwrap().iter().any(|c| {
        c["command"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("promote-i-db-bad-")
            && c["state"] == "failed"
    });
    assert!(failed, "the bad candidate's promotion was tried and failed");
    finish(stop, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_switch_moves_the_primary_and_records_downtime() {
    let f = Fleet::start(FleetOptions::default()).await.unwrap();
    f.ec2.add_address("eipalloc-sw", "203.0.113.7");
    let first = f
        .group(
            "db",
            json!({"promotion": {"elastic_ip_allocation_id": "eipalloc-sw"}}),
        )
        .await
        .unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    let (stop, h) = invariant_checker(&f, "db");
    let (st, sw) = f.api.call(reqwest::Method::POST, "/v1/groups/db/switch", Some(&f.coord.admin_token),
        Some(&json!({"pool": {"instance_type": "c5.large", "availability_zone": "us-east-1a"}, "request_id": "sw-1"}))).await.unwrap();
    assert_eq!(st, 200, "{sw}");
    let done = eventually("switch done", WAIT, || async {
        let list = f.get("/v1/groups/db/switches").await.ok()?;
        let s = list.as_array()?.first()?.clone();
        (s["state"] == "done").then_some(s)
    })
    .await
    .unwrap();
    let new = done["to_instance"].as_str().unwrap().to_owned();
    assert_eq!(
        f.get(&format!("/v1/instances/{new}")).await.unwrap()["instance_type"],
        "c5.large"
    );
    wait_confirmed(&f, "db", Some(&new), None).await;
    assert_eq!(f.role(&first).await.unwrap(), "zombie");
    assert_eq!(
        f.ec2.address("eipalloc-sw").unwrap().instance_id.as_deref(),
        Some(new.as_str())
    );
    let downtime = done["downtime_ms"].as_i64().unwrap();
    assert!((0..10_000).contains(&downtime), "downtime {downtime} ms");
    finish(stop, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_replica_keeps_one_and_off_retires_it() {
    let f = Fleet::start(FleetOptions::default()).await.unwrap();
    let first = f.group("db", json!({})).await.unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    let adm = f.coord.admin_token.clone();
    let version = f.get("/v1/groups/db").await.unwrap()["version"]
        .as_i64()
        .unwrap();
    let (st, g) = f.api.call(reqwest::Method::PUT, "/v1/groups/db", Some(&adm),
        Some(&json!({"config": {"pools": spot_tests::fleet::default_pools(), "manual_replica": true}, "version": version}))).await.unwrap();
    assert_eq!(st, 200, "{g}");
    let replica = eventually("one replica", WAIT, || async {
        let inst = f.get("/v1/instances?group=db").await.ok()?;
        inst.as_array()?.iter().find(|i| i["role"] == "replica")?["instance_id"]
            .as_str()
            .map(str::to_owned)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let launched = f
        .ec2
        .instances()
        .into_iter()
        .filter(|i| i.client_token.is_some())
        .count();
    assert_eq!(launched, 1, "exactly one REPLICA");
    // Auto-switch is refused while manual replica is on.
    let version = f.get("/v1/groups/db").await.unwrap()["version"]
        .as_i64()
        .unwrap();
    let (st, v) = f.api.call(reqwest::Method::PUT, "/v1/groups/db", Some(&adm),
        Some(&json!({"config": {"pools": spot_tests::fleet::default_pools(), "manual_replica": true, "auto_switch": true}, "version": version}))).await.unwrap();
    assert_eq!(
        (st.as_u16(), v["rule"].as_str()),
        (409, Some("auto_switch_excludes_manual_replica"))
    );
    // OFF retires it.
    let (st, v) = f.api.call(reqwest::Method::PUT, "/v1/groups/db", Some(&adm),
        Some(&json!({"config": {"pools": spot_tests::fleet::default_pools(), "manual_replica": false}, "version": version}))).await.unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(f.role(&replica).await.unwrap(), "terminated");
    eventually("the replica terminated in EC2", WAIT, || async {
        let i = f
            .ec2
            .instances()
            .into_iter()
            .find(|i| i.instance_id == replica)?;
        (i.state == "shutting-down" || i.state == "terminated").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_terminated_by_ec2_is_marked_terminated_and_keeps_history() {
    let f = Fleet::start(FleetOptions::default()).await.unwrap();
    let first = f.group("db", json!({})).await.unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    f.add_instance("i-db-r", "m5.large", "us-east-1b", "db")
        .await
        .unwrap();
    wait_role(&f, "i-db-r", "replica").await;
    // EC2 takes the replica away; its agent dies with it. The PRIMARY's
    // agent sees it in DescribeInstances.
    f.ec2.set_state("i-db-r", "terminated");
    f.nodes
        .lock()
        .unwrap()
        .get_mut("i-db-r")
        .unwrap()
        .agent
        .kill9();
    wait_role(&f, "i-db-r", "terminated").await;
    let audit = f
        .get("/v1/audit?entity=instance:i-db-r&limit=100")
        .await
        .unwrap();
    let actions: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        actions.contains(&"registered_healthy".to_owned())
            && actions.contains(&"instance_gone".to_owned()),
        "{actions:?}"
    );
    assert_eq!(
        f.primary("db").await.unwrap().as_deref(),
        Some(first.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_promotion_resumes_it() {
    let mut f = Fleet::start(FleetOptions::default()).await.unwrap();
    let first = f.group("db", json!({})).await.unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    f.add_instance("i-db-r", "m5.large", "us-east-1b", "db")
        .await
        .unwrap();
    wait_role(&f, "i-db-r", "replica").await;
    {
        // A slow promote hook keeps the promotion in flight.
        use std::os::unix::fs::PermissionsExt;
        let nodes = f.nodes.lock().unwrap();
        let hook = nodes["i-db-r"].agent.hooks_dir.join("promote");
        std::fs::write(&hook, "#!/bin/sh\nsleep 2\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (stop, h) = invariant_checker(&f, "db");
    f.interrupt(&first, Duration::from_secs(120)).unwrap();
    eventually("promotion in flight", WAIT, || async {
        let g = f.get("/v1/groups/db").await.ok()?;
        (g["transition"]["phase"] == "promoting").then_some(())
    })
    .await
    .unwrap();
    f.coord.restart_same_port().unwrap();
    wait_confirmed(&f, "db", Some("i-db-r"), None).await;
    assert_eq!(f.role(&first).await.unwrap(), "zombie");
    assert_eq!(
        f.get("/v1/groups/db").await.unwrap()["transition"],
        serde_json::Value::Null
    );
    finish(stop, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_primary_demotes_itself_before_the_replacement_is_promoted() {
    let f = Fleet::start(FleetOptions {
        coordinator_args: vec![
            "--heartbeat-interval".into(),
            "1s".into(),
            "--lease".into(),
            "3s".into(),
        ],
        ..FleetOptions::default()
    })
    .await
    .unwrap();
    let first = f.group("db", json!({})).await.unwrap();
    wait_confirmed(&f, "db", Some(&first), None).await;
    f.add_instance("i-db-r", "m5.large", "us-east-1b", "db")
        .await
        .unwrap();
    wait_role(&f, "i-db-r", "replica").await;
    let (stop, h) = invariant_checker(&f, "db");
    let cut_at = spot_tests::now_ms();
    f.partition(&first).unwrap();
    wait_confirmed(&f, "db", Some("i-db-r"), None).await;
    let demoted_at: i64 = f
        .journal_key(&first, "self_demoted_at_ms")
        .expect("the partitioned PRIMARY demoted itself")
        .parse()
        .unwrap();
    let audit = f.get("/v1/audit?entity=group:db&limit=1000").await.unwrap();
    let granted_at = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|a| a["action"] == "grant")
        .unwrap()["at_ms"]
        .as_i64()
        .unwrap();
    assert!(
        demoted_at < granted_at,
        "self-demotion at {demoted_at}, replacement granted at {granted_at}"
    );
    assert!(
        demoted_at - cut_at <= 4_500,
        "demoted {} ms after the cut, lease is 3 s",
        demoted_at - cut_at
    );
    assert_eq!(f.journal_key(&first, "role").as_deref(), Some("zombie"));
    finish(stop, h).await;
}
