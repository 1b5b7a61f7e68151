//! In-memory liveness and auth of agents.
//!
//! Heartbeats are the hot path (10,000 agents every 5 s is 2,000 a second):
//! they update this table only. The monitor persists them in batches and is
//! the single writer of ONLINE/OFFLINE to the store, so a heartbeat racing
//! the offline sweep can never leave the store and memory disagreeing.
//! Silence is measured here, on the coordinator's monotonic clock
//! (`clock::MonoClock`, stalls discounted), never from stored wall times;
//! after a restart every agent gets a full window from the start.
//! Locks here are `std` locks held for a few map operations, never across
//! an `.await`.

use crate::store::{AgentAuth, AgentLive as AgentView, HeartbeatRecord};
use spot_common::{AgentStatus, Role, token_hash};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Missing or unknown token: 401.
    Unauthorized,
    /// A valid token used on another agent's path: 403.
    Forbidden,
}

struct AgentLive {
    token_hash: String,
    instance_id: String,
    /// The truth, decided here.
    status: AgentStatus,
    /// What the store holds; the monitor reconciles the two.
    persisted: AgentStatus,
    last_seen: Instant,
    pending: Option<HeartbeatRecord>,
    /// Its last report: role and role epoch.
    report: Option<(Option<Role>, u64)>,
    /// The kind of disagreement between its report and the store, last
    /// seen (so each is counted and audited once).
    disagreement: Option<&'static str>,
    /// The epoch of a PRIMARY claim refused for want of a valid grant:
    /// refused (and audited) once, not at every heartbeat.
    refused_claim: Option<u64>,
    /// Wakes the agent's long-poll when a command is queued.
    notify: Arc<Notify>,
    /// Past LAUNCHING: no need to ask the store on each healthy heartbeat.
    settled: bool,
    /// Events in its outbox not yet acknowledged, per its last heartbeat.
    backlog: u64,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, AgentLive>,
    by_token: HashMap<String, String>,
    /// Instance -> its latest agent.
    by_instance: HashMap<String, String>,
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
    /// from `now`, so a coordinator restart does not mark the fleet offline
    /// and no PRIMARY looks silent.
    pub fn from_store(agents: Vec<AgentAuth>, now: Instant) -> Live {
        let live = Live::default();
        for a in agents {
            live.insert_at(&a.agent_id, a.token_hash, &a.instance_id, a.status, now);
        }
        live
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_at(
        &self,
        agent_id: &str,
        token_hash: String,
        instance_id: &str,
        status: AgentStatus,
        now: Instant,
    ) {
        let mut g = self.write();
        g.by_token.insert(token_hash.clone(), agent_id.to_owned());
        g.by_instance
            .insert(instance_id.to_owned(), agent_id.to_owned());
        g.agents.entry(agent_id.to_owned()).or_insert(AgentLive {
            token_hash,
            instance_id: instance_id.to_owned(),
            status,
            persisted: status,
            last_seen: now,
            pending: None,
            report: None,
            backlog: 0,
            disagreement: None,
            refused_claim: None,
            notify: Arc::new(Notify::new()),
            settled: false,
        });
    }

    /// A newly registered agent (ONLINE in the store already).
    pub fn insert(&self, agent_id: &str, token_hash: String, instance_id: &str, now: Instant) {
        self.insert_at(agent_id, token_hash, instance_id, AgentStatus::Online, now);
    }

    /// Forget an agent (deleted or replaced): its token stops working.
    pub fn remove(&self, agent_id: &str) {
        let mut g = self.write();
        if let Some(a) = g.agents.remove(agent_id) {
            g.by_token.remove(&a.token_hash);
            if g.by_instance.get(&a.instance_id).map(String::as_str) == Some(agent_id) {
                g.by_instance.remove(&a.instance_id);
            }
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

    /// The instance an agent registered for.
    pub fn instance_of(&self, agent_id: &str) -> Option<String> {
        self.read()
            .agents
            .get(agent_id)
            .map(|a| a.instance_id.clone())
    }

    /// The agent of `instance` that is live: ONLINE, or heard within
    /// `lease` (a second registration of its instance is refused, so a
    /// holder of an enrollment token cannot take a serving agent's place).
    pub fn live_agent_of(&self, instance: &str, now: Instant, lease: Duration) -> Option<String> {
        let g = self.read();
        let id = g.by_instance.get(instance)?;
        let a = g.agents.get(id)?;
        let live =
            a.status == AgentStatus::Online || now.saturating_duration_since(a.last_seen) <= lease;
        (live && a.status != AgentStatus::Deleted).then(|| id.clone())
    }

    /// Record a heartbeat. Returns whether the agent still needs its
    /// health reported to the store (it may be LAUNCHING).
    pub fn heartbeat(&self, rec: HeartbeatRecord, role_epoch: u64, now: Instant) -> bool {
        let mut g = self.write();
        let Some(a) = g.agents.get_mut(&rec.agent_id) else {
            return false;
        };
        a.last_seen = now;
        // A deleted agent keeps its token only to fetch its cleanup command.
        if a.status == AgentStatus::Deleted {
            return false;
        }
        a.status = AgentStatus::Online;
        a.report = Some((rec.reported_role, role_epoch));
        a.backlog = rec.backlog;
        let needs_store = rec.healthy && !a.settled;
        a.pending = Some(rec);
        needs_store
    }

    /// Record the agent's disagreement with the store (`None`: they agree).
    /// True when it changed to a new kind: count and audit it once.
    pub fn disagreement(&self, agent_id: &str, kind: Option<&'static str>) -> bool {
        let mut g = self.write();
        let Some(a) = g.agents.get_mut(agent_id) else {
            return false;
        };
        let changed = a.disagreement != kind;
        a.disagreement = kind;
        changed && kind.is_some()
    }

    /// Remember that the agent's PRIMARY claim at `epoch` was refused;
    /// true when it was not refused at that epoch already.
    pub fn refuse_claim(&self, agent_id: &str, epoch: u64) -> bool {
        let mut g = self.write();
        let Some(a) = g.agents.get_mut(agent_id) else {
            return false;
        };
        a.refused_claim.replace(epoch) != Some(epoch)
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
            if a.status == AgentStatus::Online
                && now.saturating_duration_since(a.last_seen) > offline_after
            {
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

    /// A batch the store refused goes back, unless a newer heartbeat of
    /// the same agent arrived meanwhile: nothing is lost.
    pub fn restore_pending(&self, batch: Vec<HeartbeatRecord>) {
        let mut g = self.write();
        for rec in batch {
            if let Some(a) = g.agents.get_mut(&rec.agent_id)
                && a.pending.is_none()
            {
                a.pending = Some(rec);
            }
        }
    }

    /// How long `agent_id` has been silent; `None` for an unknown agent.
    pub fn silent_ms(&self, agent_id: &str, now: Instant) -> Option<i64> {
        let g = self.read();
        let a = g.agents.get(agent_id)?;
        let silent = now.saturating_duration_since(a.last_seen);
        Some(i64::try_from(silent.as_millis()).unwrap_or(i64::MAX))
    }

    /// What the planner needs per agent: online, silence, last report.
    pub fn view(&self, now: Instant) -> HashMap<String, AgentView> {
        self.read()
            .agents
            .iter()
            .map(|(id, a)| {
                let silent = now.saturating_duration_since(a.last_seen);
                (
                    id.clone(),
                    AgentView {
                        online: a.status == AgentStatus::Online,
                        silent_ms: Some(i64::try_from(silent.as_millis()).unwrap_or(i64::MAX)),
                        reported: a.report,
                    },
                )
            })
            .collect()
    }

    /// ONLINE agents whose outbox holds more than `threshold` events: their
    /// link delivers slowly or events are refused.
    pub fn backlogged(&self, threshold: u64) -> i64 {
        let g = self.read();
        let n = g
            .agents
            .values()
            .filter(|a| a.status == AgentStatus::Online && a.backlog > threshold)
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
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
    fn an_instance_has_a_live_agent_until_it_is_offline_past_its_lease() {
        let live = Live::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(15);
        live.insert("a", token_hash("tok-a"), "i-a", t0);
        assert_eq!(live.live_agent_of("i-a", t0, lease).as_deref(), Some("a"));
        assert_eq!(live.live_agent_of("i-b", t0, lease), None);
        // OFFLINE, but heard within the lease: still live.
        let t1 = t0 + Duration::from_secs(20);
        live.sweep(t1, Duration::from_secs(15));
        assert_eq!(live.status("a"), Some(AgentStatus::Offline));
        assert_eq!(
            live.live_agent_of("i-a", t0 + Duration::from_secs(10), lease)
                .as_deref(),
            Some("a")
        );
        assert_eq!(live.live_agent_of("i-a", t1, lease), None);
        // A heartbeat brings it back; a removed (reset) agent is nobody.
        live.heartbeat(rec("a"), 0, t1);
        assert_eq!(live.live_agent_of("i-a", t1, lease).as_deref(), Some("a"));
        live.remove("a");
        assert_eq!(live.live_agent_of("i-a", t1, lease), None);
    }

    #[test]
    fn wrong_token_is_401_and_foreign_token_is_403() {
        let live = Live::default();
        let now = Instant::now();
        live.insert("a", token_hash("tok-a"), "i-a", now);
        live.insert("b", token_hash("tok-b"), "i-b", now);
        assert!(live.authenticate("a", Some("tok-a")).is_ok());
        assert_eq!(live.instance_of("a").as_deref(), Some("i-a"));
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
        let t0 = Instant::now();
        live.insert("a", token_hash("t"), "i-a", t0);
        let later = t0 + Duration::from_secs(16);
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
        assert_eq!(live.view(later)["a"].silent_ms, Some(16_000));
        live.heartbeat(rec("a"), 0, later);
        let back = live.sweep(later, Duration::from_secs(15));
        assert_eq!(back[0].to, AgentStatus::Online);
        let batch = live.take_pending();
        assert_eq!(batch.len(), 1);
        assert!(live.take_pending().is_empty());
        // A refused batch comes back.
        live.restore_pending(batch);
        assert_eq!(live.take_pending().len(), 1);
    }

    #[test]
    fn a_disagreement_is_reported_once_per_kind() {
        let live = Live::default();
        live.insert("a", token_hash("t"), "i-a", Instant::now());
        assert!(live.disagreement("a", Some("store_primary_not_serving")));
        assert!(!live.disagreement("a", Some("store_primary_not_serving")));
        assert!(!live.disagreement("a", None));
        assert!(live.disagreement("a", Some("store_primary_not_serving")));
    }

    #[test]
    fn an_agent_with_a_growing_outbox_is_flagged() {
        let live = Live::default();
        let now = Instant::now();
        live.insert("a", token_hash("t"), "i-a", now);
        live.insert("b", token_hash("u"), "i-b", now);
        live.heartbeat(
            HeartbeatRecord {
                backlog: 150,
                ..rec("a")
            },
            0,
            now,
        );
        live.heartbeat(
            HeartbeatRecord {
                backlog: 100,
                ..rec("b")
            },
            0,
            now,
        );
        assert_eq!(live.backlogged(100), 1);
        live.heartbeat(rec("a"), 0, now);
        assert_eq!(live.backlogged(100), 0, "drained");
    }
}
