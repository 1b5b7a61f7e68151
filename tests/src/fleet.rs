//! The fleet simulator: a real coordinator, the EC2 simulator, and for
//! every instance a real `spot-agent` process with its own IMDS simulator.
//!
//! Instances created by RunInstances boot after `boot_delay` (EC2 state
//! `pending` -> `running`, then the agent starts). An interruption sets the
//! notice in the instance's IMDS and, at the notice time, kills the agent
//! (kill -9) and marks the instance terminated, as AWS does.

use crate::ec2_sim::Ec2Sim;
use crate::harness::{AgentProc, Api, Coordinator};
use crate::imds_sim::{ImdsSim, InstanceMeta};
use crate::proxy::Proxy;
use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub struct Node {
    pub imds: ImdsSim,
    pub agent: AgentProc,
    pub group: String,
    /// The agent reaches the coordinator through this (cut = partition).
    pub link: Proxy,
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
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            boot_delay: Duration::from_secs(2),
            imds_poll: Duration::from_millis(200),
            coordinator_args: vec!["--heartbeat-interval".into(), "1s".into()],
            listen: "127.0.0.1:0".into(),
            agent_args: vec![
                "--ec2-watch-interval".into(),
                "1s".into(),
                "--pricing-interval".into(),
                "2s".into(),
            ],
        }
    }
}

pub struct Fleet {
    pub root: PathBuf,
    pub coord: Coordinator,
    pub api: Api,
    pub ec2: Ec2Sim,
    pub nodes: Arc<Mutex<HashMap<String, Node>>>,
    opts: FleetOptions,
    _tmp: Option<tempfile::TempDir>,
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

impl Fleet {
    pub async fn start(opts: FleetOptions) -> Result<Fleet> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().to_owned();
        let mut f = Self::start_in(root, opts).await?;
        f._tmp = Some(tmp);
        Ok(f)
    }

    pub async fn start_in(root: PathBuf, opts: FleetOptions) -> Result<Fleet> {
        let args: Vec<&str> = opts.coordinator_args.iter().map(String::as_str).collect();
        let coord = Coordinator::start_on(&root.join("coordinator"), &opts.listen, &args)?;
        let api = coord.api();
        let ec2 = Ec2Sim::start().await?;
        let nodes: Arc<Mutex<HashMap<String, Node>>> = Arc::default();
        let fleet = Fleet {
            root,
            coord,
            api,
            ec2,
            nodes,
            opts,
            _tmp: None,
        };
        fleet.watch_launches();
        Ok(fleet)
    }

    /// Boot an agent for every instance RunInstances creates.
    fn watch_launches(&self) {
        let mut rx = self.ec2.on_launch();
        let (ec2, nodes, root, opts) = (
            self.ec2.clone(),
            Arc::clone(&self.nodes),
            self.root.clone(),
            self.opts.clone(),
        );
        let (base, enroll) = (self.coord.base.clone(), self.coord.enrollment_token.clone());
        tokio::spawn(async move {
            while let Some(inst) = rx.recv().await {
                let (ec2, nodes, root, opts, base, enroll) = (
                    ec2.clone(),
                    Arc::clone(&nodes),
                    root.clone(),
                    opts.clone(),
                    base.clone(),
                    enroll.clone(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(opts.boot_delay).await;
                    ec2.set_state(&inst.instance_id, "running");
                    let group = inst.tag("spot:group").unwrap_or("unknown").to_owned();
                    if let Err(e) = boot(
                        &nodes,
                        &root,
                        &opts,
                        &base,
                        &enroll,
                        &ec2.endpoint(),
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

    /// Create a group and its first instance (already running).
    pub async fn group(&self, name: &str, config: Value) -> Result<String> {
        let mut cfg = config;
        if cfg.get("pools").is_none() {
            cfg["pools"] = default_pools();
        }
        let (st, v) = self
            .api
            .call(
                Method::POST,
                "/v1/groups",
                Some(&self.coord.admin_token),
                Some(&json!({"name": name, "config": cfg})),
            )
            .await?;
        if !st.is_success() {
            bail!("creating group {name}: {st} {v}");
        }
        let id = format!("i-{name}-first");
        self.add_instance(&id, "m5.large", "us-east-1a", name)
            .await?;
        Ok(id)
    }

    /// An instance that exists outside RunInstances, booted now.
    pub async fn add_instance(&self, id: &str, itype: &str, az: &str, group: &str) -> Result<()> {
        self.ec2.add_instance(id, itype, az, group);
        boot(
            &self.nodes,
            &self.root,
            &self.opts,
            &self.coord.base,
            &self.coord.enrollment_token,
            &self.ec2.endpoint(),
            id,
            itype,
            az,
            group,
        )
        .await
    }

    /// Interruption notice on `instance_id`, taking effect `lead` from now;
    /// the instance dies then.
    pub fn interrupt(&self, instance_id: &str, lead: Duration) -> Result<SystemTime> {
        let at = SystemTime::now() + lead;
        {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let n = nodes.get(instance_id).context("no such instance")?;
            n.imds.interrupt("terminate", at, Duration::ZERO);
        }
        let (nodes, ec2, id) = (
            Arc::clone(&self.nodes),
            self.ec2.clone(),
            instance_id.to_owned(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(lead).await;
            ec2.set_state(&id, "terminated");
            if let Some(n) = nodes.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
                n.agent.kill9();
            }
        });
        Ok(at)
    }

    pub fn rebalance(&self, instance_id: &str) -> Result<()> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(instance_id)
            .context("no such instance")?
            .imds
            .rebalance(SystemTime::now());
        Ok(())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let (st, v) = self
            .api
            .call(Method::GET, path, Some(&self.coord.admin_token), None)
            .await?;
        if !st.is_success() {
            bail!("GET {path}: {st} {v}");
        }
        Ok(v)
    }

    pub async fn primary(&self, group: &str) -> Result<Option<String>> {
        Ok(self.get(&format!("/v1/groups/{group}")).await?["primary"]
            .as_str()
            .map(str::to_owned))
    }

    pub async fn role(&self, instance_id: &str) -> Result<String> {
        Ok(
            self.get(&format!("/v1/instances/{instance_id}")).await?["role"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    }

    /// The PRIMARY whose promote command finished `done` (confirmed).
    pub async fn confirmed_primary(&self, group: &str) -> Result<Option<String>> {
        let Some(p) = self.primary(group).await? else {
            return Ok(None);
        };
        let cmds = self.get("/v1/commands").await?;
        let done = cmds.as_array().into_iter().flatten().any(|c| {
            c["command"]["group"] == group
                && c["command"]["action"]["kind"] == "promote"
                && c["command"]["request_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&format!("promote-{p}-")))
                && c["state"] == "done"
        });
        Ok(done.then_some(p))
    }

    /// Cut one agent's link to the coordinator.
    pub fn partition(&self, instance_id: &str) -> Result<()> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(instance_id)
            .context("no such instance")?
            .link
            .cut();
        Ok(())
    }

    pub fn journal_key(&self, instance_id: &str, key: &str) -> Option<String> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.get(instance_id)?.agent.journal_key(key)
    }
}

/// Running agents that believe they are PRIMARY, per group.
pub fn agent_primaries(nodes: &Arc<Mutex<HashMap<String, Node>>>) -> HashMap<String, Vec<String>> {
    let mut nodes = nodes.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (id, n) in nodes.iter_mut() {
        if !n.agent.is_running() {
            continue;
        }
        if n.agent.journal_key("role").as_deref() == Some("primary") {
            out.entry(n.group.clone()).or_default().push(id.clone());
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn boot(
    nodes: &Arc<Mutex<HashMap<String, Node>>>,
    root: &std::path::Path,
    opts: &FleetOptions,
    coordinator: &str,
    enrollment: &str,
    ec2: &str,
    instance_id: &str,
    itype: &str,
    az: &str,
    group: &str,
) -> Result<()> {
    let imds = ImdsSim::start(InstanceMeta::spot(instance_id, itype, az, group)).await?;
    let target: std::net::SocketAddr = coordinator.trim_start_matches("http://").parse()?;
    let link = Proxy::start(target).await?;
    let mut agent = AgentProc::new(
        &root.join(instance_id),
        &link.url(),
        enrollment,
        &imds.endpoint(),
        ec2,
    );
    let poll = humantime::format_duration(opts.imds_poll).to_string();
    agent.arg("--imds-poll-interval").arg(&poll);
    for a in &opts.agent_args {
        agent.arg(a);
    }
    // Each instance signs with its own key: the EC2 simulator can show
    // different agents different price histories.
    agent.env("AWS_ACCESS_KEY_ID", &format!("AKID-{instance_id}"));
    agent.start(None)?;
    nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(
        instance_id.to_owned(),
        Node {
            imds,
            agent,
            group: group.to_owned(),
            link,
        },
    );
    Ok(())
}
