//! The context every task of the agent shares: configuration, identity,
//! the journal, the edges (coordinator, EC2, clock) behind traits, and the
//! few pieces of live state the tasks exchange (credentials, the highest
//! accepted epoch, the role mirror, the lease).

use crate::client::CoordinatorApi;
use crate::clock::Clock;
use crate::config::Config;
use crate::imds::Identity;
use crate::journal::{Creds, JournalHandle};
use spot_common::wire::PricingHint;
use spot_common::{Command, EventBody, Role};
use spot_runtime::ec2::Ec2Api;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Work for one of the executor's lanes.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Command(Command),
    /// Stop serving now: the coordinator answered that this instance is
    /// not PRIMARY at its epoch.
    SelfDemote {
        reason: String,
    },
}

/// The executor's two lanes: role changes and fences never wait behind a
/// slow launch.
#[derive(Clone)]
pub struct Lanes {
    pub urgent: mpsc::Sender<Job>,
    pub routine: mpsc::Sender<Job>,
}

impl Lanes {
    pub fn for_command(&self, cmd: &Command) -> &mpsc::Sender<Job> {
        if cmd.action.is_urgent() {
            &self.urgent
        } else {
            &self.routine
        }
    }
}

/// The role the hooks have given this instance and the epoch of the
/// command that gave it, mirrored from the journal (the failsafe needs it
/// when the journal cannot be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoleState {
    pub role: Option<Role>,
    pub epoch: u64,
}

pub struct Agent {
    pub config: Config,
    pub journal: JournalHandle,
    pub identity: Identity,
    pub group: String,
    pub ec2: Arc<dyn Ec2Api>,
    pub coordinator: Arc<dyn CoordinatorApi>,
    pub clock: Arc<dyn Clock>,
    /// For HTTP health checks.
    pub http: reqwest::Client,
    /// Something new is in the outbox: deliver now.
    pub outbox_wake: Notify,
    /// The coordinator asked for EC2's view of the group: the EC2 watch
    /// reports it at once, changed or not.
    pub ec2_view_wanted: Notify,
    /// What to capture prices for, from the last heartbeat answer.
    pub pricing_hint: Mutex<Option<PricingHint>>,
    /// The highest role epoch accepted; a running promotion is cancelled
    /// as soon as it rises above the promotion's own.
    pub epoch: watch::Sender<u64>,
    role: watch::Sender<RoleState>,
    /// Until when the coordinator's last answer leased this PRIMARY
    /// (monotonic; none after a restart until a heartbeat confirms it).
    pub lease: Mutex<Option<tokio::time::Instant>>,
    /// Credentials once registered; `None` while (re)registering.
    pub creds: watch::Sender<Option<Creds>>,
    pub shutdown: CancellationToken,
}

/// The edges an agent is built from.
pub struct Edges {
    pub ec2: Arc<dyn Ec2Api>,
    pub coordinator: Arc<dyn CoordinatorApi>,
    pub clock: Arc<dyn Clock>,
}

impl Agent {
    /// A fresh context; the caller loads the role and highest epoch from
    /// the journal with `set_role` and `raise_epoch`.
    pub fn new(
        config: Config,
        journal: JournalHandle,
        identity: Identity,
        group: String,
        edges: Edges,
        shutdown: CancellationToken,
    ) -> Agent {
        Agent {
            config,
            journal,
            identity,
            group,
            ec2: edges.ec2,
            coordinator: edges.coordinator,
            clock: edges.clock,
            http: reqwest::Client::new(),
            outbox_wake: Notify::new(),
            ec2_view_wanted: Notify::new(),
            pricing_hint: Mutex::new(None),
            epoch: watch::Sender::new(0),
            role: watch::Sender::new(RoleState::default()),
            lease: Mutex::new(None),
            creds: watch::Sender::new(None),
            shutdown,
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn role(&self) -> RoleState {
        *self.role.borrow()
    }

    /// Mirror a role the journal has just committed.
    pub fn set_role(&self, role: Role, epoch: u64) {
        self.role.send_replace(RoleState {
            role: Some(role),
            epoch,
        });
    }

    /// A new highest epoch was accepted (wakes a superseded promotion).
    pub fn raise_epoch(&self, epoch: u64) {
        self.epoch.send_if_modified(|e| {
            let raised = epoch > *e;
            *e = (*e).max(epoch);
            raised
        });
    }

    pub fn lease_valid(&self) -> bool {
        self.lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    pub fn set_lease(&self, until: Option<tokio::time::Instant>) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// The coordinator waits for EC2's view of the group (see
    /// `capture::ec2_watch`).
    pub fn want_ec2_view(&self) {
        self.ec2_view_wanted.notify_one();
    }

    /// Journal an event for the coordinator and deliver it soon.
    pub async fn push_event(&self, body: EventBody) -> Result<(), crate::journal::JournalError> {
        let now = self.now_ms();
        self.journal.call(move |j| j.push_event(&body, now)).await?;
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// The hook environment of a command.
    pub async fn hook(
        &self,
        name: &str,
        request_id: &str,
        epoch: u64,
        role: Role,
        cancel: impl std::future::Future<Output = String>,
        timeout: std::time::Duration,
    ) -> crate::hooks::HookRun {
        self.hook_with(name, request_id, epoch, role, "", cancel, timeout)
            .await
    }

    /// As `hook`, telling it the data volumes attached (`SPOT_DATA_VOLUMES`).
    #[allow(clippy::too_many_arguments)]
    pub async fn hook_with(
        &self,
        name: &str,
        request_id: &str,
        epoch: u64,
        role: Role,
        data_volumes: &str,
        cancel: impl std::future::Future<Output = String>,
        timeout: std::time::Duration,
    ) -> crate::hooks::HookRun {
        let env = crate::hooks::HookEnv {
            request_id,
            group: &self.group,
            epoch,
            role: role.as_str(),
            data_volumes,
        };
        let run = crate::hooks::run_hook(&self.config.hooks_dir, name, &env, timeout, cancel).await;
        if run.ran {
            tracing::info!(hook = name, success = run.success, epoch, "hook ran");
        }
        run
    }
}

#[cfg(test)]
pub mod testing {
    //! An agent wired to fakes, for the tasks' unit tests.

    use super::*;
    use crate::client::fake::FakeCoordinator;
    use crate::clock::FakeClock;
    use crate::journal::Journal;
    use spot_runtime::ec2::fake::FakeEc2;

    pub struct TestAgent {
        pub agent: Arc<Agent>,
        pub coordinator: Arc<FakeCoordinator>,
        pub ec2: Arc<FakeEc2>,
        pub clock: Arc<FakeClock>,
        pub dir: tempfile::TempDir,
    }

    pub fn identity() -> Identity {
        Identity {
            instance_id: "i-self".into(),
            instance_type: "m5.large".into(),
            availability_zone: "us-east-1a".into(),
            region: "us-east-1".into(),
            lifecycle: "spot".into(),
            group_tag: None,
            proof: None,
        }
    }

    /// A command of group `g` at the normal priority.
    pub fn command(
        rid: &str,
        action: spot_common::CommandKind,
        epoch: u64,
        deadline_ms: i64,
    ) -> Command {
        Command {
            request_id: rid.into(),
            group: "g".into(),
            action,
            priority: 100,
            epoch,
            deadline_ms,
        }
    }

    /// An agent whose hooks live in the temp dir, at wall clock 1,000,000.
    pub fn agent(role: RoleState) -> TestAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(&dir.path().join("journal.db")).expect("journal");
        let journal = JournalHandle::new(journal);
        let coordinator = Arc::new(FakeCoordinator::new());
        let ec2 = Arc::new(FakeEc2::new());
        let clock = Arc::new(FakeClock::at(1_000_000));
        let mut config = crate::config::Config::for_tests(dir.path());
        config.hook_timeout = std::time::Duration::from_secs(30);
        let agent = Agent::new(
            config,
            journal,
            identity(),
            "g".into(),
            Edges {
                ec2: ec2.clone(),
                coordinator: coordinator.clone(),
                clock: clock.clone(),
            },
            CancellationToken::new(),
        );
        if let Some(r) = role.role {
            agent.set_role(r, role.epoch);
        }
        agent.raise_epoch(role.epoch);
        let agent = Arc::new(agent);
        TestAgent {
            agent,
            coordinator,
            ec2,
            clock,
            dir,
        }
    }
}
