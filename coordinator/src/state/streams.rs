//! Open event streams: the feed they follow and how many each token holds.

use super::AppState;
use spot_common::wire::AuditEntry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open streams one token may hold: enough for a team's dashboards, few
/// enough that one runaway script cannot hold the coordinator's memory.
pub const STREAMS_PER_TOKEN: usize = 32;

/// New audit entries, broadcast by `tasks::events` to every open stream.
pub type Feed = tokio::sync::broadcast::Sender<Arc<FeedEntry>>;

/// One audit entry as a Server-Sent Event, encoded once for every stream
/// that follows the feed (500 open dashboards cost one JSON encoding per
/// entry, not 500); a stream writes the bytes as they are, many entries
/// to a chunk.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    pub id: i64,
    pub frame: bytes::Bytes,
}

impl FeedEntry {
    pub fn new(r: &AuditEntry) -> FeedEntry {
        // Compact JSON has no raw line breaks; an action never has any,
        // but a line break there would end the event early.
        let action: String = r
            .action
            .chars()
            .filter(|c| !matches!(c, '\n' | '\r'))
            .collect();
        let frame = match serde_json::to_string(r) {
            Ok(data) => format!("id: {}\nevent: {action}\ndata: {data}\n\n", r.id),
            Err(_) => format!(": unencodable entry {}\n\n", r.id),
        };
        FeedEntry {
            id: r.id,
            frame: frame.into(),
        }
    }
}

/// Open streams per token.
#[derive(Default)]
pub struct StreamCounts(Mutex<HashMap<String, usize>>);

/// One open stream, counted until dropped.
pub struct Slot {
    state: Arc<AppState>,
    key: String,
}

impl StreamCounts {
    /// Count one more stream for `key`; the message when it holds
    /// [`STREAMS_PER_TOKEN`] already.
    pub fn take(state: &Arc<AppState>, key: String) -> Result<Slot, String> {
        let mut m = state.streams.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_default();
        if *n >= STREAMS_PER_TOKEN {
            return Err(format!(
                "this token already holds {STREAMS_PER_TOKEN} open event streams; close one first"
            ));
        }
        *n += 1;
        Ok(Slot {
            state: Arc::clone(state),
            key,
        })
    }

    /// Open streams now, over all tokens.
    pub fn open(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .state
            .streams
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Entries the feed holds for a slow subscriber before it lags (and
/// catches up from the store, encoding what it missed on its own). Enough
/// for a fleet's first-beat storm (one audit entry per instance) to pass
/// without lagging every open dashboard; entries are shared, so the cost
/// is one pointer each plus the entries themselves while any stream
/// still needs them.
pub const FEED_BUFFER: usize = 32_768;
