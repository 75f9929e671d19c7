//! Parsing and canonical text forms of chain identifiers: addresses, tokens, tx hashes, amounts.
//!
//! In the database an address is lower-case `0x` + 40 hex digits, a token is such an address or
//! `native`, a hash is lower-case `0x` + 64 hex digits and an amount is a base-10 integer string
//! (`NUMERIC(78,0)`).

use std::{fmt, str::FromStr};

use alloy::primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};

/// Parses `0x` + 40 hex digits (any case; the checksum is not enforced).
pub fn parse_address(s: &str) -> Result<Address, String> {
    let t = s.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .ok_or_else(|| format!("invalid address {s:?}: expected 0x followed by 40 hex digits"))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid address {s:?}: expected 0x followed by 40 hex digits"
        ));
    }
    Address::from_str(t).map_err(|e| format!("invalid address {s:?}: {e}"))
}

/// Canonical text form of an address: lower-case, `0x`-prefixed.
pub fn address_text(a: &Address) -> String {
    format!("{a:#x}")
}

/// Normalises an address string to its canonical text form.
pub fn normalize_address(s: &str) -> Result<String, String> {
    parse_address(s).map(|a| address_text(&a))
}

/// Parses `0x` + 64 hex digits.
pub fn parse_hash(s: &str) -> Result<B256, String> {
    let t = s.trim();
    let hex = t
        .strip_prefix("0x")
        .ok_or_else(|| format!("invalid hash {s:?}: expected 0x followed by 64 hex digits"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid hash {s:?}: expected 0x followed by 64 hex digits"
        ));
    }
    B256::from_str(t).map_err(|e| format!("invalid hash {s:?}: {e}"))
}

/// Canonical text form of a hash: lower-case, `0x`-prefixed.
pub fn hash_text(h: &B256) -> String {
    format!("{h:#x}")
}

/// Parses a base-10 amount as stored in `NUMERIC(78,0)`.
pub fn parse_amount(s: &str) -> Result<U256, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid amount {s:?}: expected a base-10 integer"));
    }
    U256::from_str_radix(t, 10).map_err(|e| format!("invalid amount {s:?}: {e}"))
}

/// What a balance is held in: the chain's native coin or a token contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenKey {
    Native,
    Contract(Address),
}

impl TokenKey {
    pub const NATIVE: &'static str = "native";

    /// `native` or a token address (any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case(Self::NATIVE) {
            Ok(Self::Native)
        } else {
            parse_address(s)
                .map(Self::Contract)
                .map_err(|e| format!("{e} (or \"native\")"))
        }
    }

    /// Text stored in the `token` columns.
    pub fn text(&self) -> String {
        match self {
            Self::Native => Self::NATIVE.to_string(),
            Self::Contract(a) => address_text(a),
        }
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl Serialize for TokenKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for TokenKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses_normalise_to_lower_case() {
        let a = normalize_address("0xAbCdEF0123456789abcdef0123456789ABCDEF01").unwrap();
        assert_eq!(a, "0xabcdef0123456789abcdef0123456789abcdef01");
        for bad in [
            "",
            "0x",
            "abcdef0123456789abcdef0123456789abcdef01",
            "0xabcdef0123456789abcdef0123456789abcdef0",
            "0xabcdef0123456789abcdef0123456789abcdef012",
            "0xgbcdef0123456789abcdef0123456789abcdef01",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn token_keys() {
        assert_eq!(TokenKey::parse("NATIVE").unwrap(), TokenKey::Native);
        let t = TokenKey::parse("0xCA11bde05977b3631167028862bE2a173976CA11").unwrap();
        assert_eq!(t.text(), "0xca11bde05977b3631167028862be2a173976ca11");
        assert!(TokenKey::parse("usdt").is_err());
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<TokenKey>(&json).unwrap(), t);
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("0").unwrap(), U256::ZERO);
        assert!(parse_amount("-1").is_err());
        assert!(parse_amount("1.5").is_err());
        assert!(parse_amount("0x10").is_err());
        let max = U256::MAX.to_string();
        assert_eq!(parse_amount(&max).unwrap(), U256::MAX);
        assert!(parse_amount(&format!("{max}0")).is_err());
    }

    proptest! {
        #[test]
        fn amount_text_round_trips(limbs in any::<[u64; 4]>()) {
            let v = U256::from_limbs(limbs);
            prop_assert_eq!(parse_amount(&v.to_string()).unwrap(), v);
        }

        #[test]
        fn address_text_round_trips(bytes in any::<[u8; 20]>()) {
            let a = Address::from(bytes);
            let t = address_text(&a);
            prop_assert_eq!(t.len(), 42);
            prop_assert_eq!(parse_address(&t).unwrap(), a);
            prop_assert_eq!(normalize_address(&t.to_uppercase().replacen("0X", "0x", 1)).unwrap(), t);
        }
    }
}
