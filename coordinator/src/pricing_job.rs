//! The consolidation job: every `consolidate_interval` (12 h by default),
//! staged price reports become the canonical hourly series. A failed run
//! is logged and retried at the next interval; it changed nothing (one
//! transaction).

use crate::AppState;
use crate::store::{Ctx, StoreError};
use spot_common::wire::ConsolidationRun;
use std::sync::Arc;

pub async fn run_once(state: &AppState) -> Result<ConsolidationRun, StoreError> {
    let cfg = state.config.consolidation();
    let run = state
        .db
        .transact(Ctx::system(crate::now_ms()), move |tx| tx.consolidate(&cfg))
        .await?
        .value;
    state.metrics.record_consolidation(&run);
    state.decide.notify_one();
    tracing::info!(
        pools = run.pools,
        rows_read = run.rows_read,
        hours_written = run.hours_written,
        interpolated = run.points_interpolated,
        duration_ms = run.duration_ms,
        "prices consolidated"
    );
    Ok(run)
}

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + state.config.consolidate_interval,
        state.config.consolidate_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return Ok(()),
        }
        if let Err(e) = run_once(&state).await {
            tracing::error!(error = %crate::error_chain(&e), "price consolidation failed; next run at the next interval");
        }
    }
}
