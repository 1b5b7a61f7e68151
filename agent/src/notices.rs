//! The notice watcher: polls IMDS's interruption, rebalance and scheduled
//! maintenance paths and journals each new notice once. `imds` only
//! talks to IMDS; this task owns what the agent does with its answers.

use crate::agent::Agent;
use crate::imds::{INSTANCE_ACTION, Imds, REBALANCE, SCHEDULED, bounded, classify};
use spot_common::{NoticeKind, notice};
use std::sync::Arc;

/// Poll the notice paths every `imds_poll_interval` until shutdown. A new
/// notice is journaled (with its event) once; a body that does not parse
/// is journaled as malformed once; an IMDS error costs one tick; a journal
/// error ends the task (the failsafe takes over).
pub async fn watch(imds: Imds, agent: Arc<Agent>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(agent.config.imds_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = agent.shutdown.cancelled() => return Ok(()),
        }
        for path in [INSTANCE_ACTION, REBALANCE, SCHEDULED] {
            let body = match imds.get(path).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    // Log the first failure of a streak, not every second.
                    if !failing {
                        tracing::warn!(error = %crate::error_chain(&e), "IMDS poll failed; retrying every tick");
                    }
                    failing = true;
                    continue;
                }
            };
            // No maintenance still to happen (none, or all completed or
            // canceled): nothing to report.
            if path == SCHEDULED
                && notice::parse_scheduled(&body)
                    .is_ok_and(|e| notice::pending_maintenance(&e).is_none())
            {
                continue;
            }
            if failing {
                tracing::info!("IMDS answering again");
                failing = false;
            }
            let (kind, effective, action) = classify(path, &body);
            let raw = bounded(&body);
            let now = agent.now_ms();
            let new = agent
                .journal
                .call(move |j| j.record_notice(kind, &raw, effective, action.as_deref(), now))
                .await?;
            if new {
                if kind == NoticeKind::Malformed {
                    tracing::warn!(%path, body = %bounded(&body), "malformed IMDS body journaled");
                } else {
                    tracing::warn!(notice = kind.as_str(), effective_at_ms = ?effective, "notice journaled");
                }
                agent.outbox_wake.notify_one();
            }
        }
    }
}
