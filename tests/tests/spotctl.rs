#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `spotctl` against the real coordinator: tables, JSON, actions, and the
//! exit codes scripts rely on (1 refused, 3 unreachable, 4 no token).

use serde_json::{Value, json};
use spot_tests::harness::{Coordinator, bin_path};
use std::process::{Command, Output};

fn spotctl(c: &Coordinator, token: &str, args: &[&str]) -> Output {
    Command::new(bin_path("spotctl").unwrap())
        .args(args)
        .env("SPOTCTL_URL", &c.base)
        .env("SPOTCTL_TOKEN", token)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn spotctl_shows_the_fleet_acts_on_it_and_fails_with_codes_scripts_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let api = c.api();
    let (st, _) = api
        .post(
            "/v1/groups",
            &c.admin_token,
            &json!({"name": "db", "config": {"paused": true,
                "pools": [{"instance_type": "m5.large", "availability_zone": "us-east-1a"}]}}),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);
    let reg = json!({"instance_id": "i-1", "instance_type": "m5.large",
        "availability_zone": "us-east-1a", "region": "us-east-1", "lifecycle": "spot", "group": "db"});
    let (st, _) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg)
        .await
        .unwrap();
    assert_eq!(st, 201);
    let adm = c.admin_token.clone();

    let o = spotctl(&c, &adm, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = text(&o);
    assert!(
        s.contains("GROUP") && s.contains("db") && s.contains("paused"),
        "{s}"
    );
    assert!(s.contains("agents: 1 online, 0 offline"), "{s}");

    let o = spotctl(
        &c,
        &adm,
        &["--output", "json", "instances", "--group", "db"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["instance_id"], "i-1", "{v}");

    let o = spotctl(&c, &adm, &["resume", "db"]);
    assert!(o.status.success(), "{}", text(&o));
    let (_, g) = api.get("/v1/groups/db", &adm).await.unwrap();
    assert_eq!(g["config"]["paused"], false, "{g}");
    let o = spotctl(&c, &adm, &["pause", "db"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = spotctl(&c, &adm, &["audit", "--entity", "group:db"]);
    assert!(text(&o).contains("update_config"), "{}", text(&o));
    let o = spotctl(&c, &adm, &["prices", "db"]);
    assert!(
        o.status.success() && text(&o).contains("m5.large/us-east-1a"),
        "{}",
        text(&o)
    );
    let o = spotctl(&c, &adm, &["models", "--since", "1d"]);
    assert!(
        o.status.success() && text(&o).contains("INTERRUPTIONS"),
        "{}",
        text(&o)
    );
    let o = spotctl(&c, &adm, &["decisions", "db"]);
    assert!(
        o.status.success() && text(&o).contains("OUTCOME"),
        "{}",
        text(&o)
    );
    let o = spotctl(&c, &adm, &["zombies", "--terminate", "--dry-run"]);
    assert!(
        o.status.success() && text(&o).contains("dry run"),
        "{}",
        text(&o)
    );

    // A second registration of i-1 is refused while its agent is live;
    // after `agent reset` it gets in.
    let (st, v) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg)
        .await
        .unwrap();
    assert_eq!(
        (st.as_u16(), &v["code"]),
        (409, &json!("instance_registered")),
        "{v}"
    );
    let (_, agents) = api.get("/v1/agents", &adm).await.unwrap();
    let agent = agents[0]["agent_id"].as_str().unwrap().to_owned();
    let o = spotctl(&c, &adm, &["agent", "reset", &agent]);
    assert!(o.status.success(), "{}", text(&o));
    let (st, v) = api
        .post("/v1/agents/register", &c.enrollment_token, &reg)
        .await
        .unwrap();
    assert_eq!(st, 201, "{v}");
    let o = spotctl(&c, &adm, &["agent", "reset", &agent]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("agent_not_live"), "{}", text(&o));

    // Refused by the coordinator: 1, with its code.
    let o = spotctl(&c, &adm, &["switch-cancel", "db"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not_found"), "{}", text(&o));
    let o = spotctl(&c, "wrong", &["groups"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("unauthorized"), "{}", text(&o));
    // Unreachable: 3. No token: 4. Bad usage: 2.
    let o = Command::new(bin_path("spotctl").unwrap())
        .args(["--url", "http://127.0.0.1:1", "--token", "t", "groups"])
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = Command::new(bin_path("spotctl").unwrap())
        .args(["--url", &c.base, "groups"])
        .env_remove("SPOTCTL_TOKEN")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let o = spotctl(&c, &adm, &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `spotctl watch` follows the event stream: a change made through the API
/// is printed within 2 s; a refused token ends it with exit code 1.
#[tokio::test]
async fn watch_prints_each_change_as_it_happens() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    let adm = c.admin_token.clone();
    let mut child = Command::new(bin_path("spotctl").unwrap())
        .arg("watch")
        .env("SPOTCTL_URL", &c.base)
        .env("SPOTCTL_TOKEN", &adm)
        .env("HOME", "/nonexistent")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send((Instant::now(), line));
        }
    });
    // The stream is open once the coordinator has answered; give the
    // child a moment to connect, then change something.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = Instant::now();
    let (st, _) = c
        .api()
        .post("/v1/groups", &adm, &json!({"name": "web", "config": {}}))
        .await
        .unwrap();
    assert_eq!(st, 201);
    let (at, line) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let lag = at.duration_since(t);
    assert!(
        line.contains("group:web") && line.contains("create") && line.contains("by operator"),
        "{line}"
    );
    assert!(lag < Duration::from_secs(2), "seen after {lag:?}");
    let _ = child.kill();
    let _ = child.wait();

    // A wrong token: refused at once, exit code 1 (not a reconnect loop).
    let o = Command::new(bin_path("spotctl").unwrap())
        .args(["watch", "--after", "0", "--output", "json"])
        .env("SPOTCTL_URL", &c.base)
        .env("SPOTCTL_TOKEN", "wrong-token-of-some-length")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "a wrong token is refused: {}",
        text(&o)
    );
}
