//! Points: per (chain, token, address) and hourly window, the time-weighted average balance
//! (TWAB) over the window times a configured rate. Exact integer arithmetic, documented rounding:
//!
//! - `twab = floor(∫ balance dt / window_seconds)`, the integral taken second by second over
//!   `[window_start, window_start + 1h)` with the balance changing at each change's time;
//! - the balance before a window is the `new_amount` of the last change before it (the
//!   `old_amount` of the first change ever when it is known, else 0);
//! - `points = floor(twab × rate)`, rate a decimal string ("0.001", "2").

pub mod backfill;
pub mod compute;

use alloy::primitives::{U256, U512};
use chainsync_engine::Invalid;
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};

/// Length of a points window.
pub const WINDOW_SECS: i64 = 3600;

/// `[points]` in config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsConfig {
    /// Rates per token; only these tokens earn points.
    #[serde(default)]
    pub rates: Vec<PointsRate>,
    /// Most windows one backfill job computes; longer ranges are split into child jobs.
    #[serde(default = "default_max_windows")]
    pub max_windows_per_job: u32,
    /// Addresses whose last window is older than this many windows are backfilled at start-up.
    #[serde(default = "default_stale_factor")]
    pub stale_factor: u32,
}

fn default_max_windows() -> u32 {
    168
}
fn default_stale_factor() -> u32 {
    2
}

impl Default for PointsConfig {
    fn default() -> Self {
        Self {
            rates: Vec::new(),
            max_windows_per_job: default_max_windows(),
            stale_factor: default_stale_factor(),
        }
    }
}

/// `[[points.rates]]`: points per unit of TWAB per window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsRate {
    pub chain_id: u64,
    /// Token address or "native", parsed when the config is read.
    pub token: crate::settings::ConfigToken,
    /// A non-negative decimal, written as a string (`"0.5"`), parsed when the config is read.
    pub rate: Rate,
}

impl PointsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        // Tokens and rates were parsed when the config was read.
        if self.max_windows_per_job == 0 || self.stale_factor == 0 {
            return Err(Invalid::at(
                "points",
                "max_windows_per_job and stale_factor must be positive",
            ));
        }
        Ok(())
    }
}

/// A decimal rate as `numerator / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub numerator: U256,
    pub scale: u32,
}

/// A rate that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("{input:?} is not a non-negative decimal number")]
    NotDecimal { input: String },
    #[error("{input:?} has more than 30 decimals")]
    TooManyDecimals { input: String },
    #[error("{input:?}: {source}")]
    Range {
        input: String,
        #[source]
        source: alloy::primitives::ruint::ParseError,
    },
}

impl Rate {
    pub fn parse(s: &str) -> Result<Self, RateError> {
        let s = s.trim();
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() && frac.is_empty()
            || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        {
            return Err(RateError::NotDecimal { input: s.into() });
        }
        if frac.len() > 30 {
            return Err(RateError::TooManyDecimals { input: s.into() });
        }
        let digits = format!("{int}{frac}");
        let numerator = U256::from_str_radix(if digits.is_empty() { "0" } else { &digits }, 10)
            .map_err(|source| RateError::Range {
                input: s.into(),
                source,
            })?;
        Ok(Self {
            numerator,
            scale: u32::try_from(frac.len()).unwrap_or(30),
        })
    }

    /// The rate as a decimal string (`"0.5"`), as [`Rate::parse`] reads it.
    pub fn text(&self) -> String {
        let digits = self.numerator.to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return digits;
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{int}.{frac}")
    }

    /// floor(amount × rate), saturating at U256::MAX.
    pub fn apply(&self, amount: U256) -> U256 {
        let wide = U512::from(amount) * U512::from(self.numerator);
        let q = wide / U512::from(U256::from(10u8).pow(U256::from(self.scale)));
        narrow(q)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A balance change at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub at: DateTime<Utc>,
    pub amount: U256,
}

/// A U512 narrowed to U256, saturating.
fn narrow(x: U512) -> U256 {
    let l = x.as_limbs();
    if l[4..].iter().any(|w| *w != 0) {
        U256::MAX
    } else {
        U256::from_limbs([l[0], l[1], l[2], l[3]])
    }
}

/// Start of the window holding `t`.
pub fn window_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::seconds(WINDOW_SECS))
        .unwrap_or(t)
}

/// TWAB over `[start, start + 1h)`: `opening` is the balance at `start`, `changes` are sorted by
/// time (those outside the window are ignored).
pub fn twab(start: DateTime<Utc>, opening: U256, changes: &[Change]) -> U256 {
    let end = start + Duration::seconds(WINDOW_SECS);
    let mut total = U512::ZERO;
    let mut balance = opening;
    let mut t = start;
    for c in changes.iter().filter(|c| c.at >= start && c.at < end) {
        let secs = (c.at - t).num_seconds().max(0);
        total += U512::from(balance) * U512::from(u64::try_from(secs).unwrap_or(0));
        balance = c.amount;
        t = c.at;
    }
    let secs = (end - t).num_seconds().max(0);
    total += U512::from(balance) * U512::from(u64::try_from(secs).unwrap_or(0));
    let avg = total / U512::from(WINDOW_SECS as u64);
    narrow(avg)
}

/// Balance at instant `t` given all changes sorted by time and the amount before the first one.
pub fn balance_at(before_first: U256, changes: &[Change], t: DateTime<Utc>) -> U256 {
    changes
        .iter()
        .take_while(|c| c.at < t)
        .last()
        .map_or(before_first, |c| c.amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Reference: the balance sampled at every second of the window, summed, divided.
    fn reference(start: DateTime<Utc>, before: U256, changes: &[Change]) -> U256 {
        let mut sum = U512::ZERO;
        for s in 0..WINDOW_SECS {
            let t = start + Duration::seconds(s);
            let b = changes
                .iter()
                .rev()
                .find(|c| c.at <= t)
                .map_or(before, |c| c.amount);
            sum += U512::from(b);
        }
        narrow(sum / U512::from(WINDOW_SECS as u64))
    }

    #[test]
    fn half_an_hour_at_each_balance() {
        let c = [Change {
            at: t0() + Duration::minutes(30),
            amount: U256::from(300u64),
        }];
        assert_eq!(twab(t0(), U256::from(100u64), &c), U256::from(200u64));
        assert_eq!(
            Rate::parse("0.5").unwrap().apply(U256::from(201u64)),
            U256::from(100u64)
        );
        assert_eq!(Rate::parse("2").unwrap().apply(U256::MAX), U256::MAX);
        assert!(
            Rate::parse("-1").is_err() && Rate::parse("1e3").is_err() && Rate::parse("").is_err()
        );
    }

    proptest! {
        #[test]
        fn twab_matches_the_per_second_reference(
            before in 0u64..1_000_000,
            raw in proptest::collection::vec((0i64..3600, 0u64..1_000_000), 0..12),
        ) {
            let mut changes: Vec<Change> = raw.iter().map(|(s, a)| Change { at: t0() + Duration::seconds(*s), amount: U256::from(*a) }).collect();
            changes.sort_by_key(|c| c.at);
            let opening = U256::from(before);
            prop_assert_eq!(twab(t0(), opening, &changes), reference(t0(), opening, &changes));
        }

        #[test]
        fn twab_of_a_constant_is_the_constant(a in any::<[u64; 4]>()) {
            let v = U256::from_limbs(a);
            prop_assert_eq!(twab(t0(), v, &[]), v);
        }
    }
}
