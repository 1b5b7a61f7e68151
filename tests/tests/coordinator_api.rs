#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Drives the real `spot-coordinator` binary over HTTP on a random loopback
//! port: register -> heartbeat -> long-poll -> events, and every bad input
//! the agent and operator APIs must refuse without changing anything.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spot_tests::harness::{Api, Coordinator, eventually};
use std::time::{Duration, Instant};

struct Agent {
    id: String,
    token: String,
}

/// A coordinator of the test's own on a fresh data directory.
struct Fx {
    c: Coordinator,
    api: Api,
    dir: tempfile::TempDir,
}

type Answer = (StatusCode, Value);

/// A call: method, path, token and body.
type Call<'a> = (Method, &'a str, Option<&'a str>, Option<Value>);

/// A status and the stable error code that comes with it.
type Code<'a> = (StatusCode, Option<&'a str>);

impl Fx {
    /// With no group.
    fn bare(extra: &[&str]) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinator::start(dir.path(), extra).unwrap();
        Fx {
            api: c.api(),
            c,
            dir,
        }
    }

    /// With the paused group `db` (these tests promote by hand, the
    /// reconciler stays out).
    async fn with_group(extra: &[&str]) -> Fx {
        let f = Fx::bare(extra);
        let (st, v) = f
            .admin_post(
                "/v1/groups",
                &json!({"name": "db", "config": {"paused": true, "pools": [
                    {"instance_type": "m5.large", "availability_zone": "us-east-1a"}]}}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        f
    }

    async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let token = Some(self.c.admin_token.as_str());
        self.api.call(method, path, token, body).await.unwrap()
    }

    async fn admin_get(&self, path: &str) -> Answer {
        self.admin(Method::GET, path, None).await
    }

    async fn admin_post(&self, path: &str, body: &Value) -> Answer {
        self.admin(Method::POST, path, Some(body)).await
    }

    async fn admin_audit(&self, query: &str) -> Vec<Value> {
        let path = format!("/v1/audit?{query}");
        self.api.audit(&path, &self.c.admin_token).await
    }

    async fn group(&self) -> Value {
        self.admin_get("/v1/groups/db").await.1
    }

    async fn enroll(&self, body: &Value) -> Answer {
        let path = "/v1/agents/register";
        self.api
            .post(path, &self.c.enrollment_token, body)
            .await
            .unwrap()
    }

    async fn register(&self, instance: &str) -> Agent {
        let (st, v) = self.enroll(&reg_body(instance, "db")).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        Agent {
            id: v["agent_id"].as_str().unwrap().to_owned(),
            token: v["token"].as_str().unwrap().to_owned(),
        }
    }

    /// An agent's call on its own route (`/v1/agents/{id}/{rest}`).
    async fn agent(&self, a: &Agent, method: Method, rest: &str, body: Option<&Value>) -> Answer {
        let path = format!("/v1/agents/{}/{rest}", a.id);
        let token = Some(a.token.as_str());
        self.api.call(method, &path, token, body).await.unwrap()
    }

    async fn heartbeat(&self, a: &Agent, instance: &str) -> Answer {
        let body =
            json!({"instance_id": instance, "highest_epoch": 0, "healthy": true, "backlog": 0});
        self.agent(a, Method::POST, "heartbeat", Some(&body)).await
    }

    async fn poll(&self, a: &Agent, query: &str) -> Answer {
        self.agent(a, Method::GET, &format!("commands?{query}"), None)
            .await
    }

    async fn events(&self, a: &Agent, body: &Value) -> Answer {
        self.agent(a, Method::POST, "events", Some(body)).await
    }

    /// Claims PRIMARY at `epoch`, showing `grant` when given.
    async fn claim(&self, a: &Agent, instance: &str, epoch: u64, grant: Option<&str>) -> Value {
        let mut body = json!({"instance_id": instance, "role": "primary", "role_epoch": epoch,
                              "highest_epoch": epoch, "healthy": true, "backlog": 0});
        if let Some(g) = grant {
            body["grant"] = json!(g);
        }
        let (st, v) = self.agent(a, Method::POST, "heartbeat", Some(&body)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    async fn promote(&self, instance: &str, expected_epoch: u64) -> Answer {
        let body = json!({"instance_id": instance, "expected_epoch": expected_epoch});
        self.admin_post("/v1/groups/db/promote", &body).await
    }

    /// Everything an operator can read, to show that a refused call
    /// changed nothing.
    async fn snapshot(&self) -> Value {
        let mut out = serde_json::Map::new();
        for p in ["/v1/groups", "/v1/agents", "/v1/instances", "/v1/commands"] {
            out.insert(p.to_owned(), self.admin_get(p).await.1);
        }
        let audit = self.admin_audit("limit=1000").await;
        out.insert("audit_len".into(), json!(audit.len()));
        Value::Object(out)
    }

    async fn metrics(&self) -> String {
        let (st, m) = self
            .api
            .call(Method::GET, "/metrics", None, None)
            .await
            .unwrap();
        assert_eq!(st, StatusCode::OK);
        m.as_str().unwrap().to_owned()
    }
}

fn reg_body(instance: &str, group: &str) -> Value {
    json!({"instance_id": instance, "instance_type": "m5.large",
           "availability_zone": "us-east-1a", "region": "us-east-1",
           "lifecycle": "spot", "group": group})
}

/// A command's result, as the agent reports it.
fn command_done(a: &Agent, seq: u64, request_id: &Value) -> Value {
    json!({"event_id": format!("{}:{seq}", a.id), "seq": seq, "at_ms": seq,
           "body": {"type": "command_result", "request_id": request_id, "outcome": "done"}})
}

/// The status and the stable error code of an answer.
fn code(answer: &Answer) -> Code<'_> {
    (answer.0, answer.1["code"].as_str())
}

#[tokio::test]
async fn register_heartbeat_poll_events_round_trip() {
    let f = Fx::with_group(&[]).await;
    let a = f.register("i-1").await;

    let (st, hb) = f.heartbeat(&a, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(hb["status"], "online");
    assert_eq!(
        hb["role"], "replica",
        "healthy heartbeat makes a launching instance a replica"
    );

    // Long-poll with nothing queued waits, then answers empty.
    let t = Instant::now();
    let (st, v) = f.poll(&a, "wait_ms=500").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["commands"], json!([]));
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );

    // A command queued during the wait is returned at once.
    let poll = {
        let (api, id, tok) = (f.api.clone(), a.id.clone(), a.token.clone());
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
    let (st, p) = f.promote("i-1", 0).await;
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

    // Report the result twice: applied once, acknowledged twice.
    let batch = json!({"events": [
        command_done(&a, 1, &cmd["request_id"]),
        {"event_id": format!("{}:2", a.id), "seq": 2, "at_ms": 2,
         "body": {"type": "notice", "notice": "rebalance", "raw": "{}"}}]});
    let (st, r1) = f.events(&a, &batch).await;
    assert_eq!(st, StatusCode::OK, "{r1}");
    assert_eq!(r1["applied"], 2);
    // The confirmation commits the promotion (T3), asynchronously.
    let g = eventually("the promotion commits", Duration::from_secs(10), || async {
        let g = f.group().await;
        (g["primary"] == "i-1").then_some(g)
    })
    .await
    .unwrap();
    assert_eq!(g["epoch"], 1);
    assert_eq!(g["transition"], Value::Null);
    let before = f.snapshot().await;
    let (_, r2) = f.events(&a, &batch).await;
    assert_eq!(r2["applied"], 0);
    assert_eq!(r2["duplicates"], 2);
    assert_eq!(r2["acked"].as_array().unwrap().len(), 2);
    assert_eq!(f.snapshot().await, before);

    let (_, cmds) = f
        .admin_get(&format!("/v1/commands?agent_id={}", a.id))
        .await;
    assert_eq!(cmds[0]["state"], "done");
    let m = f.metrics().await;
    assert!(m.contains("spot_coordinator_heartbeats_total 1"), "{m}");
    assert!(m.contains("spot_coordinator_agents{status=\"online\"} 1"));
    assert!(m.contains("spot_coordinator_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn tokens_are_checked() {
    let f = Fx::with_group(&[]).await;
    let a = f.register("i-1").await;
    let b = f.register("i-2").await;
    let hb = json!({"instance_id": "i-1", "highest_epoch": 0, "healthy": true, "backlog": 0});
    let path = format!("/v1/agents/{}/heartbeat", a.id);
    let admin = f.c.admin_token.as_str();
    for (token, want) in [
        (None, (StatusCode::UNAUTHORIZED, Some("unauthorized"))),
        (
            Some("wrong"),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        ),
        (
            Some(b.token.as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
        ),
        (
            Some(admin),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        ),
    ] {
        let answer = f
            .api
            .call(Method::POST, &path, token, Some(&hb))
            .await
            .unwrap();
        assert_eq!(code(&answer), want, "{token:?}");
    }
    // Enrollment needs the enrollment token, the operator API the admin token.
    for (path, token, body) in [
        (
            "/v1/agents/register",
            Some(admin),
            Some(&reg_body("i-9", "db")),
        ),
        ("/v1/groups", Some(a.token.as_str()), None),
        ("/v1/groups", None, None),
    ] {
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let (st, _) = f.api.call(method, path, token, body).await.unwrap();
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path} {token:?}");
    }
}

#[tokio::test]
async fn every_route_authenticates_before_it_reads_the_body() {
    let f = Fx::with_group(&[]).await;
    let a = f.register("i-1").await;
    let garbage = json!({});
    for (path, token) in [
        ("/v1/agents/register".to_owned(), None),
        (
            "/v1/agents/register".to_owned(),
            Some(f.c.admin_token.as_str()),
        ),
        (format!("/v1/agents/{}/heartbeat", a.id), None),
        (format!("/v1/agents/{}/events", a.id), Some("wrong")),
        (format!("/v1/agents/{}/pricing", a.id), None),
        ("/v1/groups".to_owned(), Some(a.token.as_str())),
        ("/v1/groups/db/promote".to_owned(), None),
    ] {
        let answer = f
            .api
            .call(Method::POST, &path, token, Some(&garbage))
            .await
            .unwrap();
        assert_eq!(
            code(&answer),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{path}: {}",
            answer.1
        );
    }
}

#[tokio::test]
async fn an_identity_used_from_another_instance_is_refused() {
    let f = Fx::with_group(&[]).await;
    let a = f.register("i-1").await;
    // A disk cloned from i-1 running on i-2 with i-1's identity.
    let mismatch = (StatusCode::CONFLICT, Some("instance_mismatch"));
    let answer = f.heartbeat(&a, "i-2").await;
    assert_eq!(code(&answer), mismatch, "{}", answer.1);
    let answer = f.poll(&a, "wait_ms=0&instance_id=i-2").await;
    assert_eq!(code(&answer), mismatch, "{}", answer.1);
    // The rightful instance is served.
    assert_eq!(f.heartbeat(&a, "i-1").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_reused_request_id_with_another_body_is_a_conflict() {
    let f = Fx::bare(&[]);
    let create = |name: &str| json!({"name": name, "request_id": "op-1"});
    let (st, first) = f.admin_post("/v1/groups", &create("a")).await;
    assert_eq!(st, StatusCode::CREATED);
    // The same request again: the same answer, nothing new.
    let (st, again) = f.admin_post("/v1/groups", &create("a")).await;
    assert_eq!((st, &again), (StatusCode::CREATED, &first));
    // The same id for another request: refused, nothing written.
    let answer = f.admin_post("/v1/groups", &create("b")).await;
    assert_eq!(
        code(&answer),
        (StatusCode::CONFLICT, Some("idempotency_key_reused")),
        "{}",
        answer.1
    );
    assert_eq!(f.admin_get("/v1/groups/b").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_input_gets_a_stable_error_and_changes_nothing() {
    let f = Fx::with_group(&[]).await;
    let a = f.register("i-1").await;
    f.heartbeat(&a, "i-1").await;
    let before = f.snapshot().await;
    let ev = format!("/v1/agents/{}/events", a.id);

    let big = format!(
        "{{\"events\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    for (body, want) in [
        (
            b"{not json".to_vec(),
            (StatusCode::BAD_REQUEST, Some("malformed_json")),
        ),
        (
            big.into_bytes(),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        ),
    ] {
        let answer = f
            .api
            .raw(Method::POST, &ev, Some(&a.token), "application/json", body)
            .await
            .unwrap();
        assert_eq!(code(&answer), want, "{}", answer.1);
    }

    let (agent, admin) = (Some(a.token.as_str()), Some(f.c.admin_token.as_str()));
    let enrollment = Some(f.c.enrollment_token.as_str());
    let commands = format!("/v1/agents/{}/commands?wait_ms=abc", a.id);
    // Each refused with its status and code and, for a broken rule, the
    // rule's name.
    let cases: [(Call, Code, Option<&str>); 9] = [
        (
            (
                Method::POST,
                &ev,
                agent,
                Some(json!({"events": [], "surprise": 1})),
            ),
            (StatusCode::BAD_REQUEST, Some("invalid_body")),
            None,
        ),
        (
            (
                Method::POST,
                "/v1/agents/register",
                enrollment,
                Some(reg_body("i-2", "nope")),
            ),
            (StatusCode::NOT_FOUND, Some("not_found")),
            None,
        ),
        (
            (
                Method::PUT,
                "/v1/groups/db",
                admin,
                Some(json!({"config": {}, "version": 99})),
            ),
            (StatusCode::CONFLICT, Some("version_conflict")),
            None,
        ),
        (
            (
                Method::PUT,
                "/v1/groups/db",
                admin,
                Some(
                    json!({"config": {"auto_switch": true, "manual_replica": true}, "version": 1}),
                ),
            ),
            (StatusCode::CONFLICT, Some("rule_violation")),
            Some("auto_switch_excludes_manual_replica"),
        ),
        (
            (
                Method::PUT,
                "/v1/groups/db",
                admin,
                Some(json!({"config": {"pools": "x"}, "version": 1})),
            ),
            (StatusCode::BAD_REQUEST, Some("invalid_body")),
            None,
        ),
        (
            (
                Method::POST,
                "/v1/groups/db/promote",
                admin,
                Some(json!({"instance_id": "i-1", "expected_epoch": 5})),
            ),
            (StatusCode::CONFLICT, Some("stale_epoch")),
            Some("epoch_must_match"),
        ),
        (
            (Method::GET, "/v1/groups/ghost", admin, None),
            (StatusCode::NOT_FOUND, Some("not_found")),
            None,
        ),
        (
            (Method::GET, &commands, agent, None),
            (StatusCode::BAD_REQUEST, Some("invalid_query")),
            None,
        ),
        // An event id that is not the agent's own: the whole batch is refused.
        (
            (
                Method::POST,
                &ev,
                agent,
                Some(json!({"events": [
            {"event_id": "someone-else:1", "seq": 1, "at_ms": 1, "body": {"type": "health", "healthy": true}}]})),
            ),
            (StatusCode::BAD_REQUEST, Some("invalid")),
            None,
        ),
    ];
    for ((method, path, token, body), (status, want), rule) in cases {
        let answer = f
            .api
            .call(method, path, token, body.as_ref())
            .await
            .unwrap();
        let v = &answer.1;
        assert_eq!(code(&answer), (status, want), "{path}: {v}");
        if let Some(rule) = rule {
            assert_eq!(v["rule"], rule, "{path}: {v}");
        }
    }

    assert_eq!(f.snapshot().await, before);
}

#[tokio::test]
async fn concurrent_promotions_exactly_one_wins() {
    let f = Fx::with_group(&[]).await;
    for i in 0..6 {
        let inst = format!("i-{i}");
        let a = f.register(&inst).await;
        f.heartbeat(&a, &inst).await;
    }
    let f = std::sync::Arc::new(f);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            f.promote(&format!("i-{i}"), 0).await
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
    let (_, cmds) = f.admin_get("/v1/commands").await;
    let promotes = cmds
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["command"]["action"]["kind"] == "promote")
        .count();
    assert_eq!(promotes, 1, "exactly one candidate was told to promote");
    assert_eq!(f.group().await["epoch"], 1);
}

#[tokio::test]
async fn repeated_request_id_is_a_no_op() {
    let f = Fx::bare(&[]);
    let body = json!({"name": "db", "config": {"paused": true}, "request_id": "create-db-1"});
    let first = f.admin_post("/v1/groups", &body).await;
    let before = f.snapshot().await;
    let again = f.admin_post("/v1/groups", &body).await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(first, again);
    assert_eq!(f.snapshot().await, before);
    // Without a request_id the same body is a genuine second create: refused.
    let answer = f.admin_post("/v1/groups", &json!({"name": "db"})).await;
    assert_eq!(
        code(&answer),
        (StatusCode::CONFLICT, Some("already_exists"))
    );

    // A registration retried with its request_id gets the same identity.
    let mut reg = reg_body("i-1", "db");
    reg["request_id"] = json!("reg-i-1-boot-1");
    let (_, r1) = f.enroll(&reg).await;
    let (_, r2) = f.enroll(&reg).await;
    assert_eq!(r1["agent_id"], r2["agent_id"]);
    let (_, agents) = f.admin_get("/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn missed_heartbeats_mark_offline_and_a_heartbeat_brings_it_back() {
    let f = Fx::with_group(&["--heartbeat-interval", "200ms", "--lease", "1s"]).await;
    let a = f.register("i-1").await;
    f.heartbeat(&a, "i-1").await;
    let path = format!("/v1/agents/{}", a.id);
    let status = || async { f.admin_get(&path).await.1["status"].clone() };
    // 3 x 200 ms of silence, plus the monitor's tick.
    let start = Instant::now();
    eventually("the agent offline", Duration::from_secs(10), || async {
        (status().await == "offline").then_some(())
    })
    .await
    .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(500));
    let (_, inst) = f.admin_get("/v1/instances/i-1").await;
    assert_eq!(inst["role"], "replica", "offline is not terminated");

    let (st, hb) = f.heartbeat(&a, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(hb["status"], "online");
    eventually(
        "the store to see it back",
        Duration::from_secs(5),
        || async { (status().await == "online").then_some(()) },
    )
    .await
    .unwrap();
    let audit = f.admin_audit(&format!("entity=agent:{}", a.id)).await;
    let actions: Vec<_> = audit
        .iter()
        .map(|e| e["post_state"]["status"].clone())
        .collect();
    assert!(
        actions.contains(&json!("offline")) && actions.contains(&json!("online")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn reinstall_gets_new_id_old_token_dies_history_linked() {
    let f = Fx::with_group(&[]).await;
    let old = f.register("i-1").await;
    // While the old agent is live, whoever holds the enrollment token
    // cannot take its place: refused and audited, the old token works on.
    let answer = f.enroll(&reg_body("i-1", "db")).await;
    let v = &answer.1;
    assert_eq!(
        code(&answer),
        (StatusCode::CONFLICT, Some("instance_registered")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains(&old.id), "{v}");
    assert_eq!(f.heartbeat(&old, "i-1").await.0, StatusCode::OK);
    let trail = f.admin_audit("entity=instance:i-1").await;
    assert!(
        trail.iter().any(|e| e["action"] == "registration_refused"),
        "{trail:?}"
    );
    // The operator says it is gone (the instance was reinstalled).
    let (st, v) = f
        .admin_post(&format!("/v1/agents/{}/reset", old.id), &json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let new = f.register("i-1").await;
    assert_ne!(old.id, new.id);
    assert_eq!(f.heartbeat(&old, "i-1").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(f.heartbeat(&new, "i-1").await.0, StatusCode::OK);
    let (_, v) = f.admin_get(&format!("/v1/agents/{}", old.id)).await;
    assert_eq!(v["status"], "replaced");
    assert_eq!(v["replaced_by"], json!(new.id));
    let trail = f.admin_audit(&format!("entity=agent:{}", old.id)).await;
    assert!(
        trail
            .iter()
            .any(|e| e["action"] == "reset" && e["actor"] == "operator"),
        "{trail:?}"
    );
}

#[tokio::test]
async fn deleted_agent_fetches_cleanup_then_loses_its_token() {
    let f = Fx::with_group(&[]).await;
    let a = f.register("i-1").await;
    let path = format!("/v1/agents/{}?request_id=del-1", a.id);
    let (st, v) = f.admin(Method::DELETE, &path, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "deleted");
    let (_, hb) = f.heartbeat(&a, "i-1").await;
    assert_eq!(hb["status"], "deleted");
    let (_, p) = f.poll(&a, "wait_ms=0").await;
    assert_eq!(p["commands"][0]["action"]["kind"], "cleanup");
    let rid = &p["commands"][0]["request_id"];
    let (st, _) = f
        .events(&a, &json!({"events": [command_done(&a, 1, rid)]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(f.heartbeat(&a, "i-1").await.0, StatusCode::UNAUTHORIZED);
    // History stays: the agent and its audit trail are still there.
    let answer = f.admin_get(&format!("/v1/agents/{}", a.id)).await;
    assert_eq!(
        (answer.0, answer.1["status"].as_str()),
        (StatusCode::OK, Some("deleted"))
    );
}

#[tokio::test]
async fn state_survives_kill_9_and_sigterm_is_clean() {
    let mut f = Fx::with_group(&[]).await;
    let a = f.register("i-1").await;
    f.heartbeat(&a, "i-1").await;
    f.c.restart().unwrap();
    f.api = f.c.api();
    // The agent's token is still valid after a crash; its role persisted.
    let (st, hb) = f.heartbeat(&a, "i-1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(hb["role"], "replica");
    let status = f.c.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&f.c.log).unwrap();
    assert!(log.contains("coordinator stopped"), "{log}");
}

#[tokio::test]
async fn bulk_terminate_refuses_what_it_cannot_do_and_changes_nothing() {
    let f = Fx::with_group(&[]).await;
    f.register("i-1").await;
    let before = f.snapshot().await;
    let terminate = "/v1/instances/terminate";
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
        let (st, v) = f.admin_post(terminate, &body).await;
        assert_eq!(st.as_u16(), status, "{body}: {v}");
        assert!(v.to_string().contains(needle), "{body}: {v}");
    }
    let (st, _) = f
        .api
        .post(terminate, &f.c.enrollment_token, &json!({"role": "zombie"}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // A LAUNCHING instance named by id is skipped with its reason.
    let (st, v) = f
        .admin_post(terminate, &json!({"instance_ids": ["i-1"]}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["instances"][0]["action"], "skip", "{v}");
    assert_eq!(f.snapshot().await, before, "nothing changed");
}

/// A forger holding the enrollment token (every instance's user data has
/// it) registers as an instance of the group and claims PRIMARY at an
/// epoch above the store's: without, with another instance's, or with a
/// made-up grant. Each is refused with its code and audited; the real
/// PRIMARY keeps its lease. A store restored from a copy older than the
/// real PRIMARY's promotion still adopts it by its grant.
#[tokio::test]
async fn a_primary_claim_counts_only_with_the_coordinators_grant() {
    let mut f = Fx::with_group(&[]).await;
    let real = f.register("i-1").await;
    let forger = f.register("i-2").await;
    f.heartbeat(&real, "i-1").await;
    f.heartbeat(&forger, "i-2").await;
    let backup = f.dir.path().join("before-promotion.db");
    f.c.back_up_store(&backup).unwrap();

    let (st, v) = f.promote("i-1", 0).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, polled) = f.poll(&real, "wait_ms=5000").await;
    let rid = &polled["commands"][0]["request_id"];
    let grant = polled["grants"][rid.as_str().unwrap()]
        .as_str()
        .expect("a promote comes with its grant");
    assert!(grant.starts_with("g1."), "{grant}");
    f.events(&real, &json!({"events": [command_done(&real, 1, rid)]}))
        .await;
    let primary = || async { f.group().await["primary"].clone() };
    eventually("the promotion commits", Duration::from_secs(10), || async {
        (primary().await == "i-1").then_some(())
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
        let v = f.claim(&forger, "i-2", epoch, shown).await;
        assert_eq!(
            (v["role"].as_str(), v["lease_ms"].as_u64()),
            (Some("replica"), Some(0)),
            "{code}: {v}"
        );
        let g = f.group().await;
        assert_eq!(g["primary"], "i-1", "{code}");
        assert_eq!(g["epoch"], 1, "{code}: a forged epoch moves nothing");
        let trail = f.admin_audit("entity=instance:i-2").await;
        assert!(
            trail.iter().any(|e| e["action"] == "claim_refused"
                && e["post_state"]["code"] == code
                && e["post_state"]["claimed_epoch"] == epoch),
            "{code} audited: {trail:?}"
        );
    }
    // The real PRIMARY is untouched: leased at its epoch.
    let v = f.claim(&real, "i-1", 1, Some(grant)).await;
    assert!(v["lease_ms"].as_u64().unwrap() > 0, "{v}");
    let m = f.metrics().await;
    assert!(
        m.contains("spot_coordinator_primary_claims_refused_total 4"),
        "{m}"
    );

    // The store is restored from the copy taken before the promotion: the
    // forger speaks first, showing the real PRIMARY's grant for its own
    // epoch, and is refused (a grant names its instance); the real
    // PRIMARY's grant (the key lives in the data directory, not in the
    // store) is adopted.
    f.c.restore_store(&backup).unwrap();
    f.c.start_again().unwrap();
    f.api = f.c.api();
    f.claim(&forger, "i-2", 1, Some(grant)).await;
    assert_eq!(f.group().await["primary"], Value::Null);
    let trail = f.admin_audit("entity=instance:i-2").await;
    assert!(
        trail.iter().any(|e| e["action"] == "claim_refused"
            && e["post_state"]["code"] == "grant_bad_mac"
            && e["post_state"]["claimed_epoch"] == 1),
        "a stolen grant is refused: {trail:?}"
    );
    let v = f.claim(&real, "i-1", 1, Some(grant)).await;
    assert_eq!(f.group().await["primary"], "i-1", "{v}");
    let v = f.claim(&real, "i-1", 1, Some(grant)).await;
    assert!(v["lease_ms"].as_u64().unwrap() > 0, "{v}");
}

/// One address cannot mint identities or guess tokens without limit:
/// registrations (and enrollment token guesses) and dashboard logins per
/// source are rate limited with 429 `rate_limited` and a Retry-After.
#[tokio::test]
async fn registrations_and_logins_per_source_are_limited() {
    let f = Fx::with_group(&["--registrations-per-source", "1"]).await;
    // A burst of ten, then one a second: the eleventh at once is refused.
    for i in 0..10 {
        f.register(&format!("i-{i}")).await;
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/agents/register", f.c.base))
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
    let (_, agents) = f.admin_get("/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 10);
    // A second later there is room for one more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.register("i-10").await;

    // Ten wrong logins are told 401, the next one 429, and so is the
    // right token until the bucket refills.
    let login = |token: &str| {
        let body = json!({"token": token});
        let api = f.api.clone();
        async move {
            api.call(Method::POST, "/ui/login", None, Some(&body))
                .await
                .unwrap()
        }
    };
    for _ in 0..10 {
        let (st, v) = login("wrong").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    }
    let answer = login(&f.c.admin_token).await;
    assert_eq!(
        code(&answer),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "{}",
        answer.1
    );
    // The agent API of registered agents is untouched.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = f.register("i-11").await;
    assert_eq!(f.heartbeat(&a, "i-11").await.0, StatusCode::OK);
}
