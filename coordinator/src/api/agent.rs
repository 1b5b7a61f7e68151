//! Agent API v1 handlers. Every route authenticates (the `AgentCaller`
//! and `Enrolled` extractors) before it reads the body.

use super::{AgentCaller, ApiError, ApiJson, ApiQuery, Enrolled};
use crate::grants::Grant;
use crate::state::AppState;
use crate::store::{Ctx, HeartbeatRecord, Read, Reported, Request, RoleOf};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use spot_common::wire::{
    EventsRequest, EventsResponse, HeartbeatRequest, HeartbeatResponse, MAX_EVENTS_PER_BATCH,
    MAX_POLL_WAIT_MS, MAX_PRICE_POINTS, PollResponse, PricingRequest, PricingResponse,
    RegisterRequest, RegisterResponse,
};
use spot_common::{Actor, AgentStatus, Command, EventBody, NoticeKind, Role};
use std::collections::BTreeMap;
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
    enrolled: Enrolled,
    extensions: axum::http::Extensions,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    super::check_client_identity(&state, &extensions, &req.instance_id)?;
    // A group's enrollment token joins that group only.
    if let Some((token, group)) = enrolled.scope
        && group != req.group
    {
        let (instance, asked) = (req.instance_id.clone(), req.group.clone());
        let msg = format!(
            "enrollment token {token:?} registers agents in group {group:?} only, not {asked:?}"
        );
        let ctx = Ctx::system(crate::state::now_ms());
        state
            .db
            .transact(ctx, move |tx| {
                tx.enrollment_refused(&token, &group, &asked, &instance)
            })
            .await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "enrollment_group_mismatch",
            msg,
        ));
    }
    // The claimed id is audited if the identity check refuses it: bounded first.
    check_field("instance_id", &req.instance_id)?;
    let req = verified_identity(&state, req).await?;
    // What the signed document placed is checked like the rest.
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
    let instance_id = req.instance_id.clone();
    let token = crate::state::random_token();
    let (hb, lease) = (
        crate::state::millis(state.config.heartbeat_interval),
        crate::state::millis(state.config.lease),
    );
    // One live agent per instance: a second registration while the first
    // is ONLINE or within its lease is refused (a retry of the same
    // registration, by its request_id, still gets its first answer).
    let holder = state
        .live
        .live_agent_of(&req.instance_id, state.clock.now(), state.config.lease);
    let ctx = Ctx::new(crate::state::now_ms(), Actor::Agent(agent_id.clone()))
        .request(req.request_id.clone());
    let refused = holder.clone().map(|h| (req.instance_id.clone(), h));
    // Shares its commit with the other registrations waiting.
    let work = move |tx: &mut crate::store::Txn<'_>| {
        if let Some(holder) = &holder {
            return Err(crate::store::StoreError::Refused {
                code: "instance_registered",
                message: format!(
                    "instance {} has a live agent ({holder}): it may register again once that \
                         agent is OFFLINE past its lease, or after `spotctl agent reset {holder}`",
                    req.instance_id
                ),
            });
        }
        tx.register_agent(&req, &agent_id, &token, hb, lease)
    };
    let request = Request {
        ctx,
        scope: Some("register"),
        work: Box::new(work),
    };
    let done = state.registrations.submit(&state.db, request).await;
    let done = match (done, refused) {
        (Err(e @ crate::store::StoreError::Refused { .. }), Some((instance, holder))) => {
            // Audited in a transaction of its own: the refused one rolled back.
            let ctx = Ctx::system(crate::state::now_ms());
            state
                .db
                .transact(ctx, move |tx| tx.registration_refused(&instance, &holder))
                .await?;
            return Err(e.into());
        }
        (done, _) => done?,
    };
    let reg = state.woke(done);
    for old in &reg.replaced {
        state.live.remove(old);
    }
    let resp = reg.response;
    state.live.insert(
        &resp.agent_id,
        spot_common::token_hash(&resp.token),
        &instance_id,
        state.clock.now(),
    );
    tracing::info!(agent_id = %resp.agent_id, "agent registered");
    Ok((StatusCode::CREATED, Json(resp)))
}

/// The registration as its signed identity document says (`identity =
/// "verify"`): the instance id must be the document's, and the type, zone
/// and region are taken from it. A refusal is audited and answered 403
/// with its code (`identity_required`, `identity_invalid`,
/// `identity_mismatch`, `account_not_allowed`).
async fn verified_identity(
    state: &AppState,
    mut req: RegisterRequest,
) -> Result<RegisterRequest, ApiError> {
    let refused = match state.identity.check(req.identity.as_ref()) {
        Ok(None) => return Ok(req),
        Ok(Some(doc)) if doc.instance_id == req.instance_id => {
            if (&req.instance_type, &req.availability_zone, &req.region)
                != (&doc.instance_type, &doc.availability_zone, &doc.region)
            {
                tracing::warn!(instance = %doc.instance_id, claimed_type = %req.instance_type,
                    claimed_zone = %req.availability_zone,
                    "a registration's placement differs from its signed identity document: the document wins");
            }
            req.instance_type = doc.instance_type;
            req.availability_zone = doc.availability_zone;
            req.region = doc.region;
            return Ok(req);
        }
        Ok(Some(doc)) => crate::identity::Refusal {
            code: "identity_mismatch",
            message: format!(
                "the signed identity document is instance {}'s, not {}'s",
                doc.instance_id, req.instance_id
            ),
        },
        Err(r) => r,
    };
    tracing::warn!(instance = %req.instance_id, code = refused.code, reason = %refused.message,
        "registration refused: identity");
    let (claimed, code, reason) = (req.instance_id, refused.code, refused.message.clone());
    state
        .db
        .transact(Ctx::system(crate::state::now_ms()), move |tx| {
            tx.identity_refused(&claimed, code, &reason)
        })
        .await?;
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        refused.code,
        refused.message,
    ))
}

pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let agent_id = caller.agent_id;
    if state.live.instance_of(&agent_id).as_deref() != Some(req.instance_id.as_str()) {
        return Err(ApiError::instance_mismatch(&agent_id, &req.instance_id));
    }
    state.metrics.heartbeats.inc();
    let now = crate::state::now_ms();
    let needs_store = state.live.heartbeat(
        HeartbeatRecord {
            agent_id: agent_id.clone(),
            at_ms: now,
            reported_role: req.role,
            highest_epoch: req.highest_epoch,
            healthy: req.healthy,
            backlog: req.backlog,
        },
        req.role_epoch,
        state.clock.now(),
    );
    if needs_store {
        // Shares its commit with the other first beats waiting.
        let id = agent_id.clone();
        let request = Request {
            ctx: Ctx::new(now, Actor::Agent(agent_id.clone())),
            scope: None,
            work: Box::new(move |tx| tx.agent_healthy(&id)),
        };
        let (role, _) = state.first_beats.submit(&state.db, request).await?.value;
        if role != Role::Launching {
            state.live.mark_settled(&agent_id);
        }
        // A new healthy replica may be the candidate a failover waits for.
        state.reconcile.notify_one();
    }
    // The answer without the store while no role changed since it was read.
    // (The instance is the agent's: checked against liveness above.)
    let stamp = state.db.roles_stamp(&req.instance_id);
    let mut r = match state.roles.get(&agent_id, stamp) {
        Some(r) => r,
        None => {
            let id = agent_id.clone();
            let r = state.db.read(move |s| s.agent_role(&id)).await?;
            state.roles.put(&agent_id, stamp, r.clone());
            r
        }
    };
    // A PRIMARY claim at the group's epoch that the store does not answer
    // as PRIMARY: after a restore, another agent's report may have raised
    // the epoch first; the claim still wins (converge decides), if it
    // shows the grant this coordinator signed for it.
    let unknown_claim = req.role == Some(Role::Primary)
        && req.role_epoch == req.highest_epoch
        && req.role_epoch >= r.epoch
        && r.answer().0 != Role::Primary;
    // The grant of the command that raised the agent's highest epoch: a
    // store behind the agent converges only to an epoch it signed (checked
    // only then: not on every heartbeat).
    let behind = req.highest_epoch > r.epoch;
    let proof = if behind || unknown_claim {
        state
            .grant_keys
            .verify(
                req.grant.as_deref(),
                &r.group,
                req.highest_epoch,
                &r.instance_id,
            )
            .map(|_| ())
    } else {
        Ok(())
    };
    // A report refused once is not audited again at every heartbeat.
    let refusal = proof.is_err();
    let first_refusal = refusal && state.live.refuse_claim(&agent_id, req.highest_epoch);
    if first_refusal {
        state.metrics.claims_refused.inc();
    }
    if (behind || unknown_claim) && (!refusal || first_refusal) {
        // The store is behind an agent: restored from an older copy.
        let reported = Reported {
            role: req.role,
            role_epoch: req.role_epoch,
            highest_epoch: req.highest_epoch,
            proof,
        };
        let instance = r.instance_id.clone();
        let ctx = Ctx::new(now, Actor::Agent(agent_id.clone()));
        let done = state
            .db
            .transact(ctx, move |tx| tx.converge_epoch(&instance, reported))
            .await?;
        if state.woke(done) {
            state.metrics.convergences.inc();
            state.reconcile.notify_one();
        }
        let id = agent_id.clone();
        r = state.db.read(move |s| s.agent_role(&id)).await?;
    }
    let (role, role_epoch) = r.answer();
    let agrees = role == Role::Primary && req.role_epoch == role_epoch;
    let kind = if req.role == Some(Role::Primary) && !agrees {
        Some("agent_primary_not_in_store")
    } else if r.role == Role::Primary
        && req.role != Some(Role::Primary)
        && req.role_epoch >= r.role_epoch
    {
        Some("store_primary_not_serving")
    } else {
        None
    };
    if state.live.disagreement(&agent_id, kind)
        && let Some(kind) = kind
    {
        record_disagreement(&state, &agent_id, &r, &req, kind).await?;
    }
    // The lease goes to the store's PRIMARY at its epoch only.
    let lease_ms = if req.role == Some(Role::Primary) && agrees {
        crate::state::millis(state.config.lease)
    } else {
        0
    };
    Ok(Json(HeartbeatResponse {
        status: state.live.status(&agent_id).unwrap_or(AgentStatus::Online),
        role,
        role_epoch,
        epoch: r.epoch,
        lease_ms,
        heartbeat_interval_ms: crate::state::millis(state.config.heartbeat_interval),
        pricing: r.pricing,
        report_ec2_view: state.ec2_view_wanted.wanted(&r.group),
    }))
}

/// Count, log and audit a disagreement (once per kind, see `Live`); the
/// planner resolves it (an agent not serving is replaced; a PRIMARY the
/// store does not know demotes itself on this very answer).
async fn record_disagreement(
    state: &AppState,
    agent_id: &str,
    r: &RoleOf,
    req: &HeartbeatRequest,
    kind: &'static str,
) -> Result<(), ApiError> {
    state
        .metrics
        .disagreements
        .get_or_create(&crate::metrics::KindLabel { kind })
        .inc();
    tracing::warn!(agent_id, instance = %r.instance_id, kind, store_role = %r.role, store_epoch = r.role_epoch,
        reported_role = ?req.role, reported_epoch = req.role_epoch, "agent and store disagree");
    let detail = serde_json::json!({
        "store": {"role": r.role, "role_epoch": r.role_epoch},
        "agent": {"role": req.role, "role_epoch": req.role_epoch},
    });
    let instance = r.instance_id.clone();
    let ctx = Ctx::new(crate::state::now_ms(), Actor::Agent(agent_id.to_owned()));
    state
        .db
        .transact(ctx, move |tx| {
            tx.record_disagreement(&instance, kind, detail)
        })
        .await?;
    state.reconcile.notify_one();
    Ok(())
}

/// Spot prices as the agent read them from DescribeSpotPriceHistory.
pub async fn pricing(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    ApiJson(req): ApiJson<PricingRequest>,
) -> Result<Json<PricingResponse>, ApiError> {
    if req.points.len() > MAX_PRICE_POINTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_PRICE_POINTS} points per batch"
        )));
    }
    let agent_id = caller.agent_id;
    let ctx = Ctx::new(crate::state::now_ms(), Actor::Agent(agent_id.clone()));
    let (accepted, duplicates) = state
        .db
        .transact(ctx, move |tx| tx.ingest_prices(&agent_id, &req.points))
        .await?
        .value;
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
    /// The caller's instance: a mismatch (two instances sharing one
    /// identity) is refused.
    instance_id: Option<String>,
}

/// Long-poll: answers at once when a command is queued (highest priority
/// first), else when one is queued during the wait, else empty at the end.
pub async fn poll_commands(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> Result<Json<PollResponse>, ApiError> {
    let AgentCaller { agent_id, notify } = caller;
    if let Some(i) = &q.instance_id
        && state.live.instance_of(&agent_id).as_deref() != Some(i.as_str())
    {
        return Err(ApiError::instance_mismatch(&agent_id, i));
    }
    let wait = Duration::from_millis(q.wait_ms.min(MAX_POLL_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let redeliver =
        i64::try_from(crate::state::millis(state.config.redeliver_after)).unwrap_or(i64::MAX);
    loop {
        // Register interest before looking, so a command queued between the
        // look and the wait still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = crate::state::now_ms();
        let id = agent_id.clone();
        let pending = state
            .db
            .read(move |s| s.has_pending_commands(&id, now, redeliver))
            .await?;
        if pending {
            let id = agent_id.clone();
            let ctx = Ctx::new(now, Actor::Agent(agent_id.clone()));
            let commands = state
                .db
                .transact(ctx, move |tx| tx.take_commands(Some(&id), redeliver, 50))
                .await?
                .value;
            if !commands.is_empty() {
                let mut answer = PollResponse::new(commands, crate::state::now_ms());
                answer.grants = sign_grants(&state, &agent_id, &answer.commands, now);
                return Ok(Json(answer));
            }
        }
        if state.live.status(&agent_id).is_none() {
            return Err(ApiError::unauthorized());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(PollResponse::new(Vec::new(), crate::state::now_ms())));
            }
            _ = state.shutdown.cancelled() => {
                return Ok(Json(PollResponse::new(Vec::new(), crate::state::now_ms())));
            }
        }
    }
}

/// The grant of each role change among `commands`: what the agent shows
/// in its heartbeats for the highest epoch it holds, so that a store that
/// is behind it recognises the epoch as its own.
fn sign_grants(
    state: &AppState,
    agent_id: &str,
    commands: &[Command],
    now_ms: i64,
) -> BTreeMap<String, String> {
    let Some(instance) = state.live.instance_of(agent_id) else {
        return BTreeMap::new();
    };
    commands
        .iter()
        .filter(|c| c.action.is_role_change())
        .map(|c| {
            let grant = state.grant_keys.sign(&Grant {
                group: &c.group,
                epoch: c.epoch,
                instance: &instance,
                issued_ms: now_ms,
            });
            (c.request_id.clone(), grant)
        })
        .collect()
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    ApiJson(req): ApiJson<EventsRequest>,
) -> Result<Json<EventsResponse>, ApiError> {
    let agent_id = caller.agent_id;
    if req.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_EVENTS_PER_BATCH} events per batch"
        )));
    }
    let cleanup_id = spot_common::ids::cleanup(&agent_id);
    let cleaned_up = req.events.iter().any(|e| {
        matches!(&e.body, EventBody::CommandResult { request_id, .. } if *request_id == cleanup_id)
    });
    // A rebalance recommendation or scheduled maintenance is news for the
    // decision engine (a REPLICA may be worth creating).
    let risk_news = req.events.iter().any(|e| {
        matches!(
            &e.body,
            EventBody::Notice {
                notice: NoticeKind::Rebalance | NoticeKind::ScheduledMaintenance,
                ..
            }
        )
    });
    let resp = {
        let agent_id = agent_id.clone();
        let ctx = Ctx::new(crate::state::now_ms(), Actor::Agent(agent_id.clone()));
        let done = state
            .db
            .transact(ctx, move |tx| tx.apply_events(&agent_id, &req.events))
            .await?;
        state.woke(done)
    };
    if resp.applied > 0 {
        state.reconcile.notify_one();
        if risk_news {
            state.decide.notify_one();
        }
    }
    if cleaned_up && state.live.status(&agent_id) == Some(AgentStatus::Deleted) {
        // The deleted agent has done its cleanup: its token dies now.
        state.live.remove(&agent_id);
    }
    use crate::metrics::{EventLabels, EventResult};
    for (result, n) in [
        (EventResult::Applied, resp.applied),
        (EventResult::Duplicate, resp.duplicates),
    ] {
        state
            .metrics
            .events
            .get_or_create(&EventLabels { result })
            .inc_by(n as u64);
    }
    Ok(Json(resp))
}
