//! The agent's wall clock, behind a trait so tests can set it. Wall time is
//! used only for what is wall time by nature: journal timestamps and the
//! coordinator's command deadlines. Durations (leases, intervals) use
//! `tokio::time::Instant`, which tests pause and advance.
//!
//! Test builds (`failpoints` feature) read a clock offset in milliseconds
//! from `SPOT_AGENT_CLOCK_OFFSET_FILE` when it is set: the nemesis steps an
//! agent's clock by rewriting that file.

use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

fn system_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The system clock (plus the test-only offset).
#[derive(Debug, Default)]
pub struct SystemClock {
    offset_file: Option<std::path::PathBuf>,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let offset_file = cfg!(feature = "failpoints")
            .then(|| std::env::var_os("SPOT_AGENT_CLOCK_OFFSET_FILE"))
            .flatten()
            .map(std::path::PathBuf::from);
        SystemClock { offset_file }
    }

    fn offset(&self) -> i64 {
        self.offset_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_ms().saturating_add(self.offset())
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicI64);

impl FakeClock {
    pub fn at(ms: i64) -> FakeClock {
        FakeClock(AtomicI64::new(ms))
    }

    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
