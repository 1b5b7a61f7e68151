//! Booting one simulated instance: its IMDS simulator, proxies, hooks,
//! workload and `spot-agent`, after the launch's boot delay.

use super::*;

/// What booting an instance needs (cloned into the launch watcher).
#[derive(Clone)]
pub(super) struct Booter {
    pub(super) nodes: Nodes,
    pub(super) root: PathBuf,
    pub(super) opts: FleetOptions,
    /// Every coordinator's URL.
    pub(super) coordinators: Vec<String>,
    pub(super) enrollment: String,
    pub(super) ec2: Ec2Sim,
    pub(super) ledger: PathBuf,
    pub(super) launched: Arc<Mutex<Launched>>,
}

/// Each node's log of successful hook runs: `<hook> <request id> <agent pid>`.
pub const HOOK_LOG: &str = "hooks.log";

fn write_hook(dir: &Path, name: &str, workload: &Path, socket: &Path, verb: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             # {name}: optional delay and failure (test faults), then tell the workload;\n\
             # a success is logged with the agent's pid (the nemesis counts executions).\n\
             d=\"$(dirname \"$0\")\"\n\
             [ -f \"$d/{name}.delay\" ] && sleep \"$(cat \"$d/{name}.delay\")\"\n\
             [ -f \"$d/{name}.fail\" ] && exit 1\n\
             {} ctl --socket {} {verb} || exit $?\n\
             echo \"{name} $SPOT_REQUEST_ID $PPID\" >> \"$d/{HOOK_LOG}\"\n",
            workload.display(),
            socket.display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl Booter {
    pub(super) async fn boot(
        &self,
        instance_id: &str,
        itype: &str,
        az: &str,
        group: &str,
    ) -> Result<()> {
        let dir = self.root.join(instance_id);
        std::fs::create_dir_all(&dir)?;
        let workload_bin = bin_path("spot-workload")?;
        let socket = dir.join("workload.sock");
        let workload = std::process::Command::new(&workload_bin)
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg("--ledger")
            .arg(&self.ledger)
            .args([
                "--instance",
                instance_id,
                "--group",
                group,
                "--unhealthy-file",
            ])
            .arg(dir.join("unhealthy"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting spot-workload")?;
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let imds = ImdsSim::start(InstanceMeta::spot(instance_id, itype, az, group)).await?;
        // The proxies pass bytes: TLS to the coordinator goes through them.
        let mut scheme = "http";
        let mut proxies = Vec::new();
        for c in &self.coordinators {
            let (s, host_port) = c.split_once("://").unwrap_or(("http", c));
            scheme = s;
            proxies.push(Proxy::start(host_port.parse()?).await?);
        }
        let link = Links(proxies);
        let ec2_link = Proxy::start(self.ec2.addr).await?;
        let coordinator_url = link.urls(scheme);
        let mut agent = AgentProc::new(
            &dir,
            &coordinator_url,
            &self.enrollment,
            &imds.endpoint(),
            &ec2_link.url(),
        );
        std::fs::create_dir_all(&agent.hooks_dir)?;
        write_hook(
            &agent.hooks_dir,
            "promote",
            &workload_bin,
            &socket,
            "start \"$SPOT_EPOCH\"",
        )?;
        write_hook(&agent.hooks_dir, "demote", &workload_bin, &socket, "stop")?;
        if let Some(d) = crate::lock(&self.launched).promote_delay {
            std::fs::write(
                agent.hooks_dir.join("promote.delay"),
                format!("{:.3}", d.as_secs_f64()),
            )?;
        }
        let poll = humantime::format_duration(self.opts.imds_poll).to_string();
        agent.arg("--imds-poll-interval").arg(&poll);
        agent.arg("--health-command").arg(&format!(
            "{} ctl --socket {} health",
            workload_bin.display(),
            socket.display()
        ));
        for a in &self.opts.agent_args {
            agent.arg(a);
        }
        // Each instance signs with its own key: the EC2 simulator can show
        // different agents different price histories.
        agent.env("AWS_ACCESS_KEY_ID", &format!("AKID-{instance_id}"));
        agent.env(
            "SPOT_AGENT_CLOCK_OFFSET_FILE",
            &dir.join("clock-offset").display().to_string(),
        );
        agent.start(None)?;
        lock(&self.nodes).insert(
            instance_id.to_owned(),
            Node {
                imds,
                agent,
                workload: Some(workload),
                group: group.to_owned(),
                link,
                ec2_link,
                dir,
                alive: true,
            },
        );
        Ok(())
    }
}
