//! `GET /v1/events/stream`: the audit log as Server-Sent Events, so that a
//! dashboard or `spotctl watch` sees every change within a second: role
//! changes, promotions and fences, switches, notices, command results,
//! decisions, agents going online or offline. Each event's `id` is its
//! audit id: a client that reconnects with `Last-Event-ID` (or
//! `?after=ID`) misses nothing; without either, the stream starts with
//! what happens next. A comment line every 15 s keeps proxies from
//! closing an idle stream. Entries that come together are written
//! together, in one chunk.
//!
//! Every stream follows one feed (`tasks::events`); a token may hold at
//! most `state::STREAMS_PER_TOKEN` open streams (429 `too_many_streams` past it).

use super::{ApiError, ApiQuery, Caller};
use crate::state::{AppState, FeedEntry, StreamCounts};
use crate::store::Read;
use crate::tasks::events;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this audit id (as `Last-Event-ID`).
    after: Option<i64>,
}

type Tx = mpsc::Sender<Result<Bytes, Infallible>>;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The most bytes one chunk of a stream carries.
const CHUNK: usize = 256 * 1024;

/// Send what the store holds after `after`, a page to a chunk; the last
/// id sent, or `None` when the client went away.
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
        let mut chunk = BytesMut::new();
        for r in rows {
            after = r.id;
            chunk.extend_from_slice(&FeedEntry::new(&r).frame);
        }
        if !chunk.is_empty() {
            tx.send(Ok(chunk.freeze())).await.ok()?;
        }
        if !full {
            return Some(after);
        }
    }
}

/// The entries the feed holds now after `first`, appended to `chunk`
/// (up to [`CHUNK`] bytes): a storm of entries costs a stream a few
/// writes, not one per entry. Returns how the feed ended the run: `None`
/// when it was merely empty.
fn drain(
    feed: &mut broadcast::Receiver<Arc<FeedEntry>>,
    first: Arc<FeedEntry>,
    after: &mut i64,
    chunk: &mut BytesMut,
) -> Option<RecvError> {
    let mut next = first;
    loop {
        if next.id > *after {
            *after = next.id;
            chunk.extend_from_slice(&next.frame);
        }
        if chunk.len() >= CHUNK {
            return None;
        }
        next = match feed.try_recv() {
            Ok(e) => e,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Lagged(n)) => return Some(RecvError::Lagged(n)),
            Err(TryRecvError::Closed) => return Some(RecvError::Closed),
        };
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
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let _slot = slot;
        let Some(mut after) = catch_up(&state, &tx, start).await else {
            return;
        };
        let mut idle =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            let next = tokio::select! {
                n = feed.recv() => n,
                _ = idle.tick() => {
                    if tx.send(Ok(Bytes::from_static(b":heartbeat\n\n"))).await.is_err() {
                        return;
                    }
                    continue;
                }
                _ = tx.closed() => return,
                _ = state.shutdown.cancelled() => return,
            };
            let mut chunk = BytesMut::new();
            let ended = match next {
                Ok(first) => drain(&mut feed, first, &mut after, &mut chunk),
                Err(e) => Some(e),
            };
            if !chunk.is_empty() && tx.send(Ok(chunk.freeze())).await.is_err() {
                return;
            }
            match ended {
                None => {}
                // Fell behind the feed's buffer: the store has it all.
                Some(RecvError::Lagged(_)) => match catch_up(&state, &tx, after).await {
                    Some(a) => after = a,
                    None => return,
                },
                Some(RecvError::Closed) => return,
            }
        }
    });
    let body = axum::body::Body::from_stream(ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64) -> Arc<FeedEntry> {
        Arc::new(FeedEntry {
            id,
            frame: Bytes::from(format!("id: {id}\n\n")),
        })
    }

    #[test]
    fn what_the_feed_holds_goes_out_in_one_chunk_once_each_and_a_lag_is_reported() {
        let (feed, mut rx) = broadcast::channel(4);
        for id in [2, 3] {
            feed.send(entry(id)).unwrap();
        }
        let (mut after, mut chunk) = (1, BytesMut::new());
        assert!(drain(&mut rx, entry(1), &mut after, &mut chunk).is_none());
        assert_eq!(
            (&chunk[..], after),
            (&b"id: 2\n\nid: 3\n\n"[..], 3),
            "seen ids skipped"
        );
        for id in 4..=9 {
            feed.send(entry(id)).unwrap();
        }
        let mut chunk = BytesMut::new();
        let ended = drain(&mut rx, entry(3), &mut after, &mut chunk);
        assert!(matches!(ended, Some(RecvError::Lagged(_))), "{ended:?}");
        assert_eq!(after, 3, "nothing past the gap is claimed as sent");
    }
}
