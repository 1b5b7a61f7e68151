//! The coordinator's monotonic clock, with its own stalls taken out.
//!
//! Silence (OFFLINE, lease expiry) and protocol timers (promotion, demote
//! timeouts) are measured on it, never on the wall clock, so a clock step
//! changes nothing. And when the coordinator itself stops running for a
//! while (SIGSTOP, a slow disk, a starved VM), every agent would look
//! silent the moment it resumes although it is the coordinator that was
//! away: such a stall is detected (a ticker calls `now` every 250 ms; a gap
//! of more than 2 s between two calls is the process not running) and
//! removed from the clock, so a frozen coordinator never fails over a
//! healthy fleet.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// A gap between two readings longer than this is a stall.
const STALL: Duration = Duration::from_secs(2);
/// How often the ticker reads the clock.
pub const TICK: Duration = Duration::from_millis(250);

struct State {
    last: Instant,
    stalled: Duration,
}

pub struct MonoClock {
    state: Mutex<State>,
}

impl Default for MonoClock {
    fn default() -> Self {
        MonoClock {
            state: Mutex::new(State {
                last: Instant::now(),
                stalled: Duration::ZERO,
            }),
        }
    }
}

impl MonoClock {
    pub fn new() -> MonoClock {
        MonoClock::default()
    }

    /// Now, minus every stall so far.
    pub fn now(&self) -> Instant {
        let real = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gap = real.saturating_duration_since(s.last);
        if gap > STALL {
            let lost = gap - TICK;
            s.stalled += lost;
            tracing::warn!(stalled = ?lost, total = ?s.stalled,
                "the coordinator did not run for a while (frozen, starved or paused); silence and timers discount it");
        }
        s.last = real;
        real.checked_sub(s.stalled).unwrap_or(real)
    }

    /// Total time discounted so far.
    pub fn stalled(&self) -> Duration {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stalled
    }
}

/// Test builds (`failpoints` feature) step the wall clock by the offset in
/// milliseconds found in `SPOT_COORDINATOR_CLOCK_OFFSET_FILE` (re-read at
/// most every 200 ms): the nemesis steps the coordinator's clock by
/// rewriting that file. Always 0 in release builds.
#[cfg(feature = "failpoints")]
pub fn test_offset_ms(now_ms: i64) -> i64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI64, Ordering};
    static FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    static OFFSET: AtomicI64 = AtomicI64::new(0);
    static READ_AT: AtomicI64 = AtomicI64::new(i64::MIN);
    let Some(path) = FILE.get_or_init(|| {
        std::env::var_os("SPOT_COORDINATOR_CLOCK_OFFSET_FILE").map(std::path::PathBuf::from)
    }) else {
        return 0;
    };
    if now_ms.saturating_sub(READ_AT.load(Ordering::Relaxed)) >= 200 {
        READ_AT.store(now_ms, Ordering::Relaxed);
        let v = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        OFFSET.store(v, Ordering::Relaxed);
    }
    OFFSET.load(Ordering::Relaxed)
}

#[cfg(not(feature = "failpoints"))]
pub fn test_offset_ms(_now_ms: i64) -> i64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_taken_out_and_steady_time_is_not() {
        let c = MonoClock::new();
        let t0 = c.now();
        for _ in 0..40 {
            tokio::time::advance(TICK).await;
            c.now();
        }
        assert_eq!(
            c.now() - t0,
            TICK * 40,
            "regular readings: nothing discounted"
        );
        // The process is frozen for 40 s.
        tokio::time::advance(Duration::from_secs(40)).await;
        let after = c.now();
        assert_eq!(after - t0, TICK * 40 + TICK, "the stall counts as one tick");
        assert_eq!(c.stalled(), Duration::from_secs(40) - TICK);
    }
}
