//! `WATCHDOG=1` to systemd at half the configured watchdog interval. It
//! runs under the same supervisor as every other task: when one of them
//! dies the process exits, so a live watchdog means live tasks.

use std::sync::Arc;

pub async fn run(agent: Arc<crate::agent::Agent>) -> anyhow::Result<()> {
    let Some(every) = sd_notify::watchdog_enabled() else {
        agent.shutdown.cancelled().await;
        return Ok(());
    };
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
            _ = agent.shutdown.cancelled() => return Ok(()),
        }
    }
}
