//! java-tron's Ethereum-compatible JSON-RPC, where it differs from an EVM node's.
//!
//! - `eth_call` and `eth_getBalance` take only the `latest` tag (a block number is refused; a
//!   `{blockHash}` object is checked to exist and then ignored: the call still runs at `latest`).
//!   So the calls here send `latest` and nothing else, and the caller records the head the read
//!   was taken at.
//! - The call object is decoded strictly: `from`, `to`, `gas`, `gasPrice`, `value`, `data`,
//!   `nonce`. Calldata goes in `data` (alloy's `input` is an unknown field there).
//! - Addresses go out as 20-byte `0x` hex, which every method accepts (`eth_getLogs` filters
//!   take nothing else).
//! - Blocks carry fields an EVM client does not expect (`stateRoot` may be `0x`), so only the
//!   number, hash and timestamp are decoded. Receipts and transactions differ too; they are
//!   decoded for both families as far as chainsync reads them (see [`super::receipt`]).
//! - Finality is by solidified blocks: a block is solidified once 19 of the 27 super
//!   representatives (70%) have produced it or a block above it; as they produce in turn, when
//!   18 blocks are on top of it ([`SOLIDIFIED_DEPTH`], the default `confirmations` of a TRON
//!   chain, counts the block itself).

use std::borrow::Cow;

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256, Bytes, U64},
    providers::{Provider, RootProvider},
    transports::TransportError,
};
use serde::{Deserialize, Serialize};

use super::PinnedBlock;

/// Blocks, the block itself included, until a TRON block is solidified (irreversible): the
/// default `confirmations` of a TRON chain.
pub const SOLIDIFIED_DEPTH: u64 = 19;

/// The call object java-tron decodes.
#[derive(Debug, Clone, Serialize)]
pub struct CallArgs {
    pub to: Address,
    pub data: Bytes,
}

/// `eth_call` at `latest`.
pub async fn call_latest(
    provider: &RootProvider,
    to: Address,
    data: Bytes,
) -> Result<Bytes, TransportError> {
    provider
        .raw_request(Cow::Borrowed("eth_call"), (CallArgs { to, data }, "latest"))
        .await
}

#[derive(Debug, Deserialize)]
struct BlockHead {
    number: U64,
    hash: B256,
    timestamp: U64,
}

/// The block's number, hash and time; `None` when the node does not have it.
pub async fn block(
    provider: &RootProvider,
    at: BlockNumberOrTag,
) -> Result<Option<PinnedBlock>, TransportError> {
    let b: Option<BlockHead> = provider
        .raw_request(Cow::Borrowed("eth_getBlockByNumber"), (at, false))
        .await?;
    Ok(b.map(|b| PinnedBlock {
        number: b.number.to::<u64>(),
        hash: b.hash,
        timestamp: b.timestamp.to::<u64>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_args_are_what_java_tron_decodes() {
        let v = serde_json::to_value((
            CallArgs {
                to: Address::repeat_byte(0xab),
                data: Bytes::from(vec![0x70, 0xa0, 0x82, 0x31]),
            },
            "latest",
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"to": "0xabababababababababababababababababababab",
                                "data": "0x70a08231"}, "latest"])
        );
    }

    #[test]
    fn blocks_with_java_tron_fields_decode() {
        // Shape of a java-tron block: empty stateRoot, zero nonce, 20-byte miner.
        let raw = serde_json::json!({
            "baseFeePerGas": "0x0", "difficulty": "0x0", "extraData": "0x",
            "gasLimit": "0x0", "gasUsed": "0x0",
            "hash": "0x0000000003f2f1a2c4b0f6a9f0e0c0d0b0a09080706050403020100f0e0d0c0b",
            "logsBloom": format!("0x{}", "00".repeat(256)),
            "miner": "0x9c0b7e5d4a0e4e8e3b2f1c1d0a9b8c7d6e5f4a3b",
            "mixHash": format!("0x{}", "00".repeat(32)), "nonce": "0x0000000000000000",
            "number": "0x3f2f1a2", "parentHash": format!("0x{}", "11".repeat(32)),
            "receiptsRoot": format!("0x{}", "00".repeat(32)),
            "sha3Uncles": format!("0x{}", "00".repeat(32)), "size": "0x1a2b",
            "stateRoot": "0x", "timestamp": "0x65f0a1b2", "totalDifficulty": "0x0",
            "transactions": [], "transactionsRoot": format!("0x{}", "22".repeat(32)),
            "uncles": []
        });
        let b: BlockHead = serde_json::from_value(raw).unwrap();
        assert_eq!(b.number.to::<u64>(), 0x3f2f1a2);
        assert_eq!(b.timestamp.to::<u64>(), 0x65f0a1b2);
    }
}
