//! The restart scenarios: a coordinator killed and restarted, or started
//! again onto an older copy of its store (a restore). What the store
//! cannot vouch for after a start is heard, fenced or waited for; the
//! ledger judges. See docs/STATE_MACHINE.md, "Fencing".

use super::fencing::group_epoch;
use super::{InvariantChecker, Timings, WAIT, group, wait_confirmed, wait_serving};
use crate::fleet::{Fleet, FleetOptions};
use crate::harness::eventually;
use crate::ledger::monotonic_ns;
use anyhow::{Result, ensure};
use serde_json::json;
use std::time::{Duration, Instant};

/// A coordinator killed (heartbeats it had not persisted lost) and
/// restarted 20 s later: no failover, the PRIMARY serves throughout.
pub async fn coordinator_restart() -> Result<Timings> {
    let mut f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let before = f.get("/v1/groups/db").await?;
    let checker = InvariantChecker::start(&f);
    let t0 = monotonic_ns();
    f.coord.kill9();
    tokio::time::sleep(Duration::from_secs(20)).await;
    f.coord.start_again()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = f.get("/v1/groups/db").await?;
    ensure!(
        group_epoch(&after) == group_epoch(&before) && after["primary"] == before["primary"],
        "nothing failed over: before {before}, after {after}"
    );
    let ledger = f.ledger()?;
    let unserved = ledger.unserved_ns("db", t0, ledger.horizon_ns);
    ensure!(
        unserved == 0,
        "the PRIMARY stopped serving for {} ms",
        unserved / 1_000_000
    );
    ensure!(ledger.serving_now("db").map(|i| i.instance.as_str()) == Some(first.as_str()));
    checker.check().await?;
    Ok(vec![("down_s", 20.0)])
}

/// The coordinator dies just after granting a promotion, before the
/// candidate fetched its promote, and leads again only after the promote's
/// window (the fleet's promotion timeout less 5 s: 10 s) has passed: a
/// slow restart, or a leader change slower than the window. The new term
/// gives the promote a whole window again, so the warm REPLICA is
/// promoted; before, the promote was found expired, the REPLICA fenced and
/// a cold instance launched in its place (the flake of
/// `coordinator-crash` on PostgreSQL under load, made certain here).
pub async fn promote_fetched_after_its_window() -> Result<Timings> {
    let mut f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    // The candidate's agent is down across the grant (its instance and
    // workload are up, a warm REPLICA): nothing fetches the promote.
    f.with_node("i-db-r", |n| {
        n.agent.kill9();
        Ok(())
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    eventually("the promotion granted", WAIT, || async {
        (f.get("/v1/groups/db").await.ok()?["transition"]["phase"] == "promoting").then_some(())
    })
    .await?;
    f.coord.kill9();
    tokio::time::sleep(Duration::from_secs(14)).await;
    f.coord.start_again()?;
    f.with_node("i-db-r", |n| n.agent.start(None))?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(f.role(&first).await? == "zombie");
    ensure!(
        f.audited("group:db", "promote_renewed").await?,
        "the renewal is audited"
    );
    wait_serving(&f, "db", "i-db-r").await?;
    checker.check().await?;
    Ok(vec![("notice_to_warm_primary_s", took)])
}

/// A coordinator restarted (an upgrade, a crash), then, in a calm group
/// whose EC2 view has not changed since, an interruption of the PRIMARY
/// with a warm REPLICA. After a start nothing is granted before EC2's view
/// of the group since the start is in (a restored store may not know an
/// instance), and an agent sends that view only when it changes: the
/// coordinator must ask for it, or the grant waits for the reclaim (two
/// minutes unserved, found by the nemesis as a group stuck after a
/// restore). The new PRIMARY serves within seconds of the notice.
pub async fn interruption_after_restart() -> Result<Timings> {
    after_restart(false).await
}

/// The same, with every agent of the group cut from EC2 across the
/// restart (none can send EC2's view): the coordinator's own EC2
/// executor takes it, or the grant waits for ever (found by the nemesis:
/// a restored store whose only live agent was a ZOMBIE).
pub async fn interruption_after_restart_blind() -> Result<Timings> {
    after_restart(true).await
}

async fn after_restart(blind: bool) -> Result<Timings> {
    let mut f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let checker = InvariantChecker::start(&f);
    if blind {
        for id in [first.as_str(), "i-db-r"] {
            f.with_node(id, |n| {
                n.ec2_link.cut();
                Ok(())
            })?;
        }
    } else {
        // Calm: both agents have reported EC2's view as PRIMARY and
        // REPLICA (an EC2 watch tick is 30 s), and nothing changes in EC2
        // after.
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
    f.coord.kill9();
    f.coord.start_again()?;
    // Past the settling after the start: every agent heard again.
    eventually("every agent heard since the restart", WAIT, || async {
        let agents = f.get("/v1/agents").await.ok()?;
        let all = agents.as_array()?;
        all.iter().all(|a| a["status"] == "online").then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving(&f, "db", "i-db-r").await?;
    let took = t.elapsed().as_secs_f64();
    ensure!(
        took <= 10.0,
        "the new PRIMARY served {took:.2} s after the notice"
    );
    ensure!(
        f.ec2
            .instances()
            .iter()
            .any(|i| i.instance_id == first && i.state == "running"),
        "granted before the reclaim, not because EC2 took the old PRIMARY"
    );
    checker.check().await?;
    Ok(vec![("restart_then_notice_to_primary_s", took)])
}

/// A group `db` whose PRIMARY `first` failed over to `i-db-r` after a
/// copy of the store was taken; the coordinator then restarted onto that
/// copy (with `i-db-r` cut off across the restore when `cut`). Returns the
/// fleet, `first`, a checker started before the failover, and the epoch
/// the fleet had reached.
async fn failover_then_restore(cut: bool) -> Result<(Fleet, String, InvariantChecker, u64)> {
    let mut f = Fleet::start(FleetOptions::default()).await?;
    let first = group(&f, json!({}), Some("i-db-r")).await?;
    let backup = f.root.join("backup.db");
    f.coord.back_up_store(&backup)?;
    let checker = InvariantChecker::start(&f);
    f.interrupt(&first, Duration::from_secs(120))?;
    wait_confirmed(&f, "db", Some("i-db-r"), None).await?;
    wait_serving(&f, "db", "i-db-r").await?;
    let real_epoch = group_epoch(&f.get("/v1/groups/db").await?);
    if cut {
        f.partition("i-db-r")?;
    }
    f.coord.restore_store(&backup)?;
    f.coord.start_again()?;
    Ok((f, first, checker, real_epoch))
}

/// The coordinator restarts onto an older copy of its store (a restore):
/// the agents' epochs are above the store's. The store converges to them
/// (the real PRIMARY kept, its epoch adopted) and never promotes a second.
pub async fn restored_store() -> Result<Timings> {
    let (f, first, checker, real_epoch) = failover_then_restore(false).await?;
    let t = Instant::now();
    let g = f.get("/v1/groups/db").await?;
    ensure!(
        group_epoch(&g) < real_epoch && g["primary"] == first.as_str(),
        "the restored store is behind: {g}"
    );
    let converged = eventually("the store converged to the agents", WAIT, || async {
        let g = f.get("/v1/groups/db").await.ok()?;
        (g["primary"] == "i-db-r" && group_epoch(&g) >= real_epoch).then_some(g)
    })
    .await?;
    let took = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        f.ledger()?.serving_now("db").map(|i| i.instance.as_str()) == Some("i-db-r"),
        "the real PRIMARY kept serving"
    );
    ensure!(
        f.audited("group:db", "converged").await?,
        "audited: {converged}"
    );
    checker.check().await?;
    Ok(vec![("restart_to_converged_s", took)])
}

/// A store restored from a copy older than the real PRIMARY, which is cut
/// off from the coordinator across the restore (it keeps serving on its
/// lease). Nothing is granted until every instance the copy cannot vouch
/// for is heard or fenced: the ledger never shows two PRIMARIES.
pub async fn restored_store_partitioned() -> Result<Timings> {
    let (f, first, checker, _) = failover_then_restore(true).await?;
    let t = Instant::now();
    let new = eventually(
        "a PRIMARY granted by the restored store",
        WAIT * 3,
        || async {
            let p = f.confirmed_primary("db").await.ok()??;
            (p != first && p != "i-db-r").then_some(p)
        },
    )
    .await?;
    let took = t.elapsed().as_secs_f64();
    wait_serving(&f, "db", &new).await?;
    ensure!(
        f.audited("group:db", "fence_unheard").await?,
        "the unheard REPLICA of the copy was made a fence target"
    );
    ensure!(
        f.ec2
            .instances()
            .iter()
            .any(|i| i.instance_id == "i-db-r" && i.state == "terminated"),
        "the cut-off real PRIMARY was fenced through EC2"
    );
    checker.check().await?;
    Ok(vec![("restart_to_new_primary_s", took)])
}
