#![allow(clippy::unwrap_used, clippy::expect_used)]
//! docs/openapi.json against the real coordinator: every documented route
//! answers its documented method, and real responses satisfy the documented
//! response schemas (required fields and types, following `$ref`s).

use reqwest::Method;
use serde_json::{Value, json};
use spot_tests::harness::Coordinator;
use std::time::Duration;

fn doc(name: &str) -> Value {
    let path = format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn spec() -> Value {
    doc("openapi.json")
}

/// A `$ref` within the same document (`#/components/schemas/X`,
/// `#/$defs/X`).
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or(&Value::Null),
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Problems of `v` against `schema`, with JSON paths.
fn check(spec: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    match &schema["type"] {
        Value::String(t) if !type_ok(t, v) => out.push(format!("{at}: expected {t}, got {v}")),
        Value::Array(ts) if !ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), v)) => {
            out.push(format!("{at}: expected one of {ts:?}, got {v}"))
        }
        _ => {}
    }
    if let (Some(e), Some(s)) = (schema["enum"].as_array(), v.as_str())
        && !e.iter().any(|x| x == s)
    {
        out.push(format!("{at}: {s:?} not in {e:?}"));
    }
    if let Some(obj) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                out.push(format!("{at}: missing required {r}"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (k, sub) in props {
                if let Some(x) = obj.get(k) {
                    check(spec, sub, x, &format!("{at}.{k}"), out);
                }
            }
            for k in obj.keys() {
                if !props.contains_key(k) {
                    out.push(format!("{at}: undocumented field {k}"));
                }
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(spec, items, x, &format!("{at}[{i}]"), out);
        }
    }
}

fn response_schema<'a>(spec: &'a Value, path: &str, method: &str) -> (&'a str, &'a Value) {
    let responses = spec["paths"][path][method]["responses"]
        .as_object()
        .unwrap();
    let (code, r) = responses.iter().find(|(c, _)| c.starts_with('2')).unwrap();
    (code, &r["content"]["application/json"]["schema"])
}

/// (method, path template, concrete path, token, body) of one call.
type Call<'a> = (&'a str, &'a str, String, String, Option<Value>);

/// Make one documented call that must answer its documented status, check
/// the answer against its schema and mark the operation as exercised.
async fn exercise(
    api: &spot_tests::harness::Api,
    spec: &Value,
    (method, tpl, path, tok, body): &Call<'_>,
    problems: &mut Vec<String>,
    documented: &mut Vec<(String, String)>,
) {
    let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let (st, v) = api
        .call(m, path, Some(tok.as_str()), body.as_ref())
        .await
        .unwrap();
    let (code, schema) = response_schema(spec, tpl, method);
    assert_eq!(st.as_str(), code, "{method} {path}: {v}");
    check(spec, schema, &v, &format!("{method} {tpl}"), problems);
    documented.retain(|(dm, dp)| !(dm == method && dp == tpl));
}

#[tokio::test]
async fn documented_api_matches_the_server() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &["--decision-interval", "1s"]).unwrap();
    let api = c.api();
    let adm = c.admin_token.clone();

    // A small world so that every route has something to answer.
    let (st, _) = api
        .post(
            "/v1/groups",
            &adm,
            &json!({"name": "db", "config": {"paused": true,
            "pools": [{"instance_type": "m5.large", "availability_zone": "us-east-1a"},
                      {"instance_type": "c5.large", "availability_zone": "us-east-1a"}],
            "data_volumes": [{"volume_id": "vol-0db", "device": "/dev/sdf"}]}}),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);
    let reg = json!({"instance_id": "i-1", "instance_type": "m5.large", "availability_zone": "us-east-1a",
        "region": "us-east-1", "lifecycle": "spot", "group": "db"});
    let (_, r) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg)
        .await
        .unwrap();
    let (agent, token) = (
        r["agent_id"].as_str().unwrap().to_owned(),
        r["token"].as_str().unwrap().to_owned(),
    );
    let mut reg2 = reg.clone();
    reg2["instance_id"] = json!("i-2");
    let (_, r2) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg2)
        .await
        .unwrap();
    let agent2 = r2["agent_id"].as_str().unwrap().to_owned();

    // A group in shadow mode, so that the decision log has an entry.
    let (st, _) = api
        .post(
            "/v1/groups",
            &adm,
            &json!({"name": "dec", "config": {"decisions": "shadow"}}),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);
    spot_tests::harness::eventually("a decision logged", Duration::from_secs(20), || async {
        let (_, d) = api.get("/v1/groups/dec/decisions", &adm).await.ok()?;
        (!d.as_array()?.is_empty()).then_some(())
    })
    .await
    .unwrap();
    let hb = json!({"instance_id": "i-1", "highest_epoch": 0, "healthy": true, "backlog": 0});
    let events = json!({"events": [{"event_id": format!("{agent}:1"), "seq": 1, "at_ms": 1,
        "body": {"type": "notice", "notice": "rebalance", "raw": "{}"}}]});
    // (method, concrete path, token, body) for every documented operation.
    let calls: Vec<Call> = vec![
        (
            "post",
            "/v1/agents/register",
            "/v1/agents/register".into(),
            c.enrollment_token.clone(),
            Some(
                json!({"instance_id": "i-3", "instance_type": "m5.large", "availability_zone": "us-east-1a", "region": "us-east-1", "lifecycle": "spot", "group": "db"}),
            ),
        ),
        (
            "post",
            "/v1/agents/{agent_id}/heartbeat",
            format!("/v1/agents/{agent}/heartbeat"),
            token.clone(),
            Some(hb),
        ),
        (
            "post",
            "/v1/groups/{name}/promote",
            "/v1/groups/db/promote".into(),
            adm.clone(),
            Some(json!({"instance_id": "i-1", "expected_epoch": 0})),
        ),
        (
            "get",
            "/v1/agents/{agent_id}/commands",
            format!("/v1/agents/{agent}/commands?wait_ms=0"),
            token.clone(),
            None,
        ),
        (
            "post",
            "/v1/agents/{agent_id}/events",
            format!("/v1/agents/{agent}/events"),
            token.clone(),
            Some(events),
        ),
        ("get", "/v1/groups", "/v1/groups".into(), adm.clone(), None),
        (
            "post",
            "/v1/groups",
            "/v1/groups".into(),
            adm.clone(),
            Some(json!({"name": "cache"})),
        ),
        (
            "get",
            "/v1/groups/{name}",
            "/v1/groups/db".into(),
            adm.clone(),
            None,
        ),
        (
            "put",
            "/v1/groups/{name}",
            "/v1/groups/cache".into(),
            adm.clone(),
            Some(json!({"config": {"auto_terminate": true}, "version": 1})),
        ),
        (
            "post",
            "/v1/groups/{name}/launch",
            "/v1/groups/db/launch".into(),
            adm.clone(),
            Some(json!({"pool": {"instance_type": "m5.large", "availability_zone": "us-east-1b"}})),
        ),
        (
            "get",
            "/v1/instances",
            "/v1/instances".into(),
            adm.clone(),
            None,
        ),
        (
            "post",
            "/v1/instances/terminate",
            "/v1/instances/terminate".into(),
            adm.clone(),
            Some(json!({"role": "zombie", "older_than": "1d", "dry_run": true})),
        ),
        (
            "get",
            "/v1/groups/{name}/switches",
            "/v1/groups/db/switches".into(),
            adm.clone(),
            None,
        ),
        (
            "get",
            "/v1/groups/{name}/volumes",
            "/v1/groups/db/volumes".into(),
            adm.clone(),
            None,
        ),
        (
            "get",
            "/v1/groups/{name}/decisions",
            "/v1/groups/dec/decisions?limit=5".into(),
            adm.clone(),
            None,
        ),
        (
            "get",
            "/v1/models/compare",
            "/v1/models/compare?since=1d".into(),
            adm.clone(),
            None,
        ),
        (
            "get",
            "/v1/instances/{instance_id}",
            "/v1/instances/i-1".into(),
            adm.clone(),
            None,
        ),
        ("get", "/v1/agents", "/v1/agents".into(), adm.clone(), None),
        (
            "get",
            "/v1/agents/{agent_id}",
            format!("/v1/agents/{agent}"),
            adm.clone(),
            None,
        ),
        (
            "delete",
            "/v1/agents/{agent_id}",
            format!("/v1/agents/{agent2}"),
            adm.clone(),
            None,
        ),
        (
            "get",
            "/v1/commands",
            "/v1/commands".into(),
            adm.clone(),
            None,
        ),
        (
            "get",
            "/v1/notices",
            "/v1/notices".into(),
            adm.clone(),
            None,
        ),
        (
            "get",
            "/v1/audit",
            "/v1/audit?limit=5".into(),
            adm.clone(),
            None,
        ),
        ("get", "/healthz", "/healthz".into(), String::new(), None),
    ];
    let mut documented: Vec<(String, String)> = Vec::new();
    for (p, ops) in spec["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            documented.push((m.clone(), p.clone()));
        }
    }
    let mut problems = Vec::new();
    for (method, tpl, path, tok, body) in &calls {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let tok = (!tok.is_empty()).then_some(tok.as_str());
        let (st, v) = api.call(m, path, tok, body.as_ref()).await.unwrap();
        let (code, schema) = response_schema(&spec, tpl, method);
        if st.as_str() != code {
            problems.push(format!(
                "{method} {path}: status {st}, documented {code}: {v}"
            ));
            continue;
        }
        check(&spec, schema, &v, &format!("{method} {tpl}"), &mut problems);
        documented.retain(|(dm, dp)| !(dm == method && dp == tpl));
    }
    // A switch needs a PRIMARY: confirm the promotion above, then ask.
    let rid = "promote-i-1-e1";
    api.post(&format!("/v1/agents/{agent}/events"), &token, &json!({"events": [
        {"event_id": format!("{agent}:2"), "seq": 2, "at_ms": 2, "body": {"type": "command_result", "request_id": rid, "outcome": "done"}}]}))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while api.get("/v1/groups/db", &adm).await.unwrap().1["primary"] != "i-1" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "promotion never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (st, v) = api
        .post(
            "/v1/groups/db/switch",
            &adm,
            &json!({"pool": {"instance_type": "c5.large", "availability_zone": "us-east-1a"}}),
        )
        .await
        .unwrap();
    let (code, schema) = response_schema(&spec, "/v1/groups/{name}/switch", "post");
    assert_eq!(st.as_str(), code, "{v}");
    check(
        &spec,
        schema,
        &v,
        "post /v1/groups/{name}/switch",
        &mut problems,
    );
    documented.retain(|(m, p)| !(m == "post" && p == "/v1/groups/{name}/switch"));
    let (st, v) = api
        .post("/v1/groups/db/switch/cancel", &adm, &json!({}))
        .await
        .unwrap();
    let tpl = "/v1/groups/{name}/switch/cancel";
    let (code, schema) = response_schema(&spec, tpl, "post");
    assert_eq!(st.as_str(), code, "{v}");
    assert_eq!(v["failure"], "cancelled by an operator", "{v}");
    check(&spec, schema, &v, tpl, &mut problems);
    documented.retain(|(m, p)| !(m == "post" && p == tpl));
    // A transition that waits on fencing i-1: why it waits, abort it;
    // another one, and declare i-1 dead for it (forced: i-1 is live).
    // i-4 joins and reports healthy first, so that it is a REPLICA.
    let mut reg4 = reg.clone();
    reg4["instance_id"] = json!("i-4");
    let (_, r4) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg4)
        .await
        .unwrap();
    let hb4 = json!({"instance_id": "i-4", "highest_epoch": 0, "healthy": true, "backlog": 0});
    let agent4 = r4["agent_id"].as_str().unwrap();
    let token4 = r4["token"].as_str().unwrap();
    let (st, v) = api
        .post(&format!("/v1/agents/{agent4}/heartbeat"), token4, &hb4)
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    let transition_calls: Vec<(&str, &str, String, Option<Value>)> = vec![
        (
            "post",
            "/v1/groups/{name}/promote",
            "/v1/groups/db/promote".into(),
            Some(json!({"instance_id": "i-4", "expected_epoch": 1})),
        ),
        (
            "get",
            "/v1/groups/{name}/transition",
            "/v1/groups/db/transition".into(),
            None,
        ),
        (
            "post",
            "/v1/groups/{name}/transition/abort",
            "/v1/groups/db/transition/abort".into(),
            Some(json!({"expected_epoch": 2})),
        ),
        (
            "post",
            "/v1/groups/{name}/promote",
            "/v1/groups/db/promote".into(),
            Some(json!({"instance_id": "i-4", "expected_epoch": 2})),
        ),
        (
            "post",
            "/v1/groups/{name}/declare-dead",
            "/v1/groups/db/declare-dead".into(),
            Some(json!({"instance_id": "i-1", "force": true})),
        ),
    ];
    for (method, tpl, path, body) in transition_calls {
        let call = (method, tpl, path, adm.clone(), body);
        exercise(&api, &spec, &call, &mut problems, &mut documented).await;
    }
    let (_, g) = api.get("/v1/groups/db", &adm).await.unwrap();
    check(
        &spec,
        &json!({"$ref": "#/components/schemas/Group"}),
        &g,
        "group",
        &mut problems,
    );

    // An agent reset (i-5 registers, the operator resets it).
    let mut reg5 = reg.clone();
    reg5["instance_id"] = json!("i-5");
    let (_, r5) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg5)
        .await
        .unwrap();
    let agent5 = r5["agent_id"].as_str().unwrap();
    let call = (
        "post",
        "/v1/agents/{agent_id}/reset",
        format!("/v1/agents/{agent5}/reset"),
        adm.clone(),
        Some(json!({})),
    );
    exercise(&api, &spec, &call, &mut problems, &mut documented).await;

    // Pricing: a report, a consolidation, the series, the runs.
    let batch = json!({"points": [{"instance_type": "m5.large", "availability_zone": "us-east-1a",
        "product_description": "Linux/UNIX", "timestamp": "2026-11-20T10:00:00Z", "price": "0.031400"}]});
    let pricing_calls: Vec<Call> = vec![
        ("post", "/v1/agents/{agent_id}/pricing", format!("/v1/agents/{agent}/pricing"), token.clone(), Some(batch)),
        ("post", "/v1/pricing/consolidate", "/v1/pricing/consolidate".into(), adm.clone(), None),
        ("get", "/v1/pricing/runs", "/v1/pricing/runs".into(), adm.clone(), None),
        ("get", "/v1/prices", "/v1/prices?instance_type=m5.large&availability_zone=us-east-1a&from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z".into(), adm.clone(), None),
        ("get", "/v1/groups/{name}/prices", "/v1/groups/db/prices".into(), adm.clone(), None),
        ("get", "/v1/savings", "/v1/savings".into(), adm.clone(), None),
    ];
    for call in &pricing_calls {
        exercise(&api, &spec, call, &mut problems, &mut documented).await;
    }
    let (_, series) = api.get(&pricing_calls[3].2, &adm).await.unwrap();
    assert_eq!(series["points"][0]["price"], "0.031400", "{series}");

    // The event stream replays the audit log from the start: its first
    // event is the creation of group db, an AuditEntry.
    let mut resp = reqwest::Client::new()
        .get(format!("{}/v1/events/stream?after=0", c.base))
        .bearer_auth(&adm)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buf = String::new();
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            buf.push_str(&String::from_utf8_lossy(
                &resp.chunk().await.unwrap().unwrap(),
            ));
            if let Some(end) = buf.find("\n\n") {
                return buf[..end].to_owned();
            }
        }
    })
    .await
    .unwrap();
    assert!(
        first.contains("event: create") && first.contains("id: 1"),
        "{first}"
    );
    let data = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let entry: Value = serde_json::from_str(data).unwrap();
    check(
        &spec,
        &spec["paths"]["/v1/events/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]
            ["schema"],
        &entry,
        "get /v1/events/stream",
        &mut problems,
    );
    documented.retain(|(_, p)| p != "/v1/events/stream");

    // /metrics is text, checked for existence only.
    let (st, _) = api.call(Method::GET, "/metrics", None, None).await.unwrap();
    assert_eq!(st, 200);
    documented.retain(|(_, p)| p != "/metrics");
    assert!(
        documented.is_empty(),
        "documented but not exercised: {documented:?}"
    );
    assert!(
        problems.is_empty(),
        "spec and server disagree:\n{}",
        problems.join("\n")
    );

    // Errors follow the documented Error schema.
    let (st, v) = api.get("/v1/groups/nope", &adm).await.unwrap();
    assert_eq!(st, 404);
    let mut p = Vec::new();
    check(
        &spec,
        &json!({"$ref": "#/components/schemas/Error"}),
        &v,
        "error",
        &mut p,
    );
    assert!(p.is_empty(), "{p:?}");
}

/// docs/decision-schema.json against the decision engine's types: a full
/// input (every optional part present) and every kind of answer.
#[test]
fn the_published_decision_schema_matches_the_code() {
    use spot_common::decision::{
        Action, DecisionInput, DecisionOutput, GroupFeatures, HourPrice, Member, ModelId,
        PoolFeatures, SCHEMA_VERSION,
    };
    use spot_common::{DecisionMode, NoticeKind, PoolKey};
    let schema = doc("decision-schema.json");
    let def = |n: &str| schema["$defs"][n].clone();
    let pool = PoolKey::new("m5.large", "us-east-1a");
    let member = Member {
        instance_id: "i-1".into(),
        pool: pool.clone(),
        uptime_s: 60,
        price: Some(0.1),
        cost_delta_to_cheapest: Some(0.0),
        on_demand_price: Some(0.2),
        notices: vec![NoticeKind::Rebalance],
    };
    let input = DecisionInput {
        version: SCHEMA_VERSION,
        group: "db".into(),
        now_ms: 1,
        config: GroupFeatures {
            mode: DecisionMode::Shadow,
            manual_replica: false,
            auto_terminate: false,
            pools: vec![pool.clone()],
            volume_zone: None,
            rpo_s: None,
        },
        primary: Some(member.clone()),
        replicas: vec![member.clone()],
        pools: vec![PoolFeatures {
            pool: pool.clone(),
            hourly: vec![HourPrice {
                hour_ms: 0,
                price: 0.1,
                interpolated: true,
            }],
            interruptions_per_instance_hour: 0.01,
            rebalances_per_instance_hour: 0.0,
            failed_launches: 1,
            boot_s: Some(30.0),
            last_interruption_ms: Some(0),
        }],
        switches_last_24h: 0,
    };
    let mut out = Vec::new();
    let v = serde_json::to_value(&input).unwrap();
    check(&schema, &def("DecisionInput"), &v, "input", &mut out);
    check(
        &schema,
        &def("Member"),
        &v["primary"],
        "input.primary",
        &mut out,
    );
    for action in [
        Action::Stay,
        Action::NoAction,
        Action::Switch { pool: pool.clone() },
        Action::CreateReplica { pool: pool.clone() },
    ] {
        let o = DecisionOutput {
            action,
            confidence: 0.5,
            reason: "r".into(),
            model: ModelId {
                name: "m".into(),
                version: "1".into(),
            },
        };
        let v = serde_json::to_value(&o).unwrap();
        check(&schema, &def("DecisionOutput"), &v, "output", &mut out);
    }
    assert!(out.is_empty(), "{out:#?}");
}
