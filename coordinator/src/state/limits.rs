//! Limits per source address, so one caller cannot hurt the rest: dashboard
//! login attempts (a token guesser) and agent registrations (a forger
//! minting identities). A token bucket per source IP; the source is the
//! TCP peer, so behind a load balancer it is the balancer's address (put
//! the limit there, or raise this one). A fleet's registration storm comes
//! from as many addresses as instances, so it never meets the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources remembered before full buckets are forgotten.
const PRUNE_AT: usize = 10_000;

#[derive(Debug)]
pub struct PerSource {
    /// Tokens per second; 0 is no limit.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl PerSource {
    /// `rate` per second with bursts of `burst`; a `rate` of 0 allows all.
    pub fn new(rate: f64, burst: u32) -> PerSource {
        PerSource {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Take one token for `source`, or say how long until one is there.
    pub fn take(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = b.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let l = PerSource::new(2.0, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.take(a, t).is_ok());
        }
        let wait = l.take(a, t).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(l.take(b, t).is_ok(), "another source is not limited");
        // Half a second at 2/s: one more.
        let later = t + Duration::from_millis(500);
        assert!(l.take(a, later).is_ok());
        assert!(l.take(a, later).is_err());
        // No limit at rate 0.
        let off = PerSource::new(0.0, 1);
        for _ in 0..100 {
            assert!(off.take(a, t).is_ok());
        }
    }
}
