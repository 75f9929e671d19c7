//! Many token holders, fast: deterministic holder addresses and amounts from a seed, minted with
//! real `mintMany` transactions (a `Transfer` event per holder) mined in as few blocks as possible.

use std::collections::HashMap;

use alloy::eips::BlockNumberOrTag;
use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, TxHash, U256, keccak256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use futures::{StreamExt, TryStreamExt};

use super::contracts::TestToken;
use super::{DevChain, DevChainError};

/// Holders per `mintMany` transaction up to Prague. Fewer, larger transactions are much faster:
/// anvil's cost per transaction grows with the token's storage.
pub const MINT_CHUNK: usize = 5_000;

/// Holders per `mintMany` transaction from Osaka on: about 25k gas each keeps a chunk under the
/// 16.7M per-transaction gas cap (EIP-7825).
pub const MINT_CHUNK_CAPPED: usize = 500;

/// Hardforks without the per-transaction gas cap.
const UNCAPPED_HARDFORKS: &[&str] = &[
    "frontier",
    "homestead",
    "tangerine",
    "spuriousdragon",
    "byzantium",
    "constantinople",
    "petersburg",
    "istanbul",
    "muirglacier",
    "berlin",
    "london",
    "arrowglacier",
    "grayglacier",
    "paris",
    "merge",
    "shanghai",
    "cancun",
    "prague",
];

/// Gas budget per minted holder (a fresh storage slot plus a log) and per transaction.
const GAS_PER_HOLDER: u64 = 30_000;
const GAS_BASE: u64 = 100_000;

/// Requests in flight at once while collecting receipts or preparing senders.
const SEND_CONCURRENCY: usize = 8;

/// The blocks and transactions a batch of sends landed in.
#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    pub tx_hashes: Vec<TxHash>,
    /// Lowest block a transaction of the batch was mined in.
    pub first_block: u64,
    /// Highest block a transaction of the batch was mined in.
    pub last_block: u64,
}

/// `n` distinct pseudo-random addresses, the same for the same seed: `keccak(seed, i)[12..]`.
pub fn holder_addresses(seed: u64, n: usize) -> Vec<Address> {
    (0..n as u64)
        .map(|i| Address::from_word(seed_word(seed, i, 0)))
        .collect()
}

/// `n` holders with amounts in `1..=max_amount`, the same for the same seed.
pub fn random_holders(seed: u64, n: usize, max_amount: U256) -> Vec<(Address, U256)> {
    let max = max_amount.max(U256::from(1u64));
    (0..n as u64)
        .map(|i| {
            let address = Address::from_word(seed_word(seed, i, 0));
            let draw = U256::from_be_bytes(seed_word(seed, i, 1).0);
            (address, draw % max + U256::from(1u64))
        })
        .collect()
}

fn seed_word(seed: u64, index: u64, salt: u8) -> B256 {
    let mut buf = [0u8; 17];
    buf[..8].copy_from_slice(&seed.to_be_bytes());
    buf[8..16].copy_from_slice(&index.to_be_bytes());
    buf[16] = salt;
    keccak256(buf)
}

impl DevChain {
    /// Mints to every `(holder, amount)` with `mintMany`, [`MINT_CHUNK`] holders per transaction
    /// ([`MINT_CHUNK_CAPPED`] on a hardfork with the per-transaction gas cap), in as few blocks as
    /// possible.
    pub async fn mint_many(
        &self,
        token: Address,
        holders: &[(Address, U256)],
    ) -> Result<BatchOutcome, DevChainError> {
        let uncapped = self.options().hardfork.is_some_and(|h| {
            let h = h.to_ascii_lowercase().replace(['-', '_'], "");
            UNCAPPED_HARDFORKS.contains(&h.as_str())
        });
        let chunk = if uncapped {
            MINT_CHUNK
        } else {
            MINT_CHUNK_CAPPED
        };
        self.mint_many_chunked(token, holders, chunk).await
    }

    /// Mints to `holders` in one transaction per block, `per_block` holders each: `Transfer`
    /// events spread over many blocks, as a token's history is (the block count grows with the
    /// state, so this is slower than [`Self::mint_many`]). Needs automine (the default).
    pub async fn mint_across_blocks(
        &self,
        token: Address,
        holders: &[(Address, U256)],
        per_block: usize,
    ) -> Result<u64, DevChainError> {
        if per_block == 0 {
            return Err(DevChainError::Invalid(
                "holders per block must be positive".into(),
            ));
        }
        let from = self.signer(0)?.address();
        let gas_price = self.batch_gas_price().await?;
        let mut nonces = Nonces::default();
        let mut blocks = 0;
        for part in holders.chunks(per_block) {
            let call = TestToken::mintManyCall {
                to: part.iter().map(|(a, _)| *a).collect(),
                amounts: part.iter().map(|(_, v)| *v).collect(),
            };
            let tx = TransactionRequest::default()
                .with_from(from)
                .with_to(token)
                .with_input(call.abi_encode())
                .with_gas_limit(GAS_BASE + GAS_PER_HOLDER * part.len() as u64)
                .with_gas_price(gas_price)
                .with_nonce(nonces.next(self, from).await?)
                .with_chain_id(self.chain_id());
            self.send(tx).await?;
            blocks += 1;
        }
        Ok(blocks)
    }

    /// Mints with `chunk` holders per transaction. Transactions carry explicit nonces and gas so
    /// they can be sent back to back without waiting for each receipt; every receipt is checked.
    pub async fn mint_many_chunked(
        &self,
        token: Address,
        holders: &[(Address, U256)],
        chunk: usize,
    ) -> Result<BatchOutcome, DevChainError> {
        if chunk == 0 {
            return Err(DevChainError::Invalid(
                "mint chunk size must be positive".into(),
            ));
        }
        let txs = holders
            .chunks(chunk)
            .map(|part| {
                let call = TestToken::mintManyCall {
                    to: part.iter().map(|(a, _)| *a).collect(),
                    amounts: part.iter().map(|(_, v)| *v).collect(),
                };
                let gas = GAS_BASE + GAS_PER_HOLDER * part.len() as u64;
                TransactionRequest::default()
                    .with_to(token)
                    .with_input(call.abi_encode())
                    .with_gas_limit(gas)
            })
            .collect();
        self.send_batch(0, txs).await
    }

    /// Sends `txs` from dev account `from_signer_index` with consecutive nonces, back to back, then
    /// waits for all receipts. Transactions without a gas limit get one estimated.
    pub async fn send_batch(
        &self,
        from_signer_index: usize,
        txs: Vec<TransactionRequest>,
    ) -> Result<BatchOutcome, DevChainError> {
        let from = self.signer(from_signer_index)?.address();
        let mut prepared = Vec::with_capacity(txs.len());
        let mut nonces = Nonces::default();
        for tx in txs {
            let mut tx = tx.with_from(from);
            if tx.gas.is_none() {
                let gas = self.provider.estimate_gas(tx.clone()).await?;
                tx.set_gas_limit(gas + gas / 5);
            }
            prepared.push(tx);
        }
        let gas_price = self.batch_gas_price().await?;
        for tx in &mut prepared {
            let nonce = nonces.next(self, from).await?;
            tx.set_nonce(nonce);
            tx.set_gas_price(gas_price);
            tx.set_chain_id(self.chain_id());
        }
        self.send_in_few_blocks(prepared, false).await
    }

    /// Sends token transfers `(from, to, amount)` from arbitrary holders (impersonated, funded
    /// with ether for gas when needed): real `Transfer` events between holders.
    pub async fn holder_transfers(
        &self,
        token: Address,
        transfers: &[(Address, Address, U256)],
    ) -> Result<BatchOutcome, DevChainError> {
        let mut senders: Vec<Address> = transfers.iter().map(|(from, _, _)| *from).collect();
        senders.sort_unstable();
        senders.dedup();
        futures::stream::iter(senders)
            .map(|who| async move {
                self.provider.anvil_impersonate_account(who).await?;
                self.ensure_gas_money(who).await
            })
            .buffer_unordered(SEND_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let gas_price = self.batch_gas_price().await?;
        let mut nonces = Nonces::default();
        let mut prepared = Vec::with_capacity(transfers.len());
        for (from, to, amount) in transfers {
            let input = TestToken::transferCall {
                to: *to,
                amount: *amount,
            }
            .abi_encode();
            prepared.push(
                TransactionRequest::default()
                    .with_from(*from)
                    .with_to(token)
                    .with_input(input)
                    .with_nonce(nonces.next(self, *from).await?)
                    .with_gas_limit(GAS_BASE)
                    .with_gas_price(gas_price)
                    .with_chain_id(self.chain_id()),
            );
        }
        self.send_in_few_blocks(prepared, true).await
    }

    /// Twice the latest base fee plus a 1 gwei tip: enough while the base fee rises a little
    /// during a batch. Not derived from `eth_gasPrice`: anvil suggests the tips recent blocks
    /// paid, so doubling its suggestion doubles the price with every batch (after a few dozen
    /// batches the impersonated holders' ether no longer pays for gas).
    async fn batch_gas_price(&self) -> Result<u128, DevChainError> {
        let base_fee = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await?
            .and_then(|b| b.header.base_fee_per_gas);
        Ok(match base_fee {
            Some(fee) => u128::from(fee)
                .saturating_mul(2)
                .saturating_add(1_000_000_000),
            None => self
                .provider
                .get_gas_price()
                .await?
                .saturating_mul(2)
                .max(1),
        })
    }

    /// Sends fully prepared transactions and gets them mined in as few blocks as possible.
    ///
    /// Each anvil block costs time in proportion to the whole state (state root), so a block per
    /// transaction makes 100,000 holders quadratic. With automine on, automine is paused, the
    /// block gas limit raised, everything sent in nonce order (concurrent sends could reach anvil
    /// out of order), one block mined, and both settings restored. With interval mining the
    /// blocks come by themselves; only the gas limit is raised meanwhile.
    async fn send_in_few_blocks(
        &self,
        txs: Vec<TransactionRequest>,
        impersonated: bool,
    ) -> Result<BatchOutcome, DevChainError> {
        if txs.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let provider = &self.provider;
        let automine = provider.anvil_get_auto_mine().await?;
        let interval = self.options().block_time.is_some();
        let gas_needed: u64 = txs.iter().map(|tx| tx.gas.unwrap_or(GAS_BASE)).sum();
        let gas_limit_before = provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await?
            .map(|b| b.header.gas_limit)
            .unwrap_or(30_000_000);
        let raise_limit = gas_needed > gas_limit_before;
        if raise_limit {
            provider
                .anvil_set_block_gas_limit(gas_needed + GAS_BASE)
                .await?;
        }
        if automine {
            provider.anvil_set_auto_mine(false).await?;
        }
        let sent = self.send_all(txs, impersonated).await;
        let mined = match &sent {
            // Manual mining (automine off, no interval): the transactions wait for a block too.
            Ok(hashes) if automine || !interval => self.mine_until_included(hashes).await,
            _ => Ok(()),
        };
        if automine {
            provider.anvil_set_auto_mine(true).await?;
        }
        let hashes = sent?;
        mined?;
        let outcome = self.collect_receipts(hashes).await;
        if raise_limit {
            provider.anvil_set_block_gas_limit(gas_limit_before).await?;
        }
        outcome
    }

    async fn send_all(
        &self,
        txs: Vec<TransactionRequest>,
        impersonated: bool,
    ) -> Result<Vec<TxHash>, DevChainError> {
        let mut hashes = Vec::with_capacity(txs.len());
        for tx in txs {
            let hash = if impersonated {
                self.provider
                    .anvil_send_impersonated_transaction(tx)
                    .await?
            } else {
                *self.provider.send_transaction(tx).await?.tx_hash()
            };
            hashes.push(hash);
        }
        Ok(hashes)
    }

    /// Mines blocks until the last of `hashes` has a receipt (all of them, as nonces are ordered
    /// per sender and the pool orders by fee, which is the same for the batch).
    async fn mine_until_included(&self, hashes: &[TxHash]) -> Result<(), DevChainError> {
        for _ in 0..=hashes.len() {
            self.provider.anvil_mine(Some(1), None).await?;
            let mut all = true;
            for hash in hashes.iter().rev() {
                if self
                    .provider
                    .get_transaction_receipt(*hash)
                    .await?
                    .is_none()
                {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
        }
        Err(DevChainError::Invalid(format!(
            "{} transactions still pending after mining {} blocks",
            hashes.len(),
            hashes.len() + 1
        )))
    }

    async fn collect_receipts(&self, hashes: Vec<TxHash>) -> Result<BatchOutcome, DevChainError> {
        let blocks: Vec<u64> = futures::stream::iter(hashes.iter().copied())
            .map(|hash| async move {
                let receipt = self.wait_receipt(hash).await?;
                Ok::<_, DevChainError>(receipt.block_number.unwrap_or_default())
            })
            .buffered(SEND_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(BatchOutcome {
            first_block: blocks.iter().copied().min().unwrap_or_default(),
            last_block: blocks.iter().copied().max().unwrap_or_default(),
            tx_hashes: hashes,
        })
    }
}

/// Next nonce per sender within one batch.
#[derive(Default)]
struct Nonces(HashMap<Address, u64>);

impl Nonces {
    async fn next(&mut self, chain: &DevChain, who: Address) -> Result<u64, DevChainError> {
        let nonce = match self.0.get(&who) {
            Some(n) => *n,
            None => chain.provider.get_transaction_count(who).pending().await?,
        };
        self.0.insert(who, nonce + 1);
        Ok(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_deterministic_and_distinct() {
        let a = holder_addresses(1, 1000);
        assert_eq!(a, holder_addresses(1, 1000));
        assert_ne!(a, holder_addresses(2, 1000));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
        let h = random_holders(1, 1000, U256::from(500u64));
        assert!(
            h.iter()
                .all(|(_, v)| *v >= U256::from(1u64) && *v <= U256::from(500u64))
        );
        assert_eq!(h.iter().map(|(a, _)| *a).collect::<Vec<_>>(), a);
    }
}
