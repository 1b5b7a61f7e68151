//! Start real `spot-coordinator` / `spot-agent` processes for tests and the
//! simulator, on port 0, and read the chosen address back.
//!
//! Binaries are looked up next to the running executable (cargo puts test
//! executables in `target/<profile>/deps` and binaries in
//! `target/<profile>`), so tests drive exactly the binaries the test command
//! built.

mod agent;
pub mod cluster;

pub use agent::AgentProc;
use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built alongside the current executable.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    bail!(
        "binary {name} not found near {}: run `cargo build --workspace --bins` first",
        exe.display()
    )
}

/// The sibling binaries the simulator drives.
pub const BINARIES: &[&str] = &["spot-coordinator", "spot-agent", "spot-workload"];

/// Make sure the sibling binaries sit next to this executable and are up
/// to date: when started by `cargo run` (a fresh clone included), build
/// them in the same profile (cargo does nothing when they are current).
/// Tests do not call this: the test command builds the binaries.
pub fn ensure_binaries() -> Result<()> {
    ensure_binaries_with(false)
}

/// The features that compile in the test-only faults (journal I/O errors,
/// clock offsets, fencing switched off) the nemesis needs.
pub const FAULT_FEATURES: &str = "spot-agent/failpoints,spot-coordinator/failpoints";

/// As `ensure_binaries`; with `faults`, built with [`FAULT_FEATURES`], and
/// checked to have them when they were built elsewhere.
pub fn ensure_binaries_with(faults: bool) -> Result<()> {
    build_binaries(faults)?;
    if faults {
        let probe = Command::new(bin_path("spot-coordinator")?)
            .args([
                "validate",
                "--data-dir",
                "/nonexistent",
                // Only the flag is probed: no identity CA to read.
                "--identity",
                "trust",
                "--unsafe-silence-is-death",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !probe.success() {
            bail!(
                "the binaries were built without the test faults: \
                 cargo build --workspace --bins --features {FAULT_FEATURES}"
            );
        }
    }
    Ok(())
}

fn build_binaries(faults: bool) -> Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        for b in BINARIES {
            bin_path(b)?;
        }
        return Ok(());
    };
    let exe = std::env::current_exe()?;
    let release = exe.parent().is_some_and(|d| d.ends_with("release"));
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    eprintln!("spot-sim: building spot-coordinator, spot-agent and spot-workload if needed ...");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--manifest-path",
        manifest,
        "-p",
        "spot-coordinator",
        "-p",
        "spot-agent",
        "-p",
        "spot-tests",
        "--bin",
        "spot-coordinator",
        "--bin",
        "spot-agent",
        "--bin",
        "spot-workload",
    ]);
    if release {
        cmd.arg("--release");
    }
    if faults {
        cmd.args(["--features", FAULT_FEATURES]);
    }
    if !cmd.status()?.success() {
        bail!("building the simulator's binaries failed");
    }
    Ok(())
}

/// Wait for a file written by a starting process.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_owned());
        }
        if start.elapsed() > timeout {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running coordinator process with its own data dir.
pub struct Coordinator {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub base: String,
    pub admin_token: String,
    pub enrollment_token: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    listen: String,
}

pub const TEST_ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
pub const TEST_ENROLLMENT_TOKEN: &str = "enrollment-token-for-tests-012345";

impl Coordinator {
    /// Start in `data_dir` with fixed test tokens and `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Result<Coordinator> {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Start listening on `listen` (the demo uses a fixed port).
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Result<Coordinator> {
        Self::start_with(data_dir, listen, extra, &[])
    }

    /// Start with extra environment (the EC2 executor's endpoint).
    pub fn start_with(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Coordinator> {
        let mut c = Coordinator {
            child: None,
            data_dir: data_dir.to_owned(),
            base: String::new(),
            admin_token: TEST_ADMIN_TOKEN.to_owned(),
            enrollment_token: TEST_ENROLLMENT_TOKEN.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: data_dir.join("coordinator.log"),
            listen: listen.to_owned(),
        };
        c.spawn()?;
        Ok(c)
    }

    fn spawn(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        let addr_file = self.data_dir.join("listen.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin_path("spot-coordinator")?)
            .arg("serve")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-token")
            .arg(&self.admin_token)
            .arg("--enrollment-token")
            .arg(&self.enrollment_token)
            // Raw-API tests register with made-up instances that no IMDS
            // signed; a test of the identity check (and every fleet, whose
            // IMDS simulators sign) passes `--identity verify`.
            .args(
                (!self.extra.iter().any(|a| a.starts_with("--identity")))
                    .then_some(["--identity", "trust"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting spot-coordinator")?;
        self.child = Some(child);
        let addr = wait_for_file(&addr_file, Duration::from_secs(30))?;
        self.base = format!("http://{addr}");
        Ok(())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A consistent copy of the live store at `to` (`VACUUM INTO`).
    pub fn back_up_store(&self, to: &Path) -> Result<()> {
        let _ = std::fs::remove_file(to);
        let c = rusqlite::Connection::open(self.data_dir.join("coordinator.db"))?;
        c.busy_timeout(Duration::from_secs(5))?;
        c.execute("VACUUM INTO ?1", [to.display().to_string()])?;
        Ok(())
    }

    /// Kill the coordinator and put the copy at `from` in its store's
    /// place (a restore from backup); `start_again` to run it.
    pub fn restore_store(&mut self, from: &Path) -> Result<()> {
        self.kill9();
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(self.data_dir.join(format!("coordinator.db{ext}")));
        }
        std::fs::copy(from, self.data_dir.join("coordinator.db"))
            .context("restoring the store copy")?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP (true) or SIGCONT (false): a frozen coordinator.
    pub fn freeze(&self, stop: bool) -> Result<()> {
        signal(
            self.pid().context("not running")?,
            if stop { "-STOP" } else { "-CONT" },
        )
    }

    /// Start again on the same data dir and address, without killing
    /// first (after a `kill9`).
    pub fn start_again(&mut self) -> Result<()> {
        self.listen = self.base.trim_start_matches("http://").to_owned();
        let r = self.spawn();
        self.listen = "127.0.0.1:0".to_owned();
        r
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        let pid = i32::try_from(c.id())?;
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                bail!("coordinator ignored SIGTERM for 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start again on the same data dir (a new port).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Start again on the same data dir and the same address, as a
    /// coordinator behind a fixed DNS name comes back.
    pub fn restart_same_port(&mut self) -> Result<()> {
        self.kill9();
        self.listen = self.base.trim_start_matches("http://").to_owned();
        let r = self.spawn();
        self.listen = "127.0.0.1:0".to_owned();
        r
    }

    pub fn api(&self) -> Api {
        Api::new(&self.base)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Small JSON client for tests.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    /// Other coordinators of the same store: tried in turn when `base`
    /// does not answer, or has no leader to send the call to.
    pub others: Vec<String>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            others: Vec::new(),
        }
    }

    /// Calls go to `bases[0]`, then to the others when it fails (within
    /// 10 s each: a frozen coordinator must not hold a call for a minute).
    pub fn several(bases: &[String]) -> Api {
        let mut api = Api::new(&bases[0]);
        if bases.len() > 1 {
            api.client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default();
        }
        api.others = bases[1..].to_vec();
        api
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut last = None;
        for base in std::iter::once(&self.base).chain(&self.others) {
            match self.call_one(base, method.clone(), path, token, body).await {
                Ok((st, v))
                    if st == StatusCode::SERVICE_UNAVAILABLE
                        && (v["code"] == "no_leader" || v["code"] == "not_leader")
                        && !self.others.is_empty() =>
                {
                    last = Some(Ok((st, v)));
                }
                Ok(answer) => return Ok(answer),
                Err(e) if !self.others.is_empty() => last = Some(Err(e)),
                Err(e) => return Err(e),
            }
        }
        last.unwrap_or_else(|| bail!("no coordinator to call"))
    }

    async fn call_one(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.client.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    pub async fn get(&self, path: &str, token: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// The entries of an audit query (`/v1/audit?...`); empty when the
    /// answer is not a list (the caller's assertion then says what was
    /// missing).
    pub async fn audit(&self, path: &str, token: &str) -> Vec<Value> {
        match self.get(path, token).await {
            Ok((_, Value::Array(entries))) => entries,
            _ => Vec::new(),
        }
    }

    pub async fn delete(&self, path: &str, token: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Result<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Result<(StatusCode, Value)> {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Value)> {
        // Its own connection: a server refusing a body (413) closes the
        // connection without reading it, which must not poison the pool
        // the next request draws from.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut req = client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }
}

/// Send a signal (`-STOP`, `-CONT`, `-KILL`) to a process.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(st.success(), "kill {sig} {pid} failed");
    Ok(())
}

/// Poll `f` every 50 ms until it returns `Some`, or fail after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
