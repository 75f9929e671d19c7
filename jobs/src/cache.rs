//! A breaker for the optional Redis cache. Redis being away must cost a request nothing: after a
//! failed cache call the cache is skipped for a cool-down, then a single call probes it again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the cache is skipped after a failure.
pub const COOL_DOWN: Duration = Duration::from_secs(1);

/// Shared by every user of one Redis connection (see [`crate::Services::cache`]).
#[derive(Debug, Default)]
pub struct CacheBreaker {
    /// Unix milliseconds until which the cache is skipped; 0 = closed (use the cache).
    open_until_ms: AtomicU64,
    /// One caller at a time probes a recovering cache.
    probing: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl CacheBreaker {
    /// Whether to try the cache now: always while closed; once the cool-down is over, only the
    /// one caller that takes the probe.
    pub fn allow(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// A cache call succeeded: close the breaker.
    pub fn success(&self) {
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            tracing::info!("cache reachable again");
        }
    }

    /// A cache call failed: skip the cache for [`COOL_DOWN`].
    pub fn failure(&self) {
        let was = self.open_until_ms.swap(
            now_ms() + u64::try_from(COOL_DOWN.as_millis()).unwrap_or(1000),
            Ordering::Relaxed,
        );
        self.probing.store(false, Ordering::Release);
        if was == 0 {
            tracing::warn!(cool_down = ?COOL_DOWN, "cache unreachable; serving from Postgres");
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failure_and_lets_one_probe_through_after_the_cool_down() {
        let b = CacheBreaker::default();
        assert!(b.allow());
        b.failure();
        assert!(b.is_open());
        assert!(!b.allow(), "skipped during the cool-down");
        b.open_until_ms.store(1, Ordering::Relaxed); // cool-down over
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one");
        b.success();
        assert!(!b.is_open());
        assert!(b.allow() && b.allow());
    }
}
