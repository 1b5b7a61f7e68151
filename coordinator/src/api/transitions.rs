//! Operator API over a transition that waits: what it waits for, ending
//! it before anything was granted, and vouching that a fence target is
//! dead. Every change is audited and idempotent under `request_id`.

use super::operator::operator;
use super::{ApiError, ApiJson, ApiPath, Caller, operator_change};
use crate::state::AppState;
use crate::store::Read;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use spot_common::wire::{
    AbortTransitionRequest, DeclareDeadRequest, InstanceView, TransitionStatus, TransitionView,
};
use std::sync::Arc;

/// The group's transition, each fence target's evidence, what it waits
/// for and whether it may be aborted; 404 when the group has none.
pub async fn get_transition(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TransitionStatus>, ApiError> {
    let group = name.clone();
    match state.db.read(move |s| s.transition_status(&group)).await? {
        Some(t) => Ok(Json(t)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_transition",
            format!("group {name} has no transition in progress"),
        )),
    }
}

/// End a transition before anything was granted in it; the group is
/// paused (resume it when the cause is fixed). 409 once a candidate was
/// granted, or when `expected_epoch` is not the transition's.
pub async fn abort_transition(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<AbortTransitionRequest>,
) -> Result<Json<TransitionView>, ApiError> {
    let ctx = operator(&caller, req.request_id.clone(), &(&name, &req));
    let group = name.clone();
    let t = operator_change(&state, "abort_transition", ctx, move |tx| {
        tx.abort_transition(&group, req.expected_epoch)
    })
    .await?;
    tracing::warn!(group = %name, epoch = t.epoch, candidate = %t.candidate, "transition aborted by an operator; the group is paused");
    Ok(Json(t))
}

/// An operator vouches that an instance does not serve: for the group's
/// transition that must fence it, it counts as fenced (until its agent is
/// heard again), so a replacement blocked on fencing it can go on. Refused
/// for an instance heard within its lease unless `force`. Audited.
pub async fn declare_dead(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<DeclareDeadRequest>,
) -> Result<Json<InstanceView>, ApiError> {
    let ctx = operator(&caller, req.request_id.clone(), &(&name, &req));
    let agent = state
        .db
        .read({
            let id = req.instance_id.clone();
            move |s| s.instance(&id)
        })
        .await?
        .agent_id;
    let heard = agent.and_then(|a| state.live.silent_ms(&a, state.clock.now()));
    let lease_ms = i64::try_from(state.config.lease.as_millis()).unwrap_or(i64::MAX);
    let force = req.force;
    let inst = operator_change(&state, "declare_dead", ctx, move |tx| {
        tx.declare_dead(&name, &req.instance_id, heard, lease_ms, force)?;
        tx.instance(&req.instance_id)
    })
    .await?;
    tracing::warn!(group = %inst.group, instance = %inst.instance_id, forced = force, "operator declared the instance dead: it counts as fenced for the group's transition");
    Ok(Json(inst))
}
