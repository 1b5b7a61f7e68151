//! The reconciler: for each group, take a snapshot from the store, ask
//! `spot_common::failover::plan` what to do, apply it. Runs on every
//! relevant event (a notice, a command result, a replica turning healthy)
//! and every 500 ms as a backstop. Every action is one epoch-fenced store
//! transaction: if the world moved in between, the action is refused
//! (stale epoch) and the next pass decides again. The transition state is
//! in the store, so a restarted coordinator resumes a promotion where it
//! stopped.

use crate::AppState;
use crate::store::StoreError;
use spot_common::Actor;
use spot_common::failover::{Action, PlanConfig, plan};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A launch whose instance has not registered healthy after this is no
/// longer waited for.
const LAUNCH_TIMEOUT_MS: i64 = 5 * 60 * 1000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.reconcile.notified() => {}
            _ = stop.changed() => return,
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
        for action in plan(&snap, now, &cfg) {
            apply(state, &group, action).await;
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

async fn apply(state: &AppState, group: &str, action: Action) {
    let now = crate::now_ms();
    let g = group.to_owned();
    let sys = Actor::System;
    let result: Result<Vec<String>, StoreError> = match action.clone() {
        Action::Replace { candidate, expected_epoch, emergency, old_fenced, deadline_ms, switch_id, reason, .. } => state
            .db
            .write(move |s| {
                s.begin_replace(None, &g, &candidate, expected_epoch, emergency, old_fenced, deadline_ms, reason, switch_id, &sys, now)
            })
            .await
            .map(|r| {
                tracing::warn!(%group, candidate = %r.promoted, old = ?r.demoted, epoch = r.epoch, phase = %r.phase, reason, "replacing the PRIMARY");
                r.commands
            }),
        Action::Grant { expected_epoch, reason } => state
            .db
            .write(move |s| s.grant(&g, expected_epoch, &sys, now))
            .await
            .inspect(|_| tracing::warn!(%group, reason, "promotion granted")),
        Action::Commit { expected_epoch } => state
            .db
            .write(move |s| s.commit_promotion(&g, expected_epoch, &sys, now))
            .await
            .map(|(primary, cmds)| {
                outcome(state, "committed");
                tracing::warn!(%group, %primary, "new PRIMARY confirmed");
                cmds
            }),
        Action::RollOver { expected_epoch, reason } => state
            .db
            .write(move |s| s.roll_over(&g, expected_epoch, reason, &sys, now))
            .await
            .inspect(|_| {
                outcome(state, "rolled_over");
                tracing::warn!(%group, reason, "promotion rolled over to the next candidate");
            }),
        Action::Retarget { expected_epoch, candidate } => state
            .db
            .write(move |s| s.retarget(&g, expected_epoch, &candidate, &sys, now))
            .await
            .map(|()| Vec::new()),
        Action::Launch { via_agent, pool, emergency, request_id, reason } => {
            let rid = request_id.clone().unwrap_or_else(|| format!("launch-{}", uuid::Uuid::new_v4()));
            let switch = request_id.as_deref().and_then(|r| r.strip_prefix("switch-")).and_then(|r| r.strip_suffix("-launch")).and_then(|id| id.parse::<i64>().ok());
            state
                .db
                .write(move |s| {
                    let q = s.queue_launch(&rid, &g, Some(&via_agent), &pool, emergency, &sys, now)?;
                    if let Some(id) = switch {
                        s.switch_launch_queued(id, &rid)?;
                    }
                    Ok(q)
                })
                .await
                .map(|q| {
                    tracing::warn!(%group, via = %q.agent_id, request_id = %q.command.request_id, emergency, reason, "launch queued");
                    vec![q.command.request_id]
                })
        }
        Action::Retire { instance_id, via_agent } => state
            .db
            .write(move |s| s.retire(&g, &instance_id, &via_agent, &sys, now))
            .await
            .map(|rid| vec![rid]),
        Action::LaunchFailed { instance_id } => state
            .db
            .write(move |s| s.launch_failed(&instance_id, &sys, now))
            .await
            .map(|()| {
                tracing::warn!(%group, "a launched instance never registered: marked FAILED");
                Vec::new()
            }),
        Action::Gone { instance_id, reason } => state
            .db
            .write(move |s| s.mark_gone(&instance_id, reason, &sys, now))
            .await
            .map(|()| {
                tracing::warn!(%group, reason, "instance marked terminated");
                Vec::new()
            }),
    };
    match result {
        Ok(cmds) => state.wake_commands(cmds).await,
        // Another decision got there first; the next pass decides again.
        Err(e) => tracing::info!(%group, ?action, error = %e, "action not applied"),
    }
}
