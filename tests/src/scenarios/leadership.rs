//! Several coordinators on one PostgreSQL: one leads, the others follow.
//! Each flow starts three coordinators (whatever store the run chose:
//! these need PostgreSQL) with a 3 s leader lease, and is judged, as every
//! scenario, by the workloads' ledger, plus the audit log: the leader
//! term of its entries never goes back (no write of a deposed leader
//! landed after its successor's).

use super::{InvariantChecker, Timings, WAIT, group, wait_confirmed, wait_serving};
use crate::fleet::{Fleet, FleetOptions, StoreChoice};
use crate::harness::{Api, eventually};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The lease these flows run with: short, so a takeover is seconds.
pub const LEASE: Duration = Duration::from_secs(3);

fn options() -> FleetOptions {
    let mut opts = crate::fleet::STORE.sync_scope(
        StoreChoice {
            postgres: true,
            coordinators: 3,
        },
        FleetOptions::default,
    );
    opts.coordinator_args
        .extend(["--leader-lease".into(), "3s".into()]);
    opts
}

/// A fleet of three coordinators whose group `db` has a serving PRIMARY
/// and, optionally, a REPLICA.
pub async fn cluster(replica: Option<&str>) -> Result<(Fleet, String)> {
    let f = Fleet::start(options()).await?;
    let leader = wait_leader(&f, None).await?;
    ensure!(leader == 0, "the first coordinator started leads");
    let first = group(&f, json!({}), replica).await?;
    Ok((f, first))
}

/// The leading coordinator once it is not `not`.
pub async fn wait_leader(f: &Fleet, not: Option<usize>) -> Result<usize> {
    eventually("a leader", WAIT, || async {
        f.leader().await.filter(|l| Some(*l) != not)
    })
    .await
}

/// Nanoseconds since `t0` when nobody served group `db`.
fn unserved_since(f: &Fleet, t0: u64) -> Result<u64> {
    let now = crate::ledger::monotonic_ns();
    Ok(f.ledger()?.unserved_ns("db", t0, now))
}

/// The leader terms of the audit log's entries never go back.
pub async fn check_terms(f: &Fleet) -> Result<i64> {
    let mut after = 0;
    let mut last = 0i64;
    loop {
        let page = f
            .get(&format!("/v1/audit?after_id={after}&limit=1000"))
            .await?;
        let entries = page.as_array().context("audit")?;
        for e in entries {
            let term = e["leader_epoch"].as_i64().context("leader_epoch")?;
            ensure!(
                term >= last,
                "audit entry {} was written in leader term {term} after one of term {last}: a deposed leader wrote",
                e["id"]
            );
            last = term;
            after = e["id"].as_i64().context("id")?;
        }
        if entries.len() < 1000 {
            return Ok(last);
        }
    }
}

/// Until a write lands: creates a group named `probe` through any
/// coordinator; the time it took.
pub async fn first_write(f: &Fleet, probe: &str) -> Result<Duration> {
    let t = Instant::now();
    eventually("a write to be accepted", WAIT, || async {
        let (st, _) = f
            .api
            .post(
                "/v1/groups",
                &f.coord.admin_token,
                &json!({"name": probe, "config": {"pools": crate::fleet::default_pools()}}),
            )
            .await
            .ok()?;
        (st.is_success() || st == 409).then_some(())
    })
    .await?;
    Ok(t.elapsed())
}

async fn healthz(api: &Api) -> Result<Value> {
    Ok(api
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await?
        .1)
}

/// One leader, two followers: the followers say who leads, send agents
/// there (307), proxy operators there, serve their own metrics; a change
/// made through a follower lands.
pub async fn follower_routes() -> Result<Timings> {
    let (f, _first) = cluster(None).await?;
    let leader_url = f.coord.base.clone();
    for c in &f.peers {
        let h = healthz(&c.api()).await?;
        ensure!(h["leader"] == false, "a follower says it leads: {h}");
        ensure!(h["leader_url"] == leader_url.as_str(), "{h}");
        ensure!(h["store"] == "postgres", "{h}");
        // The agent API: a redirect, its token left to the agent.
        let raw = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let resp = raw
            .post(format!("{}/v1/agents/a-1/heartbeat", c.base))
            .bearer_auth("whatever")
            .json(&json!({}))
            .send()
            .await?;
        ensure!(
            resp.status() == 307,
            "agent API on a follower: {}",
            resp.status()
        );
        let to = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            to == format!("{leader_url}/v1/agents/a-1/heartbeat"),
            "redirected to {to}"
        );
        // The operator API: proxied, with the caller's token.
        let (st, groups) = c.api().get("/v1/groups", &f.coord.admin_token).await?;
        ensure!(st == 200, "operator API through a follower: {st} {groups}");
        let (st, _) = c.api().get("/v1/groups", "not-a-token").await?;
        ensure!(st == 401, "the leader still checks the token: {st}");
        let metrics = reqwest::get(format!("{}/metrics", c.base))
            .await?
            .text()
            .await?;
        ensure!(
            metrics.contains("spot_coordinator_leader 0"),
            "a follower's metrics say it follows"
        );
    }
    let (st, v) = f.peers[1]
        .api()
        .post(
            "/v1/groups",
            &f.coord.admin_token,
            &json!({"name": "through-a-follower", "config": {"pools": crate::fleet::default_pools()}}),
        )
        .await?;
    ensure!(st.is_success(), "a change through a follower: {st} {v}");
    let (_, g) = f
        .coord
        .api()
        .get("/v1/groups/through-a-follower", &f.coord.admin_token)
        .await?;
    ensure!(g["name"] == "through-a-follower", "{g}");
    check_terms(&f).await?;
    Ok(vec![])
}

/// The leader killed (kill -9): a follower leads within the lease and a
/// look, a healthy PRIMARY serves on throughout, and the new leader
/// fails over the next interruption.
pub async fn leader_kill() -> Result<Timings> {
    let (mut f, first) = cluster(Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    let t0 = crate::ledger::monotonic_ns();
    let t = Instant::now();
    f.coord.kill9();
    let took = first_write(&f, "probe").await?;
    let leader = wait_leader(&f, Some(0)).await?;
    ensure!(
        unserved_since(&f, t0)? == 0,
        "the PRIMARY stopped serving during the leader change"
    );
    ensure!(
        f.primary("db").await?.as_deref() == Some(first.as_str()),
        "the PRIMARY changed with the leader"
    );
    let elected = t.elapsed();
    // The new leader fails over an interruption.
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    let new = wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    let failover = t.elapsed().as_secs_f64();
    wait_serving(&f, "db", &new).await?;
    // The old leader comes back as a follower.
    f.coord.start_again()?;
    eventually("the old leader to follow", WAIT, || async {
        let h = healthz(&f.coord.api()).await.ok()?;
        (h["leader"] == false && h["leader_url"].is_string()).then_some(())
    })
    .await?;
    ensure!(f.leader().await == Some(leader), "the leader changed again");
    checker.check().await?;
    check_terms(&f).await?;
    Ok(vec![
        ("kill_to_write_accepted_s", took.as_secs_f64()),
        ("kill_to_leader_seen_s", elected.as_secs_f64()),
        ("notice_to_new_primary_s", failover),
    ])
}

/// The leader frozen (SIGSTOP) past its lease: a follower takes over;
/// thawed, the old leader finds its term over and follows, and nothing it
/// still tried to write landed (the audit's terms never go back).
pub async fn leader_freeze() -> Result<Timings> {
    let (f, first) = cluster(Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    let t0 = crate::ledger::monotonic_ns();
    f.coord.freeze(true)?;
    let t = Instant::now();
    let leader = wait_leader(&f, Some(0)).await?;
    let took = t.elapsed();
    // A change under the new leader, while the old one is still frozen.
    first_write(&f, "while-frozen").await?;
    tokio::time::sleep(LEASE).await;
    f.coord.freeze(false)?;
    eventually("the thawed leader to follow", WAIT, || async {
        let h = healthz(&f.coord.api()).await.ok()?;
        (h["leader"] == false).then_some(())
    })
    .await?;
    ensure!(f.leader().await == Some(leader));
    ensure!(unserved_since(&f, t0)? == 0, "the PRIMARY stopped serving");
    ensure!(f.primary("db").await?.as_deref() == Some(first.as_str()));
    // The new leader still fails over.
    f.interrupt(&first, Duration::from_secs(120))?;
    let new = wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving(&f, "db", &new).await?;
    checker.check().await?;
    check_terms(&f).await?;
    Ok(vec![("freeze_to_new_leader_s", took.as_secs_f64())])
}

/// An interruption notice on the PRIMARY at the moment its leader is
/// killed: the new leader promotes the REPLICA before the notice's time.
pub async fn leader_change_interruption() -> Result<Timings> {
    let (mut f, first) = cluster(Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    let lead = Duration::from_secs(30);
    let t = Instant::now();
    f.coord.kill9();
    f.interrupt(&first, lead)?;
    let new = wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving(&f, "db", &new).await?;
    let took = t.elapsed();
    ensure!(
        took < lead,
        "the new PRIMARY served {took:?} after the notice, past its {lead:?}"
    );
    checker.check().await?;
    check_terms(&f).await?;
    Ok(vec![("notice_to_new_primary_s", took.as_secs_f64())])
}

/// PostgreSQL restarted under the coordinators (every connection cut):
/// the leader keeps its term or a follower takes over, the PRIMARY
/// serves on, and a change is accepted again within a lease.
pub async fn store_restart() -> Result<Timings> {
    let (f, first) = cluster(Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    let t0 = crate::ledger::monotonic_ns();
    let t = Instant::now();
    f.pg.as_ref().context("postgres")?.restart().await?;
    let took = first_write(&f, "after-restart").await?;
    ensure!(unserved_since(&f, t0)? == 0, "the PRIMARY stopped serving");
    ensure!(f.primary("db").await?.as_deref() == Some(first.as_str()));
    let _ = t;
    checker.check().await?;
    check_terms(&f).await?;
    Ok(vec![("restart_to_write_accepted_s", took.as_secs_f64())])
}
