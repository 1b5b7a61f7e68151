//! Who leads: what this coordinator knows of the coordinators sharing its
//! store. With SQLite there is one coordinator and it always leads; on
//! PostgreSQL the leadership loop (`node.rs`) keeps this view up to date
//! from the lease row, and `/healthz`, the follower's redirects and proxy,
//! and the metrics read it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The leader as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leader {
    /// This coordinator leads (its term is running).
    pub leading: bool,
    /// The leader's epoch (the fencing token its writes carry).
    pub epoch: i64,
    /// The leader's advertised URL, when a live lease names one.
    pub url: Option<String>,
}

pub struct View {
    /// How others reach this coordinator.
    pub advertise_url: String,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    leader: Mutex<Leader>,
    /// On PostgreSQL: until when this coordinator may act as the leader,
    /// on its own monotonic clock (the last renewal's send time plus the
    /// lease less a margin). `None` with SQLite: no end.
    acting_until: Mutex<Option<Instant>>,
    /// Milliseconds since `born` of the last sign of life of whatever
    /// drives this process (the leader's monitor or the follower's loop):
    /// what the systemd watchdog is fed on.
    progress_ms: AtomicU64,
    born: Instant,
}

impl View {
    pub fn new(advertise_url: String, store: &'static str) -> View {
        View {
            advertise_url,
            store,
            leader: Mutex::default(),
            acting_until: Mutex::new(None),
            progress_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// A coordinator alone on its store: it leads from the start.
    pub fn solo(advertise_url: String) -> View {
        let v = View::new(advertise_url, "sqlite");
        v.set(Leader {
            leading: true,
            epoch: 0,
            url: Some(v.advertise_url.clone()),
        });
        v
    }

    pub fn leader(&self) -> Leader {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, leader: Leader) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    pub fn leading(&self) -> bool {
        self.leader().leading
    }

    /// Extend (or, with a past instant, end) the time this coordinator may
    /// act as the leader.
    pub fn act_until(&self, until: Instant) {
        *self.acting_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// This coordinator leads and its lease still runs on its own clock:
    /// what it must check before anything a deposed leader must not do
    /// (answer an agent, call EC2). Its writes are fenced in the store
    /// regardless.
    pub fn acting(&self) -> bool {
        self.leading()
            && self
                .acting_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|until| Instant::now() < until)
    }

    /// The leader's URL when it is another coordinator.
    pub fn leader_elsewhere(&self) -> Option<String> {
        let l = self.leader();
        l.url.filter(|u| !l.leading && *u != self.advertise_url)
    }

    /// A sign of life of the loop that runs this process.
    pub fn progress(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last sign of life.
    pub fn since_progress(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}
