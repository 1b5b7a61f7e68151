//! The one retry policy family (`spot_common::retry`) as delays: capped
//! exponential backoff with "equal jitter": the delay before retry `n` is
//! drawn uniformly from `[ceiling(n) / 2, ceiling(n)]`, so a fleet never
//! retries in lockstep and never waits longer than the policy's cap.
//! (backon's jitter adds up to the whole delay on top, doubling the cap a
//! fleet of agents would really wait; this was measured by the test below.)

use rand::Rng;
use spot_common::retry::RetryPolicy;
use std::future::Future;
use std::time::Duration;

/// The delays before each retry; endless for a policy without a limit.
pub fn delays(policy: RetryPolicy) -> impl Iterator<Item = Duration> {
    let limit = policy.max_retries.unwrap_or(usize::MAX);
    (0u32..).take(limit).map(move |n| {
        let ceiling = policy.ceiling(n);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=spread))
    })
}

/// Full jitter: each delay uniform in `[0, ceiling]`. For registration,
/// where a whole fleet retries at once (a coordinator restart, a new
/// fleet): the spread, not the mean, is what keeps the storm flat.
pub fn full_jitter(policy: RetryPolicy) -> impl Iterator<Item = Duration> {
    let limit = policy.max_retries.unwrap_or(usize::MAX);
    (0u32..).take(limit).map(move |n| {
        let ceiling = u64::try_from(policy.ceiling(n).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    })
}

/// Call `op` until it succeeds, fails with an error `retryable` refuses, or
/// the policy runs out of retries; `notify` sees each retried error.
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    mut op: F,
    retryable: impl Fn(&E) -> bool,
    mut notify: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = delays(policy);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) => match delays.next() {
                Some(wait) => {
                    notify(&e, wait);
                    tokio::time::sleep(wait).await;
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_common::retry::{COORDINATOR_RECONNECT, EC2_CALL};

    #[test]
    fn full_jitter_spreads_over_the_whole_window_under_the_cap() {
        let p = spot_common::retry::COORDINATOR_LINK;
        let v: Vec<_> = full_jitter(p).take(400).collect();
        assert!(v.iter().enumerate().all(|(n, d)| *d <= p.ceiling(n as u32)));
        // Past the cap, a quarter of the delays land in its lower half
        // (equal jitter would put none there).
        let low = v[20..].iter().filter(|d| **d < p.max_delay / 2).count();
        assert!(low > 380 / 4, "{low} of 380 below half the cap");
    }

    #[test]
    fn delays_stay_under_the_cap_and_limited_policies_end() {
        let v: Vec<_> = delays(COORDINATOR_RECONNECT).take(50).collect();
        assert!(
            v.iter().all(|d| *d <= COORDINATOR_RECONNECT.max_delay),
            "{v:?}"
        );
        assert!(
            v[10..]
                .iter()
                .all(|d| *d >= COORDINATOR_RECONNECT.max_delay / 2),
            "{v:?}"
        );
        assert_eq!(delays(EC2_CALL).count(), EC2_CALL.max_retries.unwrap_or(0));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_what_is_retryable_and_gives_up() {
        // Fails with `error` every time; only "throttled" is retryable.
        async fn failing(error: &'static str) -> (Result<(), &'static str>, usize) {
            let mut calls = 0;
            let r = retry(
                EC2_CALL,
                || {
                    calls += 1;
                    async move { Err(error) }
                },
                |e| *e == "throttled",
                |_, _| {},
            )
            .await;
            (r, calls)
        }
        let (r, calls) = failing("throttled").await;
        assert!(r.is_err());
        assert_eq!(calls, 1 + EC2_CALL.max_retries.unwrap_or(0));
        assert_eq!(failing("auth").await, (Err("auth"), 1));
    }
}
