//! Exponential backoff with jitter. The engine persists the result as the job's `run_at`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retry policy of a kind: `delay(n) = min(base · 2^(n-1), cap) · (1 ± jitter)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first run included. Exhausted jobs go to the dead letters.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub base: Duration,
    /// Longest delay between two attempts.
    pub cap: Duration,
    /// Relative jitter in `[0, 1)`: 0.1 spreads each delay over ±10 %.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 20,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// Delay without jitter after failed attempt `attempt` (1-based).
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        let factor = 1u64 << exp;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }

    /// Delay after failed attempt `attempt`, with jitter taken from `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let nominal = self.nominal_delay(attempt).as_secs_f64();
        let spread = self.jitter.clamp(0.0, 0.99) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((nominal * (1.0 + spread)).max(0.0))
    }

    /// Delay after failed attempt `attempt` with fresh randomness.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }

    pub fn validate(&self) -> Result<(), crate::Invalid> {
        if self.max_attempts == 0 {
            return Err(crate::Invalid::new("max_attempts must be at least 1"));
        }
        if self.base.is_zero() {
            return Err(crate::Invalid::new("backoff base must be positive"));
        }
        if self.cap < self.base {
            return Err(crate::Invalid::new(
                "backoff cap must not be below the base",
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(crate::Invalid::new("jitter must be in [0, 1)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(base_ms: u64, cap_ms: u64, jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 30,
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms.max(base_ms)),
            jitter,
        }
    }

    #[test]
    fn doubles_then_caps() {
        let p = policy(1000, 10_000, 0.0);
        let d: Vec<u128> = (1..=6).map(|n| p.nominal_delay(n).as_millis()).collect();
        assert_eq!(d, vec![1000, 2000, 4000, 8000, 10_000, 10_000]);
    }

    proptest! {
        #[test]
        fn nominal_is_monotonic_and_capped(base in 1u64..100_000, cap in 1u64..10_000_000, n in 1u32..200) {
            let p = policy(base, cap, 0.0);
            let a = p.nominal_delay(n);
            let b = p.nominal_delay(n + 1);
            prop_assert!(a <= b);
            prop_assert!(b <= p.cap);
            prop_assert!(a >= p.base.min(p.cap));
        }

        #[test]
        fn jitter_stays_within_bounds(base in 1u64..100_000, cap in 1u64..10_000_000, n in 1u32..64, j in 0.0f64..0.99, u in 0.0f64..1.0) {
            let p = policy(base, cap, j);
            let nominal = p.nominal_delay(n).as_secs_f64();
            let d = p.delay(n, u).as_secs_f64();
            prop_assert!(d >= nominal * (1.0 - j) - 1e-9);
            prop_assert!(d <= nominal * (1.0 + j) + 1e-9);
        }
    }
}
