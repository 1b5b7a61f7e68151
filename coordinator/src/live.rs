//! In-memory liveness and auth of agents.
//!
//! Heartbeats are the hot path (10,000 agents every 5 s is 2,000 a second):
//! they update this table only. The monitor persists them in batches and is
//! the single writer of ONLINE/OFFLINE to the store, so a heartbeat racing
//! the offline sweep can never leave the store and memory disagreeing.
//! Locks here are `std` locks held for a few map operations, never across
//! an `.await`.

use crate::store::{AgentAuth, HeartbeatRecord};
use spot_common::{AgentStatus, token_hash};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Missing or unknown token: 401.
    Unauthorized,
    /// A valid token used on another agent's path: 403.
    Forbidden,
}

struct AgentLive {
    token_hash: String,
    /// The truth, decided here.
    status: AgentStatus,
    /// What the store holds; the monitor reconciles the two.
    persisted: AgentStatus,
    last_seen: Instant,
    pending: Option<HeartbeatRecord>,
    /// Wakes the agent's long-poll when a command is queued.
    notify: Arc<Notify>,
    /// Past LAUNCHING: no need to ask the store on each healthy heartbeat.
    settled: bool,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, AgentLive>,
    by_token: HashMap<String, String>,
}

#[derive(Default)]
pub struct Live {
    inner: RwLock<Inner>,
}

/// A status change the monitor must persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub agent_id: String,
    pub from: AgentStatus,
    pub to: AgentStatus,
}

impl Live {
    /// Start from the store; every known agent gets a full offline window
    /// from now, so a coordinator restart does not mark the fleet offline.
    pub fn from_store(agents: Vec<AgentAuth>) -> Live {
        let live = Live::default();
        let now = Instant::now();
        for a in agents {
            live.insert_at(&a.agent_id, a.token_hash, a.status, now);
        }
        live
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_at(&self, agent_id: &str, token_hash: String, status: AgentStatus, now: Instant) {
        let mut g = self.write();
        g.by_token.insert(token_hash.clone(), agent_id.to_owned());
        g.agents.entry(agent_id.to_owned()).or_insert(AgentLive {
            token_hash,
            status,
            persisted: status,
            last_seen: now,
            pending: None,
            notify: Arc::new(Notify::new()),
            settled: false,
        });
    }

    /// A newly registered agent (ONLINE in the store already).
    pub fn insert(&self, agent_id: &str, token_hash: String) {
        self.insert_at(agent_id, token_hash, AgentStatus::Online, Instant::now());
    }

    /// Forget an agent (deleted or replaced): its token stops working.
    pub fn remove(&self, agent_id: &str) {
        let mut g = self.write();
        if let Some(a) = g.agents.remove(agent_id) {
            g.by_token.remove(&a.token_hash);
            // Release a long-poll that is waiting for this agent.
            a.notify.notify_one();
        }
    }

    /// Check `Authorization: Bearer <token>` against the agent in the path.
    pub fn authenticate(
        &self,
        agent_id: &str,
        bearer: Option<&str>,
    ) -> Result<Arc<Notify>, AuthError> {
        let token = bearer.ok_or(AuthError::Unauthorized)?;
        let hash = token_hash(token);
        let g = self.read();
        match g.by_token.get(&hash) {
            None => Err(AuthError::Unauthorized),
            Some(owner) if owner != agent_id => Err(AuthError::Forbidden),
            Some(_) => g
                .agents
                .get(agent_id)
                .map(|a| Arc::clone(&a.notify))
                .ok_or(AuthError::Unauthorized),
        }
    }

    /// Record a heartbeat. Returns whether the agent still needs its
    /// health reported to the store (it may be LAUNCHING).
    pub fn heartbeat(&self, rec: HeartbeatRecord) -> bool {
        let mut g = self.write();
        let Some(a) = g.agents.get_mut(&rec.agent_id) else {
            return false;
        };
        a.last_seen = Instant::now();
        // A deleted agent keeps its token only to fetch its cleanup command.
        if a.status == AgentStatus::Deleted {
            return false;
        }
        a.status = AgentStatus::Online;
        let needs_store = rec.healthy && !a.settled;
        a.pending = Some(rec);
        needs_store
    }

    pub fn mark_settled(&self, agent_id: &str) {
        if let Some(a) = self.write().agents.get_mut(agent_id) {
            a.settled = true;
        }
    }

    /// The operator deleted the agent (the store says so already).
    pub fn mark_deleted(&self, agent_id: &str) {
        if let Some(a) = self.write().agents.get_mut(agent_id) {
            a.status = AgentStatus::Deleted;
            a.persisted = AgentStatus::Deleted;
            a.notify.notify_one();
        }
    }

    pub fn wake(&self, agent_id: &str) {
        if let Some(a) = self.read().agents.get(agent_id) {
            a.notify.notify_one();
        }
    }

    pub fn status(&self, agent_id: &str) -> Option<AgentStatus> {
        self.read().agents.get(agent_id).map(|a| a.status)
    }

    /// Mark agents silent for longer than `offline_after` OFFLINE, and
    /// return every status that differs from the store.
    pub fn sweep(&self, now: Instant, offline_after: Duration) -> Vec<StatusChange> {
        let mut g = self.write();
        let mut out = Vec::new();
        for (id, a) in g.agents.iter_mut() {
            if a.status == AgentStatus::Deleted {
                continue;
            }
            if a.status == AgentStatus::Online && now.duration_since(a.last_seen) > offline_after {
                a.status = AgentStatus::Offline;
            }
            if a.status != a.persisted {
                out.push(StatusChange {
                    agent_id: id.clone(),
                    from: a.persisted,
                    to: a.status,
                });
            }
        }
        out
    }

    /// The store now holds `change.to` (or refused: then trust the store).
    pub fn persisted(&self, change: &StatusChange, applied: bool) {
        let mut g = self.write();
        if let Some(a) = g.agents.get_mut(&change.agent_id) {
            if applied {
                a.persisted = change.to;
            } else {
                // The store moved on (replaced/deleted) without us: drop it.
                let hash = a.token_hash.clone();
                g.agents.remove(&change.agent_id);
                g.by_token.remove(&hash);
            }
        }
    }

    /// Heartbeat data not yet persisted.
    pub fn take_pending(&self) -> Vec<HeartbeatRecord> {
        let mut g = self.write();
        g.agents
            .values_mut()
            .filter_map(|a| a.pending.take())
            .collect()
    }

    pub fn online(&self) -> std::collections::HashSet<String> {
        self.read()
            .agents
            .iter()
            .filter(|(_, a)| a.status == AgentStatus::Online)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn counts(&self) -> Vec<(AgentStatus, i64)> {
        let g = self.read();
        [AgentStatus::Online, AgentStatus::Offline]
            .into_iter()
            .map(|s| {
                let n = g.agents.values().filter(|a| a.status == s).count();
                (s, i64::try_from(n).unwrap_or(i64::MAX))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> HeartbeatRecord {
        HeartbeatRecord {
            agent_id: id.into(),
            at_ms: 1,
            reported_role: None,
            highest_epoch: 0,
            healthy: true,
            backlog: 0,
        }
    }

    #[test]
    fn wrong_token_is_401_and_foreign_token_is_403() {
        let live = Live::default();
        live.insert("a", token_hash("tok-a"));
        live.insert("b", token_hash("tok-b"));
        assert!(live.authenticate("a", Some("tok-a")).is_ok());
        assert_eq!(
            live.authenticate("a", None).unwrap_err(),
            AuthError::Unauthorized
        );
        assert_eq!(
            live.authenticate("a", Some("nope")).unwrap_err(),
            AuthError::Unauthorized
        );
        assert_eq!(
            live.authenticate("a", Some("tok-b")).unwrap_err(),
            AuthError::Forbidden
        );
        live.remove("a");
        assert_eq!(
            live.authenticate("a", Some("tok-a")).unwrap_err(),
            AuthError::Unauthorized
        );
    }

    #[test]
    fn silence_marks_offline_and_a_heartbeat_brings_it_back() {
        let live = Live::default();
        live.insert("a", token_hash("t"));
        let later = Instant::now() + Duration::from_secs(16);
        let changes = live.sweep(later, Duration::from_secs(15));
        assert_eq!(
            changes,
            vec![StatusChange {
                agent_id: "a".into(),
                from: AgentStatus::Online,
                to: AgentStatus::Offline
            }]
        );
        live.persisted(&changes[0], true);
        assert_eq!(live.status("a"), Some(AgentStatus::Offline));
        live.heartbeat(rec("a"));
        let back = live.sweep(Instant::now(), Duration::from_secs(15));
        assert_eq!(back[0].to, AgentStatus::Online);
        assert_eq!(live.take_pending().len(), 1);
        assert!(live.take_pending().is_empty());
    }
}
