//! Operator API v1 handlers (admin token, checked by the router).

use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::AppState;
use crate::store::{AuditQuery, PromoteResult};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use spot_common::Actor;
use spot_common::wire::{
    AgentView, AuditEntry, CommandView, CreateGroupRequest, DeleteAgentRequest, GroupView,
    InstanceView, LaunchRequest, NoticeView, PromoteRequest, QueuedCommand, SwitchRequest,
    SwitchView, UpdateGroupRequest,
};
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
    let (g, retired) = state
        .db
        .write(move |s| {
            let before = s.get_group(&name)?;
            let g = s.update_group(
                req.request_id.as_deref(),
                &name,
                &req.config,
                req.version,
                &Actor::Operator,
                now,
            )?;
            // Manual replica switched OFF: its REPLICA is retired.
            let mut retired = Vec::new();
            if before.config.manual_replica && !g.config.manual_replica {
                let via = g
                    .primary
                    .as_ref()
                    .and_then(|p| s.get_instance(p).ok())
                    .and_then(|p| p.agent_id);
                if let Some(via) = via {
                    for r in s
                        .list_instances(Some(&name))?
                        .into_iter()
                        .filter(|i| i.role == spot_common::Role::Replica)
                    {
                        retired.push(s.retire(
                            &name,
                            &r.instance_id,
                            &via,
                            &Actor::Operator,
                            now,
                        )?);
                    }
                }
            }
            Ok((g, retired))
        })
        .await?;
    tracing::info!(group = %g.name, version = g.version, retired = retired.len(), "group config updated");
    state.wake_commands(retired).await;
    state.reconcile.notify_one();
    Ok(Json(g))
}

pub async fn promote(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PromoteRequest>,
) -> Result<Json<PromoteResult>, ApiError> {
    let now = crate::now_ms();
    // An operator promotion is planned work: the old PRIMARY (if any) is
    // demoted first, then the candidate promoted (docs/STATE_MACHINE.md).
    let result = state
        .db
        .write(move |s| {
            s.begin_replace(
                req.request_id.as_deref(),
                &name,
                &req.instance_id,
                req.expected_epoch,
                false,
                false,
                None,
                "operator promotion",
                None,
                &Actor::Operator,
                now,
            )
        })
        .await;
    if result.is_err() {
        state
            .metrics
            .promotions
            .get_or_create(&crate::metrics::OutcomeLabel { outcome: "refused" })
            .inc();
    }
    let result = result?;
    tracing::info!(group = %result.group, epoch = result.epoch, candidate = %result.promoted, phase = %result.phase, "promotion started");
    state.wake_commands(result.commands.clone()).await;
    state.reconcile.notify_one();
    Ok(Json(result))
}

pub async fn switch(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SwitchRequest>,
) -> Result<Json<SwitchView>, ApiError> {
    let now = crate::now_ms();
    let sw = state
        .db
        .write(move |s| {
            s.request_switch(
                req.request_id.as_deref(),
                &name,
                &req.pool,
                &Actor::Operator,
                now,
            )
        })
        .await?;
    tracing::info!(group = %sw.group, switch = sw.id, pool = %sw.target_pool, "switch requested");
    state.reconcile.notify_one();
    Ok(Json(sw))
}

pub async fn list_switches(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<SwitchView>>, ApiError> {
    Ok(Json(
        state
            .db
            .read(move |s| {
                s.get_group(&name)?;
                s.list_switches(&name)
            })
            .await?,
    ))
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
    state
        .wake_commands(vec![q.command.request_id.clone()])
        .await;
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
