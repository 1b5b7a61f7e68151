#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Named operator tokens against the real coordinator: created, listed and
//! revoked with `spot-coordinator token` while it runs; a viewer reads and
//! is refused every change; changes are audited under the token's name;
//! a revoked token stops working at once.

use serde_json::json;
use spot_tests::harness::{Coordinator, bin_path};
use std::process::{Command, Output};

fn token_cmd(c: &Coordinator, args: &[&str]) -> Output {
    Command::new(bin_path("spot-coordinator").unwrap())
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(&c.data_dir)
        .output()
        .unwrap()
}

fn create(c: &Coordinator, name: &str, role: &str) -> String {
    let o = token_cmd(c, &["create", "--name", name, "--role", role]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn viewers_only_read_and_changes_are_audited_under_the_tokens_name() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    let viewer = create(&c, "ops-ro", "viewer");
    let oncall = create(&c, "ops-oncall", "admin");
    assert!(viewer.len() >= 32 && viewer != oncall);

    // Creating a group with `token`: its status, and who the audit says did it.
    let create_group = |name: &'static str, token: String| {
        let api = c.api();
        let admin = c.admin_token.clone();
        async move {
            let (st, v) = api
                .post("/v1/groups", &token, &json!({"name": name, "config": {}}))
                .await
                .unwrap();
            let (_, audit) = api
                .get(&format!("/v1/audit?entity=group:{name}"), &admin)
                .await
                .unwrap();
            (st.as_u16(), v, audit[0]["actor"].clone())
        }
    };
    let (st, _) = api.get("/v1/groups", &viewer).await.unwrap();
    assert_eq!(st, 200, "a viewer reads");
    let (st, v, actor) = create_group("web", viewer.clone()).await;
    assert_eq!((st, &v["code"]), (403, &json!("forbidden")), "{v}");
    assert!(actor.is_null(), "nothing was changed: {actor}");
    let (st, _, actor) = create_group("web", oncall.clone()).await;
    assert_eq!((st, actor), (201, json!("operator:ops-oncall")));
    // The shared admin token keeps working, audited as `operator`.
    let (st, _, actor) = create_group("db", c.admin_token.clone()).await;
    assert_eq!((st, actor), (201, json!("operator")));

    // Revoked: refused at once; its name is never given out again.
    let o = token_cmd(&c, &["revoke", "--name", "ops-oncall"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (st, _) = api.get("/v1/groups", &oncall).await.unwrap();
    assert_eq!(st, 401);
    let o = token_cmd(&c, &["create", "--name", "ops-oncall", "--role", "admin"]);
    assert!(!o.status.success(), "a name is never reused");
    let o = token_cmd(&c, &["create", "--name", "bad name", "--role", "admin"]);
    assert!(!o.status.success(), "names are checked");
    let (st, _) = api
        .get("/v1/groups", "not-a-token-at-all-000000")
        .await
        .unwrap();
    assert_eq!(st, 401);

    // The list shows names, roles and revocations, never a token.
    let o = token_cmd(&c, &["list"]);
    let list = String::from_utf8(o.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{list}");
    assert!(
        v[0]["revoked_at_ms"].is_i64() && v[0]["name"] == "ops-oncall",
        "{list}"
    );
    assert_eq!(v[1]["role"], "viewer");
    assert!(!list.contains(&viewer) && !list.contains(&oncall), "{list}");
}

/// A group's enrollment token: it registers agents in that group only
/// (refused with a stable code and audited for any other), it is no
/// operator token, and with `--fleet-enrollment false` the fleet-wide
/// token no longer registers anyone.
#[tokio::test]
async fn a_group_enrollment_token_joins_its_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &["--fleet-enrollment", "false"]).unwrap();
    let api = c.api();
    for g in ["web", "db"] {
        let (st, v) = api
            .post(
                "/v1/groups",
                &c.admin_token,
                &json!({"name": g, "config": {"paused": true}}),
            )
            .await
            .unwrap();
        assert_eq!(st, 201, "{v}");
    }
    let o = token_cmd(
        &c,
        &[
            "create",
            "--name",
            "web-enroll",
            "--enroll",
            "--group",
            "web",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let web = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let reg = |instance: &str, group: &str| {
        json!({"instance_id": instance, "instance_type": "m5.large",
               "availability_zone": "us-east-1a", "region": "us-east-1",
               "lifecycle": "spot", "group": group})
    };

    let (st, v) = api
        .post(
            "/v1/agents/register",
            &c.enrollment_token,
            &reg("i-1", "web"),
        )
        .await
        .unwrap();
    assert_eq!(
        (st.as_u16(), &v["code"]),
        (401, &json!("fleet_enrollment_disabled")),
        "{v}"
    );
    let (st, v) = api
        .post("/v1/agents/register", &web, &reg("i-1", "db"))
        .await
        .unwrap();
    assert_eq!(
        (st.as_u16(), &v["code"]),
        (403, &json!("enrollment_group_mismatch")),
        "{v}"
    );
    let (_, agents) = api.get("/v1/agents", &c.admin_token).await.unwrap();
    assert_eq!(agents, json!([]), "nothing was registered");
    let trail = api
        .audit("/v1/audit?entity=token:web-enroll", &c.admin_token)
        .await;
    assert!(
        trail.iter().any(|e| e["action"] == "enrollment_refused"
            && e["post_state"]["asked_group"] == "db"
            && e["post_state"]["instance_id"] == "i-1"),
        "{trail:?}"
    );
    let (st, v) = api
        .post("/v1/agents/register", &web, &reg("i-1", "web"))
        .await
        .unwrap();
    assert_eq!(st, 201, "{v}");
    // No operator token: the operator API refuses it.
    let (st, _) = api.get("/v1/groups", &web).await.unwrap();
    assert_eq!(st, 401);

    // Listed without the token; a group that does not exist, or a role
    // with --enroll, is refused.
    let o = token_cmd(&c, &["list", "--enroll"]);
    let list = String::from_utf8(o.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        (&v[0]["name"], &v[0]["group"]),
        (&json!("web-enroll"), &json!("web")),
        "{list}"
    );
    assert!(!list.contains(&web));
    let o = token_cmd(
        &c,
        &["create", "--name", "x", "--enroll", "--group", "nope"],
    );
    assert!(!o.status.success(), "a group that does not exist");
    let o = token_cmd(
        &c,
        &[
            "create", "--name", "y", "--role", "admin", "--enroll", "--group", "web",
        ],
    );
    assert!(!o.status.success(), "a role and --enroll");
    let o = token_cmd(&c, &["create", "--name", "web-enroll", "--role", "viewer"]);
    assert!(!o.status.success(), "names are unique across both kinds");

    // Revoked: it registers nobody from now on.
    let o = token_cmd(&c, &["revoke", "--name", "web-enroll"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (st, _) = api
        .post("/v1/agents/register", &web, &reg("i-2", "web"))
        .await
        .unwrap();
    assert_eq!(st, 401);
}

/// `spot-coordinator grant-key`: the key is made on first use, a rotation
/// puts a new one first and keeps the old one (grants made under it still
/// verify), and the file is private.
#[test]
fn grant_keys_rotate_with_overlap_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(bin_path("spot-coordinator").unwrap())
            .arg("grant-key")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let first = run(&["list"]);
    assert_eq!(first.lines().count(), 1, "{first}");
    let new = run(&["rotate"]);
    let ids: Vec<String> = run(&["list"]).lines().map(str::to_owned).collect();
    assert_eq!(
        ids,
        [new.trim(), first.trim()],
        "the new key signs, the old one stays"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("grant.keys"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
