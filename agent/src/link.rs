//! Client of the coordinator's agent API v1.
//!
//! Every call has its own timeout (the long-poll gets its wait plus 10 s);
//! retries are the caller's, with `spot_common::retry::COORDINATOR_LINK`.
//! A 401 means the identity is no longer valid (deleted, or the coordinator
//! lost its database): the caller re-registers.

use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spot_common::wire::{
    ErrorBody, EventsRequest, EventsResponse, HeartbeatRequest, HeartbeatResponse, PollResponse,
    RegisterRequest, RegisterResponse,
};
use spot_common::{Command, Event};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("coordinator refused our credentials (401)")]
    Unauthorized,
    #[error("coordinator refused the request: {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("coordinator unreachable or failing")]
    Transport(#[source] reqwest::Error),
    #[error("coordinator answered {status}")]
    Server { status: u16 },
}

impl LinkError {
    /// Worth retrying later with the same request.
    pub fn is_transient(&self) -> bool {
        matches!(self, LinkError::Transport(_) | LinkError::Server { .. })
    }
}

#[derive(Clone)]
pub struct Link {
    http: reqwest::Client,
    base: String,
}

/// Calls other than the long-poll must answer within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Link {
    pub fn new(base: &str) -> Result<Link, LinkError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("spot-agent/", env!("CARGO_PKG_VERSION")))
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
            return Err(LinkError::Server {
                status: status.as_u16(),
            });
        }
        let err: ErrorBody = resp.json().await.unwrap_or(ErrorBody {
            code: "unknown".into(),
            message: String::new(),
            rule: None,
        });
        Err(LinkError::Rejected {
            status: status.as_u16(),
            code: err.code,
            message: err.message,
        })
    }

    pub async fn register(
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

    pub async fn heartbeat(
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

    pub async fn poll(
        &self,
        agent_id: &str,
        token: &str,
        wait: Duration,
    ) -> Result<Vec<Command>, LinkError> {
        let ms = wait.as_millis();
        let r: PollResponse = self
            .send::<(), _>(
                reqwest::Method::GET,
                &format!("/v1/agents/{agent_id}/commands?wait_ms={ms}"),
                token,
                None,
                wait + CALL_TIMEOUT,
            )
            .await?;
        Ok(r.commands)
    }

    pub async fn pricing(
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

    pub async fn events(
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
