//! The fleet simulator: a real coordinator, the EC2 simulator, and for
//! every instance a real `spot-agent` process with its own IMDS simulator,
//! its own fake workload process (`spot-workload`, started and stopped by
//! the agent's hooks, recording what it serves in the fleet's ledger) and
//! two proxies (agent <-> coordinator, agent <-> EC2) that can be cut.
//!
//! Instances created by RunInstances boot after `boot_delay`. An instance
//! dies (agent and workload killed, `killed` in the ledger) when its
//! interruption takes effect or when EC2 terminates it; EC2 reports it
//! `terminated` only once it is dead, as a fence must be able to trust.

mod boot;
mod cluster;
mod reads;

pub use cluster::{STORE, StoreChoice};

use crate::ec2_sim::Ec2Sim;
use crate::harness::cluster::PgSide;
use crate::harness::{AgentProc, Api, Coordinator, bin_path};
use crate::imds_sim::{ImdsSim, InstanceMeta};
use crate::ledger::{Line, append, monotonic_ns};
use crate::proxy::{Links, Proxy};
use anyhow::{Context, Result, bail};
use boot::Booter;
pub use boot::HOOK_LOG;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub struct Node {
    pub imds: ImdsSim,
    pub agent: AgentProc,
    pub workload: Option<Child>,
    pub group: String,
    /// The agent reaches each coordinator through these (cut = partition).
    pub link: Links,
    /// The agent reaches EC2 through this.
    pub ec2_link: Proxy,
    pub dir: PathBuf,
    /// The instance runs (not killed).
    pub alive: bool,
}

impl Node {
    /// A hook delay (the promote hook sleeps first), or `None` to clear.
    pub fn slow_hook(&self, name: &str, delay: Option<Duration>) -> Result<()> {
        let f = self.agent.hooks_dir.join(format!("{name}.delay"));
        match delay {
            Some(d) => std::fs::write(f, format!("{:.3}", d.as_secs_f64()))?,
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(())
    }

    /// Make the workload's health check fail (or pass again).
    pub fn unhealthy(&self, on: bool) -> Result<()> {
        flag(&self.dir.join("unhealthy"), on)
    }

    /// Make every journal call of the agent fail (or work again).
    pub fn journal_faults(&self, on: bool) -> Result<()> {
        flag(&self.agent.state_dir.join(spot_agent_fault_file()), on)
    }

    /// Step the agent's system clock by `offset_ms` from true time; like a
    /// real step, the agent sees it at its next start only.
    pub fn clock_offset(&self, offset_ms: i64) -> Result<()> {
        std::fs::write(self.dir.join("clock-offset"), offset_ms.to_string())?;
        Ok(())
    }
}

fn spot_agent_fault_file() -> &'static str {
    // The agent's test-only fault file (agent::JOURNAL_FAULT_FILE).
    "fault-journal-io"
}

fn flag(path: &Path, on: bool) -> Result<()> {
    if on {
        std::fs::write(path, "1")?;
    } else if path.exists() {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

#[derive(Clone)]
pub struct FleetOptions {
    pub boot_delay: Duration,
    pub imds_poll: Duration,
    /// Extra coordinator flags.
    pub coordinator_args: Vec<String>,
    /// Coordinator address (port 0: any).
    pub listen: String,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
    /// The coordinator's own EC2 executor (for groups without a live
    /// agent).
    pub coordinator_executor: bool,
    /// How long EC2 keeps a terminated instance `shutting-down`.
    pub terminate_delay: Duration,
    /// Coordinators (more than one: they share a PostgreSQL).
    pub coordinators: usize,
    /// The store on PostgreSQL (a server of the fleet's own) instead of
    /// SQLite.
    pub postgres: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            boot_delay: Duration::from_secs(2),
            imds_poll: Duration::from_millis(200),
            coordinator_args: vec![
                "--heartbeat-interval".into(),
                "1s".into(),
                "--demote-timeout".into(),
                "5s".into(),
                "--promotion-timeout".into(),
                "15s".into(),
                "--redeliver-after".into(),
                "5s".into(),
            ],
            listen: "127.0.0.1:0".into(),
            agent_args: vec![
                "--ec2-watch-interval".into(),
                "1s".into(),
                "--pricing-interval".into(),
                "2s".into(),
            ],
            coordinator_executor: true,
            terminate_delay: Duration::from_millis(500),
            coordinators: STORE.try_with(|s| s.coordinators).unwrap_or(1).max(1),
            postgres: STORE.try_with(|s| s.postgres).unwrap_or(false),
        }
    }
}

pub struct Fleet {
    pub root: PathBuf,
    /// The first coordinator (the only one on SQLite).
    pub coord: Coordinator,
    /// The others, sharing the store on PostgreSQL.
    pub peers: Vec<Coordinator>,
    /// The PostgreSQL server and each coordinator's path to it.
    pub pg: Option<PgSide>,
    pub api: Api,
    pub ec2: Ec2Sim,
    pub nodes: Arc<Mutex<HashMap<String, Node>>>,
    /// The workloads' ledger.
    pub ledger: PathBuf,
    opts: FleetOptions,
    /// What instances launched from now on are like.
    launched: Arc<Mutex<Launched>>,
    _tmp: Option<tempfile::TempDir>,
}

/// How instances RunInstances creates from now on boot (a fault that
/// outlasts a notice: the replacement registers after the reclaim).
#[derive(Clone, Copy, Debug, Default)]
pub struct Launched {
    /// Boot time instead of `FleetOptions::boot_delay`.
    pub boot_delay: Option<Duration>,
    /// Their promote hook takes this long.
    pub promote_delay: Option<Duration>,
}

fn pool_json(t: &str, az: &str) -> Value {
    json!({"instance_type": t, "availability_zone": az})
}

/// The pools every simulated group may use.
pub fn default_pools() -> Value {
    json!([
        pool_json("m5.large", "us-east-1a"),
        pool_json("m5.large", "us-east-1b"),
        pool_json("c5.large", "us-east-1a")
    ])
}

/// The pools of a group whose PRIMARY holds a secondary ENI in
/// `us-east-1a`: that zone only (an ENI cannot leave it).
pub fn one_zone_pools() -> Value {
    json!([
        pool_json("m5.large", "us-east-1a"),
        pool_json("c5.large", "us-east-1a")
    ])
}

/// Environment of a process that calls the EC2 simulator.
fn ec2_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        // Never let a test reach the link-local IMDS for credentials.
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

type Nodes = Arc<Mutex<HashMap<String, Node>>>;

/// The coordinator's test-only clock offset file, in the fleet's root.
const COORDINATOR_CLOCK_OFFSET: &str = "coordinator-clock-offset";

fn lock(nodes: &Nodes) -> std::sync::MutexGuard<'_, HashMap<String, Node>> {
    crate::lock(nodes)
}

/// Kill an instance: its agent and its workload, and record the end of
/// whatever it served (after it is dead, so the true end is no later).
fn kill_instance(nodes: &Nodes, ledger: &Path, id: &str) {
    let mut nodes = lock(nodes);
    let Some(n) = nodes.get_mut(id) else { return };
    if !n.alive {
        return;
    }
    n.alive = false;
    n.agent.kill9();
    if let Some(mut w) = n.workload.take() {
        let _ = w.kill();
        let _ = w.wait();
    }
    let _ = append(
        ledger,
        &Line {
            t_ns: monotonic_ns(),
            group: n.group.clone(),
            instance: id.to_owned(),
            event: "killed".into(),
            epoch: 0,
        },
    );
}

impl Fleet {
    /// A fleet in a temporary directory, removed when it is dropped; with
    /// `SPOT_SIM_KEEP=DIR`, in a new directory under DIR that stays (logs,
    /// journals, the store and the ledger, to look at after a failure).
    pub async fn start(opts: FleetOptions) -> Result<Fleet> {
        if let Some(keep) = std::env::var_os("SPOT_SIM_KEEP") {
            std::fs::create_dir_all(&keep)?;
            let root = tempfile::Builder::new()
                .prefix("fleet-")
                .tempdir_in(&keep)?
                .keep();
            eprintln!("spot-sim: fleet kept in {}", root.display());
            return Self::start_in(root, opts).await;
        }
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().to_owned();
        let mut f = Self::start_in(root, opts).await?;
        f._tmp = Some(tmp);
        Ok(f)
    }

    pub async fn start_in(root: PathBuf, opts: FleetOptions) -> Result<Fleet> {
        std::fs::create_dir_all(&root)?;
        let ec2 = Ec2Sim::start().await?;
        ec2.set_terminate_delay(opts.terminate_delay);
        let mut args: Vec<&str> = opts.coordinator_args.iter().map(String::as_str).collect();
        if opts.coordinator_executor {
            args.push("--ec2-executor");
        }
        // Every simulated IMDS signs its identity document with the test
        // key, so a fleet runs the identity check as production does.
        let identity_ca = crate::identity_sign::write_ca(&root)?.display().to_string();
        args.extend(["--identity", "verify", "--identity-ca", &identity_ca]);
        let mut env = ec2_env(&ec2.endpoint());
        let offset_file = root.join(COORDINATOR_CLOCK_OFFSET);
        env.push((
            "SPOT_COORDINATOR_CLOCK_OFFSET_FILE",
            offset_file.display().to_string(),
        ));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let n = opts.coordinators.max(1);
        anyhow::ensure!(
            n == 1 || opts.postgres,
            "several coordinators share a PostgreSQL store: use postgres"
        );
        let pg = if opts.postgres {
            Some(PgSide::start(n).await?)
        } else {
            None
        };
        let args_of = |i: usize| -> Vec<String> {
            let mut a: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
            if let Some(pg) = &pg {
                a.extend(["--store-url".into(), pg.url(i)]);
            }
            a
        };
        let first = args_of(0);
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        let coord = Coordinator::start_with(&root.join("coordinator"), &opts.listen, &first, &env)?;
        let mut peers = Vec::new();
        for i in 1..n {
            let dir = root.join(format!("coordinator-{i}"));
            std::fs::create_dir_all(&dir)?;
            // Every coordinator signs grants with the same key.
            std::fs::copy(coord.data_dir.join("grant.keys"), dir.join("grant.keys"))?;
            let a = args_of(i);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            peers.push(Coordinator::start_with(&dir, "127.0.0.1:0", &a, &env)?);
        }
        let bases: Vec<String> = std::iter::once(&coord)
            .chain(&peers)
            .map(|c| c.base.clone())
            .collect();
        let api = crate::harness::Api::several(&bases);
        let fleet = Fleet {
            ledger: root.join("ledger.jsonl"),
            root,
            coord,
            peers,
            pg,
            api,
            ec2,
            nodes: Arc::default(),
            opts,
            launched: Arc::default(),
            _tmp: None,
        };
        fleet.watch_launches();
        fleet.watch_terminations();
        Ok(fleet)
    }

    /// Boot an agent for every instance RunInstances creates.
    fn watch_launches(&self) {
        let mut rx = self.ec2.on_launch();
        let boot = self.booter();
        tokio::spawn(async move {
            while let Some(inst) = rx.recv().await {
                let boot = boot.clone();
                tokio::spawn(async move {
                    let delay = crate::lock(&boot.launched).boot_delay;
                    tokio::time::sleep(delay.unwrap_or(boot.opts.boot_delay)).await;
                    boot.ec2.set_state(&inst.instance_id, "running");
                    let group = inst.tag("spot:group").unwrap_or("unknown").to_owned();
                    if let Err(e) = boot
                        .boot(
                            &inst.instance_id,
                            &inst.instance_type,
                            &inst.availability_zone,
                            &group,
                        )
                        .await
                    {
                        tracing::error!(error = %e, instance = %inst.instance_id, "booting a simulated instance");
                    }
                });
            }
        });
    }

    /// Kill every instance EC2 terminates, before EC2 says `terminated`.
    fn watch_terminations(&self) {
        let mut rx = self.ec2.on_terminate();
        let (nodes, ledger) = (Arc::clone(&self.nodes), self.ledger.clone());
        tokio::spawn(async move {
            while let Some((id, ack)) = rx.recv().await {
                kill_instance(&nodes, &ledger, &id);
                let _ = ack.send(());
            }
        });
    }

    fn booter(&self) -> Booter {
        Booter {
            nodes: Arc::clone(&self.nodes),
            root: self.root.clone(),
            opts: self.opts.clone(),
            coordinators: self.coordinators().map(|c| c.base.clone()).collect(),
            enrollment: self.coord.enrollment_token.clone(),
            ec2: self.ec2.clone(),
            ledger: self.ledger.clone(),
            launched: Arc::clone(&self.launched),
        }
    }

    /// Make instances launched from now on boot and promote so.
    pub fn launch_like(&self, launched: Launched) {
        *crate::lock(&self.launched) = launched;
    }

    /// Create a group and its first instance (already running).
    pub async fn group(&self, name: &str, config: Value) -> Result<String> {
        self.create_group(name, config).await?;
        let id = format!("i-{name}-first");
        self.add_instance(&id, "m5.large", "us-east-1a", name)
            .await?;
        Ok(id)
    }

    /// Create a group through the API (the default pools unless `config`
    /// names some).
    pub async fn create_group(&self, name: &str, config: Value) -> Result<()> {
        let mut cfg = config;
        if cfg.get("pools").is_none() {
            cfg["pools"] = default_pools();
        }
        let (st, v) = self
            .api
            .post(
                "/v1/groups",
                &self.coord.admin_token,
                &json!({"name": name, "config": cfg}),
            )
            .await?;
        if !st.is_success() {
            bail!("creating group {name}: {st} {v}");
        }
        Ok(())
    }

    /// An instance that exists outside RunInstances, booted now.
    pub async fn add_instance(&self, id: &str, itype: &str, az: &str, group: &str) -> Result<()> {
        self.ec2.add_instance(id, itype, az, group);
        self.booter().boot(id, itype, az, group).await
    }

    /// An instance whose disk was cloned from `from`'s (its agent's state
    /// directory copied), booted now.
    pub async fn add_clone(&self, id: &str, from: &str, group: &str) -> Result<()> {
        let (src, dst) = (self.root.join(from), self.root.join(id));
        std::fs::create_dir_all(&dst)?;
        for f in ["journal.db", "journal.db-wal", "journal.db-shm"] {
            if src.join(f).exists() {
                std::fs::copy(src.join(f), dst.join(f))?;
            }
        }
        self.add_instance(id, "m5.large", "us-east-1b", group).await
    }

    /// Interruption notice on `instance_id`, taking effect `lead` from now;
    /// the instance dies then.
    pub fn interrupt(&self, instance_id: &str, lead: Duration) -> Result<SystemTime> {
        let at = SystemTime::now() + lead;
        lock(&self.nodes)
            .get(instance_id)
            .context("no such instance")?
            .imds
            .interrupt("terminate", at, Duration::ZERO);
        let (nodes, ec2, id, ledger) = (
            Arc::clone(&self.nodes),
            self.ec2.clone(),
            instance_id.to_owned(),
            self.ledger.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(lead).await;
            kill_instance(&nodes, &ledger, &id);
            ec2.set_state(&id, "terminated");
        });
        Ok(at)
    }

    /// The instance dies now, with no notice (hardware failure).
    pub fn lose(&self, instance_id: &str) {
        kill_instance(&self.nodes, &self.ledger, instance_id);
        self.ec2.set_state(instance_id, "terminated");
    }

    pub fn rebalance(&self, instance_id: &str) -> Result<()> {
        lock(&self.nodes)
            .get(instance_id)
            .context("no such instance")?
            .imds
            .rebalance(SystemTime::now());
        Ok(())
    }

    /// Scheduled maintenance (`system-reboot`) on `instance_id`, not
    /// before `lead` from now; returns its NotBefore.
    pub fn maintenance(&self, instance_id: &str, lead: Duration) -> Result<SystemTime> {
        let at = SystemTime::now() + lead;
        lock(&self.nodes)
            .get(instance_id)
            .context("no such instance")?
            .imds
            .scheduled("instance-event-sim", "system-reboot", at);
        Ok(at)
    }

    /// Run `f` on a node.
    pub fn with_node<T>(&self, id: &str, f: impl FnOnce(&mut Node) -> Result<T>) -> Result<T> {
        let mut nodes = lock(&self.nodes);
        let n = nodes
            .get_mut(id)
            .with_context(|| format!("no instance {id}"))?;
        f(n)
    }

    /// Make `hook` on instance `id` take `delay` longer (`None`: as usual).
    pub fn slow_hook(&self, id: &str, hook: &str, delay: Option<Duration>) -> Result<()> {
        self.with_node(id, |n| n.slow_hook(hook, delay))
    }

    /// Step the coordinator's wall clock by `offset_ms` from true time.
    pub fn coordinator_clock_offset(&self, offset_ms: i64) -> Result<()> {
        std::fs::write(
            self.root.join(COORDINATOR_CLOCK_OFFSET),
            offset_ms.to_string(),
        )?;
        Ok(())
    }

    /// Act as systemd's `Restart=always` with `RestartSec=restart_after`:
    /// every agent that is not running (it exited, failed closed, or was
    /// killed) on an instance that is up is started again.
    pub fn supervise_agents(&self, restart_after: Duration) -> tokio::task::JoinHandle<()> {
        let nodes = Arc::clone(&self.nodes);
        tokio::spawn(async move {
            let mut down_since: HashMap<String, tokio::time::Instant> = HashMap::new();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = tokio::time::Instant::now();
                for (id, n) in lock(&nodes).iter_mut() {
                    if !n.alive || n.agent.is_running() {
                        down_since.remove(id);
                        continue;
                    }
                    let since = *down_since.entry(id.clone()).or_insert(now);
                    if now.duration_since(since) >= restart_after {
                        down_since.remove(id);
                        n.agent.kill9();
                        if let Err(e) = n.agent.start(None) {
                            tracing::warn!(instance = %id, error = %e, "restarting an agent");
                        }
                    }
                }
            }
        })
    }

    /// Kill an agent and start it again (the instance stays up).
    pub fn restart_agent(&self, id: &str) -> Result<()> {
        self.with_node(id, |n| {
            n.agent.kill9();
            if n.alive {
                n.agent.start(None)?;
            }
            Ok(())
        })
    }

    /// Cut one agent's link to the coordinator.
    pub fn partition(&self, instance_id: &str) -> Result<()> {
        self.with_node(instance_id, |n| {
            n.link.cut();
            Ok(())
        })
    }

    pub fn journal_key(&self, instance_id: &str, key: &str) -> Option<String> {
        lock(&self.nodes).get(instance_id)?.agent.journal_key(key)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in lock(&self.nodes).values_mut() {
            n.agent.kill9();
            if let Some(mut w) = n.workload.take() {
                let _ = w.kill();
                let _ = w.wait();
            }
        }
    }
}
