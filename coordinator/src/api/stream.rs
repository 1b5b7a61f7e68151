//! `GET /v1/events/stream`: the audit log as Server-Sent Events, so that a
//! dashboard or `spotctl watch` sees every change within a second: role
//! changes, promotions and fences, switches, notices, command results,
//! decisions, agents going online or offline. Each event's `id` is its
//! audit id: a client that reconnects with `Last-Event-ID` (or
//! `?after=ID`) misses nothing; without either, the stream starts with
//! what happens next. A comment line every 15 s keeps proxies from
//! closing an idle stream.

use super::ApiQuery;
use crate::state::AppState;
use crate::store::{AuditQuery, Read};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;

/// How often the store is read for new entries (the 2 s budget for a
/// change to reach an open page leaves room for the client).
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this audit id (as `Last-Event-ID`).
    after: Option<i64>,
}

pub async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<impl axum::response::IntoResponse, super::ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or(q.after);
    let mut after = match resume {
        Some(id) => id,
        None => state.db.read(|s| s.last_audit_id()).await?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(256);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
                _ = state.shutdown.cancelled() => return,
            }
            let q = AuditQuery {
                entity: None,
                after_id: Some(after),
                limit: Some(500),
                ..AuditQuery::default()
            };
            let rows = match state.db.read(move |s| s.audit_log(&q)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %spot_common::error_chain(&e), "event stream: reading the audit log; retrying");
                    continue;
                }
            };
            for r in rows {
                after = r.id;
                let ev = Event::default()
                    .id(r.id.to_string())
                    .event(r.action.clone())
                    .json_data(&r)
                    .unwrap_or_else(|_| Event::default().comment("unencodable entry"));
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}
