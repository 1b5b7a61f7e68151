//! HTTP API v1: the agent API under `/v1/agents` (per-agent bearer tokens),
//! the operator API (the shared admin token, or a named token: admin, or
//! viewer for reading only; or the dashboard's session cookie), the
//! dashboard under `/ui`, `/healthz` and `/metrics`.
//!
//! Bodies are capped at 1 MiB; JSON, query and path errors are turned into
//! the same `ErrorBody` as every other refusal.

mod agent;
mod error;
mod extract;
pub mod follower;
mod operator;
mod prices;
mod stream;
mod transitions;
mod ui;

pub use error::ApiError;
pub use extract::{ApiJson, ApiPath, ApiQuery};

use crate::state::AppState;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// An authenticated agent: the `{agent_id}` of the path and its bearer
/// token checked before the body is read, so an unauthenticated request
/// is refused without parsing anything.
pub struct AgentCaller {
    pub agent_id: String,
    /// Wakes this agent's long-poll.
    pub notify: Arc<Notify>,
}

impl FromRequestParts<Arc<AppState>> for AgentCaller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let ApiPath(agent_id) = ApiPath::<String>::from_request_parts(parts, state).await?;
        let notify = state.live.authenticate(&agent_id, bearer(&parts.headers))?;
        Ok(AgentCaller { agent_id, notify })
    }
}

/// A caller holding an enrollment token: the fleet's (`scope` none,
/// unless `fleet_enrollment = false`), or a group's (`spot-coordinator
/// token create --enroll --group NAME`), which registers in that group
/// only.
pub struct Enrolled {
    /// (token name, group) of a group's token.
    pub scope: Option<(String, String)>,
}

/// The TCP peer's address, when the server recorded it.
pub fn source(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// 429 `rate_limited` with a `Retry-After` (whole seconds, at least 1).
pub fn rate_limited(what: &str, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many {what} from this address; retry in {secs} s"),
    )
    .into_response();
    if let Ok(v) = secs.to_string().parse() {
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    resp
}

impl FromRequestParts<Arc<AppState>> for Enrolled {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // Registrations and token guesses alike count against the source.
        if let Some(ip) = source(&parts.extensions)
            && let Err(wait) = state.register_limit.take(ip, Instant::now())
        {
            state
                .metrics
                .shed
                .get_or_create(&crate::metrics::KindLabel {
                    kind: "register_rate",
                })
                .inc();
            tracing::warn!(source = %ip, "registrations from this address rate limited");
            return Err(rate_limited("registrations", wait));
        }
        Self::check(parts, state)
            .await
            .map_err(IntoResponse::into_response)
    }
}

impl Enrolled {
    async fn check(parts: &Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let Some(presented) = bearer(&parts.headers) else {
            return Err(ApiError::unauthorized());
        };
        if token_matches(Some(presented), &state.enrollment_token_hash) {
            if !state.config.fleet_enrollment {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "fleet_enrollment_disabled",
                    "the fleet-wide enrollment token is disabled (fleet_enrollment = false): \
                     register with the group's enrollment token",
                ));
            }
            return Ok(Enrolled { scope: None });
        }
        let hash = spot_common::token_hash(presented);
        match state
            .db
            .read(move |s| crate::store::Read::enroll_token(s, &hash))
            .await?
        {
            Some(scope) => Ok(Enrolled { scope: Some(scope) }),
            None => Err(ApiError::unauthorized()),
        }
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Constant-time comparison of a presented token's hash with the expected
/// one, so response timing leaks nothing about the admin token.
pub fn token_matches(presented: Option<&str>, expected_hash: &str) -> bool {
    presented.is_some_and(|t| hash_matches(&spot_common::token_hash(t), expected_hash))
}

/// Constant-time equality of two hashes.
pub fn hash_matches(h: &str, expected_hash: &str) -> bool {
    h.len() == expected_hash.len()
        && h.bytes()
            .zip(expected_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub fn router(state: Arc<AppState>) -> Router {
    let agent_api = Router::new()
        .route("/v1/agents/register", post(agent::register))
        .route("/v1/agents/{agent_id}/heartbeat", post(agent::heartbeat))
        .route("/v1/agents/{agent_id}/commands", get(agent::poll_commands))
        .route("/v1/agents/{agent_id}/events", post(agent::events))
        .route("/v1/agents/{agent_id}/pricing", post(agent::pricing))
        .route_layer(middleware::from_fn_with_state(state.clone(), shed))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_client_cert,
        ));
    let operator_api = Router::new()
        .route(
            "/v1/groups",
            get(operator::list_groups).post(operator::create_group),
        )
        .route(
            "/v1/groups/{name}",
            get(operator::get_group).put(operator::update_group),
        )
        .route("/v1/groups/{name}/promote", post(operator::promote))
        .route("/v1/groups/{name}/launch", post(operator::launch))
        .route("/v1/groups/{name}/switch", post(operator::switch))
        .route(
            "/v1/groups/{name}/switch/cancel",
            post(operator::cancel_switch),
        )
        .route("/v1/groups/{name}/switches", get(operator::list_switches))
        .route("/v1/groups/{name}/volumes", get(operator::data_volumes))
        .route("/v1/groups/{name}/decisions", get(operator::list_decisions))
        .route("/v1/models/compare", get(operator::compare_models))
        .route(
            "/v1/groups/{name}/declare-dead",
            post(transitions::declare_dead),
        )
        .route(
            "/v1/groups/{name}/transition",
            get(transitions::get_transition),
        )
        .route(
            "/v1/groups/{name}/transition/abort",
            post(transitions::abort_transition),
        )
        .route("/v1/notices", get(operator::list_notices))
        .route("/v1/instances", get(operator::list_instances))
        .route(
            "/v1/instances/terminate",
            post(operator::terminate_instances),
        )
        .route("/v1/instances/{instance_id}", get(operator::get_instance))
        .route("/v1/agents", get(operator::list_agents))
        .route(
            "/v1/agents/{agent_id}",
            get(operator::get_agent).delete(operator::delete_agent),
        )
        .route("/v1/agents/{agent_id}/reset", post(operator::reset_agent))
        .route("/v1/commands", get(operator::list_commands))
        .route("/v1/prices", get(prices::prices))
        .route("/v1/groups/{name}/prices", get(prices::group_prices))
        .route("/v1/pricing/runs", get(prices::runs))
        .route("/v1/savings", get(prices::savings))
        .route("/v1/pricing/consolidate", post(prices::consolidate))
        .route("/v1/audit", get(operator::audit))
        .route("/v1/events/stream", get(stream::stream))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    Router::new()
        .merge(agent_api)
        .merge(operator_api)
        .merge(ui::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track_latency))
        .layer(axum::extract::DefaultBodyLimit::max(
            spot_common::wire::MAX_BODY_BYTES,
        ))
        .with_state(state)
}

/// Who calls the operator API: the actor the audit log names, and what
/// the token may do. Set by the operator API's middleware.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: spot_common::Actor,
    pub role: spot_common::TokenRole,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}

/// Who holds the token whose hash is `hash`: the shared admin token
/// (audited as `operator`), or a named token that is not revoked (audited
/// as `operator:NAME`).
pub async fn caller_for_hash(state: &AppState, hash: String) -> Result<Option<Caller>, ApiError> {
    use spot_common::{Actor, TokenRole};
    if hash_matches(&hash, &state.admin_token_hash) {
        return Ok(Some(Caller {
            actor: Actor::Operator,
            role: TokenRole::Admin,
        }));
    }
    let found = state
        .db
        .read(move |s| crate::store::Read::named_token(s, &hash))
        .await?;
    Ok(found.map(|(name, role)| Caller {
        actor: Actor::NamedOperator(name),
        role,
    }))
}

/// The caller of an operator request: a bearer token, or the dashboard's
/// session cookie (whose changes must pass the CSRF check).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Caller, ApiError> {
    let hash = if let Some(t) = bearer(headers) {
        spot_common::token_hash(t)
    } else if let Some(id) = ui::session_cookie(headers) {
        let session = state
            .sessions
            .get(id, crate::state::now_ms())
            .ok_or_else(ApiError::unauthorized)?;
        if ui::mutating(method) {
            ui::check_csrf(headers, &session)?;
        }
        session.token_hash
    } else {
        return Err(ApiError::unauthorized());
    };
    caller_for_hash(state, hash)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// With `[tls] client_ca`, agents must present a client certificate that
/// CA signed (on top of their tokens); with `client_identity` `san` or
/// `cn`, one that names the instance the agent of the path speaks for
/// (registration checks the instance of its body).
async fn require_client_cert(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(tls) = state.config.tls.as_ref().filter(|t| t.client_ca.is_some()) else {
        return next.run(req).await;
    };
    let Some(cert) = req.extensions().get::<crate::tls::ClientCert>() else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "the agent API requires a client certificate signed by the coordinator's client CA (mTLS)",
        )
        .into_response();
    };
    // `/v1/agents/{agent_id}/...`
    let agent = req
        .uri()
        .path()
        .strip_prefix("/v1/agents/")
        .and_then(|rest| rest.split('/').next())
        .filter(|id| *id != "register");
    if let Some(instance) = agent.and_then(|id| state.live.instance_of(id))
        && !cert.speaks_for(tls.client_identity, &instance)
    {
        return ApiError::client_certificate_mismatch(&instance).into_response();
    }
    next.run(req).await
}

/// Whether the request's client certificate may register `instance`.
pub fn check_client_identity(
    state: &AppState,
    extensions: &axum::http::Extensions,
    instance: &str,
) -> Result<(), ApiError> {
    let Some(tls) = state.config.tls.as_ref().filter(|t| t.client_ca.is_some()) else {
        return Ok(());
    };
    match extensions.get::<crate::tls::ClientCert>() {
        Some(c) if c.speaks_for(tls.client_identity, instance) => Ok(()),
        _ => Err(ApiError::client_certificate_mismatch(instance)),
    }
}

/// Operator requests: authenticated, and a viewer token may only read.
async fn require_operator(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match authenticate(&state, &headers, req.method()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if caller.role == spot_common::TokenRole::Viewer && ui::mutating(req.method()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} has a viewer token: it may read, not change anything",
                caller.actor
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn track_latency(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .http_duration
        .get_or_create(&crate::metrics::HttpLabels { route, method })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// A read on a reader connection, answered as JSON: the whole body of
/// most `GET` handlers.
pub async fn read_json<R, F>(state: &AppState, f: F) -> Result<Json<R>, ApiError>
where
    R: Send + 'static,
    F: FnOnce(&crate::store::Store) -> crate::store::Result<R> + Send + 'static,
{
    Ok(Json(state.db.read(f).await?))
}

/// An operator's change: one idempotent transaction (a repeated
/// `request_id` gets the first answer), the long-polls of the agents it
/// queued commands for woken, and a reconcile pass asked for.
pub(crate) async fn operator_change<R, F>(
    state: &AppState,
    scope: &'static str,
    ctx: crate::store::Ctx,
    f: F,
) -> Result<R, ApiError>
where
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    F: FnOnce(&mut crate::store::Txn<'_>) -> crate::store::Result<R> + Send + 'static,
{
    let done = state.db.idempotent(scope, ctx, f).await?;
    let value = state.woke(done);
    state.reconcile.notify_one();
    Ok(value)
}

/// Shed agent requests under overload (`state::admission`): 503
/// `overloaded` with a `Retry-After` the agent honours.
async fn shed(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use crate::state::admission::Class;
    // A leader whose lease may have run out answers no agent: a heartbeat
    // answer or a command from a deposed leader would speak for a term
    // that is over. The agent tries its next coordinator.
    if !state.view.acting() {
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            "this coordinator's leader term is ending; try another coordinator",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    }
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let class = match path {
        Some("/v1/agents/{agent_id}/commands") => return next.run(req).await,
        Some("/v1/agents/register") => Class::Register,
        Some("/v1/agents/{agent_id}/heartbeat") => Class::Heartbeat,
        _ => Class::Report,
    };
    let Some(_ticket) = state.admission.enter(class) else {
        let wait = class.retry_after();
        state
            .metrics
            .shed
            .get_or_create(&crate::metrics::KindLabel { kind: class.name() })
            .inc();
        tracing::debug!(
            kind = class.name(),
            in_flight = state.admission.in_flight(),
            "shedding an agent request: overloaded"
        );
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the coordinator is overloaded; retry in {} s",
                wait.as_secs()
            ),
        )
        .into_response();
        if let Ok(v) = wait.as_secs().to_string().parse() {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        return resp;
    };
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn healthz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::store::Read;
    let version = state.db.read(|s| s.schema_version()).await?;
    let leader = state.view.leader();
    Ok(Json(serde_json::json!({
        "status": "ok",
        "leader": state.view.acting(),
        "leader_url": leader.url,
        "leader_epoch": leader.epoch,
        "advertise_url": state.view.advertise_url,
        "store": state.view.store,
        "schema_version": version,
        "uptime_s": state.started.elapsed().as_secs(),
        // "trust" means registrations are not verified: worth a look.
        "identity": state.identity.mode().as_str(),
    })))
}

/// An agent with more unacknowledged events than this is flagged.
const BACKLOG_FLAG: u64 = 100;

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.set_agent_counts(&state.live.counts());
    state
        .metrics
        .agents_backlogged
        .set(state.live.backlogged(BACKLOG_FLAG));
    let now = crate::state::now_ms();
    match state
        .db
        .read(move |s| crate::store::Read::fleet_health(s, now))
        .await
    {
        Ok(h) => {
            state.metrics.set_fleet_health(&h);
            let s = crate::metrics::savings(&h.primary_prices, &state.config.on_demand_dollars());
            state.metrics.set_savings(&s);
        }
        Err(e) => tracing::warn!(error = %e, "reading fleet health for /metrics"),
    }
    state
        .metrics
        .stalled_seconds
        .set(state.clock.stalled().as_secs_f64());
    encode_metrics(&state.metrics)
}

/// `/metrics`' answer: the registry in OpenMetrics text.
pub(crate) fn encode_metrics(metrics: &crate::metrics::Metrics) -> Response {
    match metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
