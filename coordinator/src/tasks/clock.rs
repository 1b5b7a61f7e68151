//! The clock task: reads the monotonic clock every `TICK` so that a stall
//! of the coordinator's process is measured from the last tick before it.

use super::Schedule;
use crate::clock::TICK;
use crate::state::AppState;
use std::sync::Arc;

/// Read the clock every `TICK` until shutdown, so a stall is measured
/// from the last tick before it.
pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let mut schedule = Schedule::every(TICK, &state);
    while schedule.next().await {
        state.clock.now();
    }
    Ok(())
}
