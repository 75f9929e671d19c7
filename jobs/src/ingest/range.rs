//! Adaptive block ranges for `eth_getLogs`: shrink on "too many results" (to the node's suggested
//! range when its error carries one), grow again after successes.

/// The next range size after a failure that says the range was too big.
pub fn shrink(current: u64, min: u64, suggested: Option<u64>) -> u64 {
    let halved = (current / 2).max(min);
    match suggested {
        Some(s) if s >= min && s < current => s,
        _ => halved,
    }
}

/// The next range size after a success.
pub fn grow(current: u64, max: u64) -> u64 {
    current.saturating_mul(2).min(max).max(1)
}

/// A provider's suggested range, as in `... Try with this block range [0x10, 0x2f].`;
/// returns its size in blocks.
pub fn suggested_range(message: &str) -> Option<u64> {
    let start = message.rfind('[')?;
    let end = start + message[start..].find(']')?;
    let mut parts = message[start + 1..end].split(',').map(str::trim);
    let a = parse_num(parts.next()?)?;
    let b = parse_num(parts.next()?)?;
    (b >= a).then(|| b - a + 1)
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Whether an RPC error means "the range (or its result) was too large".
pub fn is_range_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "more than",
        "too many",
        "range",
        "limit exceeded",
        "response size",
        "query timeout",
        "-32005",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn provider_suggestions() {
        let msg =
            "query returned more than 10000 results. Try with this block range [0x1b4, 0x1c7].";
        assert_eq!(suggested_range(msg), Some(20));
        assert!(is_range_error(msg));
        assert_eq!(suggested_range("no brackets"), None);
        assert_eq!(suggested_range("[0x10, 0x01]"), None);
        assert_eq!(shrink(1000, 1, Some(20)), 20);
        assert_eq!(shrink(1000, 1, None), 500);
        assert!(!is_range_error("execution reverted"));
    }

    proptest! {
        #[test]
        fn sizes_stay_within_bounds(cur in 1u64..1_000_000, min in 1u64..100, max in 100u64..100_000, s in proptest::option::of(0u64..2_000_000)) {
            let cur = cur.clamp(min, max);
            let down = shrink(cur, min, s);
            prop_assert!(down >= min);
            prop_assert!(down <= cur.max(min));
            let up = grow(cur, max);
            prop_assert!(up >= cur.min(max) && up <= max);
        }

        #[test]
        fn repeated_shrinking_reaches_the_minimum(start in 1u64..10_000_000, min in 1u64..50) {
            let mut c = start.max(min);
            for _ in 0..64 { c = shrink(c, min, None); }
            prop_assert_eq!(c, min);
        }

        #[test]
        fn parser_never_panics(s in ".{0,60}") {
            let _ = suggested_range(&s);
            let _ = is_range_error(&s);
        }
    }
}
