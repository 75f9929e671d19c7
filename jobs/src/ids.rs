//! Parsing and canonical text forms of chain identifiers: addresses, tokens, tx hashes, amounts.
//!
//! In the database an address is lower-case `0x` + 40 hex digits, a token is such an address or
//! `native`, a hash is lower-case `0x` + 64 hex digits and an amount is a base-10 integer string
//! (`NUMERIC(78,0)`).
//!
//! TRON chains (`family = "tron"`) name the same 20-byte accounts differently: base58check
//! `T…` (the bytes `0x41 ‖ address ‖ checksum`), or hex with the `41` prefix. Those forms are
//! accepted wherever an address of a TRON chain is given, stored in the one canonical form above,
//! and shown as base58check for TRON chains ([`ChainFamily::show_address`]).

use std::{fmt, str::FromStr};

use alloy::primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An identifier that does not parse: which text, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid address {input:?}: expected 0x followed by 40 hex digits")]
    Address { input: String },
    /// A TRON form (`T…`, `41…`) given for an EVM chain.
    #[error(
        "{inner} (base58check and 41-prefixed addresses are for chains with family = \"tron\")"
    )]
    TronFormOnEvm { inner: Box<IdError> },
    #[error("invalid TRON address {input:?}: {reason}")]
    TronAddress { input: String, reason: TronReason },
    #[error("invalid hash {input:?}: expected 64 hex digits (with or without 0x)")]
    Hash { input: String },
    #[error("invalid amount {input:?}: expected a base-10 integer")]
    Amount { input: String },
    #[error("invalid amount {input:?}: {source}")]
    AmountRange {
        input: String,
        #[source]
        source: alloy::primitives::ruint::ParseError,
    },
    /// Neither `native` nor an address.
    #[error("{inner} (or \"native\")")]
    Token { inner: Box<IdError> },
    #[error("unknown chain family {input:?}: expected evm or tron")]
    Family { input: String },
}

/// Why a TRON address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TronReason {
    #[error(
        "expected base58check (T…), 41 followed by 40 hex digits, or 0x followed by 40 hex digits"
    )]
    Form,
    #[error(transparent)]
    Base58(#[from] Base58Error),
    #[error(
        "decodes to {len} bytes starting with 0x{prefix:02x}; expected 21 bytes starting with 0x41"
    )]
    Prefix { len: usize, prefix: u8 },
}

/// Why a base58check string does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base58Error {
    #[error(
        "character {ch:?} at position {position} is not base58 (mistyped: the base58check checksum cannot match)"
    )]
    Character { ch: char, position: usize },
    #[error("{0} bytes are too short for base58check")]
    TooShort(usize),
    #[error(
        "base58check checksum is wrong (the address carries {carried}, its bytes give {computed}): a character is mistyped"
    )]
    Checksum { carried: String, computed: String },
}

/// How a chain is reached and how its addresses are written.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ChainFamily {
    /// Ethereum JSON-RPC with state at any block; `0x` hex addresses.
    #[default]
    Evm,
    /// java-tron's Ethereum-compatible JSON-RPC: state only at `latest`; base58check addresses.
    Tron,
}

impl ChainFamily {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Evm => "evm",
            Self::Tron => "tron",
        }
    }

    /// Parses an address of a chain of this family: `0x` + 40 hex digits on EVM chains; on TRON
    /// chains also base58check `T…` and `41`-prefixed hex (`41…` or `0x41…`).
    pub fn parse_address(&self, s: &str) -> Result<Address, IdError> {
        match self {
            Self::Evm => parse_address(s).map_err(|e| {
                if looks_like_tron(s) {
                    IdError::TronFormOnEvm { inner: Box::new(e) }
                } else {
                    e
                }
            }),
            Self::Tron => parse_tron_address(s),
        }
    }

    /// How people see an address of this family: `0x…` hex, or base58check `T…` on TRON.
    pub fn show_address(&self, a: &Address) -> String {
        match self {
            Self::Evm => address_text(a),
            Self::Tron => tron_base58(a),
        }
    }

    /// `native`, or the token's address as [`Self::show_address`] writes it.
    pub fn show_token(&self, t: &TokenKey) -> String {
        match t {
            TokenKey::Native => TokenKey::NATIVE.to_string(),
            TokenKey::Contract(a) => self.show_address(a),
        }
    }

    /// A stored text form (`0x…` or `native`) as this family shows it; text that is not an
    /// address is returned as it is.
    pub fn show_stored(&self, stored: &str) -> String {
        match (self, parse_address(stored)) {
            (Self::Tron, Ok(a)) => tron_base58(&a),
            _ => stored.to_string(),
        }
    }
}

impl fmt::Display for ChainFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChainFamily {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "evm" => Ok(Self::Evm),
            "tron" => Ok(Self::Tron),
            _ => Err(IdError::Family { input: s.into() }),
        }
    }
}

fn looks_like_tron(s: &str) -> bool {
    let t = s.trim();
    t.starts_with('T')
        || t.len() == 42 && t.starts_with("41")
        || t.len() == 44 && (t.starts_with("0x41") || t.starts_with("0X41"))
}

/// Parses an address given where no chain says which family it belongs to (tracked addresses,
/// shared by every chain; job args checked before the chain is known): any form of
/// [`ChainFamily::Evm`] or [`ChainFamily::Tron`]. The 20 bytes name the same account on both.
pub fn parse_address_any(s: &str) -> Result<Address, IdError> {
    if looks_like_tron(s) {
        parse_tron_address(s)
    } else {
        parse_address(s)
    }
}

/// Normalises an address in any form ([`parse_address_any`]) to its canonical text form.
pub fn normalize_address_any(s: &str) -> Result<String, IdError> {
    parse_address_any(s).map(|a| address_text(&a))
}

/// The first byte of every TRON account address.
pub const TRON_PREFIX: u8 = 0x41;

/// Parses a TRON address: base58check `T…`, `41` + 40 hex digits (with or without `0x`), or
/// `0x` + 40 hex digits.
pub fn parse_tron_address(s: &str) -> Result<Address, IdError> {
    let t = s.trim();
    let invalid = |reason: TronReason| IdError::TronAddress {
        input: s.to_string(),
        reason,
    };
    if t.starts_with('T') {
        let bytes = base58check_decode(t).map_err(|e| invalid(e.into()))?;
        return match bytes.split_first() {
            Some((&TRON_PREFIX, rest)) if rest.len() == 20 => Ok(Address::from_slice(rest)),
            Some((p, rest)) => Err(invalid(TronReason::Prefix {
                len: rest.len() + 1,
                prefix: *p,
            })),
            None => Err(invalid(TronReason::Form)),
        };
    }
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let body = match hex.len() {
        42 if hex.starts_with("41") => &hex[2..],
        40 if hex.len() != t.len() => hex,
        _ => return Err(invalid(TronReason::Form)),
    };
    if !body.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(TronReason::Form));
    }
    Address::from_str(body).map_err(|_| invalid(TronReason::Form))
}

/// Base58check `T…` form of an account.
pub fn tron_base58(a: &Address) -> String {
    let mut payload = Vec::with_capacity(21);
    payload.push(TRON_PREFIX);
    payload.extend_from_slice(a.as_slice());
    base58check_encode(&payload)
}

const B58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Base58 (Bitcoin alphabet) of `bytes`; leading zero bytes become `1`s.
pub fn base58_encode(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    // Little-endian base-58 digits of the big-endian number.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &b in &bytes[zeros..] {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(
        digits
            .iter()
            .rev()
            .map(|d| char::from(B58[usize::from(*d)])),
    );
    out
}

/// Decodes base58 (Bitcoin alphabet).
pub fn base58_decode(s: &str) -> Result<Vec<u8>, Base58Error> {
    let ones = s.bytes().take_while(|c| *c == b'1').count();
    let mut bytes: Vec<u8> = Vec::with_capacity(s.len());
    for (i, c) in s.bytes().enumerate().skip(ones) {
        let Some(v) = B58.iter().position(|x| *x == c) else {
            return Err(Base58Error::Character {
                ch: char::from(c),
                position: i + 1,
            });
        };
        let mut carry = u32::try_from(v).unwrap_or(0);
        for b in bytes.iter_mut() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0u8; ones];
    out.extend(bytes.iter().rev());
    Ok(out)
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let h = Sha256::digest(Sha256::digest(payload));
    [h[0], h[1], h[2], h[3]]
}

/// Base58 of `payload ‖ first 4 bytes of sha256(sha256(payload))`.
pub fn base58check_encode(payload: &[u8]) -> String {
    let mut v = payload.to_vec();
    v.extend_from_slice(&checksum(payload));
    base58_encode(&v)
}

/// The payload of a base58check string; a wrong checksum is an error that says so.
pub fn base58check_decode(s: &str) -> Result<Vec<u8>, Base58Error> {
    let raw = base58_decode(s)?;
    if raw.len() < 5 {
        return Err(Base58Error::TooShort(raw.len()));
    }
    let (payload, sum) = raw.split_at(raw.len() - 4);
    let want = checksum(payload);
    if sum != want {
        return Err(Base58Error::Checksum {
            carried: hex::encode(sum),
            computed: hex::encode(want),
        });
    }
    Ok(payload.to_vec())
}

/// Parses `0x` + 40 hex digits (any case; the checksum is not enforced).
pub fn parse_address(s: &str) -> Result<Address, IdError> {
    let t = s.trim();
    let invalid = || IdError::Address {
        input: s.to_string(),
    };
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .ok_or_else(invalid)?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    Address::from_str(t).map_err(|_| invalid())
}

/// Canonical text form of an address: lower-case, `0x`-prefixed.
pub fn address_text(a: &Address) -> String {
    format!("{a:#x}")
}

/// Normalises an address string to its canonical text form.
pub fn normalize_address(s: &str) -> Result<String, IdError> {
    parse_address(s).map(|a| address_text(&a))
}

/// Parses a transaction or block hash: 64 hex digits, with `0x` (EVM) or without (how TRON
/// writes transaction ids), in any case.
pub fn parse_hash(s: &str) -> Result<B256, IdError> {
    let t = s.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdError::Hash { input: s.into() });
    }
    B256::from_str(hex).map_err(|_| IdError::Hash { input: s.into() })
}

/// Canonical text form of a hash: lower-case, `0x`-prefixed.
pub fn hash_text(h: &B256) -> String {
    format!("{h:#x}")
}

/// Parses a base-10 amount as stored in `NUMERIC(78,0)`.
pub fn parse_amount(s: &str) -> Result<U256, IdError> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::Amount { input: s.into() });
    }
    U256::from_str_radix(t, 10).map_err(|source| IdError::AmountRange {
        input: s.into(),
        source,
    })
}

/// What a balance is held in: the chain's native coin or a token contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenKey {
    Native,
    Contract(Address),
}

impl TokenKey {
    pub const NATIVE: &'static str = "native";

    /// `native` or a token address (any case; a TRON form too, see [`parse_address_any`]).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.trim().eq_ignore_ascii_case(Self::NATIVE) {
            Ok(Self::Native)
        } else {
            parse_address_any(s)
                .map(Self::Contract)
                .map_err(|e| IdError::Token { inner: Box::new(e) })
        }
    }

    /// `native` or a token address of a chain of `family`.
    pub fn parse_for(family: ChainFamily, s: &str) -> Result<Self, IdError> {
        if s.trim().eq_ignore_ascii_case(Self::NATIVE) {
            Ok(Self::Native)
        } else {
            family
                .parse_address(s)
                .map(Self::Contract)
                .map_err(|e| IdError::Token { inner: Box::new(e) })
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
    fn hashes_with_or_without_0x() {
        let h = "ab".repeat(32);
        let want = format!("0x{h}");
        for form in [
            want.clone(),
            h.clone(),
            h.to_uppercase(),
            format!("0X{}", h.to_uppercase()),
        ] {
            assert_eq!(hash_text(&parse_hash(&form).unwrap()), want, "{form}");
        }
        for bad in [
            "",
            "0x",
            &h[1..],
            &format!("{h}0"),
            &format!("0x{}g", &h[1..]),
        ] {
            let e = parse_hash(bad).unwrap_err().to_string();
            assert!(e.contains("64 hex digits"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn families_parse() {
        assert_eq!("tron".parse::<ChainFamily>(), Ok(ChainFamily::Tron));
        assert_eq!(" EVM ".parse::<ChainFamily>(), Ok(ChainFamily::Evm));
        assert!(
            "solana"
                .parse::<ChainFamily>()
                .unwrap_err()
                .to_string()
                .contains("evm or tron")
        );
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

    /// USDT on TRON mainnet, in both of its written forms.
    const USDT_B58: &str = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t";
    const USDT_HEX: &str = "41a614f803b6fd780986a42c78ec9c7f77e6ded13c";

    #[test]
    fn tron_known_pairs() {
        let a = parse_tron_address(USDT_B58).unwrap();
        assert_eq!(address_text(&a), format!("0x{}", &USDT_HEX[2..]));
        assert_eq!(tron_base58(&a), USDT_B58);
        for form in [
            USDT_HEX.to_string(),
            format!("0x{USDT_HEX}"),
            format!("0x{}", &USDT_HEX[2..]),
            USDT_HEX.to_uppercase(),
        ] {
            assert_eq!(parse_tron_address(&form).unwrap(), a, "{form}");
            assert_eq!(parse_address_any(&form).unwrap(), a, "{form}");
        }
        assert_eq!(ChainFamily::Tron.parse_address(USDT_B58).unwrap(), a);
        assert_eq!(ChainFamily::Tron.show_address(&a), USDT_B58);
        assert_eq!(ChainFamily::Evm.show_address(&a), address_text(&a));
        assert_eq!(ChainFamily::Tron.show_stored(&address_text(&a)), USDT_B58);
        assert_eq!(ChainFamily::Tron.show_stored("native"), "native");
        assert_eq!(TokenKey::parse(USDT_B58).unwrap(), TokenKey::Contract(a));
        // The zero account and an all-ones account (other mainnet-shaped pairs).
        assert_eq!(
            tron_base58(&Address::ZERO),
            "T9yD14Nj9j7xAB4dbGeiX9h8unkKHxuWwb"
        );
        assert_eq!(
            parse_tron_address("T9yD14Nj9j7xAB4dbGeiX9h8unkKHxuWwb").unwrap(),
            Address::ZERO
        );
    }

    #[test]
    fn tron_errors_say_what_is_wrong() {
        // The last character changed: the checksum no longer matches.
        let typo = format!("{}u", &USDT_B58[..USDT_B58.len() - 1]);
        let e = parse_tron_address(&typo).unwrap_err().to_string();
        assert!(e.contains("checksum is wrong"), "{e}");
        // Two characters swapped.
        let swapped = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLjt6";
        assert!(
            parse_tron_address(swapped)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        let e = parse_tron_address("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj0t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base58") && e.contains("checksum"), "{e}");
        // A valid base58check string of another kind (a Bitcoin address: prefix 0x00).
        let e = parse_tron_address("T1BoatSLRHtKNngkdXEeobR76b53LETtpyT")
            .unwrap_err()
            .to_string();
        assert!(e.contains("base58") || e.contains("prefix"), "{e}");
        for bad in [
            "",
            "41a614",
            "42a614f803b6fd780986a42c78ec9c7f77e6ded13c",
            "a614f803b6fd780986a42c78ec9c7f77e6ded13c",
            "41g614f803b6fd780986a42c78ec9c7f77e6ded13c",
        ] {
            assert!(parse_tron_address(bad).is_err(), "{bad:?} accepted");
        }
        // EVM chains keep their strict form and say why a TRON form is refused.
        let e = ChainFamily::Evm
            .parse_address(USDT_B58)
            .unwrap_err()
            .to_string();
        assert!(e.contains("family = \"tron\""), "{e}");
        assert!(ChainFamily::Evm.parse_address(USDT_HEX).is_err());
    }

    #[test]
    fn base58_vectors() {
        // Bitcoin's reference vectors (leading zeros become '1').
        assert_eq!(base58_encode(b""), "");
        assert_eq!(base58_encode(&[0, 0, 0x28, 0x7f, 0xb4, 0xcd]), "11233QC4");
        assert_eq!(base58_encode(b"Hello World!"), "2NEpo7TZRRrLZSi2U");
        assert_eq!(base58_decode("2NEpo7TZRRrLZSi2U").unwrap(), b"Hello World!");
        assert_eq!(
            base58_decode("11233QC4").unwrap(),
            vec![0, 0, 0x28, 0x7f, 0xb4, 0xcd]
        );
    }

    proptest! {
        #[test]
        fn tron_forms_round_trip(bytes in any::<[u8; 20]>()) {
            let a = Address::from(bytes);
            let b58 = tron_base58(&a);
            prop_assert!(b58.starts_with('T'));
            prop_assert_eq!(b58.len(), 34);
            prop_assert_eq!(parse_tron_address(&b58).unwrap(), a);
            prop_assert_eq!(parse_address_any(&b58).unwrap(), a);
            let hex41 = format!("41{}", hex::encode(bytes));
            prop_assert_eq!(parse_tron_address(&hex41).unwrap(), a);
            prop_assert_eq!(parse_address_any(&address_text(&a)).unwrap(), a);
        }

        #[test]
        fn base58_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(base58_decode(&base58_encode(&bytes)).unwrap(), bytes);
        }

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
