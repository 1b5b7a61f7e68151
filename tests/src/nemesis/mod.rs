//! The nemesis: a fleet of groups under a seeded, random schedule of
//! faults (agents, the coordinator, the network, EC2, hooks, health
//! checks, clocks) while interruptions and rebalance recommendations
//! arrive too, judged by what the workloads served.
//!
//! Faults come one at a time: each is applied, held, healed, and then
//! every group must be back to exactly one serving PRIMARY (the one the
//! store names) within the recovery bound, or it is stuck. The time a
//! group went unserved from a fault's start to its recovery is that fault
//! kind's unavailability. At the end the checker (`check.rs`) reads the
//! ledger, the EC2 simulator, the hook logs, the store and the journals.

mod apply;
pub mod check;
pub mod faults;

use crate::fleet::{Fleet, FleetOptions, default_pools, one_zone_pools};
use crate::harness::eventually;
use crate::ledger::monotonic_ns;
use crate::scenarios::InvariantChecker;
use anyhow::{Context, Result, bail};
use faults::{Draw, Kind, Schedule, Target, Timing};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct NemesisArgs {
    /// Groups in the fleet, by turns: one with a warm REPLICA, a lone
    /// PRIMARY, one with `manual_replica` (the coordinator keeps a REPLICA).
    #[arg(long, default_value_t = 3)]
    pub groups: usize,
    /// How long faults keep coming (the last one's recovery comes on top).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of the fault schedule (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault kinds to draw from, comma-separated (default: all; `list` lists them).
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<String>,
    /// Which instance an instance fault hits.
    #[arg(long, value_enum, default_value = "any")]
    pub target: Target,
    /// The PRIMARY lease the coordinator grants.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// A group not back to one serving PRIMARY this long after a fault
    /// ends is stuck.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub recovery_bound: Duration,
    /// Extra `spot-coordinator serve` flag for your own settings, e.g.
    /// `--coordinator-arg=--demote-timeout=10s` (repeatable; after the
    /// simulator's own, so yours win).
    #[arg(long, allow_hyphen_values = true)]
    pub coordinator_arg: Vec<String>,
    /// Extra `spot-agent run` flag, e.g. `--agent-arg=--hook-timeout=30s`.
    #[arg(long, allow_hyphen_values = true)]
    pub agent_arg: Vec<String>,
    /// One JSON report instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// The coordinators' store: sqlite (one coordinator) or postgres (a
    /// PostgreSQL server of the fleet's own), which adds the leader faults.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    pub store: String,
    /// Coordinators sharing the store (postgres only).
    #[arg(long, default_value_t = 1)]
    pub coordinators: usize,
    /// The coordinators' leader lease (postgres).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,
    /// Test only: the coordinator treats a silent PRIMARY as dead without
    /// fencing it (needs a `failpoints` build), to show the checker catches
    /// the split brain that follows.
    #[arg(long, hide = true)]
    pub unsafe_no_fencing: bool,
}

impl NemesisArgs {
    /// Defaults, as the command line has them.
    pub fn new(seed: u64, duration: Duration) -> NemesisArgs {
        NemesisArgs {
            groups: 3,
            duration,
            seed: Some(seed),
            faults: Vec::new(),
            target: Target::Any,
            lease: Duration::from_secs(3),
            recovery_bound: Duration::from_secs(90),
            coordinator_arg: Vec::new(),
            agent_arg: Vec::new(),
            json: false,
            store: "sqlite".into(),
            coordinators: 1,
            leader_lease: Duration::from_secs(3),
            unsafe_no_fencing: false,
        }
    }

    pub fn postgres(&self) -> bool {
        self.store == "postgres"
    }

    /// The fault kinds drawn from: those asked for, else every kind that
    /// fits the store (the leader faults need PostgreSQL; a restore of
    /// the store file needs SQLite).
    pub fn kinds(&self) -> Result<Vec<Kind>> {
        let pg = self.postgres();
        if self.faults.is_empty() {
            return Ok(Kind::ALL.iter().copied().filter(|k| k.fits(pg)).collect());
        }
        self.faults
            .iter()
            .map(|s| {
                let k = Kind::parse(s.trim()).with_context(|| {
                    format!("unknown fault {s:?}; the faults are:\n{}", Kind::describe())
                })?;
                anyhow::ensure!(
                    k.fits(pg),
                    "fault {s} needs {} (--store)",
                    if pg { "sqlite" } else { "postgres" }
                );
                Ok(k)
            })
            .collect()
    }

    fn timing(&self) -> Timing {
        Timing {
            lease: self.lease,
            promotion_timeout: PROMOTION_TIMEOUT,
            leader_lease: self.leader_lease,
        }
    }
}

/// The fleet's promotion timeout (`FleetOptions::default`).
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(15);

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    #[serde(flatten)]
    pub draw: Draw,
    /// The group's name and the instance hit (instance faults); what
    /// unavailability is counted under (`interruption-primary-warm`, ...).
    pub group_name: String,
    pub instance: Option<String>,
    pub label: String,
    /// Seconds since the run started, on the ledger's clock: applied,
    /// healed, and every group served again (`None`: a group got stuck).
    pub start_s: f64,
    pub healed_s: f64,
    pub recovered_s: Option<f64>,
    #[serde(skip)]
    pub start_ns: u64,
    #[serde(skip)]
    pub end_ns: u64,
}

struct Run {
    f: Fleet,
    args: NemesisArgs,
    t0_ns: u64,
    groups: Vec<String>,
    /// An older copy of the store, for `coordinator-restore`.
    backup: std::path::PathBuf,
    history: Vec<Applied>,
    stuck: Vec<check::Violation>,
    samples: BTreeMap<String, Vec<f64>>,
    /// Groups whose PRIMARY holds a secondary ENI: (group, eni).
    enis: Vec<(String, String)>,
    /// Groups with a data volume: (group, the configured volume).
    volumes: Vec<(String, String)>,
    /// The coordinator a leader fault hit (its index in the fleet).
    victim: Option<usize>,
}

/// Run the nemesis and judge it.
pub async fn run(args: NemesisArgs) -> Result<check::Report> {
    let kinds = args.kinds()?;
    let seed = args.seed.unwrap_or_else(|| {
        u64::try_from(crate::now_ms()).unwrap_or(0) ^ u64::from(std::process::id())
    });
    let mut opts = FleetOptions::default();
    let lease = humantime::format_duration(args.lease).to_string();
    opts.coordinator_args.extend(["--lease".into(), lease]);
    anyhow::ensure!(
        args.postgres() || args.coordinators <= 1,
        "several coordinators share a PostgreSQL store: add --store postgres"
    );
    opts.postgres = args.postgres();
    opts.coordinators = args.coordinators.max(1);
    if args.postgres() {
        let l = humantime::format_duration(args.leader_lease).to_string();
        opts.coordinator_args.extend(["--leader-lease".into(), l]);
    }
    if args.unsafe_no_fencing {
        opts.coordinator_args
            .push("--unsafe-silence-is-death".into());
    }
    opts.coordinator_args
        .extend(args.coordinator_arg.iter().cloned());
    opts.agent_args.extend(args.agent_arg.iter().cloned());
    let f = Fleet::start(opts).await?;
    let backup = f.root.join("store-backup.db");
    let mut run = Run {
        t0_ns: monotonic_ns(),
        groups: (0..args.groups).map(|i| format!("g{i}")).collect(),
        f,
        args: args.clone(),
        backup,
        history: Vec::new(),
        stuck: Vec::new(),
        samples: BTreeMap::new(),
        enis: Vec::new(),
        volumes: Vec::new(),
        victim: None,
    };
    run.setup().await?;
    run.back_up_store()?;
    let supervisor = run.f.supervise_agents(Duration::from_secs(1));
    let journals = InvariantChecker::start(&run.f);
    let mut schedule = Schedule::new(seed, &kinds, args.target, args.groups, args.timing());
    let until = Instant::now() + args.duration;
    while Instant::now() < until {
        let draw = schedule.next_draw();
        run.one(draw).await?;
    }
    let report = check::judge(&mut run, seed, journals).await;
    supervisor.abort();
    report
}

impl Run {
    fn since_start(&self, ns: u64) -> f64 {
        ns.saturating_sub(self.t0_ns) as f64 / 1e9
    }

    /// The groups, each serving before the first fault.
    async fn setup(&mut self) -> Result<()> {
        self.f.ec2.set_ebs(crate::scenarios::volumes::TEST_EBS);
        for (i, g) in self.groups.clone().iter().enumerate() {
            // Every third group from the second is a lone PRIMARY whose
            // data lives on an EBS volume that must follow it.
            if i % 3 == 1 {
                let vol = format!("vol-{g}");
                let first = self.f.group_with_volume(g, json!({}), &vol).await?;
                crate::scenarios::wait_serving(&self.f, g, &first).await?;
                self.volumes.push((g.clone(), vol));
                continue;
            }
            // Every third group is warm and its PRIMARY holds a secondary
            // ENI (in us-east-1a, like its pools and its REPLICA).
            let eni = format!("eni-{g}");
            let config = match i % 3 {
                0 => {
                    self.f.ec2.add_eni(&eni, "us-east-1a");
                    self.enis.push((g.clone(), eni.clone()));
                    json!({"pools": one_zone_pools(), "promotion": {"network_interface_id": eni}})
                }
                2 => json!({"pools": default_pools(), "manual_replica": true}),
                _ => json!({}),
            };
            let first = self.f.group(g, config).await?;
            crate::scenarios::wait_serving(&self.f, g, &first).await?;
            if i % 3 == 0 {
                let replica = format!("i-{g}-replica");
                self.f
                    .add_instance(&replica, "m5.large", "us-east-1a", g)
                    .await?;
                crate::scenarios::wait_role(&self.f, &replica, "replica").await?;
            }
        }
        self.wait_recovered(Duration::from_secs(120))
            .await
            .context("the fleet never settled before the first fault")?;
        Ok(())
    }

    /// A consistent copy of the store as it is now (`VACUUM INTO`; the
    /// restore faults are SQLite's only).
    fn back_up_store(&self) -> Result<()> {
        if self.args.postgres() {
            return Ok(());
        }
        self.f.coord.back_up_store(&self.backup)
    }

    /// The groups not (yet) served by exactly the PRIMARY the store names.
    async fn unrecovered(&self) -> Result<Vec<String>> {
        let groups = self.f.get("/v1/groups").await?;
        let ledger = self.f.ledger()?;
        let mut out = Vec::new();
        for g in &self.groups {
            let view = groups
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == g.as_str());
            let primary = view.and_then(|v| v["primary"].as_str());
            let settled = view.is_some_and(|v| v["transition"].is_null());
            let serving = ledger.serving_now(g).map(|i| i.instance.as_str());
            if !(settled && primary.is_some() && serving == primary) {
                out.push(g.clone());
            }
        }
        Ok(out)
    }

    async fn wait_recovered(&self, bound: Duration) -> Result<()> {
        eventually("every group served by its PRIMARY", bound, || async {
            self.unrecovered()
                .await
                .ok()
                .and_then(|v| v.is_empty().then_some(()))
        })
        .await
    }

    /// The group's PRIMARY (per the store) or one of its REPLICAS.
    async fn resolve(&self, group: &str, role: Target) -> Result<Option<(String, &'static str)>> {
        let inst = self.f.get(&format!("/v1/instances?group={group}")).await?;
        let alive = |id: &str| crate::lock(&self.f.nodes).get(id).is_some_and(|n| n.alive);
        let pick = |want: &str| {
            inst.as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["role"] == want)
                .filter_map(|i| i["instance_id"].as_str())
                .find(|id| alive(id))
                .map(str::to_owned)
        };
        Ok(match role {
            Target::Replica => pick("replica")
                .map(|i| (i, "replica"))
                .or_else(|| pick("primary").map(|i| (i, "primary"))),
            _ => pick("primary").map(|i| (i, "primary")),
        })
    }

    async fn has_replica(&self, group: &str) -> bool {
        matches!(
            self.resolve(group, Target::Replica).await,
            Ok(Some((_, "replica")))
        )
    }

    /// Apply one fault, hold it, heal it, wait for recovery, measure.
    async fn one(&mut self, draw: Draw) -> Result<()> {
        if draw.kind != Kind::CoordinatorRestore && draw.gap_ms.is_multiple_of(3) {
            // Refresh the older copy now and then: a restore goes a few
            // faults back.
            self.back_up_store()?;
        }
        let group = self.groups[draw.group % self.groups.len()].clone();
        let target = if draw.kind.fleet_wide() {
            None
        } else {
            self.resolve(&group, draw.role).await?
        };
        if !draw.kind.fleet_wide() && target.is_none() {
            // Nothing to hit in that group right now.
            return Ok(());
        }
        let warm = self.has_replica(&group).await;
        let label = label(&draw, target.as_ref().map(|t| t.1), warm);
        let instance = target.map(|t| t.0);
        let start_ns = monotonic_ns();
        tracing::info!(fault = draw.kind.name(), %group, ?instance, hold_ms = draw.hold_ms, "nemesis: applying");
        self.apply(&draw, &group, instance.as_deref()).await?;
        let hold = Duration::from_millis(draw.hold_ms);
        if draw.with_interruption {
            tokio::time::sleep(hold / 3).await;
            if let Some((p, _)) = self.resolve(&group, Target::Primary).await.ok().flatten() {
                self.f.interrupt(&p, Duration::from_secs(10))?;
            }
            tokio::time::sleep(hold - hold / 3).await;
        } else {
            tokio::time::sleep(hold).await;
        }
        self.heal(&draw, instance.as_deref()).await?;
        let healed_ns = monotonic_ns();
        let recovered = self.wait_recovered(self.args.recovery_bound).await;
        let end_ns = monotonic_ns();
        let applied = Applied {
            draw: draw.clone(),
            group_name: group.clone(),
            instance,
            label: label.clone(),
            start_s: self.since_start(start_ns),
            healed_s: self.since_start(healed_ns),
            recovered_s: recovered.is_ok().then(|| self.since_start(end_ns)),
            start_ns,
            end_ns,
        };
        self.history.push(applied);
        if recovered.is_err() {
            let stuck = self.unrecovered().await.unwrap_or_default();
            // The fault that did not heal and those in the minute before.
            let history = check::history_before(&self.history, start_ns, 60);
            for g in stuck {
                self.stuck.push(check::Violation {
                    kind: "stuck_group".into(),
                    detail: format!(
                        "{g} not back to one serving PRIMARY {} s after {} was healed",
                        self.args.recovery_bound.as_secs(),
                        draw.kind.name()
                    ),
                    history: history.clone(),
                });
            }
        }
        let ledger = self.f.ledger()?;
        let affected: Vec<&String> = if draw.kind.touches_every_group() {
            self.groups.iter().collect()
        } else {
            vec![&group]
        };
        for g in affected {
            let unserved = ledger.unserved_ns(g, start_ns, end_ns) as f64 / 1e9;
            self.samples
                .entry(label.clone())
                .or_default()
                .push(unserved);
        }
        tokio::time::sleep(Duration::from_millis(draw.gap_ms)).await;
        Ok(())
    }
}

/// What a fault's unavailability is counted under: the kind; `-replica`
/// when it hit a REPLICA; for the ones that end an instance, whether it
/// was the PRIMARY and whether the group had a warm REPLICA;
/// `+interruption` when the PRIMARY was interrupted during the fault.
fn label(d: &Draw, role: Option<&str>, warm: bool) -> String {
    let name = d.kind.name();
    match (d.kind, role) {
        (Kind::Interruption | Kind::Lost, Some("primary")) => {
            format!("{name}-primary-{}", if warm { "warm" } else { "lone" })
        }
        (Kind::Interruption | Kind::Lost, Some(_)) => format!("{name}-replica"),
        _ => {
            let on = if role == Some("replica") {
                "-replica"
            } else {
                ""
            };
            let plus = if d.with_interruption {
                "+interruption"
            } else {
                ""
            };
            format!("{name}{on}{plus}")
        }
    }
}

/// Print the report: one JSON object, or the human summary.
pub fn print(report: &check::Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        print!("{}", report.summary());
    }
}

/// `spot-sim nemesis`: run, print, and fail on a failing verdict.
pub async fn main(args: NemesisArgs) -> Result<()> {
    if args.faults.iter().any(|f| f == "list") {
        print!("{}", Kind::describe());
        return Ok(());
    }
    let json = args.json;
    let report = run(args).await?;
    print(&report, json);
    if report.verdict != "pass" {
        bail!(
            "nemesis failed (seed {}): rerun with --seed {}",
            report.seed,
            report.seed
        );
    }
    Ok(())
}
