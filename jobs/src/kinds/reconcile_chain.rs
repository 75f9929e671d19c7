//! `reconcile-chain {chain_id, token | asset_class, repair?}`: stored vs on-chain at one block.
//!
//! Compares every stored balance of the selected tokens (and every tracked address without a
//! stored balance) against the chain at one pinned block. Each difference is recorded in
//! `balance_mismatches` (once per block); a difference above the token's `reconcile_threshold`
//! raises a warning and the `chainsync_reconcile_alerts_total` metric. With `reconcile.auto_repair`
//! (or `repair: true` in the args) the stored value is corrected, unless a sync changed it
//! meanwhile, and a `balance_repairs` audit row written in the same transaction.
//!
//! Every read is also an observation for the balance history: where the chain's amount differs
//! from the history at the compared block (a rebasing token, an admin `setBalance`, a
//! fee-on-transfer quirk: changes no log revealed), a `balance_changes` row is recorded at that
//! block with `source = 'reconcile'`, and the points computed from the old history are marked for
//! a recompute.

use std::collections::BTreeMap;

use alloy::primitives::{Address, U256};
use async_trait::async_trait;
use chainsync_engine::Invalid;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError,
    balance_sync::{ResolvedToken, TokenSelector, read_consistent, resolve_tokens},
    chain::{PinnedBlock, multicall::BalanceQuery},
    ids::{TokenKey, address_text, hash_text},
    kinds::sync_balances::check_selector,
    settings::AssetClass,
    store::{
        Observation, Source, WrittenRow, cache_write_through, db_block, db_chain_id, load_balances,
        record_history,
    },
    tracking::tracked_addresses,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileChain {
    pub chain_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_class: Option<AssetClass>,
    /// Overrides `reconcile.auto_repair` for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<bool>,
}

/// One difference between the database and the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mismatch {
    token: TokenKey,
    address: Address,
    stored: Option<(U256, u64)>,
    chain: U256,
    above_threshold: bool,
}

fn abs_diff(a: U256, b: U256) -> U256 {
    if a > b { a - b } else { b - a }
}

/// Differences between `stored` (None = no row) and `chain` reads; failed reads are skipped.
fn compare(
    tokens: &[ResolvedToken],
    items: &[(BalanceQuery, Option<(U256, u64)>)],
    reads: Vec<crate::chain::multicall::BalanceRead>,
) -> (Vec<Mismatch>, usize) {
    let thresholds: BTreeMap<TokenKey, U256> =
        tokens.iter().map(|t| (t.key, t.threshold)).collect();
    let mut out = Vec::new();
    let mut failed = 0;
    for ((q, stored), read) in items.iter().zip(reads) {
        let Ok(chain) = read else {
            failed += 1;
            continue;
        };
        let differs = match stored {
            Some((amount, _)) => *amount != chain,
            // A tracked address never synced differs only if it holds something.
            None => !chain.is_zero(),
        };
        if differs {
            let old = stored.map_or(U256::ZERO, |s| s.0);
            let threshold = thresholds.get(&q.token).copied().unwrap_or(U256::ZERO);
            out.push(Mismatch {
                token: q.token,
                address: q.holder,
                stored: *stored,
                chain,
                above_threshold: abs_diff(old, chain) > threshold,
            });
        }
    }
    (out, failed)
}

const RECORD: &str = r#"
INSERT INTO chainsync.balance_mismatches AS m
    (chain_id, token, address, stored_amount, stored_block, chain_amount, difference,
     above_threshold, block_number, block_hash, job_id)
SELECT $1, t.token, t.address, t.stored::numeric, t.stored_block, t.chain::numeric,
       t.chain::numeric - COALESCE(t.stored::numeric, 0), t.above, $2, $3, $4
FROM UNNEST($5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::bool[])
     AS t(token, address, stored, stored_block, chain, above)
ON CONFLICT (chain_id, token, address, block_number) DO UPDATE SET found_at = m.found_at
RETURNING m.id, m.token, m.address
"#;

const REPAIR: &str = r#"
WITH m AS (
    SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
        AS t(mismatch_id, token, address, old_amount, new_amount)
),
upd AS (
    -- only if nobody synced the row since it was read: same amount, not a newer block
    UPDATE chainsync.balances b
       SET amount = m.new_amount::numeric, block_number = $7, block_hash = $8, updated_at = now()
      FROM m
     WHERE b.chain_id = $6 AND b.token = m.token AND b.address = m.address
       AND m.old_amount IS NOT NULL AND b.amount = m.old_amount::numeric AND b.block_number <= $7
    RETURNING m.mismatch_id, b.token, b.address, m.old_amount::numeric AS old_amount, b.amount,
              b.block_number, b.updated_at
),
ins AS (
    INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash)
    SELECT $6, m.token, m.address, m.new_amount::numeric, $7, $8 FROM m WHERE m.old_amount IS NULL
    ON CONFLICT (chain_id, token, address) DO NOTHING
    RETURNING token, address, amount, block_number, updated_at
),
done AS (
    SELECT * FROM upd
    UNION ALL
    SELECT m.mismatch_id, ins.token, ins.address, NULL::numeric, ins.amount, ins.block_number,
           ins.updated_at
    FROM ins JOIN m ON m.token = ins.token AND m.address = ins.address
),
repairs AS (
    INSERT INTO chainsync.balance_repairs
        (mismatch_id, chain_id, token, address, old_amount, new_amount, block_number, block_hash,
         reason, job_id)
    SELECT mismatch_id, $6, token, address, old_amount, amount, $7, $8, $9, $10 FROM done
    ON CONFLICT (mismatch_id) DO NOTHING
    RETURNING 1
)
SELECT token, address, amount::text, block_number, updated_at FROM done
"#;

#[async_trait]
impl Job for ReconcileChain {
    type Services = crate::Services;
    const UNIQUE_WHILE_RUNNING: bool = true;

    const KIND: &'static str = "reconcile-chain";

    fn validate(&self) -> Result<(), Invalid> {
        check_selector(&self.token, &self.asset_class)
    }

    fn unique_key(&self) -> Option<String> {
        let sel = TokenSelector {
            token: self.token.clone(),
            asset_class: self.asset_class,
        };
        Some(format!(
            "{}:{}:{}",
            Self::KIND,
            self.chain_id,
            sel.describe().to_ascii_lowercase()
        ))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // The kind's RPC class (priority or bulk) for everything this run sends.
        crate::chain::budget::for_job(ctx, async {
        let services = &ctx.services;
        let chain = services.chains.get(self.chain_id)?;
        let sel = TokenSelector {
            token: self.token.clone(),
            asset_class: self.asset_class,
        };
        let tokens = resolve_tokens(&services.settings, self.chain_id, &sel)?;
        let keys: Vec<TokenKey> = tokens.iter().map(|t| t.key).collect();
        // Where the chain can pin reads, to one block now; where it cannot (TRON), the stored
        // rows are compared with reads taken within one head, whose block is known only after
        // the reads: rows stored at a newer block than that are left out below, as here.
        let pinned = match chain.state_access() {
            crate::chain::StateAccess::AnyBlock => Some(chain.pin_block().await?),
            crate::chain::StateAccess::LatestOnly => None,
        };
        let limit = pinned.map_or(u64::MAX, |b| b.number);

        // Stored rows (not newer than the block) plus tracked addresses without a row.
        let mut items: BTreeMap<BalanceQuery, Option<(U256, u64)>> = BTreeMap::new();
        let mut newer = 0usize;
        for s in load_balances(&services.db, self.chain_id, &keys).await? {
            if s.block_number > limit {
                newer += 1;
                continue;
            }
            let q = BalanceQuery {
                token: s.token,
                holder: s.address,
            };
            items.insert(q, Some((s.amount, s.block_number)));
        }
        for a in tracked_addresses(&services.db, &services.settings).await? {
            for t in &keys {
                items
                    .entry(BalanceQuery {
                        token: *t,
                        holder: a,
                    })
                    .or_insert(None);
            }
        }
        let items: Vec<(BalanceQuery, Option<(U256, u64)>)> = items.into_iter().collect();
        let queries: Vec<BalanceQuery> = items.iter().map(|(q, _)| *q).collect();
        let (block, reads) = read_consistent(&chain, &queries, pinned.as_ref()).await?;
        // Read at the head (TRON): a row a sync stored meanwhile at a newer block is not compared.
        let (items, reads): (Vec<_>, Vec<_>) = items
            .into_iter()
            .zip(reads)
            .filter(|((_, stored), _)| stored.is_none_or(|(_, b)| b <= block.number))
            .unzip();
        let queries: Vec<BalanceQuery> = items.iter().map(|(q, _)| *q).collect();
        let observed: Vec<Observation> = queries
            .iter()
            .zip(&reads)
            .filter_map(|(q, r)| {
                r.as_ref().ok().map(|amount| Observation {
                    token: q.token,
                    address: q.holder,
                    block,
                    amount: *amount,
                })
            })
            .collect();
        let history = record_history(services, self.chain_id, Source::Reconcile, &observed).await?;
        if history.dirty > 0 {
            crate::kinds::compute_points::enqueue(&*ctx.enqueuer, self.chain_id).await?;
        }
        let (mismatches, failed) = compare(&tokens, &items, reads);

        let settings = &ctx.services.settings;
        let chain_label = crate::observe::chain_label(settings, self.chain_id);
        let mut per_token: BTreeMap<TokenKey, (usize, usize)> = BTreeMap::new();
        for m in &mismatches {
            let e = per_token.entry(m.token).or_default();
            e.0 += 1;
            if m.above_threshold {
                e.1 += 1;
            }
        }
        for (token, (all, above)) in &per_token {
            let symbol = settings
                .tokens
                .iter()
                .find(|t| t.chain_id == self.chain_id && t.key() == *token)
                .map_or_else(|| token.text(), |t| t.symbol.clone());
            let labels = [("chain", chain_label.clone()), ("token", symbol)];
            metrics::counter!("chainsync_reconcile_mismatches_total", &labels)
                .increment(*all as u64);
            if *above > 0 {
                metrics::counter!("chainsync_reconcile_alerts_total", &labels)
                    .increment(*above as u64);
                let sample = mismatches
                    .iter()
                    .find(|m| m.token == *token && m.above_threshold)
                    .map(|m| address_text(&m.address))
                    .unwrap_or_default();
                tracing::warn!(chain_id = self.chain_id, %token, mismatches = all, above_threshold = above,
                    sample = %sample, block = block.number, "stored balances differ from the chain above the threshold");
            }
        }
        let ids = record(ctx, self.chain_id, &block, &mismatches).await?;
        let repair = self
            .repair
            .unwrap_or(services.settings.reconcile.auto_repair);
        let repaired = if repair && !mismatches.is_empty() {
            repair_all(ctx, self.chain_id, &block, &mismatches, &ids).await?
        } else {
            0
        };
        tracing::info!(
            chain_id = self.chain_id,
            block = block.number,
            compared = items.len(),
            mismatches = mismatches.len(),
            repaired,
            history_rows = history.written,
            failed_reads = failed,
            skipped_newer = newer,
            "reconcile finished"
        );
        Ok(())
        })
        .await
    }
}

/// Records the mismatches; returns their ids by (token, address).
async fn record(
    ctx: &JobContext,
    chain_id: u64,
    block: &PinnedBlock,
    ms: &[Mismatch],
) -> Result<BTreeMap<(String, String), i64>, JobError> {
    let mut ids = BTreeMap::new();
    if ms.is_empty() {
        return Ok(ids);
    }
    let mut tokens = Vec::with_capacity(ms.len());
    let mut addresses = Vec::with_capacity(ms.len());
    let mut stored = Vec::with_capacity(ms.len());
    let mut stored_blocks = Vec::with_capacity(ms.len());
    let mut chain = Vec::with_capacity(ms.len());
    let mut above = Vec::with_capacity(ms.len());
    for m in ms {
        tokens.push(m.token.text());
        addresses.push(address_text(&m.address));
        stored.push(m.stored.map(|s| s.0.to_string()));
        stored_blocks.push(m.stored.map(|s| i64::try_from(s.1).unwrap_or(i64::MAX)));
        chain.push(m.chain.to_string());
        above.push(m.above_threshold);
    }
    let rows: Vec<(i64, String, String)> = sqlx::query_as(RECORD)
        .bind(db_chain_id(chain_id)?)
        .bind(db_block(block.number)?)
        .bind(hash_text(&block.hash))
        .bind(ctx.meta.id)
        .bind(&tokens)
        .bind(&addresses)
        .bind(&stored)
        .bind(&stored_blocks)
        .bind(&chain)
        .bind(&above)
        .fetch_all(ctx.db())
        .await?;
    for (id, t, a) in rows {
        ids.insert((t, a), id);
    }
    Ok(ids)
}

/// Corrects the stored values with an audit row each, in one transaction; returns how many rows
/// were corrected (a row a sync changed meanwhile is left alone).
async fn repair_all(
    ctx: &JobContext,
    chain_id: u64,
    block: &PinnedBlock,
    ms: &[Mismatch],
    ids: &BTreeMap<(String, String), i64>,
) -> Result<usize, JobError> {
    let mut mismatch_ids = Vec::with_capacity(ms.len());
    let mut tokens = Vec::with_capacity(ms.len());
    let mut addresses = Vec::with_capacity(ms.len());
    let mut old = Vec::with_capacity(ms.len());
    let mut new = Vec::with_capacity(ms.len());
    for m in ms {
        let key = (m.token.text(), address_text(&m.address));
        let Some(id) = ids.get(&key) else { continue };
        mismatch_ids.push(*id);
        tokens.push(key.0);
        addresses.push(key.1);
        old.push(m.stored.map(|s| s.0.to_string()));
        new.push(m.chain.to_string());
    }
    let reason = format!(
        "reconcile-chain job {}: stored amount differed from the chain at block {}",
        ctx.meta.id, block.number
    );
    let mut tx = ctx.db().begin().await?;
    let rows: Vec<(String, String, String, i64, DateTime<Utc>)> = sqlx::query_as(REPAIR)
        .bind(&mismatch_ids)
        .bind(&tokens)
        .bind(&addresses)
        .bind(&old)
        .bind(&new)
        .bind(db_chain_id(chain_id)?)
        .bind(db_block(block.number)?)
        .bind(hash_text(&block.hash))
        .bind(&reason)
        .bind(ctx.meta.id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let written: Vec<WrittenRow> = rows.into_iter().map(WrittenRow::from).collect();
    cache_write_through(&ctx.services, chain_id, &written).await;
    if written.len() < mismatch_ids.len() {
        tracing::info!(
            chain_id,
            skipped = mismatch_ids.len() - written.len(),
            "some mismatching rows changed since they were read; not repaired"
        );
    }
    Ok(written.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: TokenKey, threshold: u64) -> ResolvedToken {
        ResolvedToken {
            key,
            symbol: "T".into(),
            asset_class: AssetClass::Erc20,
            threshold: U256::from(threshold),
        }
    }

    #[test]
    fn compare_flags_differences_and_thresholds() {
        let t = TokenKey::Contract(Address::repeat_byte(9));
        let q = |b: u8| BalanceQuery {
            token: t,
            holder: Address::repeat_byte(b),
        };
        let items = vec![
            (q(1), Some((U256::from(100), 5))), // equal
            (q(2), Some((U256::from(100), 5))), // off by 10: below threshold 10
            (q(3), Some((U256::from(100), 5))), // off by 11: above
            (q(4), None),                       // missing, holds nothing: fine
            (q(5), None),                       // missing, holds 50: mismatch above
            (q(6), Some((U256::from(1), 5))),   // read failed: skipped
        ];
        let reads = vec![
            Ok(U256::from(100)),
            Ok(U256::from(90)),
            Ok(U256::from(111)),
            Ok(U256::ZERO),
            Ok(U256::from(50)),
            Err(crate::chain::multicall::ReadError::Reverted("x".into())),
        ];
        let (ms, failed) = compare(&[token(t, 10)], &items, reads);
        assert_eq!(failed, 1);
        let got: Vec<(u8, bool)> = ms
            .iter()
            .map(|m| (m.address.0[0], m.above_threshold))
            .collect();
        assert_eq!(got, vec![(2, false), (3, true), (5, true)]);
        assert_eq!(ms[2].stored, None);
    }

    #[test]
    fn args() {
        let j: ReconcileChain = serde_json::from_value(
            serde_json::json!({"chain_id": 1, "token": "RAT", "repair": true}),
        )
        .unwrap();
        j.validate().unwrap();
        assert_eq!(j.unique_key().unwrap(), "reconcile-chain:1:token rat");
        let j: ReconcileChain = serde_json::from_value(serde_json::json!({"chain_id": 1})).unwrap();
        assert!(j.validate().is_err());
    }
}
