//! Batched balance reads through Multicall3 `aggregate3`, pinned to one block.
//!
//! Every call has `allowFailure = true`: a token whose `balanceOf` reverts, or returns something
//! that is not a `uint256`, fails that one call and nothing else. Native balances go through
//! Multicall3's own `getEthBalance`, so a batch may mix the coin and any number of tokens.
//!
//! A batch the node cannot execute as a whole (out of gas, a node-side limit) is split in halves
//! and retried, down to single calls.
//!
//! A chain without a Multicall3 (a TRON chain that names none) gets the same reads as one
//! JSON-RPC batch request of `eth_call`s (`balanceOf`) and `eth_getBalance`s, each failing alone.

use alloy::providers::Provider;
use alloy::{
    primitives::{Address, Bytes, U256},
    sol,
    sol_types::{SolCall, decode_revert_reason},
    transports::RpcError,
};
use futures::future::BoxFuture;

use super::{ChainClient, PinnedBlock};
use crate::{JobError, ids::TokenKey};

sol! {
    interface IMulticall3 {
        struct Call3 {
            address target;
            bool allowFailure;
            bytes callData;
        }
        struct Result3 {
            bool success;
            bytes returnData;
        }
        function aggregate3(Call3[] calldata calls) external payable returns (Result3[] memory returnData);
        function getEthBalance(address addr) external view returns (uint256 balance);
        function getCurrentBlockTimestamp() external view returns (uint256 timestamp);
    }

    interface IERC20 {
        function balanceOf(address owner) external view returns (uint256);
    }
}

/// One balance to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BalanceQuery {
    pub token: TokenKey,
    pub holder: Address,
}

/// The outcome of one call: the balance, or why this call failed.
pub type BalanceRead = Result<U256, ReadError>;

/// Why one balance read failed (the others of its batch may have succeeded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The call reverted, with its decoded reason or the start of its return data.
    #[error("reverted: {0}")]
    Reverted(String),
    #[error("empty return data (no contract at the token address?)")]
    Empty,
    #[error("return data of {0} bytes is not a uint256")]
    NotUint(usize),
    /// The node refused even a batch of this one call.
    #[error("the node could not execute the call: {0}")]
    NodeRefused(String),
}

fn encode(multicall: Address, q: &BalanceQuery) -> IMulticall3::Call3 {
    match q.token {
        TokenKey::Native => IMulticall3::Call3 {
            target: multicall,
            allowFailure: true,
            callData: IMulticall3::getEthBalanceCall { addr: q.holder }
                .abi_encode()
                .into(),
        },
        TokenKey::Contract(token) => IMulticall3::Call3 {
            target: token,
            allowFailure: true,
            callData: IERC20::balanceOfCall { owner: q.holder }
                .abi_encode()
                .into(),
        },
    }
}

/// Decodes one `uint256` return; anything else is a failure of that call only.
fn decode_one(r: &IMulticall3::Result3) -> BalanceRead {
    if !r.success {
        let reason =
            decode_revert_reason(&r.returnData).unwrap_or_else(|| short_hex(&r.returnData, 36));
        return Err(ReadError::Reverted(reason));
    }
    match r.returnData.len() {
        0 => Err(ReadError::Empty),
        // Standard ABI: one word. Longer returns are decoded like abi.decode does: first word.
        n if n >= 32 => Ok(U256::from_be_slice(&r.returnData[..32])),
        n => Err(ReadError::NotUint(n)),
    }
}

fn short_hex(b: &Bytes, max: usize) -> String {
    if b.is_empty() {
        return "no data".into();
    }
    let shown = &b[..b.len().min(max)];
    let ell = if b.len() > max { "…" } else { "" };
    format!("0x{}{ell}", hex::encode(shown))
}

/// Whether the node failed the whole batch in a way a smaller batch may avoid.
fn batch_too_big(e: &alloy::transports::TransportError) -> bool {
    match e {
        RpcError::ErrorResp(p) => {
            let m = p.message.to_ascii_lowercase();
            m.contains("out of gas")
                || m.contains("gas limit")
                || m.contains("gas required exceeds")
                || m.contains("too large")
                || m.contains("limit exceeded") && p.code != -32005
                || m.contains("execution reverted") && p.data.is_none()
        }
        RpcError::Transport(k) => k.as_http_error().is_some_and(|h| h.status == 413),
        _ => false,
    }
}

/// Reads `queries` with one `aggregate3` call at `block` (split further if the node refuses it).
///
/// Returns one [`BalanceRead`] per query, in order. An `Err` of the whole function is an RPC
/// failure already classified for the job.
pub fn read_balances<'a>(
    chain: &'a ChainClient,
    queries: &'a [BalanceQuery],
    block: &'a PinnedBlock,
) -> BoxFuture<'a, Result<Vec<BalanceRead>, JobError>> {
    Box::pin(async move {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let Some(multicall) = chain.multicall else {
            return read_balances_batched(chain, queries, block).await;
        };
        let calls: Vec<IMulticall3::Call3> = queries.iter().map(|q| encode(multicall, q)).collect();
        let input = IMulticall3::aggregate3Call { calls }.abi_encode();
        let out = match chain.eth_call(multicall, input.into(), block).await {
            Ok(out) => out,
            Err(e) if queries.len() > 1 && batch_too_big(&e) => {
                let mid = queries.len() / 2;
                tracing::debug!(
                    chain_id = chain.chain_id(),
                    calls = queries.len(),
                    "multicall batch refused by the node, splitting"
                );
                let mut left = read_balances(chain, &queries[..mid], block).await?;
                let right = read_balances(chain, &queries[mid..], block).await?;
                left.extend(right);
                return Ok(left);
            }
            Err(e) if queries.len() == 1 && batch_too_big(&e) => {
                return Ok(vec![Err(ReadError::NodeRefused(e.to_string()))]);
            }
            Err(e) => return Err(chain.rpc_error("eth_call aggregate3", &e)),
        };
        if out.is_empty() {
            return Err(JobError::fatal(format!(
                "chain {}: no Multicall3 contract at {} (block {}); deploy it or set multicall_address",
                chain.chain_id(),
                chain.family().show_address(&multicall),
                block.number
            )));
        }
        let results = IMulticall3::aggregate3Call::abi_decode_returns(&out).map_err(|e| {
            JobError::retry_from(
                format!(
                    "chain {}: undecodable aggregate3 response ({} bytes)",
                    chain.chain_id(),
                    out.len()
                ),
                e,
            )
        })?;
        if results.len() != queries.len() {
            return Err(JobError::retry(format!(
                "chain {}: aggregate3 returned {} results for {} calls",
                chain.chain_id(),
                results.len(),
                queries.len()
            )));
        }
        Ok(results.iter().map(decode_one).collect())
    })
}

/// Like [`read_balances`] for at most one batch, with the block's timestamp read in the same
/// `aggregate3` call (Multicall3's `getCurrentBlockTimestamp`): one `eth_call` where a node whose
/// logs carry no `blockTimestamp` would otherwise need a block request too. `block.timestamp` is
/// ignored; the returned block carries the one read. Falls back to a block request and
/// [`read_balances`] when the node refuses the call as too big.
pub async fn read_balances_timed(
    chain: &ChainClient,
    queries: &[BalanceQuery],
    block: &PinnedBlock,
) -> Result<(PinnedBlock, Vec<BalanceRead>), JobError> {
    let Some(multicall) = chain.multicall else {
        return Err(JobError::fatal(format!(
            "chain {}: block-timed reads need a Multicall3 (multicall_address)",
            chain.chain_id()
        )));
    };
    let mut calls = Vec::with_capacity(queries.len() + 1);
    calls.push(IMulticall3::Call3 {
        target: multicall,
        allowFailure: false,
        callData: IMulticall3::getCurrentBlockTimestampCall {}
            .abi_encode()
            .into(),
    });
    calls.extend(queries.iter().map(|q| encode(multicall, q)));
    let input = IMulticall3::aggregate3Call { calls }.abi_encode();
    let out = match chain.eth_call(multicall, input.into(), block).await {
        Ok(out) => out,
        Err(e) if batch_too_big(&e) => {
            let Some(b) = chain.block_at(block.number).await? else {
                return Err(JobError::retry(format!(
                    "chain {}: block {} not available from the node",
                    chain.chain_id(),
                    block.number
                )));
            };
            if b.hash != block.hash {
                return Err(JobError::retry(format!(
                    "chain {}: block {} changed while it was read (reorg)",
                    chain.chain_id(),
                    block.number
                )));
            }
            let reads = read_balances(chain, queries, &b).await?;
            return Ok((b, reads));
        }
        Err(e) => return Err(chain.rpc_error("eth_call aggregate3", &e)),
    };
    if out.is_empty() {
        return Err(JobError::fatal(format!(
            "chain {}: no Multicall3 contract at {} (block {}); deploy it or set multicall_address",
            chain.chain_id(),
            chain.family().show_address(&multicall),
            block.number
        )));
    }
    let results = IMulticall3::aggregate3Call::abi_decode_returns(&out).map_err(|e| {
        JobError::retry_from(
            format!(
                "chain {}: undecodable aggregate3 response ({} bytes)",
                chain.chain_id(),
                out.len()
            ),
            e,
        )
    })?;
    let (Some(first), true) = (results.first(), results.len() == queries.len() + 1) else {
        return Err(JobError::retry(format!(
            "chain {}: aggregate3 returned {} results for {} calls",
            chain.chain_id(),
            results.len(),
            queries.len() + 1
        )));
    };
    let timestamp = decode_one(first)
        .map_err(|e| JobError::retry_from("block timestamp", e))
        .and_then(|t| {
            u64::try_from(t).map_err(|_| JobError::retry("block timestamp out of range"))
        })?;
    let pinned = PinnedBlock {
        timestamp,
        ..*block
    };
    Ok((pinned, results[1..].iter().map(decode_one).collect()))
}

/// The reads of [`read_balances`] without a Multicall3: one JSON-RPC batch request, a
/// `balanceOf` `eth_call` per token query and an `eth_getBalance` per native one, at `block` as
/// [`ChainClient::eth_call`] places it. An error answer to one call (a revert) fails that call;
/// a failure of the request itself fails the whole read.
async fn read_balances_batched(
    chain: &ChainClient,
    queries: &[BalanceQuery],
    block: &PinnedBlock,
) -> Result<Vec<BalanceRead>, JobError> {
    use std::future::Future;
    use std::pin::Pin;
    type One = Pin<Box<dyn Future<Output = Result<BalanceRead, JobError>> + Send>>;
    let mut batch = alloy::rpc::client::BatchRequest::new(chain.provider.client());
    let params = chain.call_params(block);
    let mut waiters: Vec<One> = Vec::with_capacity(queries.len());
    for q in queries {
        let what = match q.token {
            TokenKey::Native => "eth_getBalance",
            TokenKey::Contract(_) => "eth_call balanceOf",
        };
        let label = (chain.config.name.clone(), chain.chain_id(), what);
        let classify =
            move |e: alloy::transports::TransportError| -> Result<BalanceRead, JobError> {
                match e {
                    RpcError::ErrorResp(p) if p.code != -32005 && p.code != 429 => {
                        Ok(Err(ReadError::Reverted(p.message.to_string())))
                    }
                    e => Err(super::error::classify_for(&label.0, label.1, label.2, &e)),
                }
            };
        let w: One = match q.token {
            TokenKey::Native => {
                let w = batch
                    .add_call::<_, U256>("eth_getBalance", &(q.holder, params.clone()))
                    .map_err(|e| chain.rpc_error("eth_getBalance", &e))?;
                Box::pin(async move { w.await.map(Ok).or_else(classify) })
            }
            TokenKey::Contract(token) => {
                let data: Bytes = IERC20::balanceOfCall { owner: q.holder }
                    .abi_encode()
                    .into();
                let w = batch
                    .add_call::<_, Bytes>(
                        "eth_call",
                        &(super::tron::CallArgs { to: token, data }, params.clone()),
                    )
                    .map_err(|e| chain.rpc_error("eth_call", &e))?;
                Box::pin(async move {
                    w.await
                        .map(|out| match out.len() {
                            0 => Err(ReadError::Empty),
                            n if n >= 32 => Ok(U256::from_be_slice(&out[..32])),
                            n => Err(ReadError::NotUint(n)),
                        })
                        .or_else(classify)
                })
            }
        };
        waiters.push(w);
    }
    batch
        .send()
        .await
        .map_err(|e| chain.rpc_error("batched balance reads", &e))?;
    let mut out = Vec::with_capacity(waiters.len());
    for w in waiters {
        out.push(w.await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(success: bool, data: Vec<u8>) -> IMulticall3::Result3 {
        IMulticall3::Result3 {
            success,
            returnData: data.into(),
        }
    }

    #[test]
    fn decodes_words_and_rejects_the_rest() {
        let v = U256::from(123_456_789u64);
        assert_eq!(decode_one(&result(true, v.to_be_bytes_vec())), Ok(v));
        let mut long = U256::MAX.to_be_bytes_vec();
        long.extend([0u8; 32]);
        assert_eq!(decode_one(&result(true, long)), Ok(U256::MAX));
        assert!(
            decode_one(&result(true, vec![]))
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            decode_one(&result(true, vec![1; 31]))
                .unwrap_err()
                .to_string()
                .contains("31 bytes")
        );
        assert!(
            decode_one(&result(false, vec![]))
                .unwrap_err()
                .to_string()
                .contains("reverted")
        );
        // Error("paused")
        let revert =
            alloy::sol_types::SolError::abi_encode(&alloy::sol_types::Revert::from("paused"));
        assert_eq!(
            decode_one(&result(false, revert)).unwrap_err(),
            ReadError::Reverted("revert: paused".into())
        );
    }

    #[test]
    fn encodes_native_through_multicall_and_tokens_directly() {
        let mc = crate::settings::MULTICALL3;
        let holder = Address::repeat_byte(0x11);
        let token = Address::repeat_byte(0x22);
        let n = encode(
            mc,
            &BalanceQuery {
                token: TokenKey::Native,
                holder,
            },
        );
        assert_eq!(n.target, mc);
        assert_eq!(&n.callData[..4], IMulticall3::getEthBalanceCall::SELECTOR);
        let t = encode(
            mc,
            &BalanceQuery {
                token: TokenKey::Contract(token),
                holder,
            },
        );
        assert_eq!(t.target, token);
        assert_eq!(&t.callData[..4], IERC20::balanceOfCall::SELECTOR);
        assert_eq!(&t.callData[16..36], holder.as_slice());
        assert!(n.allowFailure && t.allowFailure);
    }
}
