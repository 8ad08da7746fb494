//! Retry policy: exponential backoff with full jitter, an optional attempt
//! cap, and a budget that keeps retries a bounded fraction of traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::random::SplitMix64;

/// How an operation is retried. In settings (`[client.retry]`), durations
/// are written the human way (`"10ms"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts at most, the first included (≥ 1); `None` (the default)
    /// leaves it to the operation's deadline and the retry budget.
    pub max_attempts: Option<u32>,
    /// The backoff ceiling of the first retry.
    #[serde(with = "crate::settings::human")]
    pub initial_backoff: Duration,
    /// The backoff ceiling never grows past this.
    #[serde(with = "crate::settings::human")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: None,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(1000),
        }
    }
}

impl RetryPolicy {
    /// Checks the policy: at least one attempt, and backoffs in order.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_attempts == Some(0) {
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
    pub(crate) fn backoff(&self, retry: u32, rng: &mut SplitMix64) -> Duration {
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
    /// Tokens per first attempt, in millionths of a token.
    ratio: u64,
    /// The most the balance holds, in millionths.
    cap: u64,
    /// The balance in millionths of a token. Lock-free, and a deposit into a
    /// full bucket (the steady state) only reads it, so requests on
    /// different cores do not contend on it.
    balance: AtomicU64,
}

/// Millionths per token.
const UNIT: f64 = 1_000_000.0;

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
        let ratio = (ratio * UNIT).round() as u64;
        let reserve = u64::from(reserve) * UNIT as u64;
        Ok(RetryBudget {
            ratio,
            cap: reserve + 100 * ratio,
            balance: AtomicU64::new(reserve),
        })
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        if self.balance.load(Ordering::Relaxed) >= self.cap {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < self.cap).then(|| (b + self.ratio).min(self.cap))
            });
    }

    /// Takes a token for a retry; false when the budget is exhausted.
    pub fn withdraw(&self) -> bool {
        const ONE: u64 = UNIT as u64;
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(ONE))
            .is_ok()
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

        // A full bucket stays at reserve + 100·ratio however many deposits.
        let b = RetryBudget::new(0.25, 3).unwrap();
        for _ in 0..10_000 {
            b.deposit();
        }
        let withdrawn = (0..100).take_while(|_| b.withdraw()).count();
        assert_eq!(withdrawn, 3 + 25);
        assert!(RetryPolicy {
            max_attempts: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
