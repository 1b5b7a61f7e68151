//! The coordinator's background tasks. Each has one shape: a module with
//! `pub async fn run(state: Arc<AppState>) -> anyhow::Result<()>` that
//! loops on a [`Schedule`] (its tick, optionally a wake-up, never after
//! shutdown), runs one pass, logs a failed pass and retries on the next.
//! `spawn_all` hands every one to the supervisor, which stops the
//! coordinator if one ends or panics before shutdown.

pub mod clock;
pub mod decide;
pub mod events;
pub mod executor;
pub mod fast_restore;
pub mod monitor;
pub mod pricing;
pub mod reconcile;
pub mod retention;
pub mod snapshots;

use crate::state::AppState;
use spot_runtime::supervise::Supervisor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};

/// Spawn every background task of a serving coordinator.
pub fn spawn_all(tasks: &mut Supervisor, state: &Arc<AppState>) {
    tasks.spawn("clock", clock::run(Arc::clone(state)));
    tasks.spawn("monitor", monitor::run(Arc::clone(state)));
    tasks.spawn("reconciler", reconcile::run(Arc::clone(state)));
    tasks.spawn("pricing job", pricing::run(Arc::clone(state)));
    tasks.spawn("retention", retention::run(Arc::clone(state)));
    tasks.spawn("decision engine", decide::run(Arc::clone(state)));
    tasks.spawn("event feed", events::run(Arc::clone(state)));
    tasks.spawn("snapshots", snapshots::run(Arc::clone(state)));
    if let Some(ec2) = &state.ec2 {
        let executor = executor::run(Arc::clone(state), Arc::clone(ec2));
        tasks.spawn("ec2 executor", executor);
        let fast_restore = fast_restore::run(Arc::clone(state), Arc::clone(ec2));
        tasks.spawn("fast snapshot restore", fast_restore);
    }
}

/// For a task that acts on every group while this coordinator acts (the
/// leader): the groups now, or `None` (not acting, or the read failed:
/// logged, for `what`; the next tick tries again).
pub async fn acting_groups(
    state: &AppState,
    what: &str,
) -> Option<Vec<spot_common::wire::GroupView>> {
    use crate::store::Read;
    if !state.view.acting() {
        return None;
    }
    match state.db.read(|s| s.groups()).await {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %spot_common::error_chain(&e), "reading groups for {what}; next tick");
            None
        }
    }
}

/// When a task runs its next pass: at each tick (a missed tick is delayed,
/// never burst), at its wake-up if it has one, and never after shutdown.
pub struct Schedule<'a> {
    tick: Interval,
    wake: Option<&'a Notify>,
    state: &'a AppState,
}

impl<'a> Schedule<'a> {
    /// Every `period`, the first pass at once.
    pub fn every(period: Duration, state: &'a AppState) -> Self {
        Self::with(tokio::time::interval(period), state)
    }

    /// Every `period`, the first pass one period from now.
    pub fn after(period: Duration, state: &'a AppState) -> Self {
        let first = tokio::time::Instant::now() + period;
        Self::with(tokio::time::interval_at(first, period), state)
    }

    fn with(mut tick: Interval, state: &'a AppState) -> Self {
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Schedule {
            tick,
            wake: None,
            state,
        }
    }

    /// Also run a pass when `wake` is notified.
    pub fn or_on(mut self, wake: &'a Notify) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Wait for the next pass: `true` to run it, `false` at shutdown.
    /// Cancel-safe (a notification is kept until the next call).
    pub async fn next(&mut self) -> bool {
        let wake = async {
            match self.wake {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.state.shutdown.cancelled() => false,
            _ = self.tick.tick() => true,
            _ = wake => true,
        }
    }
}
