//! spot-agent: the on-instance daemon. Watches IMDS for interruption
//! signals, journals everything it does, talks to the coordinator by
//! heartbeat, long-poll and outbox, and executes commands exactly once.
//!
//! Tasks: the IMDS watcher, the coordinator link (registration, heartbeat,
//! long-poll, outbox delivery) and the executor. Each `select!`s on the
//! shutdown signal; `run` drains them with a deadline.

pub mod config;
pub mod ec2;
pub mod hooks;
pub mod imds;
pub mod journal;
pub mod link;
pub mod status;

use anyhow::Context;
use config::Config;
use ec2::{Ec2, ErrorClass, LaunchSpec};
use imds::{Identity, Imds};
use journal::{Accept, Journal, JournalHandle};
use link::{Link, LinkError};
use spot_common::retry::COORDINATOR_LINK;
use spot_common::wire::{HeartbeatRequest, RegisterRequest};
use spot_common::{Command, CommandKind, CommandOutcome, Event, EventBody, Role};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

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

pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub use spot_common::error_chain;

/// Journal keys of the identity table.
pub mod keys {
    pub const AGENT_ID: &str = "agent_id";
    pub const TOKEN: &str = "token";
    pub const COORDINATOR_URL: &str = "coordinator_url";
    pub const REGISTER_REQUEST_ID: &str = "register_request_id";
    pub const HEARTBEAT_MS: &str = "heartbeat_interval_ms";
    pub const INSTANCE_ID: &str = "instance_id";
    pub const GROUP: &str = "group";
    pub const ROLE: &str = "role";
    pub const LINK_STATE: &str = "link_state";
    pub const LINK_LAST_OK: &str = "link_last_ok_ms";
    pub const LINK_LAST_ERROR: &str = "link_last_error";
    pub const DECOMMISSIONED: &str = "decommissioned";
    /// Unix ms until which the PRIMARY's lease holds (persisted, so a
    /// restart cannot extend it).
    pub const LEASE_UNTIL: &str = "lease_until_ms";
    /// When this agent last demoted itself (unix ms).
    pub const SELF_DEMOTED_AT: &str = "self_demoted_at_ms";
    /// Spot prices have been captured up to this AWS timestamp (unix ms).
    pub const PRICING_SINCE: &str = "pricing_since_ms";
}

/// Capped exponential delays with jitter, from the named policy.
fn link_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(COORDINATOR_LINK.min_delay)
        .with_max_delay(COORDINATOR_LINK.max_delay)
        .with_factor(COORDINATOR_LINK.factor as f32)
        .with_jitter()
        .without_max_times()
        .build()
}

#[derive(Clone)]
struct Creds {
    agent_id: String,
    token: String,
}

/// Everything the tasks share.
pub struct Agent {
    config: Config,
    journal: JournalHandle,
    identity: Identity,
    group: String,
    ec2: Ec2,
    link: Link,
    http: reqwest::Client,
    outbox_wake: Arc<Notify>,
    /// What to capture prices for, from the last heartbeat answer.
    pricing_hint: std::sync::Mutex<Option<spot_common::wire::PricingHint>>,
}

/// Read identity from IMDS, retrying until it answers or shutdown.
async fn read_identity(
    imds: &Imds,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Identity>> {
    let mut delays = link_backoff();
    loop {
        match imds.identity().await {
            Ok(id) => return Ok(Some(id)),
            Err(e) => {
                let wait = delays.next().unwrap_or(COORDINATOR_LINK.max_delay);
                tracing::warn!(error = %error_chain(&e), ?wait, "reading instance identity from IMDS; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
            }
        }
    }
}

/// Run the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let path = config.state_dir.join("journal.db");
    let journal = JournalHandle::new(
        Journal::open(&path).with_context(|| format!("opening journal {}", path.display()))?,
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let imds = Imds::new(config.imds_endpoint.as_deref())?;
    let Some(identity) = read_identity(&imds, &mut stop_rx).await? else {
        return Ok(());
    };
    let group = config
        .group
        .clone()
        .or_else(|| identity.group_tag.clone())
        .context("no group: set `group` in the config or tag the instance spot:group (with tags in instance metadata enabled)")?;
    tracing::info!(instance_id = %identity.instance_id, %group, instance_type = %identity.instance_type,
        availability_zone = %identity.availability_zone, lifecycle = %identity.lifecycle, "identity read from IMDS");
    {
        let (iid, g) = (identity.instance_id.clone(), group.clone());
        journal
            .call(move |j| j.set_many(&[(keys::INSTANCE_ID, &iid), (keys::GROUP, &g)]))
            .await?;
    }
    // Ready once IMDS has answered: the agent can now journal notices even
    // if the coordinator is away.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let agent = Arc::new(Agent {
        ec2: Ec2::new(&identity.region).await,
        link: Link::new(&config.coordinator_url)?,
        http: reqwest::Client::new(),
        outbox_wake: Arc::new(Notify::new()),
        pricing_hint: std::sync::Mutex::new(None),
        config,
        journal,
        identity,
        group,
    });

    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let signals = imds::WatchSignals {
        outbox: Arc::clone(&agent.outbox_wake),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(imds::watch(
        imds,
        agent.journal.clone(),
        agent.config.imds_poll_interval,
        signals,
        stop_rx.clone(),
    ));
    tasks.spawn(Arc::clone(&agent).link_loop(cmd_tx, stop_rx.clone()));
    tasks.spawn(Arc::clone(&agent).executor(cmd_rx, stop_rx.clone()));
    tasks.spawn(watchdog(stop_rx.clone()));
    tasks.spawn(Arc::clone(&agent).lease_loop(stop_rx.clone()));
    tasks.spawn(Arc::clone(&agent).ec2_watch(stop_rx.clone()));
    tasks.spawn(Arc::clone(&agent).pricing_loop(stop_rx.clone()));

    let _ = stop_rx.changed().await;
    tracing::info!("stopping: finishing the running command, flushing state");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(25), drain)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 25 s; the running command resumes at next start");
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// `WATCHDOG=1` at half the configured watchdog interval.
async fn watchdog(mut stop: watch::Receiver<bool>) {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
            _ = stop.changed() => return,
        }
    }
}

impl Agent {
    async fn set_keys(&self, kv: Vec<(&'static str, String)>) {
        let r = self
            .journal
            .call(move |j| {
                let refs: Vec<(&str, &str)> = kv.iter().map(|(k, v)| (*k, v.as_str())).collect();
                j.set_many(&refs)
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %error_chain(&e), "writing the journal");
        }
    }

    async fn key(&self, k: &'static str) -> Option<String> {
        self.journal.call(move |j| j.get(k)).await.ok().flatten()
    }

    async fn link_state(&self, state: &str, error: Option<String>) {
        let mut kv = vec![(keys::LINK_STATE, state.to_owned())];
        if state == "connected" {
            kv.push((keys::LINK_LAST_OK, now_ms().to_string()));
        }
        if let Some(e) = error {
            kv.push((keys::LINK_LAST_ERROR, e));
        }
        self.set_keys(kv).await;
    }

    /// Registered identity, registering (idempotently) when there is none.
    async fn ensure_registered(&self, stop: &mut watch::Receiver<bool>) -> Option<Creds> {
        let url = self.config.coordinator_url.clone();
        if let (Some(agent_id), Some(token), Some(u)) = (
            self.key(keys::AGENT_ID).await,
            self.key(keys::TOKEN).await,
            self.key(keys::COORDINATOR_URL).await,
        ) && u == url
        {
            return Some(Creds { agent_id, token });
        }
        let Some(enrollment) = self.config.enrollment_token.clone() else {
            tracing::error!(
                "not registered and no enrollment_token configured; set it and restart"
            );
            let _ = stop.changed().await;
            return None;
        };
        // The request id is journaled before the first attempt: a retry
        // after a lost answer gets the same identity, not a second one.
        let rid = match self.key(keys::REGISTER_REQUEST_ID).await {
            Some(r) => r,
            None => {
                let r = format!("register-{}", uuid::Uuid::new_v4());
                self.set_keys(vec![(keys::REGISTER_REQUEST_ID, r.clone())])
                    .await;
                r
            }
        };
        let req = RegisterRequest {
            instance_id: self.identity.instance_id.clone(),
            instance_type: self.identity.instance_type.clone(),
            availability_zone: self.identity.availability_zone.clone(),
            region: self.identity.region.clone(),
            lifecycle: self.identity.lifecycle.clone(),
            group: self.group.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            request_id: Some(rid),
        };
        let mut delays = link_backoff();
        loop {
            match self.link.register(&enrollment, &req).await {
                Ok(r) => {
                    self.set_keys(vec![
                        (keys::AGENT_ID, r.agent_id.clone()),
                        (keys::TOKEN, r.token.clone()),
                        (keys::COORDINATOR_URL, url.clone()),
                        (keys::HEARTBEAT_MS, r.heartbeat_interval_ms.to_string()),
                    ])
                    .await;
                    tracing::info!(agent_id = %r.agent_id, "registered with the coordinator");
                    self.link_state("connected", None).await;
                    return Some(Creds {
                        agent_id: r.agent_id,
                        token: r.token,
                    });
                }
                Err(e) => {
                    let wait = delays.next().unwrap_or(COORDINATOR_LINK.max_delay);
                    tracing::warn!(error = %error_chain(&e), ?wait, "registering; retrying");
                    self.link_state("unregistered", Some(error_chain(&e))).await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return None,
                    }
                }
            }
        }
    }

    async fn forget_identity(&self) {
        let r = self
            .journal
            .call(|j| j.delete_keys(&[keys::AGENT_ID, keys::TOKEN, keys::REGISTER_REQUEST_ID]))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %error_chain(&e), "forgetting the identity");
        }
    }

    /// Registration, then heartbeat + long-poll + outbox until a 401 (then
    /// register again) or shutdown.
    async fn link_loop(
        self: Arc<Self>,
        cmds: mpsc::Sender<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if self.key(keys::DECOMMISSIONED).await.is_some() {
                tracing::warn!(
                    "this agent was deleted by an operator; not registering again (remove the state dir to enroll anew)"
                );
                let _ = stop.changed().await;
                return;
            }
            let Some(creds) = self.ensure_registered(&mut stop).await else {
                return;
            };
            let r = tokio::select! {
                r = self.heartbeat_loop(&creds) => r,
                r = self.poll_loop(&creds, &cmds) => r,
                r = self.outbox_loop(&creds) => r,
                _ = stop.changed() => {
                    // One last delivery attempt so the coordinator hears
                    // about the command we just finished.
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.deliver_once(&creds)).await;
                    return;
                }
            };
            match r {
                Err(LinkError::Unauthorized) => {
                    tracing::warn!(agent_id = %creds.agent_id, "coordinator no longer knows this agent; registering again");
                    self.forget_identity().await;
                }
                Err(e) => tracing::error!(error = %error_chain(&e), "coordinator link failed"),
                Ok(()) => return,
            }
        }
    }

    async fn heartbeat_loop(&self, creds: &Creds) -> Result<(), LinkError> {
        let every = self
            .key(keys::HEARTBEAT_MS)
            .await
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let (healthy, detail) = self.config.health.check(&self.http).await;
            let role = self
                .key(keys::ROLE)
                .await
                .and_then(|r| r.parse::<Role>().ok());
            let j = self.journal.clone();
            let (highest_epoch, backlog) = j
                .call(|j| Ok((j.highest_epoch()?, j.backlog()?)))
                .await
                .unwrap_or((0, 0));
            let req = HeartbeatRequest {
                instance_id: self.identity.instance_id.clone(),
                role,
                highest_epoch,
                healthy,
                health_detail: detail,
                backlog,
            };
            // The lease runs from when the renewal was sent, not from when
            // the answer came: the coordinator's clock for it starts later.
            let sent_at = now_ms();
            match self
                .link
                .heartbeat(&creds.agent_id, &creds.token, &req)
                .await
            {
                Ok(resp) => {
                    let lease_ms = i64::try_from(resp.lease_ms).unwrap_or(0);
                    if role == Some(Role::Primary)
                        && matches!(resp.role, Role::Zombie | Role::Terminated)
                    {
                        // The coordinator replaced us while we could not hear it.
                        self.self_demote(
                            "the coordinator no longer knows this instance as PRIMARY",
                        )
                        .await;
                    }
                    self.set_keys(vec![(keys::LEASE_UNTIL, (sent_at + lease_ms).to_string())])
                        .await;
                    *self.pricing_hint.lock().unwrap_or_else(|p| p.into_inner()) =
                        resp.pricing.clone();
                    if failing {
                        tracing::info!("coordinator reachable again");
                        failing = false;
                    }
                    if resp.status == spot_common::AgentStatus::Deleted {
                        tracing::warn!(
                            "coordinator says this agent was deleted; waiting for its cleanup command"
                        );
                    }
                    if role != Some(resp.role)
                        && !matches!(role, Some(Role::Primary | Role::Zombie))
                    {
                        self.set_keys(vec![(keys::ROLE, resp.role.to_string())])
                            .await;
                    }
                    self.link_state("connected", None).await;
                }
                Err(LinkError::Unauthorized) => return Err(LinkError::Unauthorized),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %error_chain(&e), "heartbeat failed; still watching IMDS and journaling");
                        failing = true;
                    }
                    self.link_state("unreachable", Some(error_chain(&e))).await;
                }
            }
        }
    }

    async fn poll_loop(
        &self,
        creds: &Creds,
        cmds: &mpsc::Sender<Command>,
    ) -> Result<(), LinkError> {
        let mut delays = link_backoff();
        loop {
            match self
                .link
                .poll(&creds.agent_id, &creds.token, self.config.poll_wait)
                .await
            {
                Ok(list) => {
                    delays = link_backoff();
                    for cmd in list {
                        self.offer(cmd, cmds).await;
                    }
                }
                Err(LinkError::Unauthorized) => return Err(LinkError::Unauthorized),
                Err(e) => {
                    let wait = delays.next().unwrap_or(COORDINATOR_LINK.max_delay);
                    tracing::debug!(error = %error_chain(&e), ?wait, "long-poll failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Journal a command before anything else, then hand it to the executor.
    async fn offer(&self, cmd: Command, cmds: &mpsc::Sender<Command>) {
        crash_point!("before_journal_insert");
        let now = now_ms();
        let c = cmd.clone();
        match self.journal.call(move |j| j.accept(&c, now)).await {
            Ok(Accept::Run) => {
                tracing::info!(request_id = %cmd.request_id, kind = cmd.action.name(), epoch = cmd.epoch, "command journaled");
                if cmds.send(cmd).await.is_err() {
                    tracing::warn!("executor stopped; the command resumes at next start");
                }
            }
            Ok(Accept::Duplicate { state }) => {
                tracing::debug!(request_id = %cmd.request_id, %state, "command already journaled");
            }
            Ok(Accept::Stale { highest }) => {
                tracing::warn!(request_id = %cmd.request_id, epoch = cmd.epoch, highest, "stale epoch: command refused");
                self.outbox_wake.notify_one();
            }
            Ok(Accept::Expired) => {
                tracing::warn!(request_id = %cmd.request_id, "command past its deadline: refused");
                self.outbox_wake.notify_one();
            }
            // Not journaled, so not acknowledged: the coordinator hands it
            // out again after its redelivery delay.
            Err(e) => {
                tracing::error!(error = %error_chain(&e), request_id = %cmd.request_id, "journaling a command")
            }
        }
    }

    /// Send one batch of the outbox; returns how many were acknowledged.
    /// A price batch goes alone to the pricing endpoint; a run of other
    /// events goes to the events endpoint.
    async fn deliver_once(&self, creds: &Creds) -> Result<usize, LinkError> {
        let head = self
            .journal
            .call(|j| j.pending(1))
            .await
            .unwrap_or_default();
        if let Some(p) = head.first()
            && let EventBody::Prices { points } = &p.body
        {
            let seq = p.seq;
            match self
                .link
                .pricing(&creds.agent_id, &creds.token, points.clone())
                .await
            {
                Ok(r) => tracing::debug!(
                    accepted = r.accepted,
                    duplicates = r.duplicates,
                    "prices delivered"
                ),
                // A ZOMBIE's reports are refused for good: drop, do not block.
                Err(LinkError::Rejected { status: 403, .. }) => {
                    tracing::info!("price report refused (no longer PRIMARY or REPLICA); dropped")
                }
                Err(LinkError::Rejected {
                    status: 400,
                    message,
                    ..
                }) => tracing::warn!(%message, "price report invalid; dropped"),
                Err(e) => return Err(e),
            }
            if let Err(e) = self.journal.call(move |j| j.ack(&[seq])).await {
                tracing::error!(error = %error_chain(&e), "acknowledging a price batch");
            }
            return Ok(1);
        }
        self.deliver_events(creds).await
    }

    async fn deliver_events(&self, creds: &Creds) -> Result<usize, LinkError> {
        let pending = match self
            .journal
            .call(|j| j.pending(spot_common::wire::MAX_EVENTS_PER_BATCH as u32))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "reading the outbox");
                return Ok(0);
            }
        };
        // Up to the next price batch, which goes to its own endpoint.
        let pending: Vec<_> = pending
            .into_iter()
            .take_while(|p| !matches!(p.body, EventBody::Prices { .. }))
            .collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let events: Vec<Event> = pending
            .iter()
            .map(|p| Event {
                event_id: format!("{}:{}", creds.agent_id, p.seq),
                seq: p.seq,
                at_ms: p.at_ms,
                body: p.body.clone(),
            })
            .collect();
        let resp = self
            .link
            .events(&creds.agent_id, &creds.token, events)
            .await?;
        crash_point!("before_ack");
        let acked: Vec<i64> = pending
            .iter()
            .filter(|p| {
                resp.acked
                    .contains(&format!("{}:{}", creds.agent_id, p.seq))
            })
            .map(|p| p.seq)
            .collect();
        let n = acked.len();
        if let Err(e) = self.journal.call(move |j| j.ack(&acked)).await {
            // Not deleted: delivered again later, deduplicated by event id.
            tracing::error!(error = %error_chain(&e), "acknowledging the outbox");
        }
        Ok(n)
    }

    async fn outbox_loop(&self, creds: &Creds) -> Result<(), LinkError> {
        let mut delays = link_backoff();
        loop {
            match self.deliver_once(creds).await {
                Ok(0) => {
                    tokio::select! {
                        _ = self.outbox_wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Ok(_) => delays = link_backoff(),
                Err(LinkError::Unauthorized) => return Err(LinkError::Unauthorized),
                Err(e) => {
                    let wait = delays.next().unwrap_or(COORDINATOR_LINK.max_delay);
                    tracing::debug!(error = %error_chain(&e), ?wait, "outbox delivery failed; kept for later");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Resume what a crash interrupted, then run commands one at a time.
    async fn executor(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        match self.journal.call(|j| j.unfinished()).await {
            Ok(list) => {
                for cmd in list {
                    tracing::info!(request_id = %cmd.request_id, kind = cmd.action.name(), "resuming an interrupted command");
                    self.execute(cmd).await;
                }
            }
            Err(e) => tracing::error!(error = %error_chain(&e), "reading unfinished commands"),
        }
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.execute(cmd).await,
                    None => return,
                },
                _ = stop.changed() => return,
            }
        }
    }

    async fn execute(&self, cmd: Command) {
        let rid = cmd.request_id.clone();
        let now = now_ms();
        let attempts = {
            let r = rid.clone();
            match self.journal.call(move |j| j.start(&r, now)).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), request_id = %rid, "journaling command start; not running it");
                    return;
                }
            }
        };
        let (outcome, detail, instance_id, error_code, output) = self.perform(&cmd, attempts).await;
        tracing::info!(request_id = %rid, kind = cmd.action.name(), outcome = outcome.as_str(), detail = ?detail, "command finished");
        let result = EventBody::CommandResult {
            request_id: rid.clone(),
            outcome,
            detail,
            instance_id,
            error_code,
        };
        let now = now_ms();
        if let Err(e) = self
            .journal
            .call(move |j| j.finish(&rid, &result, output.as_deref(), now))
            .await
        {
            tracing::error!(error = %error_chain(&e), "journaling a command result; it resumes at next start");
        }
        self.outbox_wake.notify_one();
    }

    /// The side effect of a command.
    #[allow(clippy::type_complexity)]
    async fn perform(
        &self,
        cmd: &Command,
        attempts: i64,
    ) -> (
        CommandOutcome,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) {
        use CommandOutcome::{Done, Failed};
        let ec2_failure = |e: ec2::Ec2Error| {
            let detail = match e.class {
                ErrorClass::Capacity => format!("no capacity, try another pool: {e}"),
                ErrorClass::Idempotency => format!("idempotency conflict, not retried: {e}"),
                ErrorClass::Auth => format!("not authorized, not retried: {e}"),
                _ => e.to_string(),
            };
            (Failed, Some(detail), None, Some(e.code), None)
        };
        match &cmd.action {
            CommandKind::Launch {
                pool,
                launch_template_id,
                ..
            } => {
                let spec = LaunchSpec {
                    request_id: cmd.request_id.clone(),
                    group: cmd.group.clone(),
                    pool: pool.clone(),
                    launch_template_id: launch_template_id.clone(),
                    spot: true,
                };
                crash_point!("before_ec2_call");
                if attempts > 1 {
                    tracing::info!(request_id = %cmd.request_id, attempts, "relaunching with the same ClientToken");
                }
                match self.ec2.launch(&spec).await {
                    Ok(id) => {
                        crash_point!("after_ec2_call");
                        tracing::info!(instance_id = %id, pool = %pool, "instance launched");
                        (Done, None, Some(id), None, None)
                    }
                    Err(e) => ec2_failure(e),
                }
            }
            CommandKind::Promote { promotion } => {
                let (healthy, why) = self.config.health.check(&self.http).await;
                if !healthy {
                    return (
                        Failed,
                        Some(format!("health check failed: {}", why.unwrap_or_default())),
                        None,
                        None,
                        None,
                    );
                }
                let me = &self.identity.instance_id;
                if let Some(alloc) = &promotion.elastic_ip_allocation_id
                    && let Err(e) = self.ec2.move_address(alloc, me).await
                {
                    return ec2_failure(e);
                }
                if let Some(eni) = &promotion.network_interface_id
                    && let Err(e) = self.ec2.attach_interface(eni, me).await
                {
                    return ec2_failure(e);
                }
                let run = self.hook("promote", cmd, Role::Primary).await;
                if !run.success {
                    return (
                        Failed,
                        Some("promote hook failed".into()),
                        None,
                        None,
                        Some(run.output),
                    );
                }
                self.set_keys(vec![(keys::ROLE, Role::Primary.to_string())])
                    .await;
                (Done, None, None, None, Some(run.output))
            }
            CommandKind::Demote => {
                let run = self.hook("demote", cmd, Role::Zombie).await;
                // Stopped serving or not, the coordinator has moved on: we
                // are no longer PRIMARY.
                self.set_keys(vec![(keys::ROLE, Role::Zombie.to_string())])
                    .await;
                if run.success {
                    (Done, None, None, None, Some(run.output))
                } else {
                    (
                        Failed,
                        Some("demote hook failed".into()),
                        None,
                        None,
                        Some(run.output),
                    )
                }
            }
            CommandKind::Terminate { instance_id } => match self.ec2.terminate(instance_id).await {
                Ok(()) => (Done, None, None, None, None),
                Err(e) if e.class == ErrorClass::NotFound => {
                    (Done, Some("already gone".into()), None, None, None)
                }
                Err(e) => ec2_failure(e),
            },
            CommandKind::Cleanup => {
                self.set_keys(vec![(keys::DECOMMISSIONED, now_ms().to_string())])
                    .await;
                (
                    Done,
                    Some("identity will be dropped".into()),
                    None,
                    None,
                    None,
                )
            }
        }
    }

    /// Stop serving on our own: the lease ran out (we may be partitioned
    /// while a REPLICA is promoted) or the coordinator says we are no
    /// longer PRIMARY. Runs the `demote` hook, journals the new role and an
    /// event for the coordinator.
    async fn self_demote(&self, reason: &str) {
        let epoch = self.journal.call(|j| j.highest_epoch()).await.unwrap_or(0);
        tracing::warn!(reason, epoch, "demoting this PRIMARY by itself");
        let rid = format!("self-demote-{}", now_ms());
        let env = hooks::HookEnv {
            request_id: &rid,
            group: &self.group,
            epoch,
            role: Role::Zombie.as_str(),
        };
        let run = hooks::run_hook(
            &self.config.hooks_dir,
            "demote",
            &env,
            self.config.hook_timeout,
        )
        .await;
        if !run.success {
            tracing::error!(output = %run.output, "demote hook failed during self-demotion");
        }
        self.set_keys(vec![
            (keys::ROLE, Role::Zombie.to_string()),
            (keys::SELF_DEMOTED_AT, now_ms().to_string()),
        ])
        .await;
        let body = EventBody::SelfDemoted {
            epoch,
            reason: reason.to_owned(),
        };
        let now = now_ms();
        if let Err(e) = self.journal.call(move |j| j.push_event(&body, now)).await {
            tracing::error!(error = %error_chain(&e), "journaling the self-demotion");
        }
        self.outbox_wake.notify_one();
    }

    /// Checks the PRIMARY's lease twice a second. A lease that is missing
    /// or past (the coordinator unreachable for longer than the lease, or
    /// the agent down that long) demotes this PRIMARY at once.
    async fn lease_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if self.key(keys::ROLE).await.as_deref() != Some(Role::Primary.as_str()) {
                continue;
            }
            let until: i64 = self
                .key(keys::LEASE_UNTIL)
                .await
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if now_ms() > until {
                self.self_demote("lease expired: no heartbeat renewal from the coordinator")
                    .await;
            }
        }
    }

    /// A PRIMARY or REPLICA reports the EC2 states of its group's instances
    /// when they change, so the coordinator learns that EC2 took one away.
    async fn ec2_watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.ec2_watch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Vec<spot_common::Ec2State> = Vec::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let role = self.key(keys::ROLE).await;
            if !matches!(role.as_deref(), Some("primary" | "replica")) {
                continue;
            }
            match self.ec2.group_instances(&self.group).await {
                Ok(list) => {
                    let mut states: Vec<spot_common::Ec2State> = list
                        .into_iter()
                        .map(|(instance_id, state)| spot_common::Ec2State { instance_id, state })
                        .collect();
                    states.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
                    if states != last {
                        let body = EventBody::Ec2States {
                            instances: states.clone(),
                        };
                        let now = now_ms();
                        match self.journal.call(move |j| j.push_event(&body, now)).await {
                            Ok(()) => {
                                last = states;
                                self.outbox_wake.notify_one();
                            }
                            Err(e) => {
                                tracing::error!(error = %error_chain(&e), "journaling EC2 states")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DescribeInstances for the group failed; next tick")
                }
            }
        }
    }

    /// Capture spot prices of the group's pools every `pricing_interval`
    /// (the first run backfills 7 days) and journal them for delivery. A
    /// ZOMBIE (no hint from the coordinator) captures nothing.
    async fn pricing_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        const BACKFILL_MS: i64 = 7 * 24 * 3_600_000;
        // Points per journaled batch: well under the API's 5,000.
        const BATCH: usize = 2000;
        let mut tick = tokio::time::interval(self.config.pricing_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let hint = self
                .pricing_hint
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let Some(hint) = hint else { continue };
            if !matches!(
                self.key(keys::ROLE).await.as_deref(),
                Some("primary" | "replica")
            ) {
                continue;
            }
            let since = self
                .key(keys::PRICING_SINCE)
                .await
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(now_ms() - BACKFILL_MS);
            let prices = match self
                .ec2
                .spot_prices(&hint.instance_types, &hint.product_description, since)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "DescribeSpotPriceHistory failed; next interval");
                    continue;
                }
            };
            let points: Vec<spot_common::PricePoint> = prices
                .iter()
                .filter(|p| hint.availability_zones.contains(&p.availability_zone))
                .map(|p| spot_common::PricePoint {
                    instance_type: p.instance_type.clone(),
                    availability_zone: p.availability_zone.clone(),
                    product_description: p.product_description.clone(),
                    timestamp: humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH
                            + Duration::from_millis(u64::try_from(p.timestamp_ms).unwrap_or(0)),
                    )
                    .to_string(),
                    price: p.price.clone(),
                })
                .collect();
            let newest = prices
                .iter()
                .map(|p| p.timestamp_ms)
                .max()
                .unwrap_or(since)
                .max(since);
            let n = points.len();
            let now = now_ms();
            let r = self
                .journal
                .call(move |j| {
                    for chunk in points.chunks(BATCH) {
                        j.push_event(
                            &EventBody::Prices {
                                points: chunk.to_vec(),
                            },
                            now,
                        )?;
                    }
                    j.set_many(&[(keys::PRICING_SINCE, &newest.to_string())])
                })
                .await;
            match r {
                Ok(()) if n > 0 => {
                    tracing::info!(points = n, "spot prices captured");
                    self.outbox_wake.notify_one();
                }
                Ok(()) => {}
                Err(e) => tracing::error!(error = %error_chain(&e), "journaling spot prices"),
            }
        }
    }

    async fn hook(&self, name: &str, cmd: &Command, role: Role) -> hooks::HookRun {
        let env = hooks::HookEnv {
            request_id: &cmd.request_id,
            group: &cmd.group,
            epoch: cmd.epoch,
            role: role.as_str(),
        };
        let run =
            hooks::run_hook(&self.config.hooks_dir, name, &env, self.config.hook_timeout).await;
        if run.ran {
            tracing::info!(hook = name, success = run.success, "hook ran");
        }
        run
    }
}
