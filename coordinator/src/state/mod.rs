//! What every handler and background task shares: the configuration, the
//! store, the live view of agents, metrics, the wake-ups between tasks and
//! the dashboard's sessions; and `prepare`, which builds it from a config.
//!
//! Direction: `api` and `tasks` use `state`; `state` uses `store`, `live`,
//! `metrics` and `clock`; nothing here knows a handler or a task.

pub mod admission;
pub mod cluster;
mod group_commit;
pub mod limits;
mod sessions;
mod streams;

pub use sessions::{SESSION_MS, Session, Sessions, TooManySessions};
pub use streams::{FEED_BUFFER, Feed, FeedEntry, STREAMS_PER_TOKEN, Slot, StreamCounts};

use crate::clock::MonoClock;
use crate::config::Config;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::store::{COORDINATOR_EXECUTOR, Db, Done, Read};
use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Shared by every handler and background task.
pub struct AppState {
    pub config: Config,
    pub db: Db,
    pub live: Live,
    /// The process's metrics: they outlive a leader term.
    pub metrics: Arc<Metrics>,
    /// Who leads (always this coordinator on SQLite).
    pub view: Arc<cluster::View>,
    /// Monotonic time with the coordinator's own stalls taken out.
    pub clock: MonoClock,
    pub enrollment_token_hash: String,
    pub admin_token_hash: String,
    pub started: Instant,
    /// Unix ms of the start: an agent not heard since may hold an epoch a
    /// restored store never saw (`ReplaceRequest::heard_since_ms`).
    pub started_at_ms: i64,
    /// Cancelled on shutdown, or when this coordinator's leader term ends:
    /// every task stops, long-polls answer at once.
    pub shutdown: CancellationToken,
    /// Something happened that may need a failover decision.
    pub reconcile: Notify,
    /// Commands were queued for the coordinator's own EC2 executor.
    pub executor_wake: Notify,
    /// New evidence (consolidated prices) for the decision engine.
    pub decide: Notify,
    /// The dashboard's login sessions.
    pub sessions: Sessions,
    /// New audit entries, for every open event stream (`tasks::events`).
    pub events: Feed,
    /// Open event streams per token.
    pub streams: StreamCounts,
    /// Shedding of agent requests under overload.
    pub admission: admission::Admission,
    /// Signs the grant of every promote, verifies a PRIMARY's claim.
    pub grant_keys: crate::grants::GrantKeys,
    /// Registration's proof of identity (`identity`, `identity_ca`).
    pub identity: Arc<crate::identity::IdentityCheck>,
    /// Dashboard login attempts per source address.
    pub login_limit: limits::PerSource,
    /// Agent registrations (and enrollment token guesses) per source.
    pub register_limit: limits::PerSource,
    /// Heartbeat answers while the roles did not change.
    pub roles: RoleCache,
    /// First healthy beats waiting to share a commit.
    pub first_beats: group_commit::GroupCommit<(spot_common::Role, u64)>,
    /// Registrations waiting to share a commit.
    pub registrations: group_commit::GroupCommit<crate::store::Registered>,
    /// Groups whose transition waits for EC2's view (set by the
    /// reconciler): their agents' heartbeat answers ask for it.
    pub ec2_view_wanted: Ec2ViewWanted,
    /// The coordinator's own EC2 client: `Some` with `ec2_executor`.
    pub ec2: Option<Arc<dyn spot_runtime::ec2::Ec2Api>>,
    /// Fast snapshot restore per group, as this term's task last saw it in
    /// EC2 (`GET /v1/groups/{name}/volumes` shows it).
    pub fast_restores: FastRestores,
}

/// Where each group's newest snapshots have fast snapshot restore.
#[derive(Default)]
pub struct FastRestores(Mutex<HashMap<String, Vec<spot_common::wire::FastRestoreStatus>>>);

impl FastRestores {
    /// What `group` has now (empty: off, or not seen yet).
    pub fn get(&self, group: &str) -> Vec<spot_common::wire::FastRestoreStatus> {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(group).cloned().unwrap_or_default()
    }

    pub fn set(&self, group: &str, now: Vec<spot_common::wire::FastRestoreStatus>) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_empty() {
            seen.remove(group);
        } else {
            seen.insert(group.to_owned(), now);
        }
    }
}

/// The groups whose agents are asked, in their heartbeat answers, to
/// report EC2's view of the group now (`report_ec2_view`). An agent sends
/// that view only when it changes, so after a start (or a leader change)
/// a calm group would otherwise never send the one the grant waits for.
#[derive(Default)]
pub struct Ec2ViewWanted(std::sync::RwLock<std::collections::HashSet<String>>);

impl Ec2ViewWanted {
    pub fn set(&self, group: &str, wanted: bool) {
        if self.wanted(group) == wanted {
            return;
        }
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        if wanted {
            g.insert(group.to_owned());
        } else {
            g.remove(group);
        }
    }

    /// Every group whose view is wanted now.
    pub fn groups(&self) -> Vec<String> {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        g.iter().cloned().collect()
    }

    pub fn wanted(&self, group: &str) -> bool {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        !g.is_empty() && g.contains(group)
    }
}

/// The heartbeat answers read from the store, per agent, with the stamp
/// (`store::Stamp`) taken before each was read: while nothing wrote the
/// agent's group or its instance's role since, a heartbeat answers from
/// here and never waits on the store.
#[derive(Default)]
pub struct RoleCache {
    answers: std::sync::Mutex<
        std::collections::HashMap<String, (crate::store::Stamp, crate::store::RoleOf)>,
    >,
}

impl RoleCache {
    pub fn get(&self, agent_id: &str, stamp: crate::store::Stamp) -> Option<crate::store::RoleOf> {
        let g = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        g.get(agent_id)
            .filter(|(at, _)| *at == stamp)
            .map(|(_, r)| r.clone())
    }

    /// Keep `r`, read after `stamp` was taken. Agents come and go (each
    /// replacement instance is a new one): past [`ROLE_CACHE_MAX`] answers
    /// the cache starts over rather than keep the departed forever.
    pub fn put(&self, agent_id: &str, stamp: crate::store::Stamp, r: crate::store::RoleOf) {
        let mut g = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= ROLE_CACHE_MAX && !g.contains_key(agent_id) {
            g.clear();
        }
        g.insert(agent_id.to_owned(), (stamp, r));
    }

    /// Answers held now.
    pub fn held(&self) -> usize {
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Cached heartbeat answers at most: four times the 25,000 agents one
/// coordinator is sized for.
pub const ROLE_CACHE_MAX: usize = 100_000;

/// Unix milliseconds: what is wall time by nature (stored timestamps,
/// command deadlines, notice times). Timers use `clock::MonoClock`.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    ms.saturating_add(crate::clock::test_offset_ms(ms))
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl AppState {
    /// Wake the long-polls of the agents a committed transaction queued
    /// commands for, and hand back its answer.
    pub fn woke<T>(&self, done: Done<T>) -> T {
        for agent in &done.wake {
            if agent == COORDINATOR_EXECUTOR {
                self.executor_wake.notify_one();
            } else {
                self.live.wake(agent);
            }
        }
        done.value
    }
}

/// Use the configured token, else the one kept in the data dir, else a new
/// one (printed once, then kept with mode 0600).
fn resolve_token(data_dir: &Path, name: &str, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(t) = configured {
        return Ok(t.to_owned());
    }
    let path = data_dir.join(format!("{name}.token"));
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = random_token();
    spot_runtime::fs::write_private(&path, &token)
        .with_context(|| format!("writing {}", path.display()))?;
    // Printed on stdout once, on purpose: this is how the operator learns it.
    println!(
        "generated {name} token (kept in {}): {token}",
        path.display()
    );
    Ok(token)
}

/// What every leader term of this process shares, opened once at start:
/// the configuration, the store, the tokens and keys, the metrics and the
/// view of who leads.
pub struct Shared {
    pub config: Config,
    pub db: Db,
    pub metrics: Arc<Metrics>,
    pub view: Arc<cluster::View>,
    enrollment_token_hash: String,
    admin_token_hash: String,
    grant_keys: crate::grants::GrantKeys,
    identity: Arc<crate::identity::IdentityCheck>,
    /// The coordinator's own EC2 client, with `ec2_executor` (`connect_ec2`):
    /// one for the executor, fast snapshot restore and the API's checks.
    pub ec2: Option<Arc<dyn spot_runtime::ec2::Ec2Api>>,
}

/// Open the data dir and the store; everything `serve` needs before it
/// accepts connections. `bound` is the address the listener got (for the
/// advertised URL when none is configured). On PostgreSQL the store's
/// writes are fenced from the start: nothing is written before this
/// coordinator leads.
pub fn open(config: Config, bound: std::net::SocketAddr) -> anyhow::Result<Shared> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let enrollment = resolve_token(
        &config.data_dir,
        "enrollment",
        config.enrollment_token.as_deref(),
    )?;
    let admin = resolve_token(&config.data_dir, "admin", config.admin_token.as_deref())?;
    let grant_keys = crate::grants::GrantKeys::load_or_create(&config.data_dir)
        .context("loading the grant keys")?;
    let identity = crate::identity::IdentityCheck::load(&config)?;
    if identity.mode() == crate::config::IdentityMode::Trust {
        tracing::warn!(
            "identity = \"trust\": registrations are not verified, so any holder of an \
             enrollment token may register as any instance (for simulators and metadata mocks)"
        );
    }
    let shared_store = config.store_url.is_postgres();
    let db = Db::open_url(&config.store_url, shared_store)
        .with_context(|| format!("opening the store {}", config.store_url))?;
    let advertised = config.advertised(bound);
    let view = if shared_store {
        cluster::View::new(advertised, "postgres")
    } else {
        cluster::View::solo(advertised)
    };
    Ok(Shared {
        db,
        metrics: Arc::new(Metrics::new()),
        view: Arc::new(view),
        enrollment_token_hash: spot_common::token_hash(&enrollment),
        admin_token_hash: spot_common::token_hash(&admin),
        grant_keys,
        identity: Arc::new(identity),
        ec2: None,
        config,
    })
}

impl Shared {
    /// With `ec2_executor`, the EC2 client every user of the coordinator's
    /// own EC2 access shares (its configuration is loaded once, here).
    pub async fn connect_ec2(&mut self) {
        if self.config.ec2_executor {
            let ec2 = spot_runtime::ec2::Ec2::new(&self.config.ec2_region).await;
            self.ec2 = Some(Arc::new(ec2));
        }
    }

    /// The state of one leader term: the live view of agents read afresh
    /// from the store, new timers, new wake-ups; `shutdown` ends it. A
    /// new term starts as a restarted coordinator does (settling first),
    /// so whatever the last leader left half done is finished or rolled
    /// over from the store.
    pub fn term(&self, shutdown: CancellationToken) -> anyhow::Result<Arc<AppState>> {
        let config = self.config.clone();
        let agents = self.db.read_now(|s| s.active_agents())?;
        let clock = MonoClock::new();
        Ok(Arc::new(AppState {
            live: Live::from_store(agents, clock.now()),
            clock,
            metrics: Arc::clone(&self.metrics),
            view: Arc::clone(&self.view),
            enrollment_token_hash: self.enrollment_token_hash.clone(),
            admin_token_hash: self.admin_token_hash.clone(),
            started: Instant::now(),
            started_at_ms: now_ms(),
            shutdown,
            reconcile: Notify::new(),
            executor_wake: Notify::new(),
            decide: Notify::new(),
            sessions: Sessions::default(),
            events: Feed::new(FEED_BUFFER),
            streams: StreamCounts::default(),
            admission: admission::Admission::default(),
            grant_keys: self.grant_keys.clone(),
            identity: Arc::clone(&self.identity),
            // Ten guesses, then one every 6 s: a person mistyping never notices.
            login_limit: limits::PerSource::new(1.0 / 6.0, 10),
            register_limit: limits::PerSource::new(
                f64::from(config.registrations_per_source),
                config.registrations_per_source.saturating_mul(10),
            ),
            roles: RoleCache::default(),
            first_beats: Default::default(),
            registrations: Default::default(),
            ec2_view_wanted: Ec2ViewWanted::default(),
            ec2: self.ec2.clone(),
            fast_restores: FastRestores::default(),
            db: self.db.clone(),
            config,
        }))
    }
}

#[cfg(test)]
mod role_cache_tests {
    use super::{ROLE_CACHE_MAX, RoleCache};
    use crate::store::{Generation, RoleOf};
    use spot_common::Role;

    fn answer(instance: &str) -> RoleOf {
        RoleOf {
            instance_id: instance.into(),
            group: "g".into(),
            role: Role::Replica,
            role_epoch: 0,
            epoch: 1,
            granted: None,
            pricing: None,
        }
    }

    #[test]
    fn an_answer_is_kept_for_its_stamp_only_and_the_cache_stays_bounded() {
        let (g, cache) = (Generation::default(), RoleCache::default());
        let stamp = g.stamp("i-1");
        cache.put("a-1", stamp, answer("i-1"));
        assert_eq!(cache.get("a-1", stamp), Some(answer("i-1")));
        g.moved(&crate::store::generation_touched_all());
        assert_eq!(cache.get("a-1", g.stamp("i-1")), None, "stale after a move");
        for i in 0..ROLE_CACHE_MAX + 10 {
            cache.put(&format!("a-{i}"), stamp, answer("i-1"));
        }
        assert!(cache.held() <= ROLE_CACHE_MAX);
    }
}
