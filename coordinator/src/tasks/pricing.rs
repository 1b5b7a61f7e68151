//! The consolidation job: every `consolidate_interval` (12 h by default),
//! staged price reports become the canonical hourly series. A failed run
//! is logged and retried at the next interval; it changed nothing (one
//! transaction).

use super::Schedule;
use crate::state::AppState;
use crate::store::{Ctx, StoreError};
use spot_common::wire::ConsolidationRun;
use std::sync::Arc;

pub async fn run_once(state: &AppState) -> Result<ConsolidationRun, StoreError> {
    let cfg = state.config.consolidation();
    let run = state
        .db
        .transact(Ctx::system(crate::state::now_ms()), move |tx| {
            tx.consolidate(&cfg)
        })
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
    let mut schedule = Schedule::after(state.config.consolidate_interval, &state);
    while schedule.next().await {
        if let Err(e) = run_once(&state).await {
            tracing::error!(error = %spot_common::error_chain(&e), "price consolidation failed; next run at the next interval");
        }
    }
    Ok(())
}
