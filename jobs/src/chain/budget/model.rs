//! The arithmetic of an RPC budget, free of clocks and I/O: the reservation timeline (GCRA with
//! delayed conformance) and the adaptive factor. The Redis scripts in `redis.rs` compute exactly
//! this (integer microseconds, integer per-mille factors), so both modes behave alike and the unit
//! tests here cover both.

/// Microseconds on some clock (Redis `TIME`, the process' monotonic clock, Postgres `now()`).
pub type Micros = i64;

/// Factors are per-mille: 1000 = the full budget.
pub const FULL: u32 = 1000;

/// Who is asking: application-triggered work goes first, bulk work takes what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `sync-user-balance`, `check-pending-tx`, realtime reads, the CLI: waits are felt by people.
    Priority,
    /// Full syncs, reconciles, ingestion and history rebuilds, points.
    Bulk,
}

impl Class {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::Bulk => "bulk",
        }
    }
}

/// The spacing of one endpoint's units: one unit every `interval` µs, `burst` units at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub interval: Micros,
    pub burst: u64,
}

/// Share of the budget a burst may take at once: 1 % (at least one unit). Any window of length
/// `W` then holds at most `rate × W + max(burst, cost of the largest request)` units.
pub const BURST_DIVISOR: u64 = 100;

impl Pace {
    /// `per_second` units per second at `factor`/1000 of it, split between `members` daemons.
    pub fn new(per_second: u64, factor: u32, members: u64) -> Self {
        let per_second = per_second.max(1);
        let factor = u64::from(factor.clamp(1, FULL));
        let members = members.max(1);
        // Units per second × 1000 × members in the denominator: interval = ⌈1e9·members / (r·f)⌉.
        let d = per_second.saturating_mul(factor);
        let n = 1_000_000_000u64.saturating_mul(members);
        let interval = n.div_ceil(d).max(1);
        let burst = (d / (1000 * BURST_DIVISOR * members)).max(1);
        Self {
            interval: i64::try_from(interval).unwrap_or(i64::MAX),
            burst,
        }
    }
}

/// What a reservation attempt gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved: send after this many µs (0 = now).
    Go(Micros),
    /// Not reserved: the next slot is further away than the caller may queue; ask again after
    /// this many µs.
    Later(Micros),
}

/// The theoretical arrival time of the next unit (GCRA): one value per endpoint, shared by every
/// daemon in Redis mode, one per daemon in Postgres mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeline {
    pub tat: Micros,
}

impl Timeline {
    /// Reserves `cost` units at `now` unless they could only be sent more than `horizon` µs from
    /// now. A request is sent once the timeline is due (less the burst) and its `cost` units are
    /// charged from there on, so a window of any length `W` never holds more than
    /// `W / interval + max(burst, largest cost)` units.
    pub fn reserve(&mut self, now: Micros, pace: Pace, cost: u64, horizon: Micros) -> Reservation {
        let cost_i = i64::try_from(cost).unwrap_or(i64::MAX);
        let base = self.tat.max(now);
        let new_tat = base.saturating_add(cost_i.saturating_mul(pace.interval));
        let cap = i64::try_from(pace.burst.max(cost))
            .unwrap_or(i64::MAX)
            .saturating_mul(pace.interval);
        let at = now.max(new_tat.saturating_sub(cap));
        let wait = at - now;
        if wait > horizon {
            return Reservation::Later(wait - horizon);
        }
        self.tat = new_tat;
        Reservation::Go(wait)
    }

    /// Nothing is sent before `until` (a provider's `Retry-After`).
    pub fn pause_until(&mut self, until: Micros) {
        self.tat = self.tat.max(until);
    }
}

/// How the budget reacts to rate-limit answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptParams {
    /// The factor is multiplied by this (per-mille) on a rate-limit answer...
    pub backoff: u32,
    /// ...at most once per `cut_interval` µs (answers to requests sent before the cut say nothing
    /// new)...
    pub cut_interval: Micros,
    /// ...but never below this (per-mille).
    pub min_factor: u32,
    /// After the last rate-limit answer the factor stays where it is this long (µs)...
    pub hold: Micros,
    /// ...then grows linearly back to the full budget over this long (µs).
    pub recovery: Micros,
}

/// The shrinkage of one endpoint's budget after rate-limit answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adapt {
    /// Per-mille of the budget as of `since`.
    pub factor: u32,
    /// The last rate-limit answer.
    pub since: Micros,
    /// The last cut (a rate-limit answer that lowered the factor).
    pub cut_at: Option<Micros>,
}

impl Default for Adapt {
    fn default() -> Self {
        Self {
            factor: FULL,
            since: 0,
            cut_at: None,
        }
    }
}

impl Adapt {
    /// The factor at `now`: held after the last rate-limit answer, then recovering linearly.
    pub fn effective(&self, now: Micros, p: &AdaptParams) -> u32 {
        if self.factor >= FULL {
            return FULL;
        }
        let t = now - self.since - p.hold;
        if t <= 0 {
            return self.factor;
        }
        if p.recovery <= 0 || t >= p.recovery {
            return FULL;
        }
        let gained = i64::from(FULL - self.factor) * t / p.recovery;
        self.factor + u32::try_from(gained).unwrap_or(0)
    }

    /// A rate-limit answer at `now`; returns the new factor.
    pub fn cut(&mut self, now: Micros, p: &AdaptParams) -> u32 {
        let current = self.effective(now, p);
        let may_cut = self.cut_at.is_none_or(|c| now - c >= p.cut_interval);
        let factor = if may_cut {
            self.cut_at = Some(now);
            (u64::from(current) * u64::from(p.backoff) / u64::from(FULL))
                .max(u64::from(p.min_factor))
        } else {
            u64::from(current)
        };
        self.factor = u32::try_from(factor).unwrap_or(FULL).clamp(1, FULL);
        self.since = now;
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Micros = 1_000_000;

    fn params() -> AdaptParams {
        AdaptParams {
            backoff: 500,
            cut_interval: SEC,
            min_factor: 50,
            hold: 5 * SEC,
            recovery: 10 * SEC,
        }
    }

    #[test]
    fn pace_of_a_budget() {
        assert_eq!(
            Pace::new(200, FULL, 1),
            Pace {
                interval: 5000,
                burst: 2
            }
        );
        // Split three ways: 66.7/s each, one unit of burst.
        assert_eq!(
            Pace::new(200, FULL, 3),
            Pace {
                interval: 15000,
                burst: 1
            }
        );
        // Halved by a rate-limit answer.
        assert_eq!(Pace::new(200, 500, 1).interval, 10000);
        // Rounded up: never faster than the budget.
        assert_eq!(Pace::new(3, FULL, 1).interval, 333_334);
        assert_eq!(Pace::new(10_000, FULL, 1).burst, 100);
    }

    #[test]
    fn a_burst_then_one_unit_per_interval() {
        let pace = Pace::new(200, FULL, 1);
        let mut t = Timeline::default();
        let now = 100 * SEC;
        assert_eq!(t.reserve(now, pace, 1, 0), Reservation::Go(0));
        assert_eq!(t.reserve(now, pace, 1, 0), Reservation::Go(0));
        // The burst (2) is used: the third waits one interval, or is refused with a horizon of 0.
        assert_eq!(t.reserve(now, pace, 1, 0), Reservation::Later(5000));
        assert_eq!(t.reserve(now, pace, 1, SEC), Reservation::Go(5000));
        assert_eq!(t.reserve(now, pace, 1, SEC), Reservation::Go(10000));
        // A request larger than the burst goes when the timeline is due, and the ones after it
        // wait for all its units.
        assert_eq!(t.reserve(now, pace, 10, SEC), Reservation::Go(20000));
        assert_eq!(t.reserve(now, pace, 1, SEC), Reservation::Go(65000));
    }

    #[test]
    fn bulk_with_a_short_horizon_leaves_the_queue_to_priority() {
        // Priority requests reserve far ahead; bulk ones only within their horizon, so a bulk
        // request arriving behind queued priority work is refused until that work has gone.
        let pace = Pace::new(100, FULL, 1);
        let mut t = Timeline::default();
        let now = 10 * SEC;
        for _ in 0..20 {
            assert!(matches!(
                t.reserve(now, pace, 1, 2 * SEC),
                Reservation::Go(_)
            ));
        }
        let Reservation::Later(retry) = t.reserve(now, pace, 1, 20_000) else {
            panic!("bulk got a slot behind 20 priority requests");
        };
        assert_eq!(retry, 180_000);
        assert_eq!(
            t.reserve(now + retry, pace, 1, 20_000),
            Reservation::Go(20_000)
        );
    }

    #[test]
    fn pause_holds_everyone() {
        let pace = Pace::new(100, FULL, 1);
        let mut t = Timeline::default();
        t.pause_until(5 * SEC);
        assert_eq!(t.reserve(4 * SEC, pace, 1, 2 * SEC), Reservation::Go(SEC));
    }

    #[test]
    fn cut_hold_and_recover() {
        let p = params();
        let mut a = Adapt::default();
        assert_eq!(a.effective(0, &p), FULL);
        assert_eq!(a.cut(10 * SEC, &p), 500);
        // A storm of answers within the cut interval does not cut again, but extends the hold.
        assert_eq!(a.cut(10 * SEC + 300_000, &p), 500);
        assert_eq!(a.cut(11 * SEC, &p), 250);
        for _ in 0..10 {
            let now = a.since + SEC;
            a.cut(now, &p);
        }
        assert_eq!(a.factor, 50, "floor");
        let last = a.since;
        assert_eq!(a.effective(last + 5 * SEC, &p), 50, "held");
        assert_eq!(
            a.effective(last + 10 * SEC, &p),
            50 + 950 / 2,
            "half way back"
        );
        assert_eq!(a.effective(last + 15 * SEC, &p), FULL, "recovered");
        // A cut while recovering starts from where it had got to.
        let mut b = a;
        assert_eq!(b.cut(last + 10 * SEC, &p), 262);
    }

    proptest! {
        /// However requests arrive (any times, costs, classes), the units sent in any window of
        /// one second never exceed the budget plus the burst (or the largest request).
        #[test]
        fn no_window_exceeds_rate_plus_burst(
            arrivals in prop::collection::vec((0i64..3_000_000, 1u64..4, prop::bool::ANY), 1..600),
            per_second in 20u64..2000,
        ) {
            let pace = Pace::new(per_second, FULL, 1);
            let mut t = Timeline::default();
            let mut arrivals = arrivals;
            arrivals.sort_by_key(|a| a.0);
            let mut sent: Vec<(Micros, u64)> = Vec::new();
            for (now, cost, bulk) in arrivals {
                let horizon = if bulk { 20_000 } else { 2 * SEC };
                if let Reservation::Go(w) = t.reserve(now, pace, cost, horizon) {
                    sent.push((now + w, cost));
                }
            }
            sent.sort_by_key(|s| s.0);
            let mut lo = 0;
            let mut sum = 0u64;
            for hi in 0..sent.len() {
                sum += sent[hi].1;
                while sent[hi].0 - sent[lo].0 >= SEC {
                    sum -= sent[lo].1;
                    lo += 1;
                }
                prop_assert!(sum <= per_second + pace.burst.max(3), "{sum} > {per_second}");
            }
        }
    }
}
