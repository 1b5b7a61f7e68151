//! The retention task: every `retention.interval`, prune every table that
//! grows (rules in `store::retention`), one small transaction per batch so
//! that heartbeats and promotions never queue behind a long delete.

use super::Schedule;
use crate::metrics::TableLabel;
use crate::state::AppState;
use crate::store::{Db, Retention, Table};
use std::sync::Arc;

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let retention = state.config.retention;
    let mut schedule = Schedule::every(retention.interval, &state);
    while schedule.next().await {
        // A failed pass is retried on the next tick; it never stops the
        // coordinator (retention is housekeeping, not safety).
        match pass(&state.db, &retention, crate::state::now_ms()).await {
            Ok(pruned) => {
                for (table, n) in &pruned {
                    state
                        .metrics
                        .pruned
                        .get_or_create(&TableLabel {
                            table: table.as_str(),
                        })
                        .inc_by(u64::try_from(*n).unwrap_or(u64::MAX));
                }
                if !pruned.is_empty() {
                    let summary: Vec<String> =
                        pruned.iter().map(|(t, n)| format!("{t}={n}")).collect();
                    tracing::info!(pruned = %summary.join(" "), "retention pass");
                }
            }
            Err(e) => {
                tracing::warn!(error = %spot_common::error_chain(&e), "retention pass failed; next tick retries")
            }
        }
        match state.db.read(|s| s.used_bytes()).await {
            Ok(bytes) => {
                state.metrics.store_bytes.set(bytes);
            }
            Err(e) => {
                tracing::warn!(error = %spot_common::error_chain(&e), "reading the store's size")
            }
        }
    }
    Ok(())
}

/// One pass over every table as of `now_ms`: batches until a table has
/// nothing left to prune. Returns the tables that lost rows and how many.
pub async fn pass(
    db: &Db,
    retention: &Retention,
    now_ms: i64,
) -> crate::store::Result<Vec<(Table, usize)>> {
    let mut pruned = Vec::new();
    for &table in Table::ALL {
        let keep_ms = i64::try_from(retention.of(table).as_millis()).unwrap_or(i64::MAX);
        let before = now_ms.saturating_sub(keep_ms);
        let batch = retention.batch;
        let mut total = 0;
        loop {
            let n = db.write(move |s| s.prune(table, before, batch)).await?;
            total += n;
            if n < batch {
                break;
            }
            // Let whatever waits for the writer go first.
            tokio::task::yield_now().await;
        }
        if total > 0 {
            pruned.push((table, total));
        }
    }
    Ok(pruned)
}
