//! The reconciler: for each group, take a snapshot from the store, ask
//! `spot_common::failover::plan` what to do, apply it. Runs on every
//! relevant event (a notice, a command result, a replica turning healthy)
//! and every 500 ms as a backstop. Every action is one epoch-fenced store
//! transaction: if the world moved in between, the action is refused
//! (stale epoch) and the next pass decides again.

use crate::AppState;
use spot_common::failover::{Action, plan};
use spot_common::{Actor, PRIORITY_EMERGENCY, PRIORITY_NORMAL};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A launch whose instance has not registered healthy after this is no
/// longer waited for.
const LAUNCH_TIMEOUT_MS: i64 = 5 * 60 * 1000;

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

async fn pass(state: &AppState) -> Result<(), crate::store::StoreError> {
    let groups = state.db.read(|s| s.group_names()).await?;
    for group in groups {
        let online = state.live.online();
        let now = crate::now_ms();
        let g = group.clone();
        let snap = state
            .db
            .read(move |s| s.group_snapshot(&g, &online, now, LAUNCH_TIMEOUT_MS))
            .await?;
        if snap.paused {
            continue;
        }
        let window = i64::try_from(state.config.rebalance_window.as_millis()).unwrap_or(i64::MAX);
        for action in plan(&snap, now, window) {
            apply(state, &group, action).await;
        }
    }
    Ok(())
}

async fn apply(state: &AppState, group: &str, action: Action) {
    let now = crate::now_ms();
    let g = group.to_owned();
    match action {
        Action::Promote {
            instance_id,
            expected_epoch,
            emergency,
            deadline_ms,
            reason,
        } => {
            let priority = if emergency {
                PRIORITY_EMERGENCY
            } else {
                PRIORITY_NORMAL
            };
            let deadline = deadline_ms.unwrap_or(now + 60_000).max(now + 5_000);
            let id = instance_id.clone();
            let r = state
                .db
                .write(move |s| {
                    s.promote(
                        None,
                        &g,
                        &id,
                        expected_epoch,
                        priority,
                        deadline,
                        &Actor::System,
                        now,
                    )
                })
                .await;
            let outcome = if r.is_ok() { "committed" } else { "refused" };
            state
                .metrics
                .promotions
                .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                .inc();
            match r {
                Ok(p) => {
                    tracing::warn!(%group, promoted = %p.promoted, demoted = ?p.demoted, epoch = p.epoch, reason, "promotion");
                    wake(state, &p.commands).await;
                }
                Err(e) => {
                    tracing::info!(%group, %instance_id, error = %e, "promotion not applied; will decide again")
                }
            }
        }
        Action::Demote {
            instance_id,
            expected_epoch,
            reason,
        } => {
            let id = instance_id.clone();
            match state
                .db
                .write(move |s| s.demote(&g, &id, expected_epoch, &Actor::System, now))
                .await
            {
                Ok(agent) => {
                    tracing::warn!(%group, %instance_id, reason, "demoted");
                    if let Some(a) = agent {
                        state.live.wake(&a);
                    }
                }
                Err(e) => tracing::info!(%group, %instance_id, error = %e, "demotion not applied"),
            }
        }
        Action::Launch {
            via_agent,
            pool,
            emergency,
            reason,
        } => {
            let rid = format!("launch-{}", uuid::Uuid::new_v4());
            let via = via_agent.clone();
            match state
                .db
                .write(move |s| {
                    s.queue_launch(&rid, &g, Some(&via), &pool, emergency, &Actor::System, now)
                })
                .await
            {
                Ok(q) => {
                    tracing::warn!(%group, via = %q.agent_id, request_id = %q.command.request_id, emergency, reason, "launch queued");
                    state.live.wake(&q.agent_id);
                }
                Err(e) => tracing::info!(%group, error = %e, "launch not queued"),
            }
        }
    }
}

async fn wake(state: &AppState, request_ids: &[String]) {
    for rid in request_ids {
        let r = rid.clone();
        if let Ok(cmds) = state.db.read(move |s| s.list_commands(None)).await
            && let Some(c) = cmds.iter().find(|c| c.command.request_id == r)
        {
            state.live.wake(&c.agent_id);
        }
    }
}
