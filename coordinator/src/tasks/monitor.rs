//! Background monitor: marks silent agents OFFLINE (missed heartbeats),
//! persists heartbeats in batches, and shows the watchdog it runs.
//!
//! It is the only writer of ONLINE/OFFLINE to the store. A store failure is
//! logged and retried on the next tick: memory keeps the truth meanwhile.

use super::Schedule;
use crate::state::AppState;
use crate::store::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    // A fifth of the heartbeat interval, capped at 1 s: OFFLINE is seen
    // within 20 % of an interval of the third missed heartbeat.
    let period = (state.config.heartbeat_interval / 5).min(Duration::from_secs(1));
    let mut schedule = Schedule::every(period, &state);
    while schedule.next().await {
        sweep(&state).await;
        flush(&state).await;
        // The systemd watchdog is fed while this loop runs (`node.rs`).
        state.view.progress();
    }
    // The last heartbeats are persisted before the coordinator stops.
    flush(&state).await;
    Ok(())
}

async fn sweep(state: &AppState) {
    let changes = state
        .live
        .sweep(state.clock.now(), state.config.offline_after());
    for change in changes {
        let c = change.clone();
        match state
            .db
            .transact(Ctx::system(crate::state::now_ms()), move |tx| {
                tx.set_agent_status(&c.agent_id, c.from, c.to)
            })
            .await
        {
            Ok(done) => {
                tracing::info!(agent_id = %change.agent_id, from = ?change.from, to = ?change.to, "agent status changed");
                let applied = state.woke(done);
                state.live.persisted(&change, applied);
                state.reconcile.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %spot_common::error_chain(&e), agent_id = %change.agent_id, "persisting agent status; will retry")
            }
        }
    }
}

async fn flush(state: &AppState) {
    let batch = state.live.take_pending();
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    let kept = batch.clone();
    if let Err(e) = state
        .db
        .transact(Ctx::system(crate::state::now_ms()), move |tx| {
            tx.flush_heartbeats(&batch)
        })
        .await
    {
        // Liveness is decided in memory; the batch goes back so the next
        // flush persists it (unless a newer heartbeat replaced it).
        tracing::warn!(error = %spot_common::error_chain(&e), heartbeats = n, "persisting heartbeats; kept for the next flush");
        state.live.restore_pending(kept);
    }
}
