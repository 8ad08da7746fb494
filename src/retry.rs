//! Retry policy: exponential backoff with full jitter, an attempt cap, and a
//! budget that keeps retries a bounded fraction of traffic.

use std::sync::Mutex;
use std::time::Duration;

use crate::error::Error;
use crate::random::SplitMix64;

/// How an operation is retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts at most, the first included (≥ 1).
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry.
    pub initial_backoff: Duration,
    /// The backoff ceiling never grows past this.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(1000),
        }
    }
}

impl RetryPolicy {
    /// Checks the policy: at least one attempt, and backoffs in order.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_attempts == 0 {
            return Err(Error::InvalidInput(
                "retry policy needs at least one attempt".into(),
            ));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(Error::InvalidInput(
                "retry policy's initial backoff exceeds its maximum".into(),
            ));
        }
        Ok(())
    }

    /// The delay before retry number `retry` (1 = first retry): uniform in
    /// `[0, min(max, initial · 2^(retry-1))]` ("full jitter").
    pub fn backoff(&self, retry: u32, rng: &mut SplitMix64) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.below(nanos.saturating_add(1)))
    }
}

/// A token bucket that lets retries be at most a fraction of first attempts
/// (plus a small reserve), so a struggling database is not hit by a retry
/// storm.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    cap: f64,
    balance: Mutex<f64>,
}

impl RetryBudget {
    /// Each first attempt deposits `ratio` tokens and each retry withdraws
    /// one; the balance starts at `reserve` and never exceeds `reserve +
    /// 100·ratio`.
    pub fn new(ratio: f64, reserve: u32) -> Result<RetryBudget, Error> {
        if !(0.0..=1000.0).contains(&ratio) || ratio.is_nan() {
            return Err(Error::InvalidInput(
                "retry budget ratio must be in [0, 1000]".into(),
            ));
        }
        let reserve = f64::from(reserve);
        Ok(RetryBudget {
            ratio,
            cap: reserve + 100.0 * ratio,
            balance: Mutex::new(reserve),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut f64) -> R) -> R {
        let mut b = self.balance.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut b)
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        let (ratio, cap) = (self.ratio, self.cap);
        self.with(|b| *b = (*b + ratio).min(cap));
    }

    /// Takes a token for a retry; false when the budget is exhausted.
    pub fn withdraw(&self) -> bool {
        self.with(|b| {
            if *b >= 1.0 {
                *b -= 1.0;
                true
            } else {
                false
            }
        })
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(0.2, 100).expect("valid defaults")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy::default();
        let mut rng = SplitMix64::new(1);
        for retry in 1..20 {
            let ceiling = p
                .initial_backoff
                .saturating_mul(1 << (retry - 1).min(31))
                .min(p.max_backoff);
            for _ in 0..50 {
                assert!(p.backoff(retry, &mut rng) <= ceiling);
            }
        }
        let late: Duration = (0..200).map(|_| p.backoff(10, &mut rng)).sum();
        let early: Duration = (0..200).map(|_| p.backoff(1, &mut rng)).sum();
        assert!(late > early * 10);
    }

    #[test]
    fn budget_limits_retries() {
        let b = RetryBudget::new(0.5, 2).unwrap();
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
        b.deposit();
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
        assert!(RetryBudget::new(f64::NAN, 1).is_err());
        assert!(RetryPolicy {
            max_attempts: 0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
