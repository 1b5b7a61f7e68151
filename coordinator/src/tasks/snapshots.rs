//! Snapshots of the groups' data volumes: every 5 s, each group with data
//! volumes whose oldest snapshot is `snapshot_interval_s` old gets a
//! snapshot command for its PRIMARY's agent (which also prunes to
//! `snapshot_keep`); the store decides in one transaction whether one is
//! due (`Txn::queue_snapshot`). A failed pass is logged and tried again.

use super::Schedule;
use crate::state::AppState;
use crate::store::Ctx;
use std::sync::Arc;
use std::time::Duration;

/// Often enough for a 60 s interval, the shortest allowed.
const TICK: Duration = Duration::from_secs(5);

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let mut schedule = Schedule::after(TICK, &state);
    while schedule.next().await {
        let Some(groups) = super::acting_groups(&state, "snapshots").await else {
            continue;
        };
        for g in groups
            .into_iter()
            .filter(|g| !g.config.data_volumes.is_empty())
        {
            let name = g.name.clone();
            match state
                .db
                .transact(Ctx::system(crate::state::now_ms()), move |tx| {
                    tx.queue_snapshot(&name)
                })
                .await
            {
                Ok(done) => {
                    if let Some(agent) = &done.value {
                        tracing::info!(group = %g.name, %agent, "snapshot of the data volumes queued");
                    }
                    state.woke(done);
                }
                Err(e) => {
                    tracing::warn!(group = %g.name, error = %spot_common::error_chain(&e), "queueing a snapshot; next tick");
                }
            }
        }
    }
    Ok(())
}
