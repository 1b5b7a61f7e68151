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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// The HTTP client, to one coordinator or several sharing a store.
///
/// With several URLs the agent talks to one at a time: the leader, once a
/// follower's `307` named it, else the URL in turn. A coordinator that
/// does not answer, or answers `503 not_leader`/`no_leader`, makes the
/// call move on to the next URL at once (each URL once per call); only
/// when none answers does the caller's retry policy apply.
#[derive(Clone)]
pub struct Link {
    http: reqwest::Client,
    bases: Vec<String>,
    /// The URL in use (index into `bases`).
    current: Arc<AtomicUsize>,
    /// The leader a follower's redirect named, until it stops answering.
    leader: Arc<Mutex<Option<String>>>,
}

/// Calls other than the long-poll must answer within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed in one call (a follower names the leader: one).
const MAX_REDIRECTS: usize = 2;

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    Some(format!("{scheme}://{host}"))
}

/// What one attempt came to.
enum Attempt {
    /// An overloaded coordinator: retry it later, as it asked.
    Overloaded(LinkError),
    Answer(reqwest::Response),
    /// Go to the next coordinator; what to report if none answers.
    Next(LinkError),
    /// Follow to this URL.
    Redirect(String),
}

impl Link {
    pub fn new(bases: &[String], tls: &spot_runtime::tls::ClientTls) -> Result<Link, LinkError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            // Redirects are ours to follow: reqwest would drop the token
            // on the way to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("spot-agent/", env!("CARGO_PKG_VERSION")));
        let http = tls
            .apply(builder)
            .map_err(|e| LinkError::Tls(format!("{e:#}")))?
            .build()
            .map_err(LinkError::Transport)?;
        let bases: Vec<String> = bases
            .iter()
            .map(|b| b.trim_end_matches('/').to_owned())
            .collect();
        if bases.is_empty() {
            return Err(LinkError::Tls("no coordinator URL".into()));
        }
        Ok(Link {
            http,
            bases,
            current: Arc::default(),
            leader: Arc::default(),
        })
    }

    fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leader(&self, url: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = url;
    }

    /// The coordinator to try first.
    fn base(&self) -> String {
        self.leader().unwrap_or_else(|| {
            self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()].clone()
        })
    }

    /// Give up on `failed` (the leader's URL, or the current one) and move
    /// on to the next URL of the list.
    fn move_on(&self, failed: &str) {
        if self.leader().as_deref() == Some(failed) {
            self.set_leader(None);
            return;
        }
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// A follower named the leader at `to`: reach it through a configured
    /// URL when one leads (the configured route may be the one that works
    /// from here: a NAT, a proxy, a name only agents use), else at `to`.
    async fn route_to_leader(&self, to: &str, path: &str) -> String {
        let leader = origin(to).unwrap_or_default();
        let mut configured = self.bases.iter().position(|b| *b == leader);
        if configured.is_none() {
            for (i, b) in self.bases.iter().enumerate() {
                let healthz = self
                    .http
                    .get(format!("{b}/healthz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                let leads = match healthz {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|v| v["leader"] == true),
                    Err(_) => false,
                };
                if leads {
                    configured = Some(i);
                    break;
                }
            }
        }
        match configured {
            Some(i) => {
                self.current.store(i, Ordering::Relaxed);
                self.set_leader(None);
                tracing::info!(leader = %self.bases[i], "a follower named the leader; talking to it");
                format!("{}{path}", self.bases[i])
            }
            None => {
                tracing::info!(%leader, "a follower named the leader; talking to it at its own URL");
                self.set_leader(Some(leader));
                to.to_owned()
            }
        }
    }

    async fn attempt<B: Serialize>(
        &self,
        method: &reqwest::Method,
        url: &str,
        token: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Attempt {
        let mut req = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Next(LinkError::Transport(e)),
        };
        let status = resp.status();
        if (status == StatusCode::TEMPORARY_REDIRECT || status == StatusCode::PERMANENT_REDIRECT)
            && let Some(to) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
        {
            return Attempt::Redirect(to.to_owned());
        }
        // A coordinator that does not lead: the next one may. (An
        // overloaded leader's 503 is an answer: its Retry-After holds.)
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let retry_after = retry_after(&resp);
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return Attempt::Next(LinkError::Transport(e)),
            };
            let code = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.code)
                .unwrap_or_default();
            if code == "not_leader" || code == "no_leader" {
                return Attempt::Next(LinkError::Server {
                    status: 503,
                    retry_after,
                });
            }
            return Attempt::Overloaded(LinkError::Server {
                status: 503,
                retry_after,
            });
        }
        Attempt::Answer(resp)
    }

    async fn send<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<R, LinkError> {
        let mut url = format!("{}{path}", self.base());
        let mut redirects = 0;
        let mut tries = 0;
        let resp = loop {
            match self.attempt(&method, &url, token, body, timeout).await {
                Attempt::Answer(r) => break r,
                Attempt::Overloaded(e) => return Err(e),
                Attempt::Redirect(to) if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    url = self.route_to_leader(&to, path).await;
                }
                Attempt::Redirect(to) => {
                    // Followers naming a leader that does not answer: an
                    // election is under way. Come back in a second.
                    tracing::debug!(%to, "redirected again: no leader answers yet");
                    return Err(LinkError::Server {
                        status: 503,
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                Attempt::Next(e) => {
                    let failed = origin(&url).unwrap_or_default();
                    self.move_on(&failed);
                    tries += 1;
                    if tries > self.bases.len() {
                        return Err(e);
                    }
                    url = format!("{}{path}", self.base());
                    tracing::debug!(next = %url, error = %e, "coordinator did not answer; trying the next");
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(LinkError::Transport);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(LinkError::Unauthorized);
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = retry_after(&resp);
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

/// The coordinator's `Retry-After`, in whole seconds.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
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
mod tests;

#[cfg(test)]
pub mod fake;
