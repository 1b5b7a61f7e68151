//! Operator API v1 handlers (admin token, checked by the router).

use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::AppState;
use crate::store::{AuditQuery, PromoteResult};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use spot_common::wire::{
    AgentView, AuditEntry, CommandView, CreateGroupRequest, DeleteAgentRequest, GroupView,
    InstanceView, LaunchRequest, NoticeView, PromoteRequest, QueuedCommand, UpdateGroupRequest,
};
use spot_common::{Actor, PRIORITY_NORMAL};
use std::sync::Arc;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFilter {
    group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFilter {
    agent_id: Option<String>,
}

pub async fn list_groups(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<GroupView>>, ApiError> {
    Ok(Json(state.db.read(|s| s.list_groups()).await?))
}

pub async fn create_group(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CreateGroupRequest>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    let now = crate::now_ms();
    let g = state
        .db
        .write(move |s| {
            s.create_group(
                req.request_id.as_deref(),
                &req.name,
                &req.config,
                &Actor::Operator,
                now,
            )
        })
        .await?;
    tracing::info!(group = %g.name, "group created");
    Ok((StatusCode::CREATED, Json(g)))
}

pub async fn get_group(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(state.db.read(move |s| s.get_group(&name)).await?))
}

pub async fn update_group(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateGroupRequest>,
) -> Result<Json<GroupView>, ApiError> {
    let now = crate::now_ms();
    let g = state
        .db
        .write(move |s| {
            s.update_group(
                req.request_id.as_deref(),
                &name,
                &req.config,
                req.version,
                &Actor::Operator,
                now,
            )
        })
        .await?;
    tracing::info!(group = %g.name, version = g.version, "group config updated");
    Ok(Json(g))
}

pub async fn promote(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PromoteRequest>,
) -> Result<Json<PromoteResult>, ApiError> {
    let now = crate::now_ms();
    // An operator promotion is planned work, not an emergency; it must
    // start within a minute or not at all.
    let deadline = now + 60_000;
    let result = state
        .db
        .write(move |s| {
            s.promote(
                req.request_id.as_deref(),
                &name,
                &req.instance_id,
                req.expected_epoch,
                PRIORITY_NORMAL,
                deadline,
                &Actor::Operator,
                now,
            )
        })
        .await;
    let outcome = if result.is_ok() {
        "committed"
    } else {
        "refused"
    };
    state
        .metrics
        .promotions
        .get_or_create(&crate::metrics::OutcomeLabel { outcome })
        .inc();
    let result = result?;
    tracing::info!(group = %result.group, epoch = result.epoch, promoted = %result.promoted, "promotion committed");
    wake_command_targets(&state, &result.commands).await;
    Ok(Json(result))
}

/// Wake the long-polls of the agents that just got commands.
async fn wake_command_targets(state: &AppState, request_ids: &[String]) {
    let ids = request_ids.to_vec();
    match state
        .db
        .read(move |s| {
            s.list_commands(None).map(|all| {
                all.into_iter()
                    .filter(|c| ids.contains(&c.command.request_id))
                    .map(|c| c.agent_id)
                    .collect::<Vec<_>>()
            })
        })
        .await
    {
        Ok(agents) => agents.iter().for_each(|a| state.live.wake(a)),
        // The commands are queued; the agent's next poll picks them up.
        Err(e) => tracing::warn!(error = %crate::error_chain(&e), "waking agents"),
    }
}

pub async fn launch(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<LaunchRequest>,
) -> Result<Json<QueuedCommand>, ApiError> {
    let now = crate::now_ms();
    let rid = req
        .request_id
        .clone()
        .unwrap_or_else(|| format!("launch-{}", uuid::Uuid::new_v4()));
    let q = state
        .db
        .write(move |s| {
            s.queue_launch(
                &rid,
                &name,
                req.agent_id.as_deref(),
                &req.pool,
                req.emergency,
                &Actor::Operator,
                now,
            )
        })
        .await?;
    tracing::info!(request_id = %q.command.request_id, agent_id = %q.agent_id, "launch queued");
    state.live.wake(&q.agent_id);
    Ok(Json(q))
}

pub async fn list_notices(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<GroupFilter>,
) -> Result<Json<Vec<NoticeView>>, ApiError> {
    Ok(Json(
        state
            .db
            .read(move |s| s.list_notices(f.group.as_deref()))
            .await?,
    ))
}

pub async fn list_instances(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<GroupFilter>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    Ok(Json(
        state
            .db
            .read(move |s| s.list_instances(f.group.as_deref()))
            .await?,
    ))
}

pub async fn get_instance(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<InstanceView>, ApiError> {
    Ok(Json(state.db.read(move |s| s.get_instance(&id)).await?))
}

pub async fn list_agents(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<GroupFilter>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    Ok(Json(
        state
            .db
            .read(move |s| s.list_agents(f.group.as_deref()))
            .await?,
    ))
}

pub async fn get_agent(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(state.db.read(move |s| s.get_agent(&id)).await?))
}

pub async fn delete_agent(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteAgentRequest>,
) -> Result<Json<AgentView>, ApiError> {
    let request_id = q.request_id;
    let now = crate::now_ms();
    let cmd_id = format!("cleanup-{id}");
    let view = {
        let id = id.clone();
        state
            .db
            .write(move |s| {
                s.delete_agent(request_id.as_deref(), &id, &Actor::Operator, now, &cmd_id)
            })
            .await?
    };
    // The token keeps working only to fetch the cleanup command and report
    // its result; heartbeats answer `deleted`.
    state.live.mark_deleted(&id);
    tracing::info!(agent_id = %id, "agent deleted by operator");
    Ok(Json(view))
}

pub async fn list_commands(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<AgentFilter>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    Ok(Json(
        state
            .db
            .read(move |s| s.list_commands(f.agent_id.as_deref()))
            .await?,
    ))
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(state.db.read(move |s| s.audit_log(&q)).await?))
}
