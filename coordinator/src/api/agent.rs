//! Agent API v1 handlers.

use super::{ApiError, ApiJson, ApiPath, ApiQuery, bearer, token_matches};
use crate::AppState;
use crate::store::HeartbeatRecord;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use spot_common::wire::{
    EventsRequest, EventsResponse, HeartbeatRequest, HeartbeatResponse, MAX_EVENTS_PER_BATCH,
    MAX_POLL_WAIT_MS, MAX_PRICE_POINTS, PollResponse, PricingRequest, PricingResponse,
    RegisterRequest, RegisterResponse,
};
use std::sync::Arc;
use std::time::Duration;

fn check_field(name: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 128 {
        return Err(ApiError::bad_request(format!(
            "{name} must be 1-128 characters"
        )));
    }
    Ok(())
}

pub async fn register(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    if !token_matches(bearer(&headers), &state.enrollment_token_hash) {
        return Err(ApiError::unauthorized());
    }
    for (name, v) in [
        ("instance_id", &req.instance_id),
        ("instance_type", &req.instance_type),
        ("availability_zone", &req.availability_zone),
        ("region", &req.region),
        ("group", &req.group),
    ] {
        check_field(name, v)?;
    }
    if !matches!(req.lifecycle.as_str(), "spot" | "on-demand") {
        return Err(ApiError::bad_request("lifecycle must be spot or on-demand"));
    }
    let agent_id = format!("agt-{}", uuid::Uuid::new_v4().simple());
    let token = crate::random_token();
    let (hb, lease) = (
        crate::millis(state.config.heartbeat_interval),
        crate::millis(state.config.lease),
    );
    let now = crate::now_ms();
    let resp = {
        let (agent_id, token) = (agent_id.clone(), token.clone());
        state
            .db
            .write(move |s| s.register_agent(&req, &agent_id, &token, hb, lease, now))
            .await?
    };
    // The agents this registration replaced lose their tokens.
    let replaced = state
        .db
        .read({
            let id = resp.agent_id.clone();
            move |s| {
                let me = s.get_agent(&id)?;
                Ok(s.list_agents(Some(&me.group))?
                    .into_iter()
                    .filter(|a| a.replaced_by.as_deref() == Some(id.as_str()))
                    .map(|a| a.agent_id)
                    .collect::<Vec<_>>())
            }
        })
        .await?;
    for old in replaced {
        state.live.remove(&old);
    }
    state
        .live
        .insert(&resp.agent_id, spot_common::token_hash(&resp.token));
    tracing::info!(agent_id = %resp.agent_id, "agent registered");
    Ok((StatusCode::CREATED, Json(resp)))
}

pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    ApiPath(agent_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    state.live.authenticate(&agent_id, bearer(&headers))?;
    state.metrics.heartbeats.inc();
    let now = crate::now_ms();
    let needs_store = state.live.heartbeat(HeartbeatRecord {
        agent_id: agent_id.clone(),
        at_ms: now,
        reported_role: req.role,
        highest_epoch: req.highest_epoch,
        healthy: req.healthy,
        backlog: req.backlog,
    });
    if needs_store {
        let id = agent_id.clone();
        let (role, _) = state.db.write(move |s| s.agent_healthy(&id, now)).await?;
        if role != spot_common::Role::Launching {
            state.live.mark_settled(&agent_id);
        }
        // A new healthy replica may be the candidate a failover waits for.
        state.reconcile.notify_one();
    }
    let id = agent_id.clone();
    let (role, epoch, pricing) = state.db.read(move |s| s.agent_role(&id)).await?;
    Ok(Json(HeartbeatResponse {
        status: state
            .live
            .status(&agent_id)
            .unwrap_or(spot_common::AgentStatus::Online),
        role,
        epoch,
        lease_ms: crate::millis(state.config.lease),
        heartbeat_interval_ms: crate::millis(state.config.heartbeat_interval),
        pricing,
    }))
}

/// Spot prices as the agent read them from DescribeSpotPriceHistory.
pub async fn pricing(
    State(state): State<Arc<AppState>>,
    ApiPath(agent_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PricingRequest>,
) -> Result<Json<PricingResponse>, ApiError> {
    state.live.authenticate(&agent_id, bearer(&headers))?;
    if req.points.len() > MAX_PRICE_POINTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_PRICE_POINTS} points per batch"
        )));
    }
    let now = crate::now_ms();
    let (accepted, duplicates) = state
        .db
        .write(move |s| s.ingest_prices(&agent_id, &req.points, now))
        .await?;
    Ok(Json(PricingResponse {
        accepted,
        duplicates,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    /// How long to hold the request when nothing is queued.
    #[serde(default)]
    wait_ms: u64,
}

/// Long-poll: answers at once when a command is queued (highest priority
/// first), else when one is queued during the wait, else empty at the end.
pub async fn poll_commands(
    State(state): State<Arc<AppState>>,
    ApiPath(agent_id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> Result<Json<PollResponse>, ApiError> {
    let notify = state.live.authenticate(&agent_id, bearer(&headers))?;
    let wait = Duration::from_millis(q.wait_ms.min(MAX_POLL_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let redeliver = i64::try_from(crate::millis(state.config.redeliver_after)).unwrap_or(i64::MAX);
    loop {
        // Register interest before looking, so a command queued between the
        // look and the wait still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = crate::now_ms();
        let id = agent_id.clone();
        let pending = state
            .db
            .read(move |s| s.has_pending_commands(&id, now, redeliver))
            .await?;
        if pending {
            let id = agent_id.clone();
            let commands = state
                .db
                .write(move |s| s.take_commands(&id, now, redeliver, 50))
                .await?;
            if !commands.is_empty() {
                return Ok(Json(PollResponse { commands }));
            }
        }
        if state.live.status(&agent_id).is_none() {
            return Err(ApiError::unauthorized());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(PollResponse { commands: Vec::new() }));
            }
            _ = state.shutdown.notified() => {
                return Ok(Json(PollResponse { commands: Vec::new() }));
            }
        }
    }
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    ApiPath(agent_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EventsRequest>,
) -> Result<Json<EventsResponse>, ApiError> {
    state.live.authenticate(&agent_id, bearer(&headers))?;
    if req.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_EVENTS_PER_BATCH} events per batch"
        )));
    }
    let now = crate::now_ms();
    let cleanup_id = format!("cleanup-{agent_id}");
    let cleaned_up = req.events.iter().any(|e| {
        matches!(&e.body, spot_common::EventBody::CommandResult { request_id, .. } if *request_id == cleanup_id)
    });
    let resp = {
        let agent_id = agent_id.clone();
        state
            .db
            .write(move |s| s.apply_events(&agent_id, &req.events, now))
            .await?
    };
    if resp.applied > 0 {
        state.reconcile.notify_one();
    }
    if cleaned_up && state.live.status(&agent_id) == Some(spot_common::AgentStatus::Deleted) {
        // The deleted agent has done its cleanup: its token dies now.
        state.live.remove(&agent_id);
    }
    use crate::metrics::{EventLabels, EventResult};
    state
        .metrics
        .events
        .get_or_create(&EventLabels {
            result: EventResult::Applied,
        })
        .inc_by(resp.applied as u64);
    state
        .metrics
        .events
        .get_or_create(&EventLabels {
            result: EventResult::Duplicate,
        })
        .inc_by(resp.duplicates as u64);
    Ok(Json(resp))
}
