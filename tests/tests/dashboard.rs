#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The dashboard (`/ui`): its login cookie and CSRF rules over plain HTTP,
//! then the page itself in headless Chromium (WebDriver) against a
//! simulated fleet: an interruption shows up live (banner, countdown, new
//! PRIMARY), the price chart marks interpolated hours, bulk terminate
//! terminates in the EC2 simulator, a forged cross-site POST is refused,
//! and a viewer cannot press admin buttons.

use reqwest::StatusCode;
use serde_json::{Value, json};
use spot_tests::browser::{Browser, chromedriver};
use spot_tests::ec2_sim::SimPrice;
use spot_tests::fleet::{Fleet, FleetOptions};
use spot_tests::harness::{Coordinator, bin_path, eventually};
use std::time::{Duration, Instant};

fn token(data_dir: &std::path::Path, args: &[&str]) -> String {
    let o = std::process::Command::new(bin_path("spot-coordinator").unwrap())
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

/// One request with the session cookie (and optionally the CSRF token and
/// an Origin).
async fn with_cookie(
    c: &Coordinator,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    origin: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", c.base))
        .header("cookie", format!("spot_session={cookie}"));
    if let Some(t) = csrf {
        r = r.header("x-csrf-token", t);
    }
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status();
    let text = resp.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Log in over HTTP: the cookie's value, the Set-Cookie header, the body.
async fn login(c: &Coordinator, tok: &str) -> (StatusCode, String, String, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/ui/login", c.base))
        .json(&json!({"token": tok}))
        .send()
        .await
        .unwrap();
    let st = resp.status();
    let set = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let value = set
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("spot_session="))
        .unwrap_or("")
        .to_owned();
    (st, value, set, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_login_cookie_reads_and_changes_only_with_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    use reqwest::Method;

    let (st, _, _, body) = login(&c, "not-a-token-at-all-0000").await;
    assert_eq!(st, 401, "{body}");
    let (st, cookie, set, body) = login(&c, &c.admin_token).await;
    assert_eq!(st, 200, "{body}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    assert_eq!(body["role"], "admin");
    assert_eq!(body["actor"], "operator");
    let csrf = body["csrf"].as_str().unwrap().to_owned();
    assert!(csrf.len() >= 32 && cookie.len() >= 32 && csrf != cookie);

    let (st, _) = with_cookie(&c, Method::GET, "/v1/groups", &cookie, None, None, None).await;
    assert_eq!(st, 200, "reads need no CSRF token");
    let g = |name: &str| Some(json!({"name": name, "config": {"paused": true}}));
    let (st, v) = with_cookie(&c, Method::POST, "/v1/groups", &cookie, None, None, g("a")).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_refused")),
        "{v}"
    );
    let (st, v) = with_cookie(
        &c,
        Method::POST,
        "/v1/groups",
        &cookie,
        Some("wrong"),
        None,
        g("a"),
    )
    .await;
    assert_eq!(v["code"], "csrf_refused", "{st} {v}");
    let host = c.base.trim_start_matches("http://");
    let (st, v) = with_cookie(
        &c,
        Method::POST,
        "/v1/groups",
        &cookie,
        Some(&csrf),
        Some("http://evil.example"),
        g("a"),
    )
    .await;
    assert_eq!(v["code"], "csrf_refused", "a foreign Origin: {st} {v}");
    let own = format!("http://{host}");
    let (st, v) = with_cookie(
        &c,
        Method::POST,
        "/v1/groups",
        &cookie,
        Some(&csrf),
        Some(&own),
        g("a"),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (_, audit) = c
        .api()
        .get("/v1/audit?entity=group:a", &c.admin_token)
        .await
        .unwrap();
    assert_eq!(audit[0]["actor"], "operator", "{audit}");
    // A bearer token needs no CSRF token (spotctl, scripts).
    let (st, _) = c
        .api()
        .post(
            "/v1/groups",
            &c.admin_token,
            &json!({"name": "b", "config": {"paused": true}}),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);

    // A viewer's session reads and changes nothing, even with the token.
    let viewer = token(&c.data_dir, &["create", "--name", "ro", "--role", "viewer"]);
    let (st, vcookie, _, vbody) = login(&c, &viewer).await;
    assert_eq!(
        (st, vbody["role"].as_str()),
        (StatusCode::OK, Some("viewer"))
    );
    let vcsrf = vbody["csrf"].as_str().unwrap();
    let (st, _) = with_cookie(&c, Method::GET, "/v1/instances", &vcookie, None, None, None).await;
    assert_eq!(st, 200);
    let (st, v) = with_cookie(
        &c,
        Method::POST,
        "/v1/groups",
        &vcookie,
        Some(vcsrf),
        None,
        g("c"),
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    // Revoking the token ends its sessions at once.
    token(&c.data_dir, &["revoke", "--name", "ro"]);
    let (st, _) = with_cookie(&c, Method::GET, "/v1/instances", &vcookie, None, None, None).await;
    assert_eq!(st, 401);

    // Logging out ends the session (and needs the CSRF token too).
    let (st, _) = with_cookie(&c, Method::POST, "/ui/logout", &cookie, None, None, None).await;
    assert_eq!(st, 403);
    let (st, _) = with_cookie(
        &c,
        Method::POST,
        "/ui/logout",
        &cookie,
        Some(&csrf),
        None,
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = with_cookie(&c, Method::GET, "/v1/groups", &cookie, None, None, None).await;
    assert_eq!(st, 401);

    // The page and its library are served from the binary.
    let page = reqwest::get(format!("{}/ui", c.base)).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src") || csp.contains("default-src 'self'"),
        "{csp}"
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("/ui/vendor/uPlot.iife.min.js")
    );
    let lib = reqwest::get(format!("{}/ui/vendor/uPlot.iife.min.js", c.base))
        .await
        .unwrap();
    assert_eq!(
        lib.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(lib.text().await.unwrap().contains("uPlot"));
}

/// Prices every 4 hours over the last day for the group's pools: the hours
/// between are interpolated by consolidation.
fn gappy_prices() -> Vec<SimPrice> {
    const H: i64 = 3_600_000;
    let now = spot_tests::now_ms() / H * H;
    let mut v = Vec::new();
    for k in 0..7 {
        for (t, az, p) in [
            ("m5.large", "us-east-1a", 0.030 + 0.001 * k as f64),
            ("m5.large", "us-east-1b", 0.034),
            ("c5.large", "us-east-1a", 0.041),
        ] {
            v.push(SimPrice {
                instance_type: t.into(),
                availability_zone: az.into(),
                product_description: "Linux/UNIX".into(),
                timestamp_ms: now - 24 * H + k * 4 * H,
                price: format!("{p:.6}"),
            });
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let Some(driver) = chromedriver() else { return };
    let conf = tempfile::tempdir().unwrap();
    let conf_file = conf.path().join("coordinator.toml");
    std::fs::write(&conf_file, "[on_demand_prices]\n\"m5.large\" = \"0.096\"\n").unwrap();
    let mut opts = FleetOptions::default();
    opts.coordinator_args
        .extend(["--config".into(), conf_file.display().to_string()]);
    let f = Fleet::start(opts).await.unwrap();
    let first = spot_tests::scenarios::group(&f, json!({}), Some("i-db-replica"))
        .await
        .unwrap();
    f.ec2.set_prices(gappy_prices());
    let adm = f.coord.admin_token.clone();
    // Agents report prices every 2 s; consolidate until the hours are in.
    let interpolated = eventually("consolidated prices", Duration::from_secs(30), || async {
        f.api
            .post("/v1/pricing/consolidate", &adm, &json!(null))
            .await
            .ok()?;
        let p = f.get("/v1/groups/db/prices").await.ok()?;
        let n = p["pools"]
            .as_array()?
            .iter()
            .flat_map(|s| s["points"].as_array().into_iter().flatten())
            .filter(|x| x["interpolated"] == true)
            .count();
        (n > 0 && p["pools"][2]["points"].as_array()?.len() > 20).then_some(n)
    })
    .await
    .unwrap();

    let b = Browser::start(&driver).await.unwrap();
    let base = f.coord.base.clone();
    b.login(&base, &adm).await.unwrap();

    // The fleet: the group, its PRIMARY, the savings against on-demand.
    let row = b
        .until("the group's row", Duration::from_secs(10),
            "const r = document.querySelector('#groups tr[data-group=\"db\"]'); return r ? r.textContent : null")
        .await
        .unwrap();
    assert!(row.as_str().unwrap().contains(&first), "{row}");
    let savings = b
        .until("the fleet's savings", Duration::from_secs(10),
            "const s = document.querySelector('#fleet-savings'); return s && s.textContent.includes('%') ? s.textContent : null")
        .await
        .unwrap();
    assert!(savings.as_str().unwrap().ends_with(" %"), "{savings}");

    // The group page: the chart marks interpolated hours, as the API says.
    let shown = b
        .open_until(
            &format!("{base}/ui#/group/db"),
            "the price chart", Duration::from_secs(10),
            "const c = document.querySelector('#chart'); return c && c.dataset.interpolated ? Number(c.dataset.interpolated) : null")
        .await
        .unwrap();
    assert_eq!(
        shown.as_u64(),
        Some(interpolated as u64),
        "the chart shows every interpolated hour"
    );
    let legend = b
        .js("return [...document.querySelectorAll('#chart .u-legend .u-series')].map(s => [s.querySelector('.u-label').textContent, getComputedStyle(s.querySelector('.u-marker')).backgroundColor])", vec![])
        .await
        .unwrap();
    let entry = |label: &str| {
        legend
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[0] == label)
            .unwrap_or_else(|| panic!("no legend entry {label}: {legend}"))[1]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (observed, hollow) = (
        entry("m5.large/us-east-1a observed"),
        entry("m5.large/us-east-1a interpolated"),
    );
    assert_eq!(
        hollow, "rgb(255, 255, 255)",
        "interpolated points are hollow"
    );
    assert_ne!(observed, hollow, "observed points are filled");

    // An interruption shows up live: banner, countdown, new PRIMARY.
    b.client.goto(&format!("{base}/ui#/")).await.unwrap();
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120)).unwrap();
    let seen = b
        .until("the interruption banner with the new PRIMARY", Duration::from_secs(15),
            "const b = document.querySelector('#banner'); if (b.hidden) return null; const n = b.querySelector('.new-primary'), c = b.querySelector('.countdown'); return n && c ? [n.textContent, c.textContent] : null")
        .await
        .unwrap();
    let took = t.elapsed();
    eprintln!(
        "interruption -> banner with the new PRIMARY on the page: {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(seen[0], "i-db-replica", "{seen}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let before = seen[1].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = b
        .js(
            "return document.querySelector('#banner .countdown').textContent",
            vec![],
        )
        .await
        .unwrap();
    assert_ne!(after.as_str().unwrap(), before, "the countdown counts");
    let row = b
        .js(
            "return document.querySelector('#groups tr[data-group=\"db\"] .primary').textContent",
            vec![],
        )
        .await
        .unwrap();
    assert!(row.as_str().unwrap().contains("i-db-replica"), "{row}");

    // The group's history shows the failover: emergency, to the REPLICA.
    let history = b
        .open_until(
            &format!("{base}/ui#/group/db"),
            "the failover in the group's history",
            Duration::from_secs(10),
            "const t = document.querySelector('#failovers'); return t && t.textContent.includes('emergency') ? t.textContent : null",
        )
        .await
        .unwrap();
    assert!(
        history.as_str().unwrap().contains("i-db-replica"),
        "{history}"
    );

    // A forged cross-site POST (a form on another origin, with the login
    // cookie) is refused by the CSRF check, and changes nothing.
    let epoch = f.get("/v1/groups/db").await.unwrap()["epoch"].clone();
    let (listener, evil) = spot_tests::loopback().await.unwrap();
    let form = format!(
        r#"<html><body><form id="f" method="POST" action="{base}/v1/groups/db/promote" enctype="text/plain"><input name='{{"instance_id":"i-db-replica","expected_epoch":{epoch},"x":"' value='"}}'></form><script>document.getElementById('f').submit()</script></body></html>"#
    );
    spot_tests::serve(
        listener,
        axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(form) }),
        ),
    );
    let answer = b
        .open_until(
            &format!("http://{evil}/"),
            "the coordinator's answer to the forged POST",
            Duration::from_secs(10),
            "return location.href.includes('/promote') ? document.body.innerText : null",
        )
        .await
        .unwrap();
    assert!(
        answer.as_str().unwrap().contains("csrf_refused"),
        "{answer}"
    );
    assert_eq!(f.get("/v1/groups/db").await.unwrap()["epoch"], epoch);

    // Bulk terminate from the zombies page terminates in EC2.
    eventually(
        "the old PRIMARY a ZOMBIE",
        Duration::from_secs(20),
        || async { (f.role(&first).await.ok()? == "zombie").then_some(()) },
    )
    .await
    .unwrap();
    b.client.goto(&format!("{base}/ui#/zombies")).await.unwrap();
    b.until(
        "the zombie's row",
        Duration::from_secs(10),
        &format!("return document.querySelector('#zombies tr[data-instance=\"{first}\"] input')"),
    )
    .await
    .unwrap();
    b.js(
        &format!("document.querySelector('#zombies tr[data-instance=\"{first}\"] input').click()"),
        vec![],
    )
    .await
    .unwrap();
    b.js("document.querySelector('#terminate').click()", vec![])
        .await
        .unwrap();
    b.client.accept_alert().await.unwrap();
    let result = b
        .until(
            "the terminate result",
            Duration::from_secs(10),
            "return document.querySelector('#terminate-result').textContent",
        )
        .await
        .unwrap();
    assert!(
        result
            .as_str()
            .unwrap()
            .contains(&format!("{first}: terminate")),
        "{result}"
    );
    eventually(
        "the zombie terminated in EC2",
        Duration::from_secs(30),
        || async {
            f.ec2
                .instances()
                .iter()
                .find(|i| {
                    i.instance_id == first
                        && matches!(i.state.as_str(), "terminated" | "shutting-down")
                })
                .map(|_| ())
        },
    )
    .await
    .unwrap();

    // A viewer sees the group and cannot press an admin button.
    let viewer = token(
        &f.coord.data_dir,
        &["create", "--name", "ro", "--role", "viewer"],
    );
    b.client.goto(&format!("{base}/ui#/")).await.unwrap();
    b.login(&base, &viewer).await.unwrap();
    let disabled = b
        .open_until(
            &format!("{base}/ui#/group/db"),
            "the group page as a viewer", Duration::from_secs(10),
            "const ids = ['#do-promote', '#do-switch', '#do-replica', '#do-pause']; const els = ids.map(i => document.querySelector(i)); return els.every(Boolean) ? els.map(e => e.disabled) : null")
        .await
        .unwrap();
    assert_eq!(
        disabled,
        json!([true, true, true, true]),
        "admin buttons are disabled for a viewer"
    );
    // Even a change sent from the page's own script, with the CSRF token, is refused.
    let status = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch('/ui/session').then(r => r.json()).then(s => fetch('/v1/groups/db/switch', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf}, body: JSON.stringify({pool: {instance_type: 'c5.large', availability_zone: 'us-east-1a'}})})).then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    b.close().await.unwrap();
}
