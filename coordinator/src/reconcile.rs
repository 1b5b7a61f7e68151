//! The reconciler: for each group, take a snapshot from the store, ask
//! `spot_common::planner::plan` what to do, apply it. Runs on every
//! relevant event (a notice, a command result, a replica turning healthy)
//! and every 500 ms as a backstop. Every step is one epoch-fenced store
//! transaction: if the world moved in between, the step is refused (stale
//! epoch) and the next pass decides again. The transition state is in the
//! store, so a restarted coordinator resumes a promotion where it stopped.

use crate::AppState;
use crate::store::{Ctx, Read, ReplaceRequest, StoreError};
use spot_common::ids;
use spot_common::planner::{PlanConfig, Step, plan};
use std::sync::Arc;
use std::time::Duration;

/// A launch whose instance has not registered healthy after this is no
/// longer waited for.
const LAUNCH_TIMEOUT_MS: i64 = 5 * 60 * 1000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.reconcile.notified() => {}
            _ = state.shutdown.cancelled() => return Ok(()),
        }
        if let Err(e) = pass(&state).await {
            tracing::warn!(error = %crate::error_chain(&e), "reconcile pass failed; retrying");
        }
    }
}

async fn pass(state: &AppState) -> Result<(), StoreError> {
    let cfg = PlanConfig {
        rebalance_window_ms: ms(state.config.rebalance_window),
        lease_expiry_ms: ms(state.config.lease_expiry()),
        promotion_timeout_ms: ms(state.config.promotion_timeout),
        // An interruption takes effect at its time; 10 s later a silent
        // instance is gone.
        notice_grace_ms: 10_000,
    };
    let groups = state.db.read(|s| s.group_names()).await?;
    for group in groups {
        let online = state.live.online();
        let now = crate::now_ms();
        let g = group.clone();
        let snap = state
            .db
            .read(move |s| s.group_snapshot(&g, &online, now, LAUNCH_TIMEOUT_MS))
            .await?;
        let decided = plan(&snap, now, &cfg);
        for step in decided.steps {
            apply(state, &group, decided.rule, step).await;
        }
    }
    Ok(())
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
    let ctx = Ctx::system(crate::now_ms());
    let result = match step.clone() {
        Step::Replace {
            candidate,
            expected_epoch,
            emergency,
            old_fenced,
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
                old_fenced,
                deadline_ms,
                reason: reason.to_owned(),
                switch_id,
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
                tracing::warn!(%group, primary = %d.value, "new PRIMARY confirmed");
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
                tracing::warn!(%group, reason, "promotion rolled over to the next candidate");
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
        Step::Launch {
            via_agent,
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
                    let q = tx.queue_launch(&r, &g, Some(&via_agent), &pool, emergency)?;
                    if let Some(id) = switch_id {
                        tx.switch_launch_queued(id, &r)?;
                    }
                    Ok(q)
                })
                .await
                .map(|d| {
                    let q = &d.value;
                    tracing::warn!(%group, via = %q.agent_id, request_id = %q.command.request_id, emergency, reason, "launch queued");
                    d.wake
                })
        }
        Step::Retire {
            instance_id,
            via_agent,
        } => state
            .db
            .transact(ctx, move |tx| tx.retire(&g, &instance_id, &via_agent))
            .await
            .map(|d| d.wake),
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
        Ok(wake) => wake.iter().for_each(|a| state.live.wake(a)),
        // Another decision got there first; the next pass decides again.
        Err(e) => tracing::info!(%group, rule, ?step, error = %e, "step not applied"),
    }
}
