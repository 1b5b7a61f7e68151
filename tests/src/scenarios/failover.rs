//! The failover flows: rebalance, interruption with and without a
//! REPLICA, a failed promotion, switch, manual replica, an instance EC2
//! took away, a coordinator killed mid-promotion.

use super::{
    InvariantChecker, Timings, WAIT, group, hook_flag, launched, put_config, wait_confirmed,
    wait_role, wait_serving,
};
use crate::fleet::{Fleet, FleetOptions, default_pools};
use crate::harness::eventually;
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime};

pub async fn rebalance() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), None).await?;
    let t = Instant::now();
    f.rebalance(&first)?;
    let replica = super::wait_replica(&f, "a replica from the rebalance").await?;
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
    f.check_no_overlap()?;
    Ok(vec![("notice_to_replica_registered_s", took)])
}

/// Scheduled maintenance on a lone PRIMARY: a REPLICA is launched at
/// once, and the PRIMARY switched to it `maintenance_lead` before the
/// maintenance's NotBefore: not earlier, never after.
pub async fn maintenance() -> Result<Timings> {
    let lead = Duration::from_secs(8);
    let mut opts = FleetOptions::default();
    opts.coordinator_args
        .extend(["--maintenance-lead".into(), "8s".into()]);
    let f = Fleet::start(opts).await?;
    let first = group(&f, json!({}), None).await?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    let not_before = f.maintenance(&first, Duration::from_secs(25))?;
    let replica = super::wait_replica(&f, "a replica for the maintenance").await?;
    let prepared = t.elapsed().as_secs_f64();
    ensure!(
        f.primary("db").await?.as_deref() == Some(first.as_str()),
        "no switch before the lead time"
    );
    let new = wait_confirmed(&f, "db", Some(&replica), None).await?;
    let now = SystemTime::now();
    ensure!(
        now < not_before,
        "switched after the maintenance's NotBefore"
    );
    let early = not_before.duration_since(now)?;
    // NotBefore has whole seconds; allow for them and the reconcile pass.
    ensure!(
        early <= lead + Duration::from_secs(3),
        "switched {early:?} before NotBefore, earlier than the {lead:?} lead"
    );
    ensure!(launched(&f).len() == 1, "one launch: {:?}", launched(&f));
    wait_serving(&f, "db", &new).await?;
    checker.check().await?;
    Ok(vec![
        ("notice_to_replica_s", prepared),
        ("switched_before_not_before_s", early.as_secs_f64()),
    ])
}

pub async fn warm_failover() -> Result<Timings> {
    let (f, first) =
        super::group_with_address("eipalloc-db", "203.0.113.5", Some("i-db-replica")).await?;
    let checker = InvariantChecker::start(&f);
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    wait_confirmed(&f, "db", Some("i-db-replica"), None).await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(f.role(&first).await? == "zombie");
    ensure!(
        f.address_holder("eipalloc-db").as_deref() == Some("i-db-replica"),
        "the address moved"
    );
    wait_serving(&f, "db", "i-db-replica").await?;
    eventually("the old PRIMARY demoted", WAIT, || async {
        (f.journal_key(&first, "role")? == "zombie").then_some(())
    })
    .await?;
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took)])
}

pub async fn cold_failover() -> Result<Timings> {
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
    wait_serving(&f, "db", &new).await?;
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took), ("boot_s", 3.0)])
}

pub async fn failed_promotion() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-bad")).await?;
    f.add_instance("i-db-good", "c5.large", "us-east-1a", "db")
        .await?;
    wait_role(&f, "i-db-good", "replica").await?;
    // The preferred candidate (another zone) cannot serve.
    hook_flag(&f, "i-db-bad", "promote.fail", true)?;
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
    wait_serving(&f, "db", "i-db-good").await?;
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took)])
}

/// A lone PRIMARY whose replacement boots slower than the notice: it
/// registers 20 s after the reclaim, its promote hook takes 3 s. It must
/// still become PRIMARY within the promote budget (+ 5 s) of registering,
/// its hook run once, and nothing more be launched.
pub async fn late_replacement() -> Result<Timings> {
    let lead = Duration::from_secs(8);
    let f = Fleet::start(FleetOptions {
        boot_delay: lead + Duration::from_secs(19),
        ..FleetOptions::default()
    })
    .await?;
    let first = group(&f, json!({}), None).await?;
    let checker = InvariantChecker::start(&f);
    f.launch_like(crate::fleet::Launched {
        boot_delay: None,
        promote_delay: Some(Duration::from_secs(3)),
    });
    let reclaim = f.interrupt(&first, lead)?;
    let new = wait_confirmed(&f, "db", None, Some(&first)).await?;
    let confirmed_ms = crate::now_ms();
    let agents = f.get("/v1/agents").await?;
    let registered_ms = agents
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["instance_id"] == new.as_str())
        .and_then(|a| a["registered_at_ms"].as_i64())
        .context("the replacement's registration")?;
    let reclaim_ms = i64::try_from(reclaim.duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
    let after_reclaim_s = (registered_ms - reclaim_ms) as f64 / 1000.0;
    let to_primary_s = (confirmed_ms - registered_ms) as f64 / 1000.0;
    ensure!(
        after_reclaim_s > 15.0,
        "the replacement registered {after_reclaim_s:.1} s after the reclaim, not after a slow boot"
    );
    // Promote budget: promotion timeout (15 s here) - 5 s.
    ensure!(
        to_primary_s <= 10.0 + 5.0,
        "PRIMARY {to_primary_s:.1} s after registering"
    );
    wait_serving(&f, "db", &new).await?;
    let hooks =
        std::fs::read_to_string(f.root.join(&new).join("hooks").join(crate::fleet::HOOK_LOG))
            .unwrap_or_default();
    let promotes = hooks.lines().filter(|l| l.starts_with("promote ")).count();
    ensure!(
        promotes == 1,
        "the promote hook ran {promotes} times: {hooks}"
    );
    let l = launched(&f);
    ensure!(l.len() == 1, "one launch, no more: {l:?}");
    checker.check().await?;
    Ok(vec![
        ("registered_after_reclaim_s", after_reclaim_s),
        ("registration_to_primary_s", to_primary_s),
    ])
}

pub async fn switch() -> Result<Timings> {
    let (f, first) = super::group_with_address("eipalloc-sw", "203.0.113.7", None).await?;
    let checker = InvariantChecker::start(&f);
    let (st, sw) = f
        .api
        .call(reqwest::Method::POST, "/v1/groups/db/switch", Some(&f.coord.admin_token),
            Some(&json!({"pool": {"instance_type": "c5.large", "availability_zone": "us-east-1a"}, "request_id": "sw-1"})))
        .await?;
    ensure!(st.is_success(), "switch refused: {st} {sw}");
    let (done, new) = super::switch_done(&f).await?;
    ensure!(f.get(&format!("/v1/instances/{new}")).await?["instance_type"] == "c5.large");
    wait_confirmed(&f, "db", Some(&new), None).await?;
    ensure!(f.role(&first).await? == "zombie");
    ensure!(f.address_holder("eipalloc-sw") == Some(new.clone()));
    let downtime = done["downtime_ms"].as_i64().context("downtime recorded")?;
    ensure!((0..10_000).contains(&downtime), "downtime {downtime} ms");
    wait_serving(&f, "db", &new).await?;
    checker.check().await?;
    Ok(vec![("downtime_s", downtime as f64 / 1000.0)])
}

/// Switches never wedge a group: one whose launch fails (no capacity)
/// ends FAILED with the old PRIMARY serving, and the next one works; one
/// cancelled before the replacement leaves the PRIMARY alone; a pool
/// outside the group's is refused.
pub async fn switch_failure() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), None).await?;
    let checker = InvariantChecker::start(&f);
    let switch = |pool: Value, rid: &str| {
        let body = json!({"pool": pool, "request_id": rid});
        let f = &f;
        async move {
            f.api
                .post("/v1/groups/db/switch", &f.coord.admin_token, &body)
                .await
        }
    };
    let c5 = json!({"instance_type": "c5.large", "availability_zone": "us-east-1a"});
    let (st, v) = switch(
        json!({"instance_type": "r5.large", "availability_zone": "us-east-1a"}),
        "sw-out",
    )
    .await?;
    ensure!(st == 400, "a pool outside the group's is refused: {st} {v}");

    f.ec2
        .inject("RunInstances", "InsufficientInstanceCapacity", 500, 10);
    let t = Instant::now();
    let (st, v) = switch(c5.clone(), "sw-1").await?;
    ensure!(st.is_success(), "{st} {v}");
    let failed = super::last_switch(&f, "failed").await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(
        failed["failure"] == "the switch's launch failed",
        "{failed}"
    );
    ensure!(f.primary("db").await?.as_deref() == Some(first.as_str()));
    wait_serving(&f, "db", &first).await?;
    f.ec2.clear_faults();

    // Cancelled before its instance is ready: nothing else changes.
    let (st, v) = switch(c5.clone(), "sw-2").await?;
    ensure!(st.is_success(), "{st} {v}");
    let cancel = json!({"request_id": "cancel-2"});
    let (st, v) = f
        .api
        .post("/v1/groups/db/switch/cancel", &f.coord.admin_token, &cancel)
        .await?;
    ensure!(st.is_success(), "cancel: {st} {v}");
    ensure!(
        v["state"] == "failed" && v["failure"] == "cancelled by an operator",
        "{v}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(f.primary("db").await?.as_deref() == Some(first.as_str()));
    wait_serving(&f, "db", &first).await?;

    // The next switch works.
    let (st, v) = switch(c5, "sw-3").await?;
    ensure!(st.is_success(), "{st} {v}");
    let (_, new) = super::switch_done(&f).await?;
    wait_serving(&f, "db", &new).await?;
    checker.check().await?;
    Ok(vec![("switch_request_to_failed_s", took)])
}

/// A ZOMBIE left by a switch is terminated once its group's retention
/// has passed (here 4 s), through EC2, with its history kept.
pub async fn zombie_cleanup() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({"zombie_retention_s": 4}), None).await?;
    let checker = InvariantChecker::start(&f);
    let pool = json!({"instance_type": "c5.large", "availability_zone": "us-east-1a"});
    let body = json!({"pool": pool, "request_id": "sw-z"});
    let (st, sw) = f
        .api
        .post("/v1/groups/db/switch", &f.coord.admin_token, &body)
        .await?;
    ensure!(st.is_success(), "switch refused: {st} {sw}");
    super::wait_role(&f, &first, "zombie").await?;
    let t = Instant::now();
    eventually("the zombie terminated in EC2", WAIT, || async {
        let gone = f
            .ec2
            .instances()
            .iter()
            .any(|i| i.instance_id == first && i.state == "terminated");
        (gone && f.role(&first).await.ok()? == "terminated").then_some(())
    })
    .await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(took >= 3.0, "terminated before its retention: {took:.1} s");
    ensure!(
        f.audited(&format!("instance:{first}"), "retire").await?,
        "the retirement is audited"
    );
    checker.check().await?;
    Ok(vec![("zombie_to_terminated_s", took)])
}

pub async fn manual_replica() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    group(&f, json!({}), None).await?;
    let t = Instant::now();
    let (st, g) = put_config(
        &f,
        json!({"pools": default_pools(), "manual_replica": true}),
    )
    .await?;
    ensure!(st.is_success(), "{g}");
    let replica = super::wait_replica(&f, "one replica").await?;
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

pub async fn terminated() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let t = Instant::now();
    // EC2 takes the replica away; its agent dies with it. The PRIMARY's
    // agent sees it in DescribeInstances.
    f.lose("i-db-r");
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

pub async fn coordinator_crash() -> Result<Timings> {
    let mut f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    // A slow promote hook keeps the promotion in flight.
    f.slow_hook("i-db-r", "promote", Some(Duration::from_secs(2)))?;
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
    wait_serving(&f, "db", "i-db-r").await?;
    checker.check().await?;
    Ok(vec![("notice_to_new_primary_s", took)])
}
