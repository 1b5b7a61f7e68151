//! The agent's clock, behind a trait so tests can set it: Unix milliseconds
//! for journal timestamps and command deadlines. Durations (leases,
//! intervals) use `tokio::time::Instant`, which tests pause and advance.
//!
//! [`SystemClock`] reads the wall clock once, at start, and from then on
//! advances on the monotonic clock: a command's deadline is a budget
//! measured from its receipt (`PollResponse::into_local`), and a step of
//! the system clock (NTP catching up, an operator's `date -s`) must not
//! make a promote look late or a demote look fresh. A restart re-reads the
//! wall clock, so journal timestamps stay close to real time.
//!
//! Test builds (`failpoints` feature) add a clock offset in milliseconds
//! from `SPOT_AGENT_CLOCK_OFFSET_FILE` when it is set. The nemesis steps an
//! agent's system clock by rewriting that file; like a real step, it is
//! seen at the next start only.

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

/// The wall clock at start (plus the test-only offset), advanced on the
/// monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    wall_at_start_ms: i64,
    start: std::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let offset = cfg!(feature = "failpoints")
            .then(|| std::env::var_os("SPOT_AGENT_CLOCK_OFFSET_FILE"))
            .flatten()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        SystemClock {
            wall_at_start_ms: system_ms().saturating_add(offset),
            start: std::time::Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.wall_at_start_ms.saturating_add(elapsed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_starts_at_the_wall_and_advances_monotonically() {
        let c = SystemClock::new();
        let (a, wall) = (c.now_ms(), system_ms());
        assert!((a - wall).abs() < 1_000, "{a} vs {wall}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = c.now_ms();
        assert!(b >= a + 20, "{a} -> {b}");
    }
}
