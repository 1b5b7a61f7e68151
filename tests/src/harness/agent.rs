//! A real `spot-agent` process for tests and the simulator.

use super::*;

/// A running `spot-agent` process wired to a coordinator and the IMDS and
/// EC2 simulators.
pub struct AgentProc {
    child: Option<Child>,
    pub state_dir: PathBuf,
    pub hooks_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl AgentProc {
    pub fn new(
        state_dir: &Path,
        coordinator: &str,
        enrollment: &str,
        imds: &str,
        ec2: &str,
    ) -> AgentProc {
        let hooks_dir = state_dir.join("hooks");
        AgentProc {
            child: None,
            state_dir: state_dir.to_owned(),
            log: state_dir.join("agent.log"),
            args: vec![
                "run".into(),
                "--coordinator-url".into(),
                coordinator.into(),
                "--enrollment-token".into(),
                enrollment.into(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--imds-endpoint".into(),
                imds.into(),
                "--hooks-dir".into(),
                hooks_dir.display().to_string(),
            ],
            env: vec![
                ("AWS_ENDPOINT_URL".into(), ec2.into()),
                ("AWS_ACCESS_KEY_ID".into(), "test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
                // Never let a test reach the link-local IMDS for credentials.
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ],
            hooks_dir,
        }
    }

    /// An agent wired to `coord` and to both simulators.
    pub fn with_sims(
        state_dir: &Path,
        coord: &Coordinator,
        imds: &crate::imds_sim::ImdsSim,
        ec2: &crate::ec2_sim::Ec2Sim,
    ) -> AgentProc {
        let (imds, ec2) = (imds.endpoint(), ec2.endpoint());
        AgentProc::new(state_dir, &coord.base, &coord.enrollment_token, &imds, &ec2)
    }

    pub fn arg(&mut self, a: &str) -> &mut Self {
        self.args.push(a.to_owned());
        self
    }

    pub fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Start; `failpoints` is the FAILPOINTS value (e.g. `before_ec2_call=return`).
    pub fn start(&mut self, failpoints: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        std::fs::create_dir_all(&self.hooks_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin_path("spot-agent")?);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        self.child = Some(cmd.spawn().context("starting spot-agent")?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                self.child = None;
                return Ok(st);
            }
            if start.elapsed() > timeout {
                bail!("agent still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.pid().context("not running")?;
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        self.wait_exit(Duration::from_secs(30))
    }

    /// `spot-agent status --json` from the journal.
    pub fn status(&self) -> Result<Value> {
        let out = Command::new(bin_path("spot-agent")?)
            .args(["status", "--json", "--state-dir"])
            .arg(&self.state_dir)
            .output()?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// One field of the agent's state row in its journal (`role`,
    /// `role_epoch`, `agent_id`, ...), as text, read while the agent runs.
    pub fn journal_key(&self, key: &str) -> Option<String> {
        const FIELDS: &[&str] = &[
            "instance_id",
            "group_name",
            "agent_id",
            "token",
            "coordinator_url",
            "role",
            "role_epoch",
            "link_state",
            "decommissioned_at_ms",
            "self_demoted_at_ms",
        ];
        let field = FIELDS.iter().find(|f| **f == key)?;
        let c = rusqlite::Connection::open_with_flags(
            self.state_dir.join("journal.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        c.busy_timeout(Duration::from_secs(1)).ok()?;
        c.query_row(
            &format!("SELECT CAST({field} AS TEXT) FROM agent_state WHERE id = 1"),
            [],
            |r| r.get::<_, Option<String>>(0),
        )
        .ok()
        .flatten()
    }

    /// The highest epoch the agent's journal has accepted.
    pub fn highest_epoch(&self) -> Option<u64> {
        let c = rusqlite::Connection::open_with_flags(
            self.state_dir.join("journal.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        c.busy_timeout(Duration::from_secs(1)).ok()?;
        c.query_row("SELECT COALESCE(MAX(highest), 0) FROM epochs", [], |r| {
            r.get::<_, i64>(0)
        })
        .ok()
        .and_then(|v| u64::try_from(v).ok())
    }

    /// SIGSTOP (true) or SIGCONT (false): a frozen agent.
    pub fn freeze(&self, stop: bool) -> Result<()> {
        signal(
            self.pid().context("not running")?,
            if stop { "-STOP" } else { "-CONT" },
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
