//! spot-agent: the on-instance daemon. Watches IMDS for interruption
//! signals, journals everything it does, talks to the coordinator by
//! heartbeat, long-poll and outbox, and executes commands exactly once.
//!
//! This file wires the tasks together and owns start-up and shutdown; each
//! task lives in its own module: `imds` (notice watcher), `link`
//! (registration, heartbeat, long-poll), `outbox`, `executor` (two lanes),
//! `capture` (EC2 states, spot prices), `failsafe` (journal errors fail
//! closed), `watchdog`. Every task runs under one supervisor: one that
//! ends or panics early stops the agent with an error (systemd restarts
//! it); shutdown drains within `shutdown_timeout`.

pub mod agent;
pub mod capture;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod executor;
pub mod failsafe;
pub mod hooks;
pub mod imds;
pub mod journal;
pub mod lease;
pub mod link;
pub mod notices;
pub mod outbox;
pub mod status;
pub mod watchdog;

use agent::{Agent, Edges, Job, Lanes};
use anyhow::Context;
use config::Config;
use imds::{Identity, Imds};
use journal::{Journal, JournalHandle};
use spot_common::retry::COORDINATOR_LINK;
use spot_runtime::supervise::Supervisor;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Abort the process at a named point when the `failpoints` feature is on
/// and `FAILPOINTS=<name>=return` is set: a crash with no cleanup at all,
/// like `kill -9`, for the crash-safety tests. Compiled out otherwise.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            eprintln!("crash point {} hit: aborting", $name);
            std::process::abort()
        });
    };
}

pub use spot_common::error_chain;

/// The journal file, and (test builds) the file whose presence makes every
/// journal call fail.
pub const JOURNAL_FILE: &str = "journal.db";
pub const JOURNAL_FAULT_FILE: &str = "fault-journal-io";

/// Read identity from IMDS, retrying until it answers or shutdown.
async fn read_identity(imds: &Imds, shutdown: &CancellationToken) -> Option<Identity> {
    let mut delays = spot_runtime::retry::delays(COORDINATOR_LINK);
    loop {
        match imds.identity().await {
            Ok(id) => return Some(id),
            Err(e) => {
                let wait = delays.next().unwrap_or(COORDINATOR_LINK.max_delay);
                tracing::warn!(error = %error_chain(&e), ?wait, "reading instance identity from IMDS; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

fn open_journal(state_dir: &Path) -> anyhow::Result<Journal> {
    let path = state_dir.join(JOURNAL_FILE);
    Journal::open(&path).with_context(|| format!("opening journal {}", path.display()))
}

/// Rename the journal (and its WAL) to `journal.db.<label>-<unix ms>`:
/// kept for an operator to read, and the next start begins afresh.
/// Returns the new name of the main file.
pub fn set_aside_journal(state_dir: &Path, label: &str) -> anyhow::Result<PathBuf> {
    let stamp = clock::Clock::now_ms(&clock::SystemClock::new());
    let mut main = state_dir.join(format!("{JOURNAL_FILE}.{label}-{stamp}"));
    for ext in ["", "-wal", "-shm"] {
        let from = state_dir.join(format!("{JOURNAL_FILE}{ext}"));
        let to = state_dir.join(format!("{JOURNAL_FILE}{ext}.{label}-{stamp}"));
        if from.exists() {
            std::fs::rename(&from, &to)
                .with_context(|| format!("setting aside {}", from.display()))?;
        }
        if ext.is_empty() {
            main = to;
        }
    }
    Ok(main)
}

/// `spot-agent reset`: a fresh identity at the next start. Refused while
/// the journal says this instance serves as PRIMARY, unless `force`.
pub fn reset(state_dir: &Path, force: bool) -> anyhow::Result<Option<PathBuf>> {
    let path = state_dir.join(JOURNAL_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let st = Journal::open_read_only(&path)?.state()?;
    if st.role == Some(spot_common::Role::Primary) && !force {
        anyhow::bail!(
            "this instance is PRIMARY per its journal (epoch {}): demote it or stop its workload first, or pass --force",
            st.role_epoch
        );
    }
    set_aside_journal(state_dir, "reset").map(Some)
}

/// Open the journal bound to `instance_id`. A journal that belongs to
/// another instance (a disk or AMI cloned from a running instance) is set
/// aside and a fresh one started: two instances must never share an agent
/// identity or a command queue.
fn bound_journal(state_dir: &Path, instance_id: &str) -> anyhow::Result<Journal> {
    let j = open_journal(state_dir)?;
    let st = j.state()?;
    match st.instance_id {
        Some(other) if other != instance_id => {
            drop(j);
            set_aside_journal(state_dir, &format!("of-{other}"))?;
            tracing::warn!(
                journal_instance = %other,
                %instance_id,
                "this journal belongs to another instance (cloned disk?): set aside, registering afresh"
            );
            open_journal(state_dir)
        }
        _ => Ok(j),
    }
}

/// Run the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let token = CancellationToken::new();
    {
        let token = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            token.cancel();
        });
    }
    let imds = Imds::new(config.imds_endpoint.as_deref())?;
    let Some(identity) = read_identity(&imds, &token).await else {
        return Ok(());
    };
    let group = config
        .group
        .clone()
        .or_else(|| identity.group_tag.clone())
        .context("no group: set `group` in the config or tag the instance spot:group (with tags in instance metadata enabled)")?;
    tracing::info!(instance_id = %identity.instance_id, %group, instance_type = %identity.instance_type,
        availability_zone = %identity.availability_zone, lifecycle = %identity.lifecycle, "identity read from IMDS");
    let mut journal = bound_journal(&config.state_dir, &identity.instance_id)?;
    journal.bind(&identity.instance_id, &group)?;
    let journal =
        JournalHandle::new(journal).with_fault_file(config.state_dir.join(JOURNAL_FAULT_FILE));
    let clock: Arc<dyn clock::Clock> = Arc::new(clock::SystemClock::new());
    failsafe::recover(&journal, &config.state_dir, clock.now_ms()).await?;
    let st = journal.call(|j| j.state()).await?;
    if st.decommissioned_at_ms.is_some() {
        return Err(Decommissioned.into());
    }
    let highest = journal.call(|j| j.highest_epoch()).await?;
    // Ready once IMDS has answered: the agent can now journal notices even
    // if the coordinator is away.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let edges = Edges {
        ec2: Arc::new(spot_runtime::ec2::Ec2::new(&identity.region).await),
        coordinator: Arc::new(client::Link::new(&config.coordinator_urls(), &config.tls)?),
        clock,
    };
    let drain = config.shutdown_timeout;
    let agent = Agent::new(config, journal, identity, group, edges, token.clone());
    if let Some(role) = st.role {
        agent.set_role(role, st.role_epoch);
    }
    agent.raise_epoch(highest);
    let agent = Arc::new(agent);
    let role = agent.role();
    tracing::info!(role = ?role.role, epoch = role.epoch, "local role from the journal");
    let tasks = spawn(&agent, imds).await?;
    tasks.wait(std::future::pending(), drain).await?;
    if agent
        .journal
        .call(|j| j.state())
        .await?
        .decommissioned_at_ms
        .is_some()
    {
        return Err(Decommissioned.into());
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// The agent's identity was deleted by an operator: it does not register
/// again by itself. The process exits with [`Decommissioned::EXIT_CODE`],
/// which the systemd unit does not restart.
#[derive(Debug, thiserror::Error)]
#[error(
    "this agent's identity was deleted by an operator; `spot-agent reset` (or reinstalling the package) gives it a fresh one"
)]
pub struct Decommissioned;

impl Decommissioned {
    /// EX_CONFIG; `RestartPreventExitStatus=78` in spot-agent.service.
    pub const EXIT_CODE: u8 = 78;
}

/// Start every task of `agent` under one supervisor.
async fn spawn(agent: &Arc<Agent>, imds: Imds) -> anyhow::Result<Supervisor> {
    let mut tasks = Supervisor::new(agent.shutdown.clone());
    let (urgent_tx, urgent_rx) = mpsc::channel::<Job>(64);
    let (routine_tx, routine_rx) = mpsc::channel::<Job>(64);
    let lanes = Lanes {
        urgent: urgent_tx,
        routine: routine_tx,
    };
    let unfinished = agent.journal.call(|j| j.unfinished()).await?;
    let (urgent, routine): (Vec<_>, Vec<_>) =
        unfinished.into_iter().partition(|c| c.action.is_urgent());
    tasks.spawn("failsafe", failsafe::run(Arc::clone(agent)));
    tasks.spawn("imds watcher", notices::watch(imds, Arc::clone(agent)));
    tasks.spawn("coordinator link", link::run(Arc::clone(agent), lanes));
    tasks.spawn("outbox", outbox::run(Arc::clone(agent)));
    tasks.spawn(
        "urgent lane",
        executor::run(Arc::clone(agent), "urgent", urgent, urgent_rx),
    );
    tasks.spawn(
        "routine lane",
        executor::run(Arc::clone(agent), "routine", routine, routine_rx),
    );
    tasks.spawn("ec2 watch", capture::ec2_watch(Arc::clone(agent)));
    tasks.spawn("price capture", capture::prices(Arc::clone(agent)));
    tasks.spawn("watchdog", watchdog::run(Arc::clone(agent)));
    Ok(tasks)
}
