//! The event feed: one poller reads new audit entries every 250 ms and
//! broadcasts them to every open `/v1/events/stream`, so a few hundred
//! dashboards cost the store one query per tick, not one each. A stream
//! catches up from the store itself (a resume, or a subscriber that fell
//! behind the broadcast's buffer), then follows the feed.

use super::Schedule;
use crate::state::{AppState, FeedEntry};
use crate::store::{AuditQuery, Read};
use spot_common::wire::AuditEntry;
use std::sync::Arc;
use std::time::Duration;

/// How often the store is read for new entries (the 2 s budget for a
/// change to reach an open page leaves room for the client).
pub const POLL: Duration = Duration::from_millis(250);

/// Entries read per query.
pub const PAGE: u32 = 500;

/// The audit entries after `after`, one page.
pub async fn page(
    state: &AppState,
    after: i64,
) -> Result<Vec<AuditEntry>, crate::store::StoreError> {
    let q = AuditQuery {
        entity: None,
        after_id: Some(after),
        limit: Some(PAGE),
        ..AuditQuery::default()
    };
    state.db.read(move |s| s.audit_log(&q)).await
}

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let mut after = state.db.read(|s| s.last_audit_id()).await?;
    let mut schedule = Schedule::every(POLL, &state);
    while schedule.next().await {
        // Nobody listening: skip the entries rather than read them. The
        // newest id is read before the count, so a stream that subscribes
        // after the count catches up from the store past it by itself.
        match state.db.read(|s| s.last_audit_id()).await {
            Ok(newest) if state.events.receiver_count() == 0 => {
                after = newest;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %spot_common::error_chain(&e), "event feed: reading the audit log; retrying");
                continue;
            }
        }
        loop {
            let rows = match page(&state, after).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %spot_common::error_chain(&e), "event feed: reading the audit log; retrying");
                    break;
                }
            };
            let full = rows.len() >= PAGE as usize;
            for r in rows {
                after = r.id;
                // No subscriber is fine: nobody is watching.
                let _ = state.events.send(Arc::new(FeedEntry::new(&r)));
            }
            if !full {
                break;
            }
        }
    }
    Ok(())
}
