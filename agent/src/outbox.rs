//! The outbox task: delivers journaled events to the coordinator at least
//! once (the coordinator applies them exactly once by event id) and
//! deletes them only once acknowledged. A price batch goes alone to the
//! pricing endpoint; a run of other events goes to the events endpoint.
//! Retries use `COORDINATOR_RECONNECT` (capped at 5 s) so the results the
//! coordinator waits for arrive soon after it comes back.

use crate::agent::Agent;
use crate::client::LinkError;
use crate::journal::{Creds, JournalError};
use spot_common::retry::COORDINATOR_RECONNECT;
use spot_common::{Event, EventBody};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    let mut creds_rx = agent.creds.subscribe();
    let mut delays = spot_runtime::retry::delays(COORDINATOR_RECONNECT);
    loop {
        let creds = creds_rx.borrow_and_update().clone();
        let Some(creds) = creds else {
            tokio::select! {
                _ = creds_rx.changed() => continue,
                _ = agent.shutdown.cancelled() => return Ok(()),
            }
        };
        let outcome = tokio::select! {
            r = deliver_once(&agent, &creds) => r,
            _ = agent.shutdown.cancelled() => {
                // One last attempt so the coordinator hears about the
                // command that just finished.
                let _ = tokio::time::timeout(Duration::from_secs(2), deliver_once(&agent, &creds)).await;
                return Ok(());
            }
        };
        match outcome {
            Ok(0) => {
                tokio::select! {
                    _ = agent.outbox_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = agent.shutdown.cancelled() => return Ok(()),
                }
            }
            Ok(_) => delays = spot_runtime::retry::delays(COORDINATOR_RECONNECT),
            Err(Stop::Journal(e)) => return Err(e.into()),
            // The link task registers again; wait for the new identity.
            Err(Stop::Link(e)) if e.identity_lost() => {
                tokio::select! {
                    _ = creds_rx.changed() => {}
                    _ = agent.shutdown.cancelled() => return Ok(()),
                }
            }
            Err(Stop::Link(e)) => {
                let wait = delays.next().unwrap_or(COORDINATOR_RECONNECT.max_delay);
                tracing::debug!(error = %spot_common::error_chain(&e), ?wait, "outbox delivery failed; kept for later");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Send one batch of the outbox; returns how many were acknowledged.
async fn deliver_once(agent: &Agent, creds: &Creds) -> Result<usize, Stop> {
    let head = agent.journal.call(|j| j.pending(1)).await?;
    if let Some(p) = head.first()
        && let EventBody::Prices { points } = &p.body
    {
        let seq = p.seq;
        match agent
            .coordinator
            .pricing(&creds.agent_id, &creds.token, points.clone())
            .await
        {
            Ok(r) => tracing::debug!(
                accepted = r.accepted,
                duplicates = r.duplicates,
                "prices delivered"
            ),
            // A ZOMBIE's reports are refused for good: drop, do not block.
            Err(LinkError::Rejected { status: 403, .. }) => {
                tracing::info!("price report refused (no longer PRIMARY or REPLICA); dropped")
            }
            Err(LinkError::Rejected {
                status: 400,
                message,
                ..
            }) => tracing::warn!(%message, "price report invalid; dropped"),
            Err(e) => return Err(e.into()),
        }
        agent.journal.call(move |j| j.ack(&[seq])).await?;
        return Ok(1);
    }
    let pending = agent
        .journal
        .call(|j| j.pending(spot_common::wire::MAX_EVENTS_PER_BATCH as u32))
        .await?;
    // Up to the next price batch, which goes to its own endpoint.
    let pending: Vec<_> = pending
        .into_iter()
        .take_while(|p| !matches!(p.body, EventBody::Prices { .. }))
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let events: Vec<Event> = pending
        .iter()
        .map(|p| Event {
            event_id: spot_common::ids::event(&creds.agent_id, p.seq),
            seq: p.seq,
            at_ms: p.at_ms,
            body: p.body.clone(),
        })
        .collect();
    let resp = agent
        .coordinator
        .events(&creds.agent_id, &creds.token, events)
        .await?;
    crate::crash_point!("before_ack");
    let acked: Vec<i64> = pending
        .iter()
        .filter(|p| {
            resp.acked
                .contains(&spot_common::ids::event(&creds.agent_id, p.seq))
        })
        .map(|p| p.seq)
        .collect();
    let n = acked.len();
    agent.journal.call(move |j| j.ack(&acked)).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RoleState;
    use crate::agent::testing::agent;

    #[tokio::test]
    async fn events_are_delivered_and_deleted_only_once_acknowledged() {
        let t = agent(RoleState::default());
        t.agent
            .push_event(EventBody::Health {
                healthy: true,
                detail: None,
            })
            .await
            .unwrap();
        let creds = Creds {
            agent_id: "agt-1".into(),
            token: "t".into(),
        };
        t.coordinator
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(deliver_once(&t.agent, &creds).await.is_err());
        assert_eq!(
            t.agent.journal.call(|j| j.backlog()).await.unwrap(),
            1,
            "kept"
        );
        t.coordinator
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(deliver_once(&t.agent, &creds).await.unwrap(), 1);
        assert_eq!(t.agent.journal.call(|j| j.backlog()).await.unwrap(), 0);
        let got = t.coordinator.events.lock().unwrap();
        assert_eq!(got[0].event_id, "agt-1:1");
    }
}
