//! The reconciler: for each group, take a snapshot from the store, ask
//! `spot_common::planner::plan` what to do, apply it. Runs on every
//! relevant event (a notice, a command result, a replica turning healthy)
//! and every 500 ms as a backstop. Every step is one epoch-fenced store
//! transaction: if the world moved in between, the step is refused (stale
//! epoch) and the next pass decides again. The transition state is in the
//! store, so a restarted coordinator resumes a promotion where it stopped.
//!
//! Timers (silence, a transition's phase) run on the coordinator's
//! monotonic clock with its stalls discounted. After a start, nothing that
//! replaces a PRIMARY happens until every live agent has had the time to
//! report (`settle`): the store may be older than the agents' reality (a
//! restore), and their reports converge it first.

use super::Schedule;
use crate::state::AppState;
use crate::store::{Ctx, Read, ReplaceRequest, SnapshotInput, StoreError, Via};
use spot_common::Phase;
use spot_common::ids;
use spot_common::planner::{PlanConfig, Step, plan};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A launch whose instance has not registered healthy after this is no
/// longer waited for.
const LAUNCH_TIMEOUT_MS: i64 = 5 * 60 * 1000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When each group's current transition phase was first seen.
#[derive(Default)]
struct Timers {
    phases: HashMap<String, (u64, Phase, Instant)>,
    blocked: HashMap<String, String>,
}

impl Timers {
    /// Age of `group`'s phase on the monotonic clock (from when this
    /// coordinator first saw it: a restart restarts the timers, which only
    /// ever waits longer).
    fn age(&mut self, group: &str, epoch: u64, phase: Phase, now: Instant) -> i64 {
        let e = self
            .phases
            .entry(group.to_owned())
            .or_insert((epoch, phase, now));
        if (e.0, e.1) != (epoch, phase) {
            *e = (epoch, phase, now);
        }
        ms(now.saturating_duration_since(e.2))
    }
}

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let mut schedule = Schedule::every(Duration::from_millis(500), &state).or_on(&state.reconcile);
    let started = state.clock.now();
    let settle = state.config.heartbeat_interval * 2 + Duration::from_secs(1);
    let mut timers = Timers::default();
    renew_promotes(&state).await;
    while schedule.next().await {
        let settled = state.clock.now().saturating_duration_since(started) >= settle;
        if let Err(e) = pass(&state, &mut timers, settled).await {
            tracing::warn!(error = %spot_common::error_chain(&e), "reconcile pass failed; retrying");
        }
    }
    Ok(())
}

/// The timers start again with the term: so does the window of every
/// promote no candidate has fetched yet (`Txn::renew_undelivered_promotes`).
async fn renew_promotes(state: &AppState) {
    let ctx = Ctx::system(crate::state::now_ms());
    match state
        .db
        .transact(ctx, |tx| tx.renew_undelivered_promotes())
        .await
    {
        Ok(done) => {
            let renewed = state.woke(done);
            if !renewed.is_empty() {
                tracing::warn!(groups = ?renewed, "a promote granted before this term was never fetched: its window starts again now");
            }
        }
        Err(e) => {
            tracing::warn!(error = %spot_common::error_chain(&e), "renewing the promotes granted before this term; their deadlines stand")
        }
    }
}

fn plan_config(state: &AppState) -> PlanConfig {
    PlanConfig {
        rebalance_window_ms: ms(state.config.rebalance_window),
        maintenance_lead_ms: ms(state.config.maintenance_lead),
        lease_expiry_ms: ms(state.config.lease_expiry()),
        promotion_timeout_ms: ms(state.config.promotion_timeout),
        demote_timeout_ms: ms(state.config.demote_timeout),
        max_fence_attempts: 3,
        // An interruption takes effect at its time; 10 s later a silent
        // instance is gone.
        notice_grace_ms: 10_000,
        // Launch, boot, register healthy; then a minute of slack.
        switch_timeout_ms: LAUNCH_TIMEOUT_MS + 60_000,
    }
}

async fn pass(state: &AppState, timers: &mut Timers, settled: bool) -> Result<(), StoreError> {
    let cfg = plan_config(state);
    let groups = state.db.read(|s| s.group_names()).await?;
    for group in groups {
        let now = state.clock.now();
        let input = SnapshotInput {
            agents: state.live.view(now),
            now_ms: crate::state::now_ms(),
            launch_timeout_ms: LAUNCH_TIMEOUT_MS,
            coordinator_executor: state.config.ec2_executor,
        };
        let g = group.clone();
        let mut snap = state.db.read(move |s| s.group_snapshot(&g, &input)).await?;
        if let Some(t) = snap.transition.as_mut() {
            t.phase_age_ms = timers.age(&group, t.epoch, t.phase, now);
        } else {
            timers.phases.remove(&group);
        }
        state.ec2_view_wanted.set(
            &group,
            snap.transition.as_ref().is_some_and(|t| t.ec2_view_pending),
        );
        if state.config.unsafe_silence_is_death {
            silence_is_death(state, &snap, &cfg).await;
        }
        let decided = plan(&snap, crate::state::now_ms(), &cfg);
        match (&decided.blocked, timers.blocked.get(&group)) {
            (Some(why), prev) if prev != Some(why) => {
                tracing::error!(%group, reason = %why, "group blocked: fencing is impossible; an operator must declare the instance dead");
                timers.blocked.insert(group.clone(), why.clone());
            }
            (None, Some(_)) => {
                tracing::info!(%group, "group no longer blocked");
                timers.blocked.remove(&group);
            }
            _ => {}
        }
        for step in decided.steps {
            if state.config.unsafe_silence_is_death && matches!(step, Step::Fence { .. }) {
                continue;
            }
            if !settled && replaces(&step) {
                tracing::debug!(%group, ?step, "settling after start: agents report first");
                continue;
            }
            apply(state, &group, decided.rule, step).await;
        }
    }
    state
        .metrics
        .groups_blocked
        .set(i64::try_from(timers.blocked.len()).unwrap_or(i64::MAX));
    Ok(())
}

/// Test builds only: the fence this project exists for, switched off.
/// Every fence target silent past its lease is declared dead, as the clock
/// used to decide, and no EC2 fence is sent: the checker must then see two
/// PRIMARIES serving.
async fn silence_is_death(
    state: &AppState,
    snap: &spot_common::planner::GroupSnap,
    cfg: &PlanConfig,
) {
    let Some(t) = &snap.transition else { return };
    for target in t.targets.iter().filter(|x| !x.fenced) {
        let silent = snap
            .instance(&target.instance_id)
            .is_none_or(|i| i.silent_ms.is_none_or(|s| s > cfg.lease_expiry_ms));
        if silent {
            let (g, i) = (snap.name.clone(), target.instance_id.clone());
            let r = state
                .db
                .transact(Ctx::system(crate::state::now_ms()), move |tx| {
                    tx.declare_dead(&g, &i, None, 0, true)
                })
                .await;
            tracing::error!(instance = %target.instance_id, ok = r.is_ok(), "UNSAFE (test build): silence taken for death, no fence");
        }
    }
}

/// Steps that take serving away from someone: not before agents reported.
fn replaces(step: &Step) -> bool {
    matches!(
        step,
        Step::Replace { .. } | Step::Grant { .. } | Step::Fence { .. } | Step::RollOver { .. }
    )
}

fn outcome(state: &AppState, outcome: &'static str) {
    state
        .metrics
        .promotions
        .get_or_create(&crate::metrics::OutcomeLabel { outcome })
        .inc();
}

/// Apply one step as one transaction; a refusal is logged and left to the
/// next pass.
async fn apply(state: &AppState, group: &str, rule: &'static str, step: Step) {
    let g = group.to_owned();
    let ctx = Ctx::system(crate::state::now_ms());
    let result = match step.clone() {
        Step::Replace {
            candidate,
            expected_epoch,
            emergency,
            deadline_ms,
            switch_id,
            reason,
            ..
        } => {
            let req = ReplaceRequest {
                group: g,
                candidate,
                expected_epoch,
                emergency,
                deadline_ms,
                reason: reason.to_owned(),
                switch_id,
                promote_budget_ms: state.config.promote_budget_ms(),
                heard_since_ms: state.started_at_ms,
            };
            state
                .db
                .transact(ctx, move |tx| tx.begin_replace(&req))
                .await
                .map(|d| {
                    let r = &d.value;
                    tracing::warn!(%group, candidate = %r.promoted, old = ?r.demoted, epoch = r.epoch, phase = %r.phase, reason, "replacing the PRIMARY");
                    d.wake
                })
        }
        Step::Grant {
            expected_epoch,
            reason,
        } => state
            .db
            .transact(ctx, move |tx| tx.grant(&g, expected_epoch))
            .await
            .map(|d| {
                tracing::warn!(%group, reason, "promotion granted");
                d.wake
            }),
        Step::Commit { expected_epoch } => state
            .db
            .transact(ctx, move |tx| tx.commit_promotion(&g, expected_epoch))
            .await
            .map(|d| {
                outcome(state, "committed");
                state.metrics.record_commit(d.value.emergency, d.value.duration_ms);
                if let Some(ms) = d.value.switch_downtime_ms {
                    state.metrics.switch_downtime.observe(ms as f64 / 1000.0);
                }
                tracing::warn!(%group, primary = %d.value.primary, "new PRIMARY confirmed");
                d.wake
            }),
        Step::RollOver {
            expected_epoch,
            reason,
        } => state
            .db
            .transact(ctx, move |tx| tx.roll_over(&g, expected_epoch, reason))
            .await
            .map(|d| {
                outcome(state, "rolled_over");
                tracing::warn!(%group, reason, "promotion rolled over: the candidate is fenced, the next one waits for it");
                d.wake
            }),
        Step::Retarget {
            expected_epoch,
            candidate,
        } => state
            .db
            .transact(ctx, move |tx| tx.retarget(&g, expected_epoch, &candidate))
            .await
            .map(|d| d.wake),
        Step::Fence {
            expected_epoch,
            instance_id,
            epoch,
            attempt,
            via,
            reason,
        } => {
            let timeout = ms(state.config.fence_timeout);
            let target = instance_id.clone();
            state
                .db
                .transact(ctx, move |tx| {
                    tx.queue_fence(&g, expected_epoch, &target, epoch, attempt, Via::of(&via).agent(), timeout)
                })
                .await
                .map(|d| {
                    state
                        .metrics
                        .fences
                        .get_or_create(&crate::metrics::OutcomeLabel { outcome: "queued" })
                        .inc();
                    tracing::warn!(%group, instance = %instance_id, attempt, reason, "fencing through EC2 (terminate, wait for terminated)");
                    d.wake
                })
        }
        Step::Launch {
            via,
            pool,
            emergency,
            switch_id,
            reason,
        } => {
            let rid = match switch_id {
                Some(id) => ids::switch_launch(id),
                None => ids::launch(&uuid::Uuid::new_v4().to_string()),
            };
            let r = rid.clone();
            state
                .db
                .idempotent("launch", ctx.request(Some(rid)), move |tx| {
                    let q = tx.queue_launch(&r, &g, Via::of(&via), &pool, emergency)?;
                    if let Some(id) = switch_id {
                        tx.switch_launch_queued(id, &r)?;
                    }
                    Ok(q)
                })
                .await
                .map(|d| {
                    let q = &d.value;
                    tracing::warn!(%group, via = ?q.agent_id, request_id = %q.command.request_id, emergency, reason, "launch queued");
                    d.wake
                })
        }
        Step::Retire { instance_id, via } => state
            .db
            .transact(ctx, move |tx| tx.retire(&g, &instance_id, Via::of(&via).agent()))
            .await
            .map(|d| d.wake),
        Step::Terminate { instance_id, via } => state
            .db
            .transact(ctx, move |tx| {
                tx.terminate_again(&g, &instance_id, Via::of(&via).agent())
            })
            .await
            .map(|d| {
                tracing::warn!(%group, "terminating again an instance EC2 still runs");
                d.wake
            }),
        Step::SwitchFailed { switch_id, reason } => state
            .db
            .transact(ctx, move |tx| tx.fail_switch(&g, switch_id, reason))
            .await
            .map(|d| {
                tracing::warn!(%group, switch_id, reason, "manual switch failed; the PRIMARY stays");
                d.wake
            }),
        Step::LaunchFailed { instance_id } => state
            .db
            .transact(ctx, move |tx| tx.launch_failed(&instance_id))
            .await
            .map(|d| {
                tracing::warn!(%group, "a launched instance never registered: marked FAILED");
                d.wake
            }),
        Step::Gone {
            instance_id,
            reason,
        } => state
            .db
            .transact(ctx, move |tx| tx.mark_gone(&instance_id, reason))
            .await
            .map(|d| {
                tracing::warn!(%group, reason, "instance marked terminated");
                d.wake
            }),
    };
    match result {
        Ok(wake) => {
            state.woke(crate::store::Done { value: (), wake });
        }
        // Another decision got there first; the next pass decides again.
        Err(e) => tracing::info!(%group, rule, ?step, error = %e, "step not applied"),
    }
}
