//! Receipts of followed transactions, decoded as far as chainsync reads them.
//!
//! EVM nodes and java-tron write receipts differently (java-tron: type `0x0` whatever the
//! transaction, an all-zero `logsBloom`, `effectiveGasPrice` the energy price, no blob fields)
//! and transactions more so (java-tron: a `null` nonce, no `type` or `chainId`, `v` 27/28, and no
//! transactions of the pending pool). So a receipt is decoded into the fields `check-pending-tx`
//! reads, which both write the same way (20-byte `0x` addresses: java-tron drops the `41`), and a
//! transaction only for whether the node has it.

use std::borrow::Cow;

use alloy::{
    primitives::{Address, B256, U64},
    providers::{Provider, RootProvider},
    transports::TransportError,
};
use serde::Deserialize;

/// A receipt: where the transaction was mined, whether it succeeded, what it touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxReceipt {
    /// Number and hash of the block it was mined in; `None` for a pending receipt (some nodes
    /// return one for a transaction in their pool).
    pub block: Option<(u64, B256)>,
    /// `status` 1; a receipt without `status` (before Byzantium, `root` instead) counts as one.
    pub success: bool,
    pub from: Option<Address>,
    pub to: Option<Address>,
    pub contract_address: Option<Address>,
    pub logs: Vec<ReceiptLog>,
}

/// A log of a receipt: the emitting contract and the topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReceiptLog {
    pub address: Address,
    #[serde(default)]
    pub topics: Vec<B256>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReceipt {
    #[serde(default)]
    block_number: Option<U64>,
    #[serde(default)]
    block_hash: Option<B256>,
    #[serde(default)]
    status: Option<U64>,
    #[serde(default)]
    from: Option<Address>,
    #[serde(default)]
    to: Option<Address>,
    #[serde(default)]
    contract_address: Option<Address>,
    #[serde(default)]
    logs: Vec<ReceiptLog>,
}

impl From<RawReceipt> for TxReceipt {
    fn from(r: RawReceipt) -> Self {
        Self {
            block: r
                .block_number
                .zip(r.block_hash)
                .map(|(n, h)| (n.to::<u64>(), h)),
            success: r.status.is_none_or(|s| !s.is_zero()),
            from: r.from,
            to: r.to,
            contract_address: r.contract_address,
            logs: r.logs,
        }
    }
}

/// `eth_getTransactionReceipt`; `None` when the node has none.
pub async fn fetch(
    provider: &RootProvider,
    hash: B256,
) -> Result<Option<TxReceipt>, TransportError> {
    let r: Option<RawReceipt> = provider
        .raw_request(Cow::Borrowed("eth_getTransactionReceipt"), (hash,))
        .await?;
    Ok(r.map(TxReceipt::from))
}

/// Whether `eth_getTransactionByHash` knows the transaction (its body is not decoded).
pub async fn known(provider: &RootProvider, hash: B256) -> Result<bool, TransportError> {
    let t: Option<serde_json::Value> = provider
        .raw_request(Cow::Borrowed("eth_getTransactionByHash"), (hash,))
        .await?;
    Ok(t.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(v: serde_json::Value) -> TxReceipt {
        serde_json::from_value::<RawReceipt>(v).unwrap().into()
    }

    #[test]
    fn java_tron_receipts_decode() {
        // Shape of java-tron's TransactionReceipt (a TRC20 transfer).
        let r = decode(serde_json::json!({
            "blockHash": format!("0x0000000003f2f1a2{}", "ab".repeat(24)),
            "blockNumber": "0x3f2f1a2", "contractAddress": null,
            "cumulativeGasUsed": "0x3a98", "effectiveGasPrice": "0x1a4", "gasUsed": "0x3a98",
            "from": "0x9c0b7e5d4a0e4e8e3b2f1c1d0a9b8c7d6e5f4a3b",
            "to": "0xa614f803b6fd780986a42c78ec9c7f77e6ded13c",
            "logsBloom": format!("0x{}", "00".repeat(256)), "status": "0x1", "type": "0x0",
            "transactionHash": format!("0x{}", "cd".repeat(32)), "transactionIndex": "0x0",
            "logs": [{
                "address": "0xa614f803b6fd780986a42c78ec9c7f77e6ded13c",
                "blockHash": format!("0x0000000003f2f1a2{}", "ab".repeat(24)),
                "blockNumber": "0x3f2f1a2", "data": format!("0x{:064x}", 5),
                "logIndex": "0x0", "removed": false,
                "topics": [
                    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
                    format!("0x{:0>64}", "9c0b7e5d4a0e4e8e3b2f1c1d0a9b8c7d6e5f4a3b"),
                    format!("0x{:0>64}", "1111111111111111111111111111111111111111")
                ],
                "transactionHash": format!("0x{}", "cd".repeat(32)), "transactionIndex": "0x0"
            }]
        }));
        assert_eq!(r.block.map(|b| b.0), Some(0x3f2f1a2));
        assert!(r.success);
        assert_eq!(r.logs.len(), 1);
        assert_eq!(r.logs[0].topics.len(), 3);
        assert_eq!(r.contract_address, None);
    }

    #[test]
    fn status_and_pending_receipts() {
        let failed = decode(serde_json::json!({"status": "0x0", "from": null, "logs": []}));
        assert!(!failed.success);
        assert_eq!(failed.block, None);
        let pre_byzantium = decode(serde_json::json!({
            "root": format!("0x{}", "00".repeat(32)), "blockNumber": "0x1",
            "blockHash": format!("0x{}", "11".repeat(32))
        }));
        assert!(pre_byzantium.success);
        assert_eq!(pre_byzantium.block.map(|b| b.0), Some(1));
    }
}
