//! Operator API v1 handlers (admin token, checked by the router before
//! anything is parsed). Handlers translate HTTP to store transactions;
//! the rules live in the store and the planner.

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Caller, operator_change, read_json};
use crate::state::AppState;
use crate::store::{AuditQuery, BulkSelection, Ctx, PromoteResult, Read, ReplaceRequest, Via};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use spot_common::wire::{
    AgentView, AuditEntry, BulkTerminateRequest, BulkTerminateResponse, CancelSwitchRequest,
    CommandView, CreateGroupRequest, DecisionView, DeleteAgentRequest, GroupView, InstanceView,
    LaunchRequest, ModelStats, NoticeView, PromoteRequest, QueuedCommand, ResetAgentRequest,
    SwitchRequest, SwitchView, UpdateGroupRequest,
};
use std::sync::Arc;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFilter {
    group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionFilter {
    /// At most this many, newest first [default: 100, at most 1,000].
    limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFilter {
    agent_id: Option<String>,
}

/// An operator request, by `caller`: its id and content make it
/// idempotent.
pub(super) fn operator<T: serde::Serialize>(
    caller: &Caller,
    request_id: Option<String>,
    body: &T,
) -> Ctx {
    Ctx::new(crate::state::now_ms(), caller.actor.clone())
        .request(request_id)
        .body(body)
}

pub async fn list_groups(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<GroupView>>, ApiError> {
    read_json(&state, |s| s.groups()).await
}

/// With the coordinator's own EC2 access (the executor), a config's data
/// volumes are checked against EC2 before it is stored: they exist, share
/// one zone, and the group has a pool there. Without it, the first
/// promote checks them (and fails with the reason).
async fn check_volumes(
    state: &AppState,
    config: &spot_common::GroupConfig,
) -> Result<(), ApiError> {
    if config.fast_snapshot_restore && !state.config.ec2_executor {
        return Err(ApiError::from(crate::store::StoreError::Rule(
            spot_common::ConfigRuleError::DataVolume(
                "fast_snapshot_restore needs the coordinator's EC2 executor (ec2_executor = true), which turns it on and off"
                    .into(),
            ),
        )));
    }
    let Some(ec2) = state
        .ec2
        .as_ref()
        .filter(|_| !config.data_volumes.is_empty())
    else {
        return Ok(());
    };
    config
        .validate()
        .map_err(|e| ApiError::from(crate::store::StoreError::Rule(e)))?;
    let mut zones = std::collections::HashMap::new();
    for v in &config.data_volumes {
        let found = ec2.volume(&v.volume_id).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "ec2_unavailable",
                format!("checking the data volumes with EC2: {e}"),
            )
        })?;
        zones.insert(v.volume_id.clone(), found.map(|f| f.availability_zone));
    }
    config
        .check_volume_zones(&zones)
        .map_err(|e| ApiError::from(crate::store::StoreError::Rule(e)))?;
    Ok(())
}

pub async fn create_group(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateGroupRequest>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    check_volumes(&state, &req.config).await?;
    let ctx = operator(&caller, req.request_id.clone(), &req);
    let done = state
        .db
        .idempotent("create_group", ctx, move |tx| {
            tx.create_group(&req.name, &req.config)
        })
        .await?;
    let g = state.woke(done);
    tracing::info!(group = %g.name, "group created");
    Ok((StatusCode::CREATED, Json(g)))
}

pub async fn get_group(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<GroupView>, ApiError> {
    read_json(&state, move |s| s.group(&name)).await
}

pub async fn update_group(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateGroupRequest>,
) -> Result<Json<GroupView>, ApiError> {
    check_volumes(&state, &req.config).await?;
    let ctx = operator(&caller, req.request_id.clone(), &(&name, &req));
    let g = operator_change(&state, "update_group", ctx, move |tx| {
        tx.update_group(&name, &req.config, req.version)
    })
    .await?;
    tracing::info!(group = %g.name, version = g.version, "group config updated");
    Ok(Json(g))
}

pub async fn promote(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PromoteRequest>,
) -> Result<Json<PromoteResult>, ApiError> {
    // An operator promotion is planned work: the old PRIMARY (if any) is
    // demoted first, then the candidate promoted (docs/STATE_MACHINE.md).
    let ctx = operator(&caller, req.request_id.clone(), &(&name, &req));
    let replace = ReplaceRequest {
        group: name,
        candidate: req.instance_id,
        expected_epoch: req.expected_epoch,
        emergency: false,
        deadline_ms: None,
        reason: "operator promotion".into(),
        switch_id: None,
        promote_budget_ms: state.config.promote_budget_ms(),
        heard_since_ms: state.started_at_ms,
    };
    let done = state
        .db
        .idempotent("promote", ctx, move |tx| tx.begin_replace(&replace))
        .await;
    if done.is_err() {
        state
            .metrics
            .promotions
            .get_or_create(&crate::metrics::OutcomeLabel { outcome: "refused" })
            .inc();
    }
    let result = state.woke(done?);
    tracing::info!(group = %result.group, epoch = result.epoch, candidate = %result.promoted, phase = %result.phase, "promotion started");
    state.reconcile.notify_one();
    Ok(Json(result))
}

pub async fn switch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SwitchRequest>,
) -> Result<Json<SwitchView>, ApiError> {
    let ctx = operator(&caller, req.request_id.clone(), &(&name, &req));
    let sw = operator_change(&state, "switch", ctx, move |tx| {
        tx.request_switch(&name, &req.pool)
    })
    .await?;
    tracing::info!(group = %sw.group, switch = sw.id, pool = %sw.target_pool, "switch requested");
    Ok(Json(sw))
}

/// Cancel the group's switch in progress (refused once the replacement
/// has started); the PRIMARY stays.
pub async fn cancel_switch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<CancelSwitchRequest>,
) -> Result<Json<SwitchView>, ApiError> {
    let ctx = operator(&caller, req.request_id.clone(), &(&name, &req));
    let sw = operator_change(&state, "cancel_switch", ctx, move |tx| {
        tx.cancel_switch(&name)
    })
    .await?;
    tracing::warn!(group = %sw.group, switch = sw.id, "switch cancelled by an operator");
    Ok(Json(sw))
}

pub async fn data_volumes(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<spot_common::wire::DataVolumesView>, ApiError> {
    let now = crate::state::now_ms();
    let group = name.clone();
    let mut view = state.db.read(move |s| s.data_volumes(&group, now)).await?;
    view.fast_restore = state.fast_restores.get(&name);
    Ok(Json(view))
}

pub async fn list_switches(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<SwitchView>>, ApiError> {
    read_json(&state, move |s| {
        s.group(&name)?;
        s.switches(&name)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareQuery {
    /// The window, e.g. `7d` [default: 7d].
    since: Option<String>,
}

/// A/B: how the groups of each model fared over the window.
pub async fn compare_models(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<CompareQuery>,
) -> Result<Json<Vec<ModelStats>>, ApiError> {
    let window = match q.since.as_deref() {
        None => std::time::Duration::from_secs(7 * 86_400),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::bad_request(format!("since {s:?} is not a duration (7d, 12h): {e}"))
        })?,
    };
    let since = crate::state::now_ms() - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    read_json(&state, move |s| s.compare_models(since)).await
}

/// The decision log of a group, newest first.
pub async fn list_decisions(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(f): ApiQuery<DecisionFilter>,
) -> Result<Json<Vec<DecisionView>>, ApiError> {
    let limit = f.limit.unwrap_or(100).clamp(1, 1000);
    read_json(&state, move |s| {
        s.group(&name)?;
        s.decisions(&name, limit)
    })
    .await
}

pub async fn launch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<LaunchRequest>,
) -> Result<Json<QueuedCommand>, ApiError> {
    // The request id is also the launch command's (and so its ClientToken).
    let rid = req
        .request_id
        .clone()
        .unwrap_or_else(|| spot_common::ids::launch(&uuid::Uuid::new_v4().to_string()));
    let r = rid.clone();
    let ctx = operator(&caller, Some(rid), &(&name, &req));
    let done = state
        .db
        .idempotent("launch", ctx, move |tx| {
            let via = match req.agent_id.as_deref() {
                Some(a) => Via::Agent(a),
                None => Via::Auto,
            };
            tx.queue_launch(&r, &name, via, &req.pool, req.emergency)
        })
        .await?;
    let q = state.woke(done);
    tracing::info!(request_id = %q.command.request_id, agent_id = ?q.agent_id, "launch queued");
    Ok(Json(q))
}

/// Terminate ZOMBIE and FAILED instances in bulk, by ids or by filter
/// (`role`, `group`, `older_than`); `dry_run` lists what would be done.
pub async fn terminate_instances(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<BulkTerminateRequest>,
) -> Result<Json<BulkTerminateResponse>, ApiError> {
    if req.instance_ids.is_empty() {
        match req.role {
            Some(spot_common::Role::Zombie | spot_common::Role::Failed) => {}
            Some(r) => {
                return Err(ApiError::bad_request(format!(
                    "role {r}: only zombie and failed instances are terminated in bulk"
                )));
            }
            None => {
                return Err(ApiError::bad_request(
                    "name the instances (instance_ids) or filter them by role (zombie or failed)",
                ));
            }
        }
    } else if req.role.is_some() || req.older_than.is_some() || req.group.is_some() {
        return Err(ApiError::bad_request(
            "instance_ids or a filter (role, group, older_than), not both",
        ));
    }
    let older_than_ms = match &req.older_than {
        Some(t) => Some(
            humantime::parse_duration(t)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .map_err(|e| ApiError::bad_request(format!("older_than {t:?}: {e}")))?,
        ),
        None => None,
    };
    let sel = BulkSelection {
        ids: req.instance_ids.clone(),
        role: req.role,
        group: req.group.clone(),
        older_than_ms,
    };
    let (dry_run, executor) = (req.dry_run, state.config.ec2_executor);
    let ctx = operator(&caller, req.request_id.clone(), &req);
    let done = state
        .db
        .idempotent("bulk_terminate", ctx, move |tx| {
            tx.bulk_terminate(&sel, executor, dry_run)
        })
        .await?;
    let instances = state.woke(done);
    let n = instances.iter().filter(|i| i.action == "terminate").count();
    tracing::warn!(
        dry_run,
        terminating = n,
        looked_at = instances.len(),
        "bulk terminate"
    );
    Ok(Json(BulkTerminateResponse { dry_run, instances }))
}

pub async fn list_notices(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<GroupFilter>,
) -> Result<Json<Vec<NoticeView>>, ApiError> {
    read_json(&state, move |s| s.notices(f.group.as_deref())).await
}

pub async fn list_instances(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<GroupFilter>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    read_json(&state, move |s| s.instances(f.group.as_deref())).await
}

pub async fn get_instance(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<InstanceView>, ApiError> {
    read_json(&state, move |s| s.instance(&id)).await
}

pub async fn list_agents(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<GroupFilter>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    read_json(&state, move |s| s.agents(f.group.as_deref())).await
}

pub async fn get_agent(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    read_json(&state, move |s| s.agent(&id)).await
}

pub async fn delete_agent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteAgentRequest>,
) -> Result<Json<AgentView>, ApiError> {
    let agent = id.clone();
    let ctx = operator(&caller, q.request_id.clone(), &id);
    let done = state
        .db
        .idempotent("delete_agent", ctx, move |tx| tx.delete_agent(&agent))
        .await?;
    let view = state.woke(done);
    // The token keeps working only to fetch the cleanup command and report
    // its result; heartbeats answer `deleted`.
    state.live.mark_deleted(&id);
    tracing::info!(agent_id = %id, "agent deleted by operator");
    Ok(Json(view))
}

/// The agent is gone (reinstalled, its journal lost): its token stops
/// working and its instance may register again at once, not only once it
/// has been OFFLINE past its lease. Audited.
pub async fn reset_agent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ResetAgentRequest>,
) -> Result<Json<AgentView>, ApiError> {
    let agent = id.clone();
    let ctx = operator(&caller, req.request_id.clone(), &id);
    let done = state
        .db
        .idempotent("reset_agent", ctx, move |tx| tx.reset_agent(&agent))
        .await?;
    let view = state.woke(done);
    state.live.remove(&id);
    tracing::warn!(agent_id = %id, instance = %view.instance_id, "agent reset by an operator: its instance may register afresh");
    Ok(Json(view))
}

pub async fn list_commands(
    State(state): State<Arc<AppState>>,
    ApiQuery(f): ApiQuery<AgentFilter>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    read_json(&state, move |s| s.commands(f.agent_id.as_deref())).await
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    read_json(&state, move |s| s.audit_log(&q)).await
}
