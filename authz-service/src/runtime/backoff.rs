//! Failure backoff shared by every fetcher that talks to someone else's endpoint (JWKS, OAuth
//! token endpoints).
//!
//! The rule is "one failure, one step": a fetch that fails sets a deadline before which nobody
//! (neither a request nor the background refresher) starts another one; whoever fetches first
//! after the deadline takes the next step, and everybody else sees its result. Delays double
//! from `min` up to `max` with jitter in the upper half, so replicas that failed together do
//! not retry in step. An endpoint that comes back is therefore used within one step.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub min: Duration,
    pub max: Duration,
}

impl BackoffPolicy {
    /// The delay after the `failures`-th consecutive failure (1-based), before jitter.
    pub fn full_delay(&self, failures: u32) -> Duration {
        self.min
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max)
            .max(self.min)
    }

    /// The delay with jitter: a random point in the upper half of the full delay.
    pub fn delay(&self, failures: u32) -> Duration {
        let full = self.full_delay(failures);
        let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
        full.mul_f64(jitter)
            .max(Duration::from_millis(10).min(full))
    }
}

/// Consecutive failures and the deadline before which no new fetch may start.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// Records one failed fetch: one step. Returns the delay chosen.
    pub fn failed(&mut self, policy: &BackoffPolicy, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = policy.delay(self.failures);
        self.until = Some(now + d);
        d
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// Time left before a fetch may start; `None` when one may start now.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until
            .filter(|u| *u > now)
            .map(|u| u.saturating_duration_since(now))
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_is_one_doubling_step_with_jitter_and_a_cap() {
        let p = BackoffPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let mut b = Backoff::default();
        let now = Instant::now();
        for n in 1..=10u32 {
            let d = b.failed(&p, now);
            let full = Duration::from_secs(1 << (n - 1)).min(p.max);
            assert!(d <= full && d >= full / 2, "step {n}: {d:?} vs {full:?}");
            assert_eq!(b.failures(), n);
            assert!(b.remaining(now).is_some());
            assert!(b.remaining(now + full).is_none());
        }
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert!(b.remaining(now).is_none());
    }
}
