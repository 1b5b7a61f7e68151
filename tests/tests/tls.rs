#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTPS end to end with a throwaway CA made here (openssl): the
//! coordinator serves TLS, clients verify it (a client without the CA is
//! refused), agents present client certificates (mTLS) and a simulated
//! fleet fails over through it, spotctl works with `--ca-bundle`, the login
//! cookie is `Secure`, and SIGHUP swaps the certificate without a restart
//! (a broken pair is refused and the old one kept).

use serde_json::json;
use spot_tests::fleet::{Fleet, FleetOptions};
use spot_tests::harness::{Api, bin_path, eventually};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's openssl package) runs");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `openssl req` for a new P-256 key (unencrypted) in `key`, writing
/// `out` for subject `cn`; `extra` before the rest (`-x509`, `-days`).
fn request(dir: &Path, extra: &[&str], key: &str, out: &str, cn: &str) {
    let subject = format!("/CN={cn}");
    let mut args = vec!["req"];
    args.extend(extra);
    args.extend([
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        out,
        "-subj",
        &subject,
    ]);
    openssl(dir, &args);
}

/// A CA, and `name`.pem/.key signed by it with `ext` (extensions).
fn issue(dir: &Path, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    request(dir, &[], &format!("{name}.key"), &format!("{name}.csr"), cn);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// Registering `reg` through `api` is refused with `status` and `code`.
async fn register_refused(
    api: &Api,
    token: &str,
    reg: &serde_json::Value,
    status: u16,
    code: &str,
) {
    let (st, v) = api.post("/v1/agents/register", token, reg).await.unwrap();
    assert_eq!(
        (st.as_u16(), v["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
}

/// The coordinator's certificate: valid for 127.0.0.1, for servers only.
const SERVER_EXT: &str =
    "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n";

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        request(
            dir.path(),
            &["-x509", "-days", "2"],
            "ca.key",
            "ca.pem",
            "spot test CA",
        );
        issue(dir.path(), "server", "127.0.0.1", SERVER_EXT);
        issue(
            dir.path(),
            "agent",
            "spot-agent",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        Pki { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn trusting(pki: &Pki, identity: bool) -> reqwest::Client {
    let tls = spot_runtime::tls::ClientTls {
        ca_bundle: Some(pki.path("ca.pem")),
        cert: identity.then(|| pki.path("agent.pem")),
        key: identity.then(|| pki.path("agent.key")),
    };
    tls.apply(reqwest::Client::builder().timeout(Duration::from_secs(30)))
        .unwrap()
        .build()
        .unwrap()
}

/// The serial number of the certificate the coordinator serves now.
fn served_serial(addr: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_client_certificates_and_reload() {
    let pki = Pki::new();
    let mut opts = FleetOptions::default();
    opts.coordinator_args.extend([
        "--tls-cert".into(),
        pki.s("server.pem"),
        "--tls-key".into(),
        pki.s("server.key"),
        "--tls-client-ca".into(),
        pki.s("ca.pem"),
    ]);
    opts.agent_args.extend([
        "--coordinator-ca-bundle".into(),
        pki.s("ca.pem"),
        "--client-cert".into(),
        pki.s("agent.pem"),
        "--client-key".into(),
        pki.s("agent.key"),
    ]);
    let mut f = Fleet::start(opts).await.unwrap();
    let addr = f.coord.base.trim_start_matches("http://").to_owned();
    let https = format!("https://{addr}");
    f.coord.base = https.clone();
    f.api = Api {
        base: https.clone(),
        client: trusting(&pki, false),
        others: Vec::new(),
    };
    let adm = f.coord.admin_token.clone();

    // Verified with the CA; refused without it; no plain HTTP on the port.
    let (st, _) = f.api.get("/healthz", &adm).await.unwrap();
    assert_eq!(st, 200);
    let err = reqwest::Client::new()
        .get(format!("{https}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    let plain = reqwest::get(format!("http://{addr}/healthz")).await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "no plain HTTP on the TLS port"
    );

    // The agent API wants a client certificate on top of the token.
    let reg = json!({"instance_id": "i-x", "instance_type": "m5.large", "availability_zone": "us-east-1a",
        "region": "us-east-1", "lifecycle": "spot", "group": "nope"});
    register_refused(
        &f.api,
        &f.coord.enrollment_token,
        &reg,
        401,
        "client_certificate_required",
    )
    .await;
    let with_cert = Api {
        base: https.clone(),
        client: trusting(&pki, true),
        others: Vec::new(),
    };
    let (st, v) = with_cert
        .post("/v1/agents/register", &f.coord.enrollment_token, &reg)
        .await
        .unwrap();
    assert_ne!(v["code"], "client_certificate_required", "{st} {v}");

    // Real agents (through their proxies) register over mTLS and fail over.
    let first = spot_tests::scenarios::group(&f, json!({}), Some("i-db-replica"))
        .await
        .unwrap();
    f.interrupt(&first, Duration::from_secs(120)).unwrap();
    spot_tests::scenarios::wait_confirmed(&f, "db", Some("i-db-replica"), None)
        .await
        .unwrap();

    // spotctl verifies with --ca-bundle, and is refused without it.
    let spotctl = |ca: bool| {
        let mut c = Command::new(bin_path("spotctl").unwrap());
        c.args([
            "--url", &https, "--token", &adm, "groups", "--output", "json",
        ]);
        c.env("HOME", pki.dir.path());
        if ca {
            c.args(["--ca-bundle", &pki.s("ca.pem")]);
        }
        c.output().unwrap()
    };
    let ok = spotctl(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"db\""));
    let refused = spotctl(false);
    assert!(!refused.status.success());

    // The login cookie is Secure under TLS.
    let resp = f
        .api
        .client
        .post(format!("{https}/ui/login"))
        .json(&json!({"token": adm}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // SIGHUP: a broken pair is refused (the old certificate keeps serving),
    // a new valid one is served without a restart.
    let before = served_serial(&addr);
    assert!(before.starts_with("serial="), "{before}");
    let pid = f.coord.pid().unwrap().to_string();
    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_serial(&addr), before, "a broken pair is not taken");
    let (st, _) = f.api.get("/healthz", &adm).await.unwrap();
    assert_eq!(st, 200, "still serving after a refused reload");
    issue(pki.dir.path(), "server", "127.0.0.1", SERVER_EXT);
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let after = eventually(
        "the new certificate served",
        Duration::from_secs(10),
        || async {
            let s = served_serial(&addr);
            (s.starts_with("serial=") && s != before).then_some(s)
        },
    )
    .await
    .unwrap();
    assert_ne!(after, before);
    let (st, _) = f.api.get("/healthz", &adm).await.unwrap();
    assert_eq!(st, 200);
    let log = std::fs::read_to_string(&f.coord.log).unwrap();
    assert!(
        log.contains("TLS reload refused") && log.contains("TLS certificate and key reloaded"),
        "{log}"
    );
}

/// With `--tls-client-identity san`, an agent's client certificate speaks
/// for the instance its subject alternative name holds, and no other: an
/// instance's key cannot register, heartbeat or poll for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_speaks_for_its_own_instance_only() {
    let pki = Pki::new();
    for i in ["i-1", "i-2"] {
        issue(
            pki.dir.path(),
            i,
            i,
            &format!(
                "subjectAltName=DNS:{i}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let c = spot_tests::harness::Coordinator::start(
        dir.path(),
        &[
            "--tls-cert",
            &pki.s("server.pem"),
            "--tls-key",
            &pki.s("server.key"),
            "--tls-client-ca",
            &pki.s("ca.pem"),
            "--tls-client-identity",
            "san",
        ],
    )
    .unwrap();
    let https = c.base.replace("http://", "https://");
    let as_instance = |name: &str| {
        let tls = spot_runtime::tls::ClientTls {
            ca_bundle: Some(pki.path("ca.pem")),
            cert: Some(pki.path(&format!("{name}.pem"))),
            key: Some(pki.path(&format!("{name}.key"))),
        };
        Api {
            base: https.clone(),
            client: tls
                .apply(reqwest::Client::builder().timeout(Duration::from_secs(30)))
                .unwrap()
                .build()
                .unwrap(),
            others: Vec::new(),
        }
    };
    let (one, two, fleet) = (as_instance("i-1"), as_instance("i-2"), as_instance("agent"));
    let (st, v) = one
        .post(
            "/v1/groups",
            &c.admin_token,
            &json!({"name": "db", "config": {"paused": true}}),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{v}");
    let reg = |i: &str| {
        json!({"instance_id": i, "instance_type": "m5.large", "availability_zone": "us-east-1a",
               "region": "us-east-1", "lifecycle": "spot", "group": "db"})
    };
    // i-2's key, and the fleet's shared one, cannot register i-1.
    for api in [&two, &fleet] {
        register_refused(
            api,
            &c.enrollment_token,
            &reg("i-1"),
            403,
            "client_certificate_mismatch",
        )
        .await;
    }
    let (st, a) = one
        .post("/v1/agents/register", &c.enrollment_token, &reg("i-1"))
        .await
        .unwrap();
    assert_eq!(st, 201, "{a}");
    let (id, token) = (
        a["agent_id"].as_str().unwrap(),
        a["token"].as_str().unwrap(),
    );
    let hb = json!({"instance_id": "i-1", "highest_epoch": 0, "healthy": true, "backlog": 0});
    let path = format!("/v1/agents/{id}/heartbeat");
    let (st, v) = one.post(&path, token, &hb).await.unwrap();
    assert_eq!(st, 200, "{v}");
    // i-1's agent token with i-2's key: refused, on every agent route.
    let (st, v) = two.post(&path, token, &hb).await.unwrap();
    assert_eq!(
        (st.as_u16(), v["code"].as_str()),
        (403, Some("client_certificate_mismatch")),
        "{v}"
    );
    let (st, v) = two
        .get(&format!("/v1/agents/{id}/commands?wait_ms=0"), token)
        .await
        .unwrap();
    assert_eq!(
        (st.as_u16(), v["code"].as_str()),
        (403, Some("client_certificate_mismatch")),
        "{v}"
    );
}
