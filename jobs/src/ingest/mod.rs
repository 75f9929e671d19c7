//! Event ingestion: from a stored checkpoint to head − confirmations, `eth_getLogs` in adaptive
//! ranges, decoded events stored idempotently with their block hashes, reorgs rolled back to the
//! common ancestor (events, balance history and the points computed from it).
//!
//! Balance history on the chain's timeline: for every configured token, each holder a transfer
//! log touches gets a row in `balance_changes` at every block where its balance changed, with
//! that block's hash and time (`source = 'log'`), whether the pass runs live or days later. The
//! amounts come from the logs' deltas, checked per range against two `balanceOf` reads (before
//! the range and at its end, batched through Multicall3); a holder whose deltas do not explain
//! its reads is read at each block that touched it instead (see [`record_touched`]). The end read
//! goes to `balances`. On a chain that serves no historical state (TRON), no read can be pinned
//! to those blocks: the history comes from the transfer amounts alone ([`deltas`]).

pub mod decode;
pub mod deltas;
pub mod range;

use std::collections::{BTreeMap, BTreeSet};

use alloy::{
    primitives::{Address, B256, U256},
    providers::Provider,
    rpc::types::{Filter, Log},
};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tracing::{Instrument, info, warn};

pub use crate::settings::{ContractConfig, IngestConfig};
use crate::{
    JobError, Services,
    balance_sync::read_many,
    chain::{
        ChainClient, PinnedBlock, StateAccess,
        multicall::{BalanceQuery, read_balances_timed},
    },
    ids::{TokenKey, address_text, hash_text, parse_address},
    points::window_of,
    store::{Observation, Source, db_block, mark_dirty, record_history, store_observed},
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
    /// Block-pinned balance reads of touched holders (one per holder and touched block).
    pub history_reads: u64,
    /// History rows written (new changes or corrections).
    pub history_rows: u64,
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

/// Receives what a pass leaves to do, before the pass moves on (the job kind turns it into jobs):
/// points windows are due when the checkpoint crossed into a new hour of chain time, a reorg
/// orphaned history, or marks of changed history are waiting.
#[async_trait::async_trait]
pub trait IngestSink: Send + Sync {
    async fn points_due(&self, chain_id: u64) -> Result<(), JobError>;
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
    let cid = i64::try_from(chain_id).map_err(|_| JobError::fatal("chain id too large"))?;
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
        .ok_or_else(|| JobError::fatal(format!("no [[ingest]] entry for chain {chain_id}")))?
        .clone();
    let chain = services.chains.get(chain_id)?;
    let db = &services.db;
    let cid = i64::try_from(chain_id).map_err(|_| JobError::fatal("chain id too large"))?;
    let mut report = IngestReport::default();

    let mut checkpoint = load_checkpoint(db, cid).await?;
    let start_time = checkpoint_time(db, cid).await?;
    if let Some((n, _)) = checkpoint {
        let ancestor = find_ancestor(db, &chain, cid, n).await?;
        if ancestor < n {
            report.reorged_blocks = n - ancestor;
            rollback(services, sink, cid, chain_id, ancestor).await?;
            checkpoint = load_checkpoint(db, cid).await?;
        }
    }
    let head = chain.head().await?.saturating_sub(chain.confirmations());
    let target = to_block.map_or(head, |t| t.min(head));
    let mut from = opts
        .from_block
        .unwrap_or_else(|| checkpoint.map_or(cfg.start_block, |(n, _)| n + 1));
    report.from_block = from;
    let stop_at = target.min(
        from.saturating_add(cfg.max_blocks_per_run)
            .saturating_sub(1),
    );
    let addresses: Vec<Address> = cfg.contracts.iter().map(|c| c.address.address).collect();
    let custom: Vec<CustomEvent> = cfg
        .contracts
        .iter()
        .flat_map(|c| c.events.iter())
        .filter_map(|e| CustomEvent::parse(e).ok())
        .collect();
    let tokens = token_contracts(&services.settings, chain_id);
    let tracked: Option<BTreeSet<Address>> = if cfg.tracked_only {
        Some(
            crate::tracking::tracked_addresses(db, &services.settings)
                .await?
                .into_iter()
                .collect(),
        )
    } else {
        None
    };
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
            return Err(JobError::retry(format!("block {to} not available yet")));
        };
        let mut rows = Vec::with_capacity(logs.len());
        let mut referrals = Vec::new();
        // (token, holder) → what the range's logs did to it, block by block; block → hash and
        // time (when the node gives logs their block's time).
        let mut touched: BTreeMap<(Address, Address), Touch> = BTreeMap::new();
        let mut touched_blocks: BTreeMap<u64, (B256, Option<u64>)> = BTreeMap::new();
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
                    moved,
                })) => {
                    let contract = log.address();
                    if tokens.contains(&contract) {
                        for h in &holders {
                            if tracked.as_ref().is_some_and(|t| !t.contains(h)) {
                                continue;
                            }
                            touched
                                .entry((contract, *h))
                                .or_default()
                                .add(bn, *h, moved);
                            touched_blocks.insert(bn, (bh, log.block_timestamp));
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
        // History first: a pass that dies after it and before the checkpoint replays the range,
        // and the replay writes nothing twice.
        let (reads, written) = match chain.state_access() {
            StateAccess::AnyBlock => {
                record_touched(services, &chain, from, &end, &touched, &touched_blocks).await?
            }
            StateAccess::LatestOnly => {
                deltas::record(services, &chain, &flows(&touched, &touched_blocks)).await?
            }
        };
        report.history_reads += reads;
        report.history_rows += written;
        let stored = store(
            db,
            cid,
            &rows,
            &referrals,
            &hashes,
            &end,
            cfg.keep_block_hashes,
        )
        .instrument(crate::observe::sql_span(
            "insert chainsync.events",
            rows.len(),
        ))
        .await?;
        crate::observe::record_events_ingested(&services.settings, chain_id, stored);
        report.stored += stored;
        report.to_block = to;
        from = to + 1;
        size = range::grow(size, cfg.max_range);
        if let Some(p) = opts.progress {
            p(&report);
        }
    }
    report.caught_up = from > target;
    // Points windows close by chain time: when this pass moved the checkpoint into a new hour,
    // the windows before it can be computed.
    // Marks of changed history still waiting (e.g. for ingestion to be back past a reorg) are
    // picked up by the same job.
    let end_time = checkpoint_time(db, cid).await?;
    let crossed = end_time.is_some() && end_time.map(window_of) != start_time.map(window_of);
    let waiting: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM chainsync.points_dirty WHERE chain_id = $1)",
    )
    .bind(cid)
    .fetch_one(db)
    .await?;
    if crossed || waiting {
        sink.points_due(chain_id).await?;
    }
    Ok(report)
}

/// Contracts configured as tokens of `chain_id`: the holders their transfers touch get balance
/// history.
fn token_contracts(settings: &crate::settings::DomainConfig, chain_id: u64) -> BTreeSet<Address> {
    settings
        .tokens
        .iter()
        .filter(|t| t.chain_id == chain_id)
        .filter_map(|t| match t.key() {
            TokenKey::Contract(a) => Some(a),
            TokenKey::Native => None,
        })
        .collect()
}

/// The last ingested block of `chain_id`, if any.
pub async fn checkpoint(db: &sqlx::PgPool, chain_id: u64) -> Result<Option<u64>, JobError> {
    let cid = i64::try_from(chain_id).map_err(|_| JobError::fatal("chain id too large"))?;
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

async fn checkpoint_time(
    db: &sqlx::PgPool,
    cid: i64,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, JobError> {
    let t: Option<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
        "SELECT block_time FROM chainsync.ingest_checkpoints WHERE chain_id = $1",
    )
    .bind(cid)
    .fetch_optional(db)
    .await?;
    Ok(t.flatten())
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

/// Deletes everything above `ancestor`: events, referrals, kept hashes, balance history (the
/// points windows computed from it are marked for a recompute); rewinds the checkpoint; resets
/// balances stored at orphaned blocks to their value at the ancestor. The pass then re-ingests
/// the canonical blocks above the ancestor.
async fn rollback(
    services: &Services,
    sink: &dyn IngestSink,
    cid: i64,
    chain_id: u64,
    ancestor: u64,
) -> Result<(), JobError> {
    let a = i64::try_from(ancestor).unwrap_or(i64::MAX);
    let ancestor_time = services
        .chains
        .get(chain_id)?
        .block_at(ancestor)
        .await?
        .and_then(|b| b.time());
    let mut tx = services.db.begin().await?;
    let orphaned =
        sqlx::query("DELETE FROM chainsync.events WHERE chain_id = $1 AND block_number > $2")
            .bind(cid)
            .bind(a)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    for table in ["referrals", "block_hashes"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM chainsync.{table} WHERE chain_id = $1 AND block_number > $2"
        )))
        .bind(cid)
        .bind(a)
        .execute(&mut *tx)
        .await?;
    }
    let history: Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "DELETE FROM chainsync.balance_changes WHERE chain_id = $1 AND block_number > $2
         RETURNING token, address, block_time",
    )
    .bind(cid)
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let mut changed: BTreeMap<(String, String), chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    for (t, addr, at) in &history {
        let at = at.unwrap_or_else(chrono::Utc::now);
        let e = changed.entry((t.clone(), addr.clone())).or_insert(at);
        *e = (*e).min(at);
    }
    let dirty = mark_dirty(
        &mut tx,
        &services.settings,
        chain_id,
        &changed,
        &format!("reorg: history above block {ancestor} orphaned"),
    )
    .await?;
    let hash: Option<String> = sqlx::query_scalar(
        "SELECT block_hash FROM chainsync.block_hashes WHERE chain_id = $1 AND block_number = $2",
    )
    .bind(cid)
    .bind(a)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE chainsync.ingest_checkpoints SET block_number = $2, block_hash = $3,
             block_time = $4, updated_at = now()
         WHERE chain_id = $1",
    )
    .bind(cid)
    .bind(a)
    .bind(hash.unwrap_or_default())
    .bind(ancestor_time)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    warn!(
        chain_id,
        ancestor,
        orphaned,
        history_rows = history.len(),
        "reorg: rolled back to the common ancestor"
    );
    reset_orphaned_balances(services, cid, chain_id, ancestor).await?;
    if dirty > 0 {
        sink.points_due(chain_id).await?;
    }
    Ok(())
}

/// Balances stored at blocks above `ancestor` were read on the orphaned branch (or after it):
/// they are read again at the ancestor and stored there; the pass then brings forward the holders
/// the canonical blocks touch.
async fn reset_orphaned_balances(
    services: &Services,
    cid: i64,
    chain_id: u64,
    ancestor: u64,
) -> Result<(), JobError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT token, address FROM chainsync.balances WHERE chain_id = $1 AND block_number > $2
         ORDER BY 1, 2",
    )
    .bind(cid)
    .bind(db_block(ancestor)?)
    .fetch_all(&services.db)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let chain = services.chains.get(chain_id)?;
    let Some(block) = chain.block_at(ancestor).await? else {
        return Err(JobError::retry(format!(
            "block {ancestor} not available from the node"
        )));
    };
    let queries: Vec<BalanceQuery> = rows
        .iter()
        .filter_map(|(t, a)| {
            Some(BalanceQuery {
                token: TokenKey::parse(t).ok()?,
                holder: parse_address(a).ok()?,
            })
        })
        .collect();
    // At the ancestor; where the node serves only the latest state, at the head.
    let (block, reads) =
        crate::balance_sync::read_consistent(&chain, &queries, Some(&block)).await?;
    let mut obs = Vec::with_capacity(queries.len());
    for (q, r) in queries.iter().zip(reads) {
        if let Ok(amount) = r {
            obs.push(Observation {
                token: q.token,
                address: q.holder,
                block,
                amount,
            });
        }
    }
    sqlx::query(
        "UPDATE chainsync.balances b SET amount = t.amount::numeric, block_number = $7,
             block_hash = $3, updated_at = now()
         FROM UNNEST($4::text[], $5::text[], $6::text[]) AS t(token, address, amount)
         WHERE b.chain_id = $1 AND b.token = t.token AND b.address = t.address
           AND b.block_number > $2",
    )
    .bind(cid)
    .bind(db_block(ancestor)?)
    .bind(hash_text(&block.hash))
    .bind(obs.iter().map(|o| o.token.text()).collect::<Vec<_>>())
    .bind(
        obs.iter()
            .map(|o| address_text(&o.address))
            .collect::<Vec<_>>(),
    )
    .bind(obs.iter().map(|o| o.amount.to_string()).collect::<Vec<_>>())
    .bind(db_block(block.number)?)
    .execute(&services.db)
    .await?;
    record_history(services, chain_id, Source::Read, &obs).await?;
    Ok(())
}

/// (token, holder).
type Key = (Address, Address);

/// What one range's logs did to one (token, holder), as `balanceOf(address)` sees it: per block,
/// the amounts in and out. `opaque` once a log touched it without such an amount (ERC1155) or the
/// sums overflow: then only block-pinned reads can tell its history.
#[derive(Debug, Default)]
struct Touch {
    blocks: BTreeMap<u64, (U256, U256)>,
    opaque: bool,
}

impl Touch {
    fn add(&mut self, block: u64, holder: Address, moved: Option<(Address, Address, U256)>) {
        let entry = self.blocks.entry(block).or_default();
        let Some((from, to, amount)) = moved else {
            self.opaque = true;
            return;
        };
        if to == holder {
            match entry.0.checked_add(amount) {
                Some(v) => entry.0 = v,
                None => self.opaque = true,
            }
        }
        if from == holder {
            match entry.1.checked_add(amount) {
                Some(v) => entry.1 = v,
                None => self.opaque = true,
            }
        }
    }

    /// The balance after each block whose logs changed it, walking forward from `start` (the
    /// balance before the range); `None` when a step would go below zero.
    fn walk(&self, start: U256) -> Option<(Vec<(u64, U256)>, U256)> {
        let mut balance = start;
        let mut out = Vec::with_capacity(self.blocks.len());
        for (block, (inc, dec)) in &self.blocks {
            if inc == dec {
                continue;
            }
            balance = balance.checked_add(*inc)?.checked_sub(*dec)?;
            out.push((*block, balance));
        }
        Some((out, balance))
    }
}

/// The flows the range's logs gave each touched (token, holder), per block with its hash: the
/// input of a history from transfer amounts alone ([`deltas`], chains without historical state).
fn flows(
    touched: &BTreeMap<Key, Touch>,
    blocks: &BTreeMap<u64, (B256, Option<u64>)>,
) -> deltas::Deltas {
    touched
        .iter()
        .map(|(key, t)| {
            let per_block = t
                .blocks
                .iter()
                .map(|(n, (inflow, outflow))| {
                    let hash = blocks.get(n).map_or(B256::ZERO, |(h, _)| *h);
                    (
                        *n,
                        deltas::Flow {
                            hash,
                            inflow: *inflow,
                            outflow: *outflow,
                        },
                    )
                })
                .collect();
            (*key, per_block)
        })
        .collect()
}

/// Records the history of every touched (token, holder) of the range `from..=end` at the blocks
/// where its logs changed it, and stores its balance at `end`. Returns (reads, history rows).
///
/// Two reads per holder and range, batched through Multicall3: `balanceOf` at `from − 1` and at
/// `end`. When the start plus the logs' deltas equals the end read, the balance after each
/// touched block is exact and needs no read of its own. A holder whose sum does not match (a
/// fee-on-transfer quirk, a rebase, a balance set by an admin inside the range), an ERC1155
/// holder, or one whose read failed is read at each block that touched it instead.
async fn record_touched(
    services: &Services,
    chain: &ChainClient,
    from: u64,
    end: &PinnedBlock,
    touched: &BTreeMap<(Address, Address), Touch>,
    blocks: &BTreeMap<u64, (B256, Option<u64>)>,
) -> Result<(u64, u64), JobError> {
    if touched.is_empty() {
        return Ok((0, 0));
    }
    let keys: Vec<(Address, Address)> = touched.keys().copied().collect();
    let query = |(token, holder): &(Address, Address)| BalanceQuery {
        token: TokenKey::Contract(*token),
        holder: *holder,
    };
    let queries: Vec<BalanceQuery> = keys.iter().map(query).collect();
    let end_reads = read_many(chain, &queries, end).await?;
    let mut reads = queries.len() as u64;
    let mut newest = Vec::with_capacity(keys.len());
    let mut candidates = Vec::new();
    for (key, read) in keys.iter().zip(&end_reads) {
        if let Ok(amount) = read {
            newest.push(Observation {
                token: TokenKey::Contract(key.0),
                address: key.1,
                block: *end,
                amount: *amount,
            });
            if touched.get(key).is_some_and(|t| !t.opaque) {
                candidates.push((*key, *amount));
            }
        }
    }
    // The balance before the range: at block `from − 1`, or at genesis for a range from block 0
    // (no log in block 0 then, as genesis has no transactions).
    let start_n = from.saturating_sub(1);
    if from == 0 {
        candidates.retain(|(k, _)| touched.get(k).is_none_or(|t| !t.blocks.contains_key(&0)));
    }
    let mut derived: Vec<(Key, Vec<(u64, U256)>)> = Vec::new();
    if !candidates.is_empty() {
        let Some(start) = chain.block_at(start_n).await? else {
            return Err(JobError::retry(format!(
                "block {start_n} not available yet"
            )));
        };
        let start_queries: Vec<BalanceQuery> = candidates.iter().map(|(k, _)| query(k)).collect();
        let start_reads = read_many(chain, &start_queries, &start).await?;
        reads += start_queries.len() as u64;
        for ((key, at_end), at_start) in candidates.iter().zip(start_reads) {
            let (Ok(at_start), Some(touch)) = (at_start, touched.get(key)) else {
                continue;
            };
            if let Some((steps, last)) = touch.walk(at_start)
                && last == *at_end
            {
                derived.push((*key, steps));
            }
        }
    }
    let explained: BTreeSet<(Address, Address)> = derived.iter().map(|(k, _)| *k).collect();
    let rest: BTreeMap<(Address, Address), BTreeSet<u64>> = touched
        .iter()
        .filter(|(k, _)| !explained.contains(*k))
        .map(|(k, t)| (*k, t.blocks.keys().copied().collect()))
        .collect();
    // Block times: from the logs where the node gives them, else from the blocks' headers.
    let mut times: BTreeMap<u64, u64> = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for (_, steps) in &derived {
        for (n, _) in steps {
            match blocks.get(n) {
                Some((_, Some(t))) => {
                    times.insert(*n, *t);
                }
                _ => {
                    missing.insert(*n);
                }
            }
        }
    }
    let headers: Vec<Option<PinnedBlock>> = futures::stream::iter(
        missing
            .iter()
            .map(|n| chain.block_at(*n))
            .collect::<Vec<_>>(),
    )
    .buffered(HEADERS_IN_FLIGHT)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    for (n, header) in missing.iter().zip(headers) {
        let Some(header) = header else {
            return Err(JobError::retry(format!("block {n} not available yet")));
        };
        if blocks.get(n).is_some_and(|(h, _)| *h != header.hash) {
            return Err(JobError::retry(format!(
                "block {n} changed while its logs were read (reorg); the range is read again"
            )));
        }
        times.insert(*n, header.timestamp);
    }
    let mut obs = Vec::new();
    for ((token, holder), steps) in &derived {
        for (n, amount) in steps {
            let hash = blocks.get(n).map_or(B256::ZERO, |(h, _)| *h);
            obs.push(Observation {
                token: TokenKey::Contract(*token),
                address: *holder,
                block: PinnedBlock {
                    number: *n,
                    hash,
                    timestamp: times.get(n).copied().unwrap_or_default(),
                },
                amount: *amount,
            });
        }
    }
    let (more_reads, read_obs) = read_touched_blocks(chain, &rest, blocks).await?;
    reads += more_reads;
    obs.extend(read_obs);
    let out = record_history(services, chain.chain_id(), Source::Log, &obs).await?;
    newest.extend(obs);
    store_observed(services, chain.chain_id(), &newest).await?;
    Ok((reads, out.written as u64))
}

/// Block headers fetched at once for the times of touched blocks (cheap calls, no state).
const HEADERS_IN_FLIGHT: usize = 16;

/// Reads each (token, holder) of `touched` at every block that touched it, one Multicall3
/// `aggregate3` per block (its time read in the same call). Returns (reads, observations).
async fn read_touched_blocks(
    chain: &ChainClient,
    touched: &BTreeMap<(Address, Address), BTreeSet<u64>>,
    blocks: &BTreeMap<u64, (B256, Option<u64>)>,
) -> Result<(u64, Vec<Observation>), JobError> {
    if touched.is_empty() {
        return Ok((0, Vec::new()));
    }
    let mut per_block: BTreeMap<u64, Vec<BalanceQuery>> = BTreeMap::new();
    for ((token, holder), bs) in touched {
        for b in bs {
            per_block.entry(*b).or_default().push(BalanceQuery {
                token: TokenKey::Contract(*token),
                holder: *holder,
            });
        }
    }
    let reads: u64 = per_block.values().map(|q| q.len() as u64).sum();
    // Futures built eagerly so the job future stays Send.
    let futs: Vec<_> = per_block
        .into_iter()
        .map(|(n, queries)| {
            let hash = blocks.get(&n).map_or(B256::ZERO, |(h, _)| *h);
            async move {
                let block = PinnedBlock {
                    number: n,
                    hash,
                    timestamp: 0,
                };
                // The block's time comes with the first batch's call (Multicall3
                // `getCurrentBlockTimestamp`): one `eth_call` per touched block.
                let cut = chain.config.multicall_batch_size.max(1).min(queries.len());
                let (block, mut r) = read_balances_timed(chain, &queries[..cut], &block).await?;
                r.extend(read_many(chain, &queries[cut..], &block).await?);
                Ok::<_, JobError>((block, queries, r))
            }
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(futs)
        .buffered(chain.config.batches_in_flight.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut obs = Vec::new();
    let mut failed: BTreeMap<Address, (usize, crate::chain::multicall::ReadError)> =
        BTreeMap::new();
    for (block, queries, r) in results {
        for (q, read) in queries.iter().zip(r) {
            match read {
                Ok(amount) => obs.push(Observation {
                    token: q.token,
                    address: q.holder,
                    block,
                    amount,
                }),
                Err(e) => {
                    if let TokenKey::Contract(t) = q.token {
                        let f = failed.entry(t).or_insert((0, e));
                        f.0 += 1;
                    }
                }
            }
        }
    }
    for (token, (n, e)) in &failed {
        warn!(token = %address_text(token), failed = n, first_error = %e,
            "balanceOf failed at touched blocks; no history for those reads");
    }
    Ok((reads, obs))
}

/// Writes one range in one transaction: events, referrals, block hashes and the checkpoint.
async fn store(
    db: &sqlx::PgPool,
    cid: i64,
    rows: &[Stored],
    referrals: &[(String, String, u64, String, u64)],
    hashes: &[(i64, String)],
    checkpoint: &PinnedBlock,
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
    let cp = i64::try_from(checkpoint.number).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO chainsync.ingest_checkpoints (chain_id, block_number, block_hash, block_time)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (chain_id) DO UPDATE SET block_number = EXCLUDED.block_number,
             block_hash = EXCLUDED.block_hash, block_time = EXCLUDED.block_time, updated_at = now()
         WHERE chainsync.ingest_checkpoints.block_number <= EXCLUDED.block_number",
    )
    .bind(cid)
    .bind(cp)
    .bind(hash_text(&checkpoint.hash))
    .bind(checkpoint.time())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u8) -> Address {
        Address::repeat_byte(n)
    }

    #[test]
    fn walk_follows_the_deltas_and_skips_blocks_that_net_to_zero() {
        let me = a(1);
        let mut t = Touch::default();
        t.add(10, me, Some((Address::ZERO, me, U256::from(100u64))));
        t.add(11, me, Some((me, a(2), U256::from(30u64))));
        // In and out in one block, and a transfer to oneself: no change at block 12.
        t.add(12, me, Some((a(3), me, U256::from(5u64))));
        t.add(12, me, Some((me, a(3), U256::from(5u64))));
        t.add(12, me, Some((me, me, U256::from(7u64))));
        t.add(13, me, Some((a(2), me, U256::from(1u64))));
        assert!(!t.opaque);
        let (steps, end) = t.walk(U256::from(2u64)).unwrap();
        assert_eq!(
            steps,
            vec![
                (10, U256::from(102u64)),
                (11, U256::from(72u64)),
                (13, U256::from(73u64))
            ]
        );
        assert_eq!(end, U256::from(73u64));
        // Going below zero means the start read and the logs disagree.
        let mut t = Touch::default();
        t.add(5, me, Some((me, a(2), U256::from(3u64))));
        assert!(t.walk(U256::from(2u64)).is_none());
        // ERC1155 (no `balanceOf(address)` amount) and overflowing sums are opaque.
        let mut t = Touch::default();
        t.add(5, me, None);
        assert!(t.opaque);
        let mut t = Touch::default();
        t.add(5, me, Some((a(2), me, U256::MAX)));
        t.add(5, me, Some((a(2), me, U256::from(1u64))));
        assert!(t.opaque);
    }
}
