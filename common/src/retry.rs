//! The one retry policy family. Every retrying caller (agent -> coordinator,
//! agent -> EC2) picks a named policy here and wraps it in its overall
//! deadline; `spot_runtime::retry` turns it into delays.

use std::time::Duration;

/// Capped exponential backoff; the runtime adds a random jitter of up to
/// `min_delay` to each delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub factor: u32,
    /// Attempts after the first; `None` retries until the caller's deadline.
    pub max_retries: Option<usize>,
}

/// Agent -> coordinator. Starts fast (a restarting coordinator is back in
/// about a second) and caps at 30 s so a fleet of 10,000 agents does not
/// hammer a coordinator that is coming back; retries forever because the
/// outbox keeps everything until it is delivered.
pub const COORDINATOR_LINK: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(30),
    factor: 2,
    max_retries: None,
};

/// Agent -> coordinator for the long-poll and the outbox once registered.
/// Capped at 5 s, not 30: after a coordinator outage an emergency command
/// and the results the coordinator waits for (a promotion's) must flow
/// within seconds, and these calls are as frequent as heartbeats anyway
/// (jitter spreads a fleet's reconnections).
pub const COORDINATOR_RECONNECT: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(5),
    factor: 2,
    max_retries: None,
};

/// Agent -> EC2 for throttling and 5xx. EC2's own guidance is exponential
/// backoff from about 100 ms; 6 retries with a 5 s cap keep a launch inside
/// the 2-minute interruption budget even when every retry waits the cap.
pub const EC2_CALL: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
    factor: 2,
    max_retries: Some(6),
};

impl RetryPolicy {
    /// The un-jittered delay before retry number `n` (0-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let mult = self.factor.saturating_pow(n);
        self.min_delay.saturating_mul(mult).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let p = COORDINATOR_LINK;
        assert_eq!(p.ceiling(0), Duration::from_millis(200));
        assert_eq!(p.ceiling(1), Duration::from_millis(400));
        assert_eq!(p.ceiling(30), Duration::from_secs(30));
    }

    #[test]
    fn ec2_worst_case_fits_the_interruption_budget() {
        let total: Duration = (0..EC2_CALL.max_retries.unwrap() as u32)
            .map(|n| EC2_CALL.ceiling(n))
            .sum();
        assert!(total < Duration::from_secs(30), "{total:?}");
    }
}
