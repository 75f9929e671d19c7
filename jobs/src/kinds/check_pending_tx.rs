//! `check-pending-tx {chain_id}`: follows the transactions the application registered.
//!
//! For each open tracked tx (pending / submitted / stuck) the receipt is polled:
//! - no receipt: `submitted` when the node knows the tx, else still `pending`; `stuck` once
//!   `max_pending_time` has passed since it was registered (it is still followed);
//! - a receipt whose block has fewer than the chain's confirmations (itself included; on TRON by
//!   default 19, the depth at which a block is solidified): `submitted`, block recorded;
//! - enough confirmations and the receipt's block hash still canonical: `confirmed` (or `failed`
//!   when it reverted), and a `sync-user-balance` job for every address it touched (sender,
//!   recipient, registered addresses, both sides of every `Transfer` log);
//! - a recorded block that is no longer canonical (reorg): back to `submitted` until mined again.
//!
//! Receipts are read through [`ChainClient::receipt`], which decodes what EVM nodes and java-tron
//! both write; java-tron shows no transaction of its pending pool, so on TRON a tx stays
//! `pending` until it is in a block.

use std::collections::BTreeSet;

use alloy::primitives::{Address, B256, b256};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, NewJob,
    chain::{ChainClient, receipt::TxReceipt},
    ids::{address_text, hash_text, parse_address_any, parse_hash},
    kinds::sync_user_balance::SyncUserBalance,
    store::{db_block, db_chain_id},
};

/// keccak256("Transfer(address,address,uint256)"): ERC20 and ERC721.
const TRANSFER: B256 = b256!("0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");
/// Open transactions looked at per run.
const MAX_PER_RUN: i64 = 5000;
/// Receipts fetched concurrently.
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckPendingTx {
    pub chain_id: u64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct OpenTx {
    hash: String,
    state: String,
    addresses: Vec<String>,
    first_seen: DateTime<Utc>,
    block_number: Option<i64>,
}

/// New state of one tracked tx.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Update {
    hash: String,
    state: &'static str,
    block: Option<(u64, B256)>,
    confirmations: u64,
    touched: Vec<String>,
    error: Option<String>,
}

#[async_trait]
impl Job for CheckPendingTx {
    type Services = crate::Services;
    const UNIQUE_WHILE_RUNNING: bool = true;

    const KIND: &'static str = "check-pending-tx";

    fn unique_key(&self) -> Option<String> {
        Some(format!("{}:{}", Self::KIND, self.chain_id))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // The kind's RPC class (priority or bulk) for everything this run sends.
        crate::chain::budget::for_job(ctx, async {
            let chain = ctx.services.chains.get(self.chain_id)?;
            let open: Vec<OpenTx> = sqlx::query_as(
            "SELECT hash, state, addresses, first_seen, block_number FROM chainsync.tracked_txs \
             WHERE chain_id = $1 AND state IN ('pending', 'submitted', 'stuck') \
             ORDER BY first_seen LIMIT $2",
        )
        .bind(db_chain_id(self.chain_id)?)
        .bind(MAX_PER_RUN)
        .fetch_all(ctx.db())
        .await?;
            if open.is_empty() {
                return Ok(());
            }
            let head = chain.head().await?;
            let now = Utc::now();
            let chain_ref = &*chain;
            let updates: Vec<Update> = stream::iter(open)
                .map(|tx| async move { check_one(chain_ref, head, now, tx).await })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;

            let mut finished = 0usize;
            for u in &updates {
                if matches!(u.state, "confirmed" | "failed") {
                    // Follow-ups first: if the state update below is lost, the next run re-enqueues
                    // and the unique keys collapse the duplicates.
                    let jobs = u
                        .touched
                        .iter()
                        .map(|a| {
                            let job = SyncUserBalance::new(self.chain_id, a.clone(), None);
                            match u.block {
                                Some((n, _)) => job.for_change_at(n),
                                None => NewJob::typed(&job),
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(JobError::fatal)?;
                    if !jobs.is_empty() {
                        ctx.enqueue_many(jobs).await?;
                    }
                    finished += 1;
                }
                self.store(ctx, u).await?;
            }
            tracing::info!(
                chain_id = self.chain_id,
                checked = updates.len(),
                finished,
                head,
                "tracked transactions checked"
            );
            Ok(())
        })
        .await
    }
}

impl CheckPendingTx {
    async fn store(&self, ctx: &JobContext, u: &Update) -> Result<(), JobError> {
        let (bn, bh) = match u.block {
            Some((n, h)) => (Some(db_block(n)?), Some(hash_text(&h))),
            None => (None, None),
        };
        sqlx::query(
            "UPDATE chainsync.tracked_txs SET \
               state = $3, \
               submitted_at = CASE WHEN $3 IN ('submitted', 'confirmed', 'failed') \
                 THEN COALESCE(submitted_at, now()) ELSE submitted_at END, \
               block_number = $4, block_hash = $5, confirmations = $6, \
               addresses = ARRAY(SELECT DISTINCT unnest(addresses || $7::text[]) ORDER BY 1), \
               finished_at = CASE WHEN $3 IN ('confirmed', 'failed') THEN now() END, \
               error = $8, last_checked = now() \
             WHERE chain_id = $1 AND hash = $2 AND state IN ('pending', 'submitted', 'stuck')",
        )
        .bind(db_chain_id(self.chain_id)?)
        .bind(&u.hash)
        .bind(u.state)
        .bind(bn)
        .bind(bh)
        .bind(i64::try_from(u.confirmations).unwrap_or(i64::MAX))
        .bind(&u.touched)
        .bind(&u.error)
        .execute(ctx.db())
        .await?;
        Ok(())
    }
}

async fn check_one(
    chain: &ChainClient,
    head: u64,
    now: DateTime<Utc>,
    tx: OpenTx,
) -> Result<Update, JobError> {
    let hash = parse_hash(&tx.hash).map_err(JobError::fatal)?;
    let too_old = now.signed_duration_since(tx.first_seen).num_seconds()
        > i64::try_from(chain.config.max_pending_time.as_secs()).unwrap_or(i64::MAX);
    let waiting = |known: bool| {
        if too_old {
            "stuck"
        } else if known || tx.state != "pending" {
            "submitted"
        } else {
            "pending"
        }
    };
    let Some(receipt) = chain.receipt(hash).await? else {
        let known = chain.transaction_known(hash).await?;
        if tx.block_number.is_some() {
            tracing::warn!(chain_id = chain.chain_id(), tx = %tx.hash, "mined transaction disappeared (reorg)");
        }
        return Ok(Update {
            hash: tx.hash,
            state: waiting(known),
            block: None,
            confirmations: 0,
            touched: Vec::new(),
            error: None,
        });
    };
    let Some((number, block_hash)) = receipt.block else {
        // A pending receipt (some nodes return one for mempool transactions).
        return Ok(Update {
            hash: tx.hash,
            state: waiting(true),
            block: None,
            confirmations: 0,
            touched: Vec::new(),
            error: None,
        });
    };
    let confirmations = head.saturating_add(1).saturating_sub(number);
    let mut update = Update {
        hash: tx.hash,
        state: "submitted",
        block: Some((number, block_hash)),
        confirmations,
        touched: Vec::new(),
        error: None,
    };
    if confirmations < chain.confirmations().max(1) {
        return Ok(update);
    }
    let canonical = chain.block_at(number).await?.map(|b| b.hash);
    if canonical != Some(block_hash) {
        tracing::warn!(chain_id = chain.chain_id(), tx = %update.hash, block = number,
            "receipt block is no longer canonical; waiting for the tx to be mined again");
        update.block = None;
        update.confirmations = 0;
        return Ok(update);
    }
    update.touched = touched(&receipt, &tx.addresses);
    if receipt.success {
        update.state = "confirmed";
    } else {
        update.state = "failed";
        update.error = Some(format!("reverted in block {number}"));
    }
    Ok(update)
}

/// Addresses whose balances a mined tx may have changed.
fn touched(receipt: &TxReceipt, registered: &[String]) -> Vec<String> {
    let mut set: BTreeSet<Address> = registered
        .iter()
        .filter_map(|a| parse_address_any(a).ok())
        .collect();
    set.extend(receipt.from);
    if receipt.success {
        set.extend(receipt.to);
        set.extend(receipt.contract_address);
        for log in &receipt.logs {
            let topics = &log.topics;
            if topics.len() >= 3 && topics[0] == TRANSFER {
                set.insert(Address::from_word(topics[1]));
                set.insert(Address::from_word(topics[2]));
            }
        }
    }
    set.remove(&Address::ZERO);
    set.iter().map(address_text).collect()
}
