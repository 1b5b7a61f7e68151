//! The coordinator's agent API v1, as the agent calls it: the
//! [`CoordinatorApi`] trait, its HTTP implementation, and a scripted fake
//! for unit tests.
//!
//! Every call has its own timeout (the long-poll gets its wait plus 10 s);
//! retries are the caller's, with the policies of `spot_common::retry`.
//! A 401 means the identity is no longer valid (deleted, or the coordinator
//! lost its database): the caller re-registers. A 409 `instance_mismatch`
//! means this identity belongs to another instance (a cloned disk): the
//! caller registers afresh too.

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spot_common::Event;
use spot_common::wire::{
    ErrorBody, EventsRequest, EventsResponse, HeartbeatRequest, HeartbeatResponse, PollResponse,
    RegisterRequest, RegisterResponse,
};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("coordinator refused our credentials (401)")]
    Unauthorized,
    #[error("coordinator says this identity belongs to another instance (409)")]
    InstanceMismatch,
    #[error("coordinator refused the request: {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("coordinator unreachable or failing")]
    Transport(#[source] reqwest::Error),
    #[error("coordinator answered {status}")]
    Server {
        status: u16,
        /// The coordinator's `Retry-After` (an overloaded coordinator
        /// sheds registrations first and says when to come back).
        retry_after: Option<Duration>,
    },
    #[error("TLS set-up: {0}")]
    Tls(String),
}

impl LinkError {
    /// This identity must be given up and a new one registered.
    pub fn identity_lost(&self) -> bool {
        matches!(self, LinkError::Unauthorized | LinkError::InstanceMismatch)
    }

    /// When the coordinator asked to be called again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LinkError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The calls an agent makes to its coordinator.
#[async_trait]
pub trait CoordinatorApi: Send + Sync {
    async fn register(
        &self,
        enrollment_token: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, LinkError>;
    async fn heartbeat(
        &self,
        agent_id: &str,
        token: &str,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, LinkError>;
    async fn poll(
        &self,
        agent_id: &str,
        token: &str,
        instance_id: &str,
        wait: Duration,
    ) -> Result<PollResponse, LinkError>;
    async fn events(
        &self,
        agent_id: &str,
        token: &str,
        events: Vec<Event>,
    ) -> Result<EventsResponse, LinkError>;
    async fn pricing(
        &self,
        agent_id: &str,
        token: &str,
        points: Vec<spot_common::PricePoint>,
    ) -> Result<spot_common::wire::PricingResponse, LinkError>;
}

/// The HTTP client.
#[derive(Clone)]
pub struct Link {
    http: reqwest::Client,
    base: String,
}

/// Calls other than the long-poll must answer within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Link {
    pub fn new(base: &str, tls: &spot_runtime::tls::ClientTls) -> Result<Link, LinkError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("spot-agent/", env!("CARGO_PKG_VERSION")));
        let http = tls
            .apply(builder)
            .map_err(|e| LinkError::Tls(format!("{e:#}")))?
            .build()
            .map_err(LinkError::Transport)?;
        Ok(Link {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn send<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<R, LinkError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(LinkError::Transport)?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(LinkError::Transport);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(LinkError::Unauthorized);
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(LinkError::Server {
                status: status.as_u16(),
                retry_after,
            });
        }
        let err: ErrorBody = resp.json().await.unwrap_or(ErrorBody {
            code: "unknown".into(),
            message: String::new(),
            rule: None,
        });
        if status == StatusCode::CONFLICT && err.code == "instance_mismatch" {
            return Err(LinkError::InstanceMismatch);
        }
        Err(LinkError::Rejected {
            status: status.as_u16(),
            code: err.code,
            message: err.message,
        })
    }
}

#[async_trait]
impl CoordinatorApi for Link {
    #[tracing::instrument(skip_all, err)]
    async fn register(
        &self,
        enrollment_token: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, LinkError> {
        self.send(
            reqwest::Method::POST,
            "/v1/agents/register",
            enrollment_token,
            Some(req),
            CALL_TIMEOUT,
        )
        .await
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn heartbeat(
        &self,
        agent_id: &str,
        token: &str,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, LinkError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent_id}/heartbeat"),
            token,
            Some(req),
            CALL_TIMEOUT,
        )
        .await
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn poll(
        &self,
        agent_id: &str,
        token: &str,
        instance_id: &str,
        wait: Duration,
    ) -> Result<PollResponse, LinkError> {
        let ms = wait.as_millis();
        self.send::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/agents/{agent_id}/commands?wait_ms={ms}&instance_id={instance_id}"),
            token,
            None,
            wait + CALL_TIMEOUT,
        )
        .await
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn pricing(
        &self,
        agent_id: &str,
        token: &str,
        points: Vec<spot_common::PricePoint>,
    ) -> Result<spot_common::wire::PricingResponse, LinkError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent_id}/pricing"),
            token,
            Some(&spot_common::wire::PricingRequest { points }),
            CALL_TIMEOUT,
        )
        .await
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn events(
        &self,
        agent_id: &str,
        token: &str,
        events: Vec<Event>,
    ) -> Result<EventsResponse, LinkError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent_id}/events"),
            token,
            Some(&EventsRequest { events }),
            CALL_TIMEOUT,
        )
        .await
    }
}

#[cfg(test)]
pub mod fake {
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
}
