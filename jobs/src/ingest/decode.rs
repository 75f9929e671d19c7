//! Decoding logs: ERC20/ERC721 `Transfer`, ERC1155 `TransferSingle`/`TransferBatch`, and events
//! declared in config by signature (e.g. `ReferralRegistered(address indexed user, address
//! indexed referrer)`).

use alloy::{
    dyn_abi::{DynSolValue, EventExt},
    json_abi::Event,
    primitives::{Address, B256, U256},
    rpc::types::Log,
    sol,
    sol_types::SolEvent,
};
use serde_json::{Value, json};

sol! {
    event Transfer(address indexed from, address indexed to, uint256 value);
    event TransferSingle(address indexed operator, address indexed from, address indexed to, uint256 id, uint256 value);
    event TransferBatch(address indexed operator, address indexed from, address indexed to, uint256[] ids, uint256[] values);
}

/// An event signature in config that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid event signature {signature:?}: {source}")]
pub struct EventSignatureError {
    pub signature: String,
    #[source]
    pub source: chainsync_engine::BoxError,
}

/// A log of a known shape whose data does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The ABI decoder refused the data of `event`.
    #[error("{event}: {source}")]
    Data {
        event: String,
        #[source]
        source: chainsync_engine::BoxError,
    },
    #[error("TransferBatch: {ids} ids but {values} values")]
    BatchLengths { ids: usize, values: usize },
    #[error("{event}: missing value for {param}")]
    Missing { event: String, param: String },
}

fn data_error(event: &str) -> impl FnOnce(alloy::sol_types::Error) -> DecodeError + '_ {
    move |e| DecodeError::Data {
        event: event.to_string(),
        source: e.into(),
    }
}

/// A custom event from config.
#[derive(Debug, Clone)]
pub struct CustomEvent {
    pub event: Event,
    pub selector: B256,
}

impl CustomEvent {
    pub fn parse(signature: &str) -> Result<Self, EventSignatureError> {
        let event = Event::parse(signature).map_err(|e| EventSignatureError {
            signature: signature.to_string(),
            source: e.into(),
        })?;
        let selector = event.selector();
        Ok(Self { event, selector })
    }
}

/// One decoded log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub event: String,
    pub args: Value,
    /// Holders whose balance of this contract the log changed.
    pub touched: Vec<Address>,
    /// (user, referrer) of a `ReferralRegistered`-shaped event.
    pub referral: Option<(Address, Address)>,
    /// The move `balanceOf(address)` sees: (from, to, amount) of an ERC20 `Transfer` (its value)
    /// or an ERC721 `Transfer` (one token). `None` for ERC1155 (balances per id) and custom events.
    pub moved: Option<(Address, Address, U256)>,
}

fn addr(a: &Address) -> String {
    format!("{a:#x}")
}

fn nonzero(list: &[Address]) -> Vec<Address> {
    let mut v: Vec<Address> = list.iter().copied().filter(|a| !a.is_zero()).collect();
    v.sort();
    v.dedup();
    v
}

/// Decodes `log`; `Ok(None)` for a log of no known shape (ignored), `Err` for a known shape whose
/// data does not decode (a misbehaving node or contract; reported, not stored).
pub fn decode(log: &Log, custom: &[CustomEvent]) -> Result<Option<Decoded>, DecodeError> {
    let Some(topic0) = log.topics().first().copied() else {
        return Ok(None);
    };
    let data = log.data();
    if topic0 == Transfer::SIGNATURE_HASH {
        if log.topics().len() == 4 {
            // ERC721: the token id is the third indexed topic.
            let from = Address::from_word(log.topics()[1]);
            let to = Address::from_word(log.topics()[2]);
            let id = U256::from_be_bytes(log.topics()[3].0);
            return Ok(Some(Decoded {
                event: "Transfer".into(),
                args: json!({"from": addr(&from), "to": addr(&to), "token_id": id.to_string()}),
                touched: nonzero(&[from, to]),
                referral: None,
                moved: Some((from, to, U256::from(1))),
            }));
        }
        let t = Transfer::decode_log_data(data).map_err(data_error("Transfer"))?;
        return Ok(Some(Decoded {
            event: "Transfer".into(),
            args: json!({"from": addr(&t.from), "to": addr(&t.to), "value": t.value.to_string()}),
            touched: nonzero(&[t.from, t.to]),
            referral: None,
            moved: Some((t.from, t.to, t.value)),
        }));
    }
    if topic0 == TransferSingle::SIGNATURE_HASH {
        let t = TransferSingle::decode_log_data(data).map_err(data_error("TransferSingle"))?;
        return Ok(Some(Decoded {
            event: "TransferSingle".into(),
            args: json!({"operator": addr(&t.operator), "from": addr(&t.from), "to": addr(&t.to),
                         "id": t.id.to_string(), "value": t.value.to_string()}),
            touched: nonzero(&[t.from, t.to]),
            referral: None,
            moved: None,
        }));
    }
    if topic0 == TransferBatch::SIGNATURE_HASH {
        let t = TransferBatch::decode_log_data(data).map_err(data_error("TransferBatch"))?;
        if t.ids.len() != t.values.len() {
            return Err(DecodeError::BatchLengths {
                ids: t.ids.len(),
                values: t.values.len(),
            });
        }
        return Ok(Some(Decoded {
            event: "TransferBatch".into(),
            args: json!({"operator": addr(&t.operator), "from": addr(&t.from), "to": addr(&t.to),
                         "ids": t.ids.iter().map(U256::to_string).collect::<Vec<_>>(),
                         "values": t.values.iter().map(U256::to_string).collect::<Vec<_>>()}),
            touched: nonzero(&[t.from, t.to]),
            referral: None,
            moved: None,
        }));
    }
    let Some(c) = custom.iter().find(|c| c.selector == topic0) else {
        return Ok(None);
    };
    let decoded = c.event.decode_log(data).map_err(|e| DecodeError::Data {
        event: c.event.name.clone(),
        source: e.into(),
    })?;
    let (mut indexed, mut body) = (decoded.indexed.into_iter(), decoded.body.into_iter());
    let mut args = serde_json::Map::new();
    let mut addresses = Vec::new();
    for p in &c.event.inputs {
        let v = if p.indexed {
            indexed.next()
        } else {
            body.next()
        };
        let Some(v) = v else {
            return Err(DecodeError::Missing {
                event: c.event.name.clone(),
                param: p.name.clone(),
            });
        };
        if let DynSolValue::Address(a) = &v {
            addresses.push((p.name.clone(), *a));
        }
        args.insert(p.name.clone(), to_json(&v));
    }
    let find = |name: &str| addresses.iter().find(|(n, _)| n == name).map(|(_, a)| *a);
    let referral = match (find("user"), find("referrer")) {
        (Some(u), Some(r)) if c.event.name.to_ascii_lowercase().contains("referr") => Some((u, r)),
        _ => None,
    };
    Ok(Some(Decoded {
        event: c.event.name.clone(),
        args: Value::Object(args),
        touched: Vec::new(),
        referral,
        moved: None,
    }))
}

/// JSON for a decoded value: integers as decimal strings (exact), bytes and addresses as hex.
fn to_json(v: &DynSolValue) -> Value {
    match v {
        DynSolValue::Address(a) => Value::String(addr(a)),
        DynSolValue::Bool(b) => Value::Bool(*b),
        DynSolValue::Uint(u, _) => Value::String(u.to_string()),
        DynSolValue::Int(i, _) => Value::String(i.to_string()),
        DynSolValue::FixedBytes(w, n) => Value::String(format!("0x{}", hex::encode(&w[..*n]))),
        DynSolValue::Bytes(b) => Value::String(format!("0x{}", hex::encode(b))),
        DynSolValue::String(s) => Value::String(s.clone()),
        DynSolValue::Array(a) | DynSolValue::FixedArray(a) | DynSolValue::Tuple(a) => {
            Value::Array(a.iter().map(to_json).collect())
        }
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{Bytes, LogData, address};
    use proptest::prelude::*;

    fn log(topics: Vec<B256>, data: Vec<u8>) -> Log {
        Log {
            inner: alloy::primitives::Log {
                address: address!("0x00000000000000000000000000000000000000aa"),
                data: LogData::new_unchecked(topics, Bytes::from(data)),
            },
            ..Default::default()
        }
    }

    #[test]
    fn decodes_transfers_and_custom_events() {
        let from = address!("0x1111111111111111111111111111111111111111");
        let to = address!("0x2222222222222222222222222222222222222222");
        let l = log(
            vec![Transfer::SIGNATURE_HASH, from.into_word(), to.into_word()],
            U256::from(5u64).to_be_bytes::<32>().to_vec(),
        );
        let d = decode(&l, &[]).unwrap().unwrap();
        assert_eq!(d.args["value"], "5");
        assert_eq!(d.touched, vec![from, to]);
        assert_eq!(d.moved, Some((from, to, U256::from(5u64))));
        // ERC721: one token moves, whatever its id.
        let nft = log(
            vec![
                Transfer::SIGNATURE_HASH,
                from.into_word(),
                to.into_word(),
                U256::from(77u64).into(),
            ],
            vec![],
        );
        let d = decode(&nft, &[]).unwrap().unwrap();
        assert_eq!(d.args["token_id"], "77");
        assert_eq!(d.moved, Some((from, to, U256::from(1u64))));
        let c = CustomEvent::parse(
            "ReferralRegistered(address indexed user, address indexed referrer)",
        )
        .unwrap();
        let l = log(vec![c.selector, from.into_word(), to.into_word()], vec![]);
        let d = decode(&l, &[c]).unwrap().unwrap();
        assert_eq!(d.referral, Some((from, to)));
        assert_eq!(d.args["referrer"], format!("{to:#x}"));
        assert!(
            decode(&log(vec![B256::ZERO], vec![]), &[])
                .unwrap()
                .is_none()
        );
        // A Transfer whose data is cut short is an error, not a panic.
        let bad = log(
            vec![Transfer::SIGNATURE_HASH, from.into_word(), to.into_word()],
            vec![1, 2],
        );
        assert!(decode(&bad, &[]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_logs_never_panic(t in proptest::collection::vec(any::<[u8; 32]>(), 0..5), data in proptest::collection::vec(any::<u8>(), 0..200), pick in 0usize..4) {
            let mut topics: Vec<B256> = t.into_iter().map(B256::from).collect();
            let sigs = [Transfer::SIGNATURE_HASH, TransferSingle::SIGNATURE_HASH, TransferBatch::SIGNATURE_HASH];
            if let (Some(first), Some(sig)) = (topics.first_mut(), sigs.get(pick)) {
                *first = *sig;
            }
            let c = CustomEvent::parse("ReferralRegistered(address indexed user, address indexed referrer)").unwrap();
            let _ = decode(&log(topics, data), &[c]);
        }
    }
}
