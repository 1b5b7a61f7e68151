//! `GET /v1/events/stream`: the audit log as Server-Sent Events, so that a
//! dashboard or `spotctl watch` sees every change within a second: role
//! changes, promotions and fences, switches, notices, command results,
//! decisions, agents going online or offline. Each event's `id` is its
//! audit id: a client that reconnects with `Last-Event-ID` (or
//! `?after=ID`) misses nothing; without either, the stream starts with
//! what happens next. A comment line every 15 s keeps proxies from
//! closing an idle stream.
//!
//! Every stream follows one feed (`tasks::events`); a token may hold at
//! most `state::STREAMS_PER_TOKEN` open streams (429 `too_many_streams` past it).

use super::{ApiError, ApiQuery, Caller};
use crate::state::{AppState, FeedEntry, StreamCounts};
use crate::store::Read;
use crate::tasks::events;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this audit id (as `Last-Event-ID`).
    after: Option<i64>,
}

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// Send what the store holds after `after`; the last id sent, or `None`
/// when the client went away.
async fn catch_up(state: &AppState, tx: &Tx, mut after: i64) -> Option<i64> {
    loop {
        let rows = match events::page(state, after).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %spot_common::error_chain(&e), "event stream: reading the audit log; retrying");
                tokio::time::sleep(events::POLL).await;
                continue;
            }
        };
        let full = rows.len() >= events::PAGE as usize;
        for r in rows {
            after = r.id;
            tx.send(Ok(FeedEntry::new(&r).event)).await.ok()?;
        }
        if !full {
            return Some(after);
        }
    }
}

pub async fn stream(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let slot = StreamCounts::take(&state, format!("{:?}", caller.actor)).map_err(|message| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message)
    })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or(q.after);
    // Subscribe before reading the store: what commits from now on comes
    // through the feed, what came before from the store.
    let mut feed = state.events.subscribe();
    let start = match resume {
        Some(id) => id,
        None => state.db.read(|s| s.last_audit_id()).await?,
    };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(256);
    tokio::spawn(async move {
        let _slot = slot;
        let Some(mut after) = catch_up(&state, &tx, start).await else {
            return;
        };
        loop {
            let next = tokio::select! {
                n = feed.recv() => n,
                _ = tx.closed() => return,
                _ = state.shutdown.cancelled() => return,
            };
            match next {
                Ok(r) if r.id > after => {
                    after = r.id;
                    if tx.send(Ok(r.event.clone())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Fell behind the feed's buffer: the store has it all.
                Err(RecvError::Lagged(_)) => match catch_up(&state, &tx, after).await {
                    Some(a) => after = a,
                    None => return,
                },
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}
