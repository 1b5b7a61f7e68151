#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real `spot-agent` binary against the real coordinator, the IMDS
//! simulator and the EC2 simulator.

use serde_json::{Value, json};
use spot_tests::ec2_sim::Ec2Sim;
use spot_tests::harness::{AgentProc, Api, Coordinator, eventually};
use spot_tests::imds_sim::{Fault, ImdsSim, InstanceMeta};
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(30);

struct World {
    _dir: tempfile::TempDir,
    coord: Coordinator,
    imds: ImdsSim,
    ec2: Ec2Sim,
    agent: AgentProc,
    api: Api,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        // Redeliver after 1 s so a command lost in a crash comes back fast.
        let coord =
            Coordinator::start(&dir.path().join("coord"), &["--redeliver-after", "1s"]).unwrap();
        let api = coord.api();
        let (st, v) = api
            .post("/v1/groups", &coord.admin_token, &json!({"name": "db",
                // Paused: these tests drive commands by hand.
                "config": {"paused": true, "pools": [{"instance_type": "m5.large", "availability_zone": "us-east-1a"},
                                     {"instance_type": "m5.large", "availability_zone": "us-east-1b"}]}}))
            .await
            .unwrap();
        assert_eq!(st, 201, "{v}");
        let imds = ImdsSim::start(InstanceMeta::spot(
            "i-0primary",
            "m5.large",
            "us-east-1a",
            "db",
        ))
        .await
        .unwrap();
        let ec2 = Ec2Sim::start().await.unwrap();
        ec2.add_instance("i-0primary", "m5.large", "us-east-1a", "db");
        let mut agent = AgentProc::with_sims(&dir.path().join("agent"), &coord, &imds, &ec2);
        agent.arg("--imds-poll-interval").arg("200ms");
        World {
            _dir: dir,
            coord,
            imds,
            ec2,
            agent,
            api,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let (st, v) = self.api.get(path, &self.coord.admin_token).await.unwrap();
        assert!(st.is_success(), "{path}: {st} {v}");
        v
    }

    /// Wait until the agent has registered and is online.
    /// A world whose agent runs and has registered.
    async fn registered() -> World {
        let mut w = World::new().await;
        w.agent.start(None).unwrap();
        w.agent_id().await;
        w
    }

    /// Stop the agent cleanly; its journal must pass SQLite's integrity check.
    fn stop_intact(&mut self) {
        self.agent.terminate().unwrap();
        assert_eq!(integrity(&self.agent.state_dir), "ok");
    }

    async fn agent_id(&self) -> String {
        eventually("agent registration", WAIT, || async {
            let v = self.get("/v1/agents").await;
            v.as_array()?.iter().find(|a| a["status"] == "online")?["agent_id"]
                .as_str()
                .map(str::to_owned)
        })
        .await
        .unwrap()
    }

    async fn notices(&self) -> Vec<Value> {
        self.get("/v1/notices")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn launch(&self, rid: &str, az: &str) -> Value {
        let (st, v) = self
            .api
            .post(
                "/v1/groups/db/launch",
                &self.coord.admin_token,
                &json!({
                "pool": {"instance_type": "m5.large", "availability_zone": az},
                "request_id": rid}),
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        v
    }

    /// Wait for the command to reach a final state at the coordinator.
    async fn command(&self, rid: &str) -> Value {
        eventually(&format!("command {rid} to finish"), WAIT, || async {
            let v = self.get("/v1/commands").await;
            let c = v
                .as_array()?
                .iter()
                .find(|c| c["command"]["request_id"] == rid)?
                .clone();
            (c["state"] != "queued" && c["state"] != "delivered").then_some(c)
        })
        .await
        .unwrap()
    }

    fn launched_for(&self, rid: &str) -> usize {
        self.ec2
            .instances()
            .iter()
            .filter(|i| i.tag("spot:request-id") == Some(rid))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_are_detected_and_reported_exactly_once() {
    let w = World::registered().await;
    w.imds.rebalance(SystemTime::now());
    w.imds.scheduled(
        "instance-event-1",
        "system-reboot",
        SystemTime::now() + Duration::from_secs(86_400),
    );
    let at = SystemTime::now() + Duration::from_secs(120);
    w.imds.interrupt("terminate", at, Duration::ZERO);
    let notices = eventually("three notices", WAIT, || async {
        let n = w.notices().await;
        (n.len() >= 3).then_some(n)
    })
    .await
    .unwrap();
    // Many polls later, still exactly one report of each.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let notices2 = w.notices().await;
    assert_eq!(notices2.len(), 3, "{notices2:?}");
    let kinds: Vec<_> = notices
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in ["rebalance", "scheduled_maintenance", "interruption"] {
        assert!(kinds.iter().any(|x| x == k), "{kinds:?}");
    }
    let interruption = notices
        .iter()
        .find(|n| n["kind"] == "interruption")
        .unwrap();
    let want = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64 * 1000;
    assert_eq!(interruption["effective_at_ms"], json!(want));
    let status = w.agent.status().unwrap();
    assert_eq!(status["notices"].as_array().unwrap().len(), 3);
    assert_eq!(status["link"]["state"], "connected");
    assert_eq!(status["instance_id"], "i-0primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_and_bad_bodies_are_survived() {
    let mut w = World::registered().await;
    let (puts_before, _, _) = w.imds.stats();
    w.imds.expire_tokens();
    w.imds.rebalance(SystemTime::now());
    eventually("rebalance after token expiry", WAIT, || async {
        w.notices()
            .await
            .iter()
            .any(|n| n["kind"] == "rebalance")
            .then_some(())
    })
    .await
    .unwrap();
    let (puts_after, _, unauthorized) = w.imds.stats();
    assert!(unauthorized >= 1, "the old token was refused");
    assert!(puts_after > puts_before, "a new token was fetched");

    // Garbage on a notice path: journaled as malformed, never fatal.
    w.imds.fault(Fault::Garbage, Duration::ZERO);
    eventually("malformed notice", WAIT, || async {
        w.notices()
            .await
            .iter()
            .any(|n| n["kind"] == "malformed")
            .then_some(())
    })
    .await
    .unwrap();
    // 500s and slow answers: the agent keeps running.
    w.imds.fault(Fault::Error500, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(800)).await;
    w.imds.fault(Fault::Slow, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        w.agent.exited().is_none(),
        "agent died: {}",
        w.agent.log_text()
    );
    w.imds.fault(Fault::None, Duration::ZERO);
    w.imds.interrupt(
        "terminate",
        SystemTime::now() + Duration::from_secs(120),
        Duration::ZERO,
    );
    eventually("interruption after faults", WAIT, || async {
        w.notices()
            .await
            .iter()
            .any(|n| n["kind"] == "interruption")
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_retries_throttling_and_reports_capacity_and_idempotency_errors() {
    let w = World::registered().await;

    w.ec2.inject("RunInstances", "RequestLimitExceeded", 503, 2);
    w.launch("launch-throttled", "us-east-1b").await;
    let c = w.command("launch-throttled").await;
    assert_eq!(c["state"], "done", "{c}");
    assert!(
        c["result"]["instance_id"]
            .as_str()
            .unwrap()
            .starts_with("i-")
    );
    assert_eq!(
        w.ec2.calls("RunInstances"),
        3,
        "two throttled attempts, then success"
    );
    assert_eq!(w.launched_for("launch-throttled"), 1);

    w.ec2
        .inject("RunInstances", "InsufficientInstanceCapacity", 500, 1);
    w.launch("launch-no-capacity", "us-east-1b").await;
    let c = w.command("launch-no-capacity").await;
    assert_eq!(c["state"], "failed", "{c}");
    assert_eq!(c["result"]["error_code"], "InsufficientInstanceCapacity");
    assert_eq!(
        w.ec2.calls("RunInstances"),
        4,
        "capacity errors are not retried"
    );

    w.ec2
        .inject("RunInstances", "IdempotentParameterMismatch", 400, 1);
    w.launch("launch-mismatch", "us-east-1b").await;
    let c = w.command("launch-mismatch").await;
    assert_eq!(c["state"], "failed");
    assert_eq!(c["result"]["error_code"], "IdempotentParameterMismatch");
    assert_eq!(
        w.ec2.calls("RunInstances"),
        5,
        "idempotency errors are not retried"
    );
    assert_eq!(
        w.launched_for("launch-no-capacity") + w.launched_for("launch-mismatch"),
        0
    );
}

fn integrity(state_dir: &std::path::Path) -> String {
    let c = rusqlite::Connection::open(state_dir.join("journal.db")).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_never_launches_twice() {
    for point in [
        "before_journal_insert",
        "before_ec2_call",
        "after_ec2_call",
        "before_ack",
    ] {
        let mut w = World::new().await;
        w.agent.start(Some(&format!("{point}=return"))).unwrap();
        w.agent_id().await;
        let rid = format!("launch-crash-{point}");
        w.launch(&rid, "us-east-1b").await;
        let st = w
            .agent
            .wait_exit(WAIT)
            .unwrap_or_else(|e| panic!("{point}: {e}\n{}", w.agent.log_text()));
        assert!(!st.success(), "{point}: the crash point aborts");
        assert!(
            w.agent
                .log_text()
                .contains(&format!("crash point {point} hit"))
        );
        w.agent.start(None).unwrap();
        let c = w.command(&rid).await;
        assert_eq!(c["state"], "done", "{point}: {c}\n{}", w.agent.log_text());
        assert_eq!(w.launched_for(&rid), 1, "{point}: exactly one instance");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = w.agent.status().unwrap();
        assert_eq!(status["backlog"], 0, "{point}: outbox drained");
        let cmd = status["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["request_id"] == rid.as_str())
            .cloned()
            .unwrap();
        assert_eq!(cmd["state"], "done");
        w.stop_intact();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_keeps_one_instance_per_request() {
    let mut w = World::registered().await;
    let mut rids = Vec::new();
    for round in 0..6u64 {
        let rid = format!("launch-kill-{round}");
        w.ec2.inject("RunInstances", "RequestLimitExceeded", 503, 1);
        w.launch(&rid, "us-east-1b").await;
        rids.push(rid);
        // 0-250 ms into the launch, spread over the rounds.
        tokio::time::sleep(Duration::from_millis(round * 50)).await;
        w.agent.kill9();
        w.agent.start(None).unwrap();
    }
    for rid in &rids {
        let c = w.command(rid).await;
        assert_eq!(c["state"], "done", "{rid}: {c}");
        assert_eq!(w.launched_for(rid), 1, "{rid}");
    }
    w.stop_intact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_outage_loses_no_event_and_duplicates_none() {
    let mut w = World::registered().await;
    w.coord.kill9();
    w.imds.rebalance(SystemTime::now());
    w.imds.scheduled(
        "instance-event-2",
        "instance-stop",
        SystemTime::now() + Duration::from_secs(86_400),
    );
    w.imds.interrupt(
        "terminate",
        SystemTime::now() + Duration::from_secs(120),
        Duration::ZERO,
    );
    // Journaled while the coordinator is away.
    eventually("three notices journaled offline", WAIT, || async {
        let s = w.agent.status().ok()?;
        (s["notices"].as_array()?.len() == 3 && s["backlog"].as_u64()? >= 3).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.coord.restart_same_port().unwrap();
    eventually("backlog delivered", Duration::from_secs(60), || async {
        (w.notices().await.len() == 3).then_some(())
    })
    .await
    .unwrap();
    eventually("outbox drained", WAIT, || async {
        (w.agent.status().ok()?["backlog"] == 0).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.notices().await.len(),
        3,
        "each event applied exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_journaling_before_it_ever_registers() {
    let mut w = World::new().await;
    w.coord.kill9();
    w.agent.start(None).unwrap();
    w.imds.rebalance(SystemTime::now());
    eventually("notice journaled with no coordinator", WAIT, || async {
        let s = w.agent.status().ok()?;
        (s["notices"].as_array()?.len() == 1).then_some(())
    })
    .await
    .unwrap();
    let s = w.agent.status().unwrap();
    assert_eq!(s["agent_id"], Value::Null);
    w.coord.restart_same_port().unwrap();
    eventually(
        "notice delivered after first registration",
        Duration::from_secs(60),
        || async { (w.notices().await.len() == 1).then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_runs_health_check_moves_the_address_and_runs_the_hook() {
    let mut w = World::new().await;
    w.ec2.add_address("eipalloc-1", "203.0.113.10");
    w.ec2
        .add_instance("i-0other", "m5.large", "us-east-1b", "db");
    // The address starts on another instance: the move is a real CAS.
    {
        let (st, v) = w
            .api
            .put("/v1/groups/db", &w.coord.admin_token, &json!({
            "config": {"paused": true, "promotion": {"elastic_ip_allocation_id": "eipalloc-1"}}, "version": 1}))
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
    }
    let hook = w.agent.hooks_dir.join("promote");
    std::fs::create_dir_all(&w.agent.hooks_dir).unwrap();
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"$SPOT_ROLE $SPOT_EPOCH $SPOT_GROUP\" > \"$(dirname \"$0\")/promoted\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    w.agent.start(None).unwrap();
    w.agent_id().await;
    eventually("replica", WAIT, || async {
        (w.get("/v1/instances/i-0primary").await["role"] == "replica").then_some(())
    })
    .await
    .unwrap();
    let (st, p) = w
        .api
        .post(
            "/v1/groups/db/promote",
            &w.coord.admin_token,
            &json!({"instance_id": "i-0primary", "expected_epoch": 0}),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{p}");
    let rid = p["commands"][0].as_str().unwrap().to_owned();
    let c = w.command(&rid).await;
    assert_eq!(c["state"], "done", "{c}\n{}", w.agent.log_text());
    assert_eq!(
        w.ec2.address("eipalloc-1").unwrap().instance_id.as_deref(),
        Some("i-0primary")
    );
    let marker = std::fs::read_to_string(w.agent.hooks_dir.join("promoted")).unwrap();
    assert_eq!(marker.trim(), "primary 1 db");
    assert_eq!(w.agent.status().unwrap()["role"], "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let mut w = World::registered().await;
    let t = std::time::Instant::now();
    let st = w.agent.terminate().unwrap();
    assert!(st.success(), "{st:?}\n{}", w.agent.log_text());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(w.agent.log_text().contains("agent stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agent_exits_for_good_and_a_reset_registers_a_new_identity() {
    let mut w = World::registered().await;
    let old = w.agent_id().await;
    let (st, v) = w
        .api
        .delete(&format!("/v1/agents/{old}"), &w.coord.admin_token)
        .await
        .unwrap();
    assert!(st.is_success(), "{st} {v}");
    // It runs its cleanup, reports it, and exits with 78 (not restarted).
    let status = w.agent.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(78), "{}", w.agent.log_text());
    assert!(
        w.agent.log_text().contains("deleted by an operator"),
        "{}",
        w.agent.log_text()
    );
    assert!(w.agent.status().unwrap()["decommissioned_at_ms"].is_i64());
    // Starting again changes nothing...
    w.agent.start(None).unwrap();
    let again = w.agent.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(again.code(), Some(78));
    // ... until `spot-agent reset`: then a new identity.
    let reset = std::process::Command::new(spot_tests::harness::bin_path("spot-agent").unwrap())
        .arg("reset")
        .arg("--state-dir")
        .arg(&w.agent.state_dir)
        .output()
        .unwrap();
    assert!(reset.status.success(), "{reset:?}");
    assert!(String::from_utf8_lossy(&reset.stdout).contains("fresh identity"));
    w.agent.start(None).unwrap();
    let new = eventually("a new registration", WAIT, || async {
        let v = w.get("/v1/agents").await;
        v.as_array()?
            .iter()
            .find(|a| a["status"] == "online" && a["agent_id"] != old.as_str())?["agent_id"]
            .as_str()
            .map(str::to_owned)
    })
    .await
    .unwrap();
    assert_ne!(new, old);
    w.stop_intact();
}
