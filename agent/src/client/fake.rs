//! A scripted coordinator for unit tests: answers heartbeats with what
//! the test set, hands out queued commands, records what it was sent.

use super::*;
use spot_common::{AgentStatus, Role};
use std::collections::VecDeque;
use std::sync::Mutex;

pub struct FakeCoordinator {
    /// The next heartbeat answers, in order; when empty, `steady`.
    pub answers: Mutex<VecDeque<Result<HeartbeatResponse, LinkError>>>,
    pub steady: Mutex<HeartbeatResponse>,
    /// Every call fails as unreachable while set.
    pub down: std::sync::atomic::AtomicBool,
    pub heartbeats: Mutex<Vec<HeartbeatRequest>>,
    pub commands: Mutex<VecDeque<spot_common::Command>>,
    /// The clock a poll answers with (`sent_at_ms`); None, as a
    /// coordinator of the previous release.
    pub clock_ms: Mutex<Option<i64>>,
    /// Grants every poll answers with, by request id.
    pub grants: Mutex<std::collections::BTreeMap<String, String>>,
    pub events: Mutex<Vec<Event>>,
    pub registrations: Mutex<u32>,
}

pub fn answer(role: Role, role_epoch: u64, lease_ms: u64) -> HeartbeatResponse {
    HeartbeatResponse {
        status: AgentStatus::Online,
        role,
        role_epoch,
        epoch: role_epoch,
        lease_ms,
        heartbeat_interval_ms: 1000,
        pricing: None,
        report_ec2_view: false,
    }
}

impl Default for FakeCoordinator {
    fn default() -> Self {
        FakeCoordinator::new()
    }
}

impl FakeCoordinator {
    pub fn new() -> FakeCoordinator {
        FakeCoordinator {
            answers: Mutex::default(),
            steady: Mutex::new(answer(Role::Replica, 0, 0)),
            down: Default::default(),
            heartbeats: Mutex::default(),
            commands: Mutex::default(),
            clock_ms: Mutex::default(),
            grants: Mutex::default(),
            events: Mutex::default(),
            registrations: Mutex::default(),
        }
    }

    fn check(&self) -> Result<(), LinkError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(LinkError::Server {
                status: 503,
                retry_after: None,
            })
        } else {
            Ok(())
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl CoordinatorApi for FakeCoordinator {
    async fn register(
        &self,
        _enrollment_token: &str,
        _req: &RegisterRequest,
    ) -> Result<RegisterResponse, LinkError> {
        self.check()?;
        let mut n = lock(&self.registrations);
        *n += 1;
        Ok(RegisterResponse {
            agent_id: format!("agt-{n}"),
            token: format!("tok-{n}"),
            heartbeat_interval_ms: 1000,
            lease_ms: 3000,
            api_version: 1,
        })
    }

    async fn heartbeat(
        &self,
        _agent_id: &str,
        _token: &str,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, LinkError> {
        self.check()?;
        lock(&self.heartbeats).push(req.clone());
        match lock(&self.answers).pop_front() {
            Some(a) => a,
            None => Ok(lock(&self.steady).clone()),
        }
    }

    async fn poll(
        &self,
        _agent_id: &str,
        _token: &str,
        _instance_id: &str,
        wait: Duration,
    ) -> Result<PollResponse, LinkError> {
        self.check()?;
        let cmds: Vec<spot_common::Command> = lock(&self.commands).drain(..).collect();
        if cmds.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        }
        Ok(PollResponse {
            commands: cmds,
            sent_at_ms: *lock(&self.clock_ms),
            grants: lock(&self.grants).clone(),
        })
    }

    async fn events(
        &self,
        _agent_id: &str,
        _token: &str,
        events: Vec<Event>,
    ) -> Result<EventsResponse, LinkError> {
        self.check()?;
        let acked = events.iter().map(|e| e.event_id.clone()).collect();
        let n = events.len();
        lock(&self.events).extend(events);
        Ok(EventsResponse {
            acked,
            applied: n,
            duplicates: 0,
        })
    }

    async fn pricing(
        &self,
        _agent_id: &str,
        _token: &str,
        points: Vec<spot_common::PricePoint>,
    ) -> Result<spot_common::wire::PricingResponse, LinkError> {
        self.check()?;
        Ok(spot_common::wire::PricingResponse {
            accepted: points.len(),
            duplicates: 0,
        })
    }
}
