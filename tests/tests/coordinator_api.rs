#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Drives the real `spot-coordinator` binary over HTTP on a random loopback
//! port: register -> heartbeat -> long-poll -> events, and every bad input
//! the agent and operator APIs must refuse without changing anything.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spot_tests::harness::{Api, Coordinator};
use std::time::{Duration, Instant};

struct Agent {
    id: String,
    token: String,
}

async fn create_group(api: &Api, c: &Coordinator, name: &str) {
    let (st, _) = api
        .call(
            Method::POST,
            "/v1/groups",
            Some(&c.admin_token),
            // Paused: these tests promote by hand, the reconciler stays out.
            Some(&json!({"name": name, "config": {"paused": true, "pools": [
                {"instance_type": "m5.large", "availability_zone": "us-east-1a"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED);
}

fn reg_body(instance: &str, group: &str) -> Value {
    json!({"instance_id": instance, "instance_type": "m5.large",
           "availability_zone": "us-east-1a", "region": "us-east-1",
           "lifecycle": "spot", "group": group})
}

async fn register(api: &Api, c: &Coordinator, instance: &str, group: &str) -> Agent {
    let (st, v) = api
        .post(
            "/v1/agents/register",
            &c.enrollment_token,
            &reg_body(instance, group),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED, "{v}");
    Agent {
        id: v["agent_id"].as_str().unwrap().to_owned(),
        token: v["token"].as_str().unwrap().to_owned(),
    }
}

async fn heartbeat(api: &Api, a: &Agent, instance: &str) -> (StatusCode, Value) {
    api.post(
        &format!("/v1/agents/{}/heartbeat", a.id),
        &a.token,
        &json!({"instance_id": instance, "highest_epoch": 0, "healthy": true, "backlog": 0}),
    )
    .await
    .unwrap()
}

async fn snapshot(api: &Api, c: &Coordinator) -> Value {
    let mut out = serde_json::Map::new();
    for p in ["/v1/groups", "/v1/agents", "/v1/instances", "/v1/commands"] {
        let (_, v) = api.get(p, &c.admin_token).await.unwrap();
        out.insert(p.to_owned(), v);
    }
    let (_, audit) = api
        .get("/v1/audit?limit=1000", &c.admin_token)
        .await
        .unwrap();
    out.insert("audit_len".into(), json!(audit.as_array().map(Vec::len)));
    Value::Object(out)
}

#[tokio::test]
async fn register_heartbeat_poll_events_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;

    let (st, hb) = heartbeat(&api, &a, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(hb["status"], "online");
    assert_eq!(
        hb["role"], "replica",
        "healthy heartbeat makes a launching instance a replica"
    );

    // Long-poll with nothing queued waits, then answers empty.
    let t = Instant::now();
    let (st, v) = api
        .get(
            &format!("/v1/agents/{}/commands?wait_ms=500", a.id),
            &a.token,
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["commands"], json!([]));
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );

    // A command queued during the wait is returned at once.
    let poll = {
        let (api, id, tok) = (api.clone(), a.id.clone(), a.token.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = api
                .get(&format!("/v1/agents/{id}/commands?wait_ms=20000"), &tok)
                .await
                .unwrap();
            (r, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, p) = api
        .post(
            "/v1/groups/db/promote",
            &c.admin_token,
            &json!({"instance_id": "i-1", "expected_epoch": 0}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{p}");
    let ((st, v), waited) = poll.await.unwrap();
    assert_eq!(st, StatusCode::OK);
    assert!(
        waited < Duration::from_secs(5),
        "long-poll was not woken: {waited:?}"
    );
    let cmd = &v["commands"][0];
    assert_eq!(cmd["action"]["kind"], "promote");
    assert_eq!(cmd["epoch"], 1);
    let rid = cmd["request_id"].as_str().unwrap();

    // Report the result twice: applied once, acknowledged twice.
    let batch = json!({"events": [
        {"event_id": format!("{}:1", a.id), "seq": 1, "at_ms": 1,
         "body": {"type": "command_result", "request_id": rid, "outcome": "done"}},
        {"event_id": format!("{}:2", a.id), "seq": 2, "at_ms": 2,
         "body": {"type": "notice", "notice": "rebalance", "raw": "{}"}}]});
    let path = format!("/v1/agents/{}/events", a.id);
    let (st, r1) = api.post(&path, &a.token, &batch).await.unwrap();
    assert_eq!(st, StatusCode::OK, "{r1}");
    assert_eq!(r1["applied"], 2);
    // The confirmation commits the promotion (T3), asynchronously.
    let start = Instant::now();
    loop {
        let (_, g) = api.get("/v1/groups/db", &c.admin_token).await.unwrap();
        if g["primary"] == "i-1" {
            assert_eq!(g["epoch"], 1);
            assert_eq!(g["transition"], Value::Null);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never committed: {g}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = snapshot(&api, &c).await;
    let (_, r2) = api.post(&path, &a.token, &batch).await.unwrap();
    assert_eq!(r2["applied"], 0);
    assert_eq!(r2["duplicates"], 2);
    assert_eq!(r2["acked"].as_array().unwrap().len(), 2);
    assert_eq!(snapshot(&api, &c).await, before);

    let (_, cmds) = api
        .get(&format!("/v1/commands?agent_id={}", a.id), &c.admin_token)
        .await
        .unwrap();
    assert_eq!(cmds[0]["state"], "done");
    let (st, m) = api.call(Method::GET, "/metrics", None, None).await.unwrap();
    assert_eq!(st, StatusCode::OK);
    let m = m.as_str().unwrap();
    assert!(m.contains("spot_coordinator_heartbeats_total 1"), "{m}");
    assert!(m.contains("spot_coordinator_agents{status=\"online\"} 1"));
    assert!(m.contains("spot_coordinator_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn tokens_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;
    let b = register(&api, &c, "i-2", "db").await;
    let hb = json!({"instance_id": "i-1", "highest_epoch": 0, "healthy": true, "backlog": 0});
    let path = format!("/v1/agents/{}/heartbeat", a.id);
    for (token, want, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some("wrong"), StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some(b.token.as_str()), StatusCode::FORBIDDEN, "forbidden"),
        (
            Some(c.admin_token.as_str()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ] {
        let (st, v) = api
            .call(Method::POST, &path, token, Some(&hb))
            .await
            .unwrap();
        assert_eq!(st, want, "{token:?}");
        assert_eq!(v["code"], code);
    }
    // Enrollment needs the enrollment token, the operator API the admin token.
    let (st, _) = api
        .post(
            "/v1/agents/register",
            &c.admin_token,
            &reg_body("i-9", "db"),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = api.get("/v1/groups", &a.token).await.unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = api
        .call(Method::GET, "/v1/groups", None, None)
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_route_authenticates_before_it_reads_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;
    let garbage = json!({});
    for (path, token) in [
        ("/v1/agents/register".to_owned(), None),
        (
            "/v1/agents/register".to_owned(),
            Some(c.admin_token.as_str()),
        ),
        (format!("/v1/agents/{}/heartbeat", a.id), None),
        (format!("/v1/agents/{}/events", a.id), Some("wrong")),
        (format!("/v1/agents/{}/pricing", a.id), None),
        ("/v1/groups".to_owned(), Some(a.token.as_str())),
        ("/v1/groups/db/promote".to_owned(), None),
    ] {
        let (st, v) = api
            .call(Method::POST, &path, token, Some(&garbage))
            .await
            .unwrap();
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{path}: {v}"
        );
    }
}

#[tokio::test]
async fn an_identity_used_from_another_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;
    // A disk cloned from i-1 running on i-2 with i-1's identity.
    let (st, v) = heartbeat(&api, &a, "i-2").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("instance_mismatch")),
        "{v}"
    );
    let (st, v) = api
        .get(
            &format!("/v1/agents/{}/commands?wait_ms=0&instance_id=i-2", a.id),
            &a.token,
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("instance_mismatch")),
        "{v}"
    );
    // The rightful instance is served.
    assert_eq!(heartbeat(&api, &a, "i-1").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_reused_request_id_with_another_body_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    let create = |name: &str| json!({"name": name, "request_id": "op-1"});
    let (st, first) = api
        .post("/v1/groups", &c.admin_token, &create("a"))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED);
    // The same request again: the same answer, nothing new.
    let (st, again) = api
        .post("/v1/groups", &c.admin_token, &create("a"))
        .await
        .unwrap();
    assert_eq!((st, &again), (StatusCode::CREATED, &first));
    // The same id for another request: refused, nothing written.
    let (st, v) = api
        .post("/v1/groups", &c.admin_token, &create("b"))
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_key_reused")),
        "{v}"
    );
    let (st, _) = api.get("/v1/groups/b", &c.admin_token).await.unwrap();
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_input_gets_a_stable_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;
    heartbeat(&api, &a, "i-1").await;
    let before = snapshot(&api, &c).await;
    let adm = Some(c.admin_token.as_str());
    let ev = format!("/v1/agents/{}/events", a.id);

    let (st, v) = api
        .raw(
            Method::POST,
            &ev,
            Some(&a.token),
            "application/json",
            b"{not json".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );

    let big = format!(
        "{{\"events\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let (st, v) = api
        .raw(
            Method::POST,
            &ev,
            Some(&a.token),
            "application/json",
            big.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );

    let (st, v) = api
        .post(&ev, &a.token, &json!({"events": [], "surprise": 1}))
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body")),
        "{v}"
    );

    let (st, v) = api
        .post(
            "/v1/agents/register",
            &c.enrollment_token,
            &reg_body("i-2", "nope"),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (st, v) = api
        .call(
            Method::PUT,
            "/v1/groups/db",
            adm,
            Some(&json!({"config": {}, "version": 99})),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("version_conflict"))
    );

    let (st, v) = api
        .call(
            Method::PUT,
            "/v1/groups/db",
            adm,
            Some(&json!({"config": {"auto_switch": true, "manual_replica": true}, "version": 1})),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("rule_violation"))
    );
    assert_eq!(v["rule"], "auto_switch_excludes_manual_replica");

    let (st, v) = api
        .call(
            Method::PUT,
            "/v1/groups/db",
            adm,
            Some(&json!({"config": {"pools": "x"}, "version": 1})),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    let (st, v) = api
        .call(
            Method::POST,
            "/v1/groups/db/promote",
            adm,
            Some(&json!({"instance_id": "i-1", "expected_epoch": 5})),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("stale_epoch"))
    );
    assert_eq!(v["rule"], "epoch_must_match");

    let (st, v) = api
        .call(Method::GET, "/v1/groups/ghost", adm, None)
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (st, v) = api
        .get(
            &format!("/v1/agents/{}/commands?wait_ms=abc", a.id),
            &a.token,
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );

    // An event id that is not the agent's own: the whole batch is refused.
    let (st, v) = api
        .post(&ev, &a.token, &json!({"events": [
            {"event_id": "someone-else:1", "seq": 1, "at_ms": 1, "body": {"type": "health", "healthy": true}}]}))
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid"))
    );

    assert_eq!(snapshot(&api, &c).await, before);
}

#[tokio::test]
async fn concurrent_promotions_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    for i in 0..6 {
        let inst = format!("i-{i}");
        let a = register(&api, &c, &inst, "db").await;
        heartbeat(&api, &a, &inst).await;
    }
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (api, adm) = (api.clone(), c.admin_token.clone());
        tasks.push(tokio::spawn(async move {
            api.post(
                "/v1/groups/db/promote",
                &adm,
                &json!({"instance_id": format!("i-{i}"), "expected_epoch": 0}),
            )
            .await
            .unwrap()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (st, v) = t.await.unwrap();
        match st {
            StatusCode::OK => ok += 1,
            // Lost the race: the epoch moved, or a promotion is under way.
            StatusCode::CONFLICT => assert!(
                v["code"] == "stale_epoch" || v["code"] == "promotion_in_progress",
                "{v}"
            ),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(ok, 1);
    let (_, cmds) = api.get("/v1/commands", &c.admin_token).await.unwrap();
    let promotes = cmds
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["command"]["action"]["kind"] == "promote")
        .count();
    assert_eq!(promotes, 1, "exactly one candidate was told to promote");
    let (_, g) = api.get("/v1/groups/db", &c.admin_token).await.unwrap();
    assert_eq!(g["epoch"], 1);
}

#[tokio::test]
async fn repeated_request_id_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    let body = json!({"name": "db", "config": {"paused": true}, "request_id": "create-db-1"});
    let (st1, v1) = api.post("/v1/groups", &c.admin_token, &body).await.unwrap();
    let before = snapshot(&api, &c).await;
    let (st2, v2) = api.post("/v1/groups", &c.admin_token, &body).await.unwrap();
    assert_eq!((st1, st2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(v1, v2);
    assert_eq!(snapshot(&api, &c).await, before);
    // Without a request_id the same body is a genuine second create: refused.
    let (st, v) = api
        .post("/v1/groups", &c.admin_token, &json!({"name": "db"}))
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );

    // A registration retried with its request_id gets the same identity.
    let mut reg = reg_body("i-1", "db");
    reg["request_id"] = json!("reg-i-1-boot-1");
    let (_, r1) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg)
        .await
        .unwrap();
    let (_, r2) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg)
        .await
        .unwrap();
    assert_eq!(r1["agent_id"], r2["agent_id"]);
    let (_, agents) = api.get("/v1/agents", &c.admin_token).await.unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn missed_heartbeats_mark_offline_and_a_heartbeat_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(
        dir.path(),
        &["--heartbeat-interval", "200ms", "--lease", "1s"],
    )
    .unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;
    heartbeat(&api, &a, "i-1").await;
    let status = |api: Api, adm: String, id: String| async move {
        let (_, v) = api.get(&format!("/v1/agents/{id}"), &adm).await.unwrap();
        v
    };
    // 3 x 200 ms of silence, plus the monitor's tick.
    let start = Instant::now();
    loop {
        let v = status(api.clone(), c.admin_token.clone(), a.id.clone()).await;
        if v["status"] == "offline" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never went offline: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(500));
    let (_, inst) = api.get("/v1/instances/i-1", &c.admin_token).await.unwrap();
    assert_eq!(inst["role"], "replica", "offline is not terminated");

    let (st, hb) = heartbeat(&api, &a, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(hb["status"], "online");
    let start = Instant::now();
    loop {
        let v = status(api.clone(), c.admin_token.clone(), a.id.clone()).await;
        if v["status"] == "online" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "store never saw it back: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, audit) = api
        .get(&format!("/v1/audit?entity=agent:{}", a.id), &c.admin_token)
        .await
        .unwrap();
    let actions: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["post_state"]["status"].clone())
        .collect();
    assert!(
        actions.contains(&json!("offline")) && actions.contains(&json!("online")),
        "{audit}"
    );
}

#[tokio::test]
async fn reinstall_gets_new_id_old_token_dies_history_linked() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let old = register(&api, &c, "i-1", "db").await;
    // While the old agent is live, whoever holds the enrollment token
    // cannot take its place: refused and audited, the old token works on.
    let (st, v) = api
        .post(
            "/v1/agents/register",
            &c.enrollment_token,
            &reg_body("i-1", "db"),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("instance_registered")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains(&old.id), "{v}");
    let (st, _) = heartbeat(&api, &old, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    let trail = api
        .audit("/v1/audit?entity=instance:i-1", &c.admin_token)
        .await;
    assert!(
        trail.iter().any(|e| e["action"] == "registration_refused"),
        "{trail:?}"
    );
    // The operator says it is gone (the instance was reinstalled).
    let (st, v) = api
        .post(
            &format!("/v1/agents/{}/reset", old.id),
            &c.admin_token,
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    let new = register(&api, &c, "i-1", "db").await;
    assert_ne!(old.id, new.id);
    let (st, _) = heartbeat(&api, &old, "i-1").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = heartbeat(&api, &new, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = api
        .get(&format!("/v1/agents/{}", old.id), &c.admin_token)
        .await
        .unwrap();
    assert_eq!(v["status"], "replaced");
    assert_eq!(v["replaced_by"], json!(new.id));
    let trail = api
        .audit(
            &format!("/v1/audit?entity=agent:{}", old.id),
            &c.admin_token,
        )
        .await;
    assert!(
        trail
            .iter()
            .any(|e| e["action"] == "reset" && e["actor"] == "operator"),
        "{trail:?}"
    );
}

#[tokio::test]
async fn deleted_agent_fetches_cleanup_then_loses_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;
    let (st, v) = api
        .delete(
            &format!("/v1/agents/{}?request_id=del-1", a.id),
            &c.admin_token,
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "deleted");
    let (_, hb) = heartbeat(&api, &a, "i-1").await;
    assert_eq!(hb["status"], "deleted");
    let (_, p) = api
        .get(&format!("/v1/agents/{}/commands?wait_ms=0", a.id), &a.token)
        .await
        .unwrap();
    assert_eq!(p["commands"][0]["action"]["kind"], "cleanup");
    let rid = p["commands"][0]["request_id"].clone();
    let (st, _) = api
        .post(
            &format!("/v1/agents/{}/events", a.id),
            &a.token,
            &json!({"events": [
            {"event_id": format!("{}:1", a.id), "seq": 1, "at_ms": 1,
             "body": {"type": "command_result", "request_id": rid, "outcome": "done"}}]}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    let (st, _) = heartbeat(&api, &a, "i-1").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // History stays: the agent and its audit trail are still there.
    let (st, v) = api
        .get(&format!("/v1/agents/{}", a.id), &c.admin_token)
        .await
        .unwrap();
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("deleted"))
    );
}

#[tokio::test]
async fn state_survives_kill_9_and_sigterm_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let a = register(&api, &c, "i-1", "db").await;
    heartbeat(&api, &a, "i-1").await;
    c.restart().unwrap();
    let api = c.api();
    // The agent's token is still valid after a crash; its role persisted.
    let (st, hb) = heartbeat(&api, &a, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(hb["role"], "replica");
    let status = c.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(log.contains("coordinator stopped"), "{log}");
}

#[tokio::test]
async fn bulk_terminate_refuses_what_it_cannot_do_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    register(&api, &c, "i-1", "db").await;
    let before = snapshot(&api, &c).await;
    for (body, status, needle) in [
        (json!({}), 400, "instance_ids"),
        (json!({"role": "primary"}), 400, "only zombie and failed"),
        (
            json!({"instance_ids": ["i-1"], "role": "zombie"}),
            400,
            "not both",
        ),
        (
            json!({"role": "zombie", "older_than": "a while"}),
            400,
            "older_than",
        ),
        (json!({"instance_ids": ["i-1", "i-nope"]}), 404, "i-nope"),
        (json!({"role": "zombie", "colour": "red"}), 400, "colour"),
    ] {
        let (st, v) = api
            .post("/v1/instances/terminate", &c.admin_token, &body)
            .await
            .unwrap();
        assert_eq!(st.as_u16(), status, "{body}: {v}");
        assert!(v.to_string().contains(needle), "{body}: {v}");
    }
    let (st, _) = api
        .post(
            "/v1/instances/terminate",
            &c.enrollment_token,
            &json!({"role": "zombie"}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // A LAUNCHING instance named by id is skipped with its reason.
    let (st, v) = api
        .post(
            "/v1/instances/terminate",
            &c.admin_token,
            &json!({"instance_ids": ["i-1"]}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["instances"][0]["action"], "skip", "{v}");
    assert_eq!(snapshot(&api, &c).await, before, "nothing changed");
}

async fn claim(api: &Api, a: &Agent, instance: &str, epoch: u64, grant: Option<&str>) -> Value {
    let mut body = json!({"instance_id": instance, "role": "primary", "role_epoch": epoch,
                          "highest_epoch": epoch, "healthy": true, "backlog": 0});
    if let Some(g) = grant {
        body["grant"] = json!(g);
    }
    let (st, v) = api
        .post(&format!("/v1/agents/{}/heartbeat", a.id), &a.token, &body)
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

async fn primary_of(api: &Api, c: &Coordinator) -> Value {
    let (_, g) = api.get("/v1/groups/db", &c.admin_token).await.unwrap();
    g["primary"].clone()
}

/// A forger holding the enrollment token (every instance's user data has
/// it) registers as an instance of the group and claims PRIMARY at an
/// epoch above the store's: without, with another instance's, or with a
/// made-up grant. Each is refused with its code and audited; the real
/// PRIMARY keeps its lease. A store restored from a copy older than the
/// real PRIMARY's promotion still adopts it by its grant.
#[tokio::test]
async fn a_primary_claim_counts_only_with_the_coordinators_grant() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    let real = register(&api, &c, "i-1", "db").await;
    let forger = register(&api, &c, "i-2", "db").await;
    heartbeat(&api, &real, "i-1").await;
    heartbeat(&api, &forger, "i-2").await;
    let backup = dir.path().join("before-promotion.db");
    c.back_up_store(&backup).unwrap();

    let (st, v) = api
        .post(
            "/v1/groups/db/promote",
            &c.admin_token,
            &json!({"instance_id": "i-1", "expected_epoch": 0}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, polled) = api
        .get(
            &format!("/v1/agents/{}/commands?wait_ms=5000", real.id),
            &real.token,
        )
        .await
        .unwrap();
    let rid = polled["commands"][0]["request_id"].as_str().unwrap();
    let grant = polled["grants"][rid]
        .as_str()
        .expect("a promote comes with its grant");
    assert!(grant.starts_with("g1."), "{grant}");
    let done = json!({"events": [{"event_id": format!("{}:1", real.id), "seq": 1, "at_ms": 1,
        "body": {"type": "command_result", "request_id": rid, "outcome": "done"}}]});
    api.post(
        &format!("/v1/agents/{}/events", real.id),
        &real.token,
        &done,
    )
    .await
    .unwrap();
    spot_tests::harness::eventually("the promotion commits", Duration::from_secs(10), || async {
        (primary_of(&api, &c).await == "i-1").then_some(())
    })
    .await
    .unwrap();

    let made_up = format!("g1.deadbeef.1.{}", "00".repeat(32));
    for (epoch, shown, code) in [
        (2u64, None, "grant_missing"),
        (3, Some(grant), "grant_bad_mac"),
        (4, Some(made_up.as_str()), "grant_unknown_key"),
        (5, Some("not-a-grant"), "grant_malformed"),
    ] {
        let v = claim(&api, &forger, "i-2", epoch, shown).await;
        assert_eq!(
            (v["role"].as_str(), v["lease_ms"].as_u64()),
            (Some("replica"), Some(0)),
            "{code}: {v}"
        );
        assert_eq!(primary_of(&api, &c).await, "i-1", "{code}");
        let (_, g) = api.get("/v1/groups/db", &c.admin_token).await.unwrap();
        assert_eq!(g["epoch"], 1, "{code}: a forged epoch moves nothing");
        let trail = api
            .audit("/v1/audit?entity=instance:i-2", &c.admin_token)
            .await;
        assert!(
            trail.iter().any(|e| e["action"] == "claim_refused"
                && e["post_state"]["code"] == code
                && e["post_state"]["claimed_epoch"] == epoch),
            "{code} audited: {trail:?}"
        );
    }
    // The real PRIMARY is untouched: leased at its epoch.
    let v = claim(&api, &real, "i-1", 1, Some(grant)).await;
    assert!(v["lease_ms"].as_u64().unwrap() > 0, "{v}");
    let (_, m) = api.call(Method::GET, "/metrics", None, None).await.unwrap();
    assert!(
        m.as_str()
            .unwrap()
            .contains("spot_coordinator_primary_claims_refused_total 4"),
        "{m}"
    );

    // The store is restored from the copy taken before the promotion: the
    // forger speaks first, showing the real PRIMARY's grant for its own
    // epoch, and is refused (a grant names its instance); the real
    // PRIMARY's grant (the key lives in the data directory, not in the
    // store) is adopted.
    c.restore_store(&backup).unwrap();
    c.start_again().unwrap();
    let api = c.api();
    claim(&api, &forger, "i-2", 1, Some(grant)).await;
    assert_eq!(primary_of(&api, &c).await, Value::Null);
    let trail = api
        .audit("/v1/audit?entity=instance:i-2", &c.admin_token)
        .await;
    assert!(
        trail.iter().any(|e| e["action"] == "claim_refused"
            && e["post_state"]["code"] == "grant_bad_mac"
            && e["post_state"]["claimed_epoch"] == 1),
        "a stolen grant is refused: {trail:?}"
    );
    let v = claim(&api, &real, "i-1", 1, Some(grant)).await;
    assert_eq!(primary_of(&api, &c).await, "i-1", "{v}");
    let v = claim(&api, &real, "i-1", 1, Some(grant)).await;
    assert!(v["lease_ms"].as_u64().unwrap() > 0, "{v}");
}

/// One address cannot mint identities or guess tokens without limit:
/// registrations (and enrollment token guesses) and dashboard logins per
/// source are rate limited with 429 `rate_limited` and a Retry-After.
#[tokio::test]
async fn registrations_and_logins_per_source_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &["--registrations-per-source", "1"]).unwrap();
    let api = c.api();
    create_group(&api, &c, "db").await;
    // A burst of ten, then one a second: the eleventh at once is refused.
    for i in 0..10 {
        register(&api, &c, &format!("i-{i}"), "db").await;
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/agents/register", c.base))
        .bearer_auth("a-guessed-enrollment-token")
        .json(&reg_body("i-10", "db"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited", "{v}");
    let (_, agents) = api.get("/v1/agents", &c.admin_token).await.unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 10);
    // A second later there is room for one more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    register(&api, &c, "i-10", "db").await;

    // Ten wrong logins are told 401, the next one 429, and so is the
    // right token until the bucket refills.
    for _ in 0..10 {
        let (st, v) = api
            .call(
                Method::POST,
                "/ui/login",
                None,
                Some(&json!({"token": "wrong"})),
            )
            .await
            .unwrap();
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    }
    let (st, v) = api
        .call(
            Method::POST,
            "/ui/login",
            None,
            Some(&json!({"token": c.admin_token})),
        )
        .await
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "{v}"
    );
    // The agent API of registered agents is untouched.
    let a = register_later(&api, &c).await;
    let (st, _) = heartbeat(&api, &a, "i-11").await;
    assert_eq!(st, StatusCode::OK);
}

async fn register_later(api: &Api, c: &Coordinator) -> Agent {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    register(api, c, "i-11", "db").await
}
