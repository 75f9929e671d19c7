//! Event ingestion: from a stored checkpoint to head − confirmations, `eth_getLogs` in adaptive
//! ranges, decoded events stored idempotently with their block hashes, reorgs rolled back to the
//! common ancestor. The holders each stored range touched are handed to an [`IngestSink`] (the
//! job kind turns them into balance syncs), so the domain never decides what work follows.

pub mod decode;
pub mod range;

use std::collections::{BTreeMap, BTreeSet};

use alloy::{
    primitives::Address,
    providers::Provider,
    rpc::types::{Filter, Log},
};
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

pub use crate::settings::{ContractConfig, IngestConfig};
use crate::{
    JobError, Services,
    chain::ChainClient,
    ids::{TokenKey, address_text, hash_text, parse_address},
};
use decode::{CustomEvent, Decoded};

/// Counts of one ingestion run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub from_block: u64,
    pub to_block: u64,
    pub logs: u64,
    pub stored: u64,
    pub undecodable: u64,
    pub reorged_blocks: u64,
    pub requests: u64,
    pub caught_up: bool,
}

struct Stored {
    tx_hash: String,
    log_index: i64,
    block_number: i64,
    block_hash: String,
    contract: String,
    event: String,
    args: Value,
}

/// Receives the (token, holder) pairs whose balance a stored range (or a reorg) changed, each
/// with the first block that touched it, before the pass moves on: a pass that dies later has
/// reported every range it stored.
#[async_trait::async_trait]
pub trait IngestSink: Send + Sync {
    async fn touched(
        &self,
        chain_id: u64,
        touched: &BTreeMap<(Address, Address), u64>,
    ) -> Result<(), JobError>;
}

/// Called after every stored range with the counts so far (the CLI draws a progress bar).
pub type IngestProgressFn<'a> = &'a (dyn Fn(&IngestReport) + Send + Sync);

/// Where a pass starts and what it does when it stops short of its target.
#[derive(Clone, Copy, Default)]
pub struct PassOptions<'a> {
    /// Start here instead of after the checkpoint (a manual re-ingest of an older range; stored
    /// events are not duplicated and the checkpoint never moves backwards).
    pub from_block: Option<u64>,
    pub progress: Option<IngestProgressFn<'a>>,
}

/// Runs one ingestion pass for `chain_id` (see the module docs). `to_block` caps the range; a
/// pass stops after `max_blocks_per_run` blocks with `caught_up = false`.
pub async fn ingest(
    services: &Services,
    sink: &dyn IngestSink,
    chain_id: u64,
    to_block: Option<u64>,
) -> Result<IngestReport, JobError> {
    ingest_pass(services, sink, chain_id, to_block, PassOptions::default()).await
}

/// Forgets everything ingested on `chain_id` (events, referrals, kept block hashes and the
/// checkpoint) so that the next pass starts again at the configured start block. Returns the
/// number of events deleted.
pub async fn reset(db: &sqlx::PgPool, chain_id: u64) -> Result<u64, JobError> {
    let cid = i64::try_from(chain_id).map_err(|_| JobError::Fatal("chain id too large".into()))?;
    let mut tx = db.begin().await?;
    let events = sqlx::query("DELETE FROM chainsync.events WHERE chain_id = $1")
        .bind(cid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for table in ["referrals", "block_hashes", "ingest_checkpoints"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM chainsync.{table} WHERE chain_id = $1"
        )))
        .bind(cid)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(events)
}

/// One pass with explicit [`PassOptions`]; [`ingest`] is the job's pass.
pub async fn ingest_pass(
    services: &Services,
    sink: &dyn IngestSink,
    chain_id: u64,
    to_block: Option<u64>,
    opts: PassOptions<'_>,
) -> Result<IngestReport, JobError> {
    let cfg = services
        .settings
        .ingest
        .iter()
        .find(|c| c.chain_id == chain_id)
        .ok_or_else(|| JobError::Fatal(format!("no [[ingest]] entry for chain {chain_id}")))?
        .clone();
    let chain = services.chains.get(chain_id)?;
    let db = &services.db;
    let cid = i64::try_from(chain_id).map_err(|_| JobError::Fatal("chain id too large".into()))?;
    let mut report = IngestReport::default();

    let mut checkpoint = load_checkpoint(db, cid).await?;
    if let Some((n, _)) = checkpoint {
        let ancestor = find_ancestor(db, &chain, cid, n).await?;
        if ancestor < n {
            report.reorged_blocks = n - ancestor;
            rollback(services, sink, cid, chain_id, ancestor).await?;
            checkpoint = load_checkpoint(db, cid).await?;
        }
    }
    let head = chain
        .head()
        .await?
        .saturating_sub(chain.config.confirmations);
    let target = to_block.map_or(head, |t| t.min(head));
    let mut from = opts
        .from_block
        .unwrap_or_else(|| checkpoint.map_or(cfg.start_block, |(n, _)| n + 1));
    report.from_block = from;
    let stop_at = target.min(
        from.saturating_add(cfg.max_blocks_per_run)
            .saturating_sub(1),
    );
    let addresses: Vec<Address> = cfg
        .contracts
        .iter()
        .filter_map(|c| parse_address(&c.address).ok())
        .collect();
    let custom: Vec<CustomEvent> = cfg
        .contracts
        .iter()
        .flat_map(|c| c.events.iter())
        .filter_map(|e| CustomEvent::parse(e).ok())
        .collect();
    let tokens = token_contracts(&services.settings, chain_id);
    let mut size = cfg.initial_range;
    while from <= stop_at {
        let to = stop_at.min(from.saturating_add(size - 1));
        let filter = Filter::new()
            .address(addresses.clone())
            .from_block(from)
            .to_block(to);
        report.requests += 1;
        let logs: Vec<Log> = match chain.provider.get_logs(&filter).await {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                if range::is_range_error(&msg) && size > cfg.min_range {
                    size = range::shrink(size, cfg.min_range, range::suggested_range(&msg));
                    info!(chain_id, from, size, "getLogs range too large; shrinking");
                    continue;
                }
                return Err(chain.rpc_error("eth_getLogs", &e));
            }
        };
        let Some(end) = chain.block_at(to).await? else {
            return Err(JobError::Retry(format!("block {to} not available yet")));
        };
        let mut rows = Vec::with_capacity(logs.len());
        let mut referrals = Vec::new();
        // (token, holder) → the newest block of the range that touched it.
        let mut touched: BTreeMap<(Address, Address), u64> = BTreeMap::new();
        let mut hashes: Vec<(i64, String)> =
            vec![(i64::try_from(to).unwrap_or(i64::MAX), hash_text(&end.hash))];
        for log in &logs {
            report.logs += 1;
            let (Some(tx), Some(idx), Some(bn), Some(bh)) = (
                log.transaction_hash,
                log.log_index,
                log.block_number,
                log.block_hash,
            ) else {
                report.undecodable += 1;
                continue;
            };
            match decode::decode(log, &custom) {
                Ok(Some(Decoded {
                    event,
                    args,
                    touched: holders,
                    referral,
                })) => {
                    let contract = log.address();
                    if tokens.contains(&contract) {
                        for h in &holders {
                            let at = touched.entry((contract, *h)).or_insert(bn);
                            *at = (*at).max(bn);
                        }
                    }
                    if let Some((u, r)) = referral {
                        referrals.push((
                            address_text(&u),
                            address_text(&r),
                            bn,
                            hash_text(&tx),
                            idx,
                        ));
                    }
                    hashes.push((i64::try_from(bn).unwrap_or(i64::MAX), hash_text(&bh)));
                    rows.push(Stored {
                        tx_hash: hash_text(&tx),
                        log_index: i64::try_from(idx).unwrap_or(i64::MAX),
                        block_number: i64::try_from(bn).unwrap_or(i64::MAX),
                        block_hash: hash_text(&bh),
                        contract: address_text(&contract),
                        event,
                        args,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    report.undecodable += 1;
                    warn!(chain_id, tx = %tx, log_index = idx, error = %e, "log does not decode; skipped");
                }
            }
        }
        let stored = store(
            db,
            cid,
            &rows,
            &referrals,
            &hashes,
            (to, &hash_text(&end.hash)),
            cfg.keep_block_hashes,
        )
        .await?;
        crate::observe::record_events_ingested(&services.settings, chain_id, stored);
        report.stored += stored;
        follow_up(services, sink, chain_id, &touched).await?;
        report.to_block = to;
        from = to + 1;
        size = range::grow(size, cfg.max_range);
        if let Some(p) = opts.progress {
            p(&report);
        }
    }
    report.caught_up = from > target;
    Ok(report)
}

/// Contracts configured as ERC20 tokens of `chain_id`: their transfers trigger balance syncs.
fn token_contracts(settings: &crate::settings::DomainConfig, chain_id: u64) -> BTreeSet<Address> {
    settings
        .tokens
        .iter()
        .filter(|t| t.chain_id == chain_id)
        .filter_map(|t| match t.key() {
            Ok(TokenKey::Contract(a)) => Some(a),
            _ => None,
        })
        .collect()
}

/// The last ingested block of `chain_id`, if any.
pub async fn checkpoint(db: &sqlx::PgPool, chain_id: u64) -> Result<Option<u64>, JobError> {
    let cid = i64::try_from(chain_id).map_err(|_| JobError::Fatal("chain id too large".into()))?;
    Ok(load_checkpoint(db, cid).await?.map(|(n, _)| n))
}

async fn load_checkpoint(db: &sqlx::PgPool, cid: i64) -> Result<Option<(u64, String)>, JobError> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT block_number, block_hash FROM chainsync.ingest_checkpoints WHERE chain_id = $1",
    )
    .bind(cid)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(n, h)| (u64::try_from(n).unwrap_or(0), h)))
}

/// Newest stored block whose hash the chain still has: the checkpoint itself when there was no
/// reorg, else the common ancestor (walking back through the kept hashes).
async fn find_ancestor(
    db: &sqlx::PgPool,
    chain: &ChainClient,
    cid: i64,
    checkpoint: u64,
) -> Result<u64, JobError> {
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT block_number, block_hash FROM chainsync.block_hashes
         WHERE chain_id = $1 AND block_number <= $2 ORDER BY block_number DESC",
    )
    .bind(cid)
    .bind(i64::try_from(checkpoint).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await?;
    for (n, h) in &stored {
        let n = u64::try_from(*n).unwrap_or(0);
        match chain.block_at(n).await? {
            Some(b) if hash_text(&b.hash) == *h => return Ok(n),
            _ => continue,
        }
    }
    // No kept hash matches: start over from before the oldest kept block.
    Ok(stored.last().map_or(checkpoint, |(n, _)| {
        u64::try_from(*n).unwrap_or(1).saturating_sub(1)
    }))
}

/// Deletes everything above `ancestor`, rewinds the checkpoint and re-syncs affected holders.
async fn rollback(
    services: &Services,
    sink: &dyn IngestSink,
    cid: i64,
    chain_id: u64,
    ancestor: u64,
) -> Result<(), JobError> {
    let a = i64::try_from(ancestor).unwrap_or(i64::MAX);
    let mut tx = services.db.begin().await?;
    let orphaned: Vec<(String, Value)> = sqlx::query_as(
        "DELETE FROM chainsync.events WHERE chain_id = $1 AND block_number > $2 RETURNING contract, args",
    )
    .bind(cid)
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM chainsync.referrals WHERE chain_id = $1 AND block_number > $2")
        .bind(cid)
        .bind(a)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM chainsync.block_hashes WHERE chain_id = $1 AND block_number > $2")
        .bind(cid)
        .bind(a)
        .execute(&mut *tx)
        .await?;
    let hash: Option<String> = sqlx::query_scalar(
        "SELECT block_hash FROM chainsync.block_hashes WHERE chain_id = $1 AND block_number = $2",
    )
    .bind(cid)
    .bind(a)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE chainsync.ingest_checkpoints SET block_number = $2, block_hash = $3, updated_at = now()
         WHERE chain_id = $1",
    )
    .bind(cid)
    .bind(a)
    .bind(hash.unwrap_or_default())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    warn!(
        chain_id,
        ancestor,
        orphaned = orphaned.len(),
        "reorg: rolled back to the common ancestor"
    );
    let mut touched = BTreeSet::new();
    for (contract, args) in orphaned {
        let Ok(c) = parse_address(&contract) else {
            continue;
        };
        for k in ["from", "to"] {
            if let Some(a) = args
                .get(k)
                .and_then(Value::as_str)
                .and_then(|s| parse_address(s).ok())
                && !a.is_zero()
            {
                touched.insert((c, a));
            }
        }
    }
    let tokens = token_contracts(&services.settings, chain_id);
    let touched = touched
        .into_iter()
        .filter(|(c, _)| tokens.contains(c))
        .map(|k| (k, ancestor))
        .collect();
    follow_up(services, sink, chain_id, &touched).await
}

/// Writes one range in one transaction: events, referrals, block hashes and the checkpoint.
async fn store(
    db: &sqlx::PgPool,
    cid: i64,
    rows: &[Stored],
    referrals: &[(String, String, u64, String, u64)],
    hashes: &[(i64, String)],
    checkpoint: (u64, &str),
    keep: u64,
) -> Result<u64, JobError> {
    let mut tx = db.begin().await?;
    let stored = sqlx::query(
        "INSERT INTO chainsync.events (chain_id, tx_hash, log_index, block_number, block_hash, contract, event, args)
         SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::jsonb[])
         ON CONFLICT DO NOTHING",
    )
    .bind(cid)
    .bind(rows.iter().map(|r| r.tx_hash.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.log_index).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.block_number).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.block_hash.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.contract.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.args.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if !referrals.is_empty() {
        sqlx::query(
            "INSERT INTO chainsync.referrals (chain_id, user_address, referrer, block_number, tx_hash, log_index)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[])
             ON CONFLICT DO NOTHING",
        )
        .bind(cid)
        .bind(referrals.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
        .bind(referrals.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
        .bind(referrals.iter().map(|r| i64::try_from(r.2).unwrap_or(i64::MAX)).collect::<Vec<_>>())
        .bind(referrals.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
        .bind(referrals.iter().map(|r| i64::try_from(r.4).unwrap_or(i64::MAX)).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO chainsync.block_hashes (chain_id, block_number, block_hash)
         SELECT DISTINCT $1, * FROM unnest($2::bigint[], $3::text[])
         ON CONFLICT (chain_id, block_number) DO UPDATE SET block_hash = EXCLUDED.block_hash",
    )
    .bind(cid)
    .bind(hashes.iter().map(|h| h.0).collect::<Vec<_>>())
    .bind(hashes.iter().map(|h| h.1.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let cp = i64::try_from(checkpoint.0).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO chainsync.ingest_checkpoints (chain_id, block_number, block_hash) VALUES ($1, $2, $3)
         ON CONFLICT (chain_id) DO UPDATE SET block_number = EXCLUDED.block_number,
             block_hash = EXCLUDED.block_hash, updated_at = now()
         WHERE chainsync.ingest_checkpoints.block_number <= EXCLUDED.block_number",
    )
    .bind(cid)
    .bind(cp)
    .bind(checkpoint.1)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM chainsync.block_hashes WHERE chain_id = $1 AND block_number < $2")
        .bind(cid)
        .bind(cp.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX)))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(stored)
}

/// Hands each touched (token, holder) with its block to the sink and drops their cached balances.
async fn follow_up(
    services: &Services,
    sink: &dyn IngestSink,
    chain_id: u64,
    touched: &BTreeMap<(Address, Address), u64>,
) -> Result<(), JobError> {
    if touched.is_empty() {
        return Ok(());
    }
    sink.touched(chain_id, touched).await?;
    if let Some(mut conn) = services.cache_conn() {
        let keys: Vec<String> = touched
            .keys()
            .map(|(t, h)| crate::store::cache_key(chain_id, &address_text(t), &address_text(h)))
            .collect();
        let r = tokio::time::timeout(
            crate::CACHE_TIMEOUT,
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn),
        )
        .await;
        services.cache_outcome(matches!(r, Ok(Ok(()))));
        if !matches!(r, Ok(Ok(()))) {
            warn!("cache invalidation failed; entries expire by TTL");
        }
    }
    Ok(())
}
