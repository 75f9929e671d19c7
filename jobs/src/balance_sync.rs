//! Shared balance work of the jobs: which tokens a job means, and the resumable full sync that
//! `sync-balances` runs and the CLI's `chainsync sync` calls with a progress bar.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use alloy::primitives::{Address, U256};
use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    JobError, Services,
    chain::{
        ChainClient, PinnedBlock, StateAccess,
        multicall::{BalanceQuery, BalanceRead, read_balances},
    },
    ids::{TokenKey, address_text, hash_text, parse_hash},
    settings::{AssetClass, DomainConfig},
    store::{BalanceRow, WriteOutcome, db_block, db_chain_id, store_balances},
    tracking::tracked_addresses,
};

/// A configured token, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedToken {
    pub key: TokenKey,
    pub symbol: String,
    pub asset_class: AssetClass,
    pub threshold: U256,
}

/// Which tokens of a chain a job covers: one token, one asset class, or (both `None`) all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSelector {
    /// `native`, a token address, or a configured symbol (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_class: Option<AssetClass>,
}

impl TokenSelector {
    pub fn describe(&self) -> String {
        match (&self.token, self.asset_class) {
            (Some(t), _) => format!("token {t}"),
            (None, Some(c)) => format!("asset class {}", c.as_str()),
            (None, None) => "all tokens".into(),
        }
    }
}

/// The configured tokens of `chain_id` that `sel` names. Unknown token or an empty selection is
/// `Fatal` (retrying cannot help; the config or the job is wrong).
pub fn resolve_tokens(
    settings: &DomainConfig,
    chain_id: u64,
    sel: &TokenSelector,
) -> Result<Vec<ResolvedToken>, JobError> {
    let mut out = Vec::new();
    for t in settings.tokens.iter().filter(|t| t.chain_id == chain_id) {
        let key = t.key();
        let wanted = match (&sel.token, sel.asset_class) {
            (Some(s), _) => {
                t.symbol.eq_ignore_ascii_case(s.trim())
                    || TokenKey::parse(s).is_ok_and(|k| k == key)
            }
            (None, Some(c)) => t.asset_class == c,
            (None, None) => true,
        };
        if wanted {
            out.push(ResolvedToken {
                key,
                symbol: t.symbol.clone(),
                asset_class: t.asset_class,
                threshold: t.threshold(),
            });
        }
    }
    if out.is_empty() {
        return Err(JobError::fatal(match &sel.token {
            Some(t) => format!("unknown token {t:?} on chain {chain_id}"),
            None => format!(
                "no configured token on chain {chain_id} matches {}",
                sel.describe()
            ),
        }));
    }
    out.sort_by_key(|t| t.key);
    Ok(out)
}

/// Reads many balances at one block: batches of the chain's `multicall_batch_size`, up to
/// `batches_in_flight` at a time. Results are in the order of `queries`.
pub async fn read_many(
    chain: &ChainClient,
    queries: &[BalanceQuery],
    block: &PinnedBlock,
) -> Result<Vec<BalanceRead>, JobError> {
    let size = chain.config.multicall_batch_size.max(1);
    let reads: Vec<_> = queries
        .chunks(size)
        .map(|c| read_balances(chain, c, block))
        .collect();
    let parts: Vec<Vec<BalanceRead>> = stream::iter(reads)
        .buffered(chain.config.batches_in_flight.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Times a read at `latest` is repeated because the head moved while it was taken.
pub const HEAD_MOVED_RETRIES: usize = 5;

/// Reads `queries` consistently at one block and says which.
///
/// - A chain that serves state at any block ([`StateAccess::AnyBlock`], EVM): at `pin` when
///   given, else at a block pinned now (`head - balance_lag_blocks`).
/// - A chain that serves only the latest state (TRON): at `latest`, between two looks at the
///   head: the latest block before the reads and the head number after them. When both are the
///   same block, every read is that block's state and is placed there (number, hash, time); when
///   the head moved meanwhile, the reads may straddle blocks and are taken again, up to
///   [`HEAD_MOVED_RETRIES`] times, then the job is retried later. `pin` is not used: nothing
///   older than the head can be read.
pub async fn read_consistent(
    chain: &ChainClient,
    queries: &[BalanceQuery],
    pin: Option<&PinnedBlock>,
) -> Result<(PinnedBlock, Vec<BalanceRead>), JobError> {
    match chain.state_access() {
        StateAccess::AnyBlock => {
            let block = match pin {
                Some(b) => *b,
                None => chain.pin_block().await?,
            };
            let reads = read_many(chain, queries, &block).await?;
            Ok((block, reads))
        }
        StateAccess::LatestOnly => {
            for attempt in 0..=HEAD_MOVED_RETRIES {
                let before = chain.pin_block().await?;
                let reads = read_many(chain, queries, &before).await?;
                let after = chain.head().await?;
                if after == before.number {
                    return Ok((before, reads));
                }
                tracing::debug!(
                    chain_id = chain.chain_id(),
                    before = before.number,
                    after,
                    attempt,
                    "head moved during reads at latest; reading again"
                );
            }
            Err(JobError::retry(format!(
                "chain {}: the head moved during each of {} reads at latest; no consistent read",
                chain.chain_id(),
                HEAD_MOVED_RETRIES + 1
            )))
        }
    }
}

/// Progress of a full sync, reported after every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncProgress {
    pub batches_done: usize,
    pub batches_total: usize,
    pub items_done: usize,
    pub items_total: usize,
    pub failed: usize,
}

/// Summary of a full sync.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub run_id: Uuid,
    pub chain_id: u64,
    pub block_number: u64,
    pub block_hash: String,
    pub tokens: usize,
    pub addresses: usize,
    pub items: usize,
    pub batches: usize,
    /// Batches already written by an earlier attempt of the same run.
    pub skipped_batches: usize,
    pub written: usize,
    pub changed: usize,
    pub stale: usize,
    /// Holders whose points windows the recorded history marked for a recompute.
    pub points_dirty: usize,
    /// Calls that failed (reverted, undecodable); their balances were left as they were.
    pub failed: usize,
    pub elapsed: Duration,
}

/// Callback for progress; the CLI draws a bar with it.
pub type ProgressFn<'a> = &'a (dyn Fn(&SyncProgress) + Send + Sync);

fn item_key(q: &BalanceQuery) -> String {
    format!("{}:{}", q.token, address_text(&q.holder))
}

/// Pins the run to a block, or resumes the block of an earlier attempt of the same run. A resumed
/// block that is no longer canonical is replaced (and its batches forgotten).
async fn open_run(
    services: &Services,
    chain: &ChainClient,
    run_id: Uuid,
    scope: &str,
) -> Result<Option<PinnedBlock>, JobError> {
    let chain_id = db_chain_id(chain.chain_id())?;
    let existing: Option<(i64, String, Option<chrono::DateTime<chrono::Utc>>, String)> =
        sqlx::query_as(
            "SELECT block_number, block_hash, block_time, state FROM chainsync.sync_runs \
             WHERE id = $1",
        )
        .bind(run_id)
        .fetch_optional(&services.db)
        .await?;
    if let Some((number, hash, time, state)) = existing {
        if state == "done" {
            return Ok(None);
        }
        let number = u64::try_from(number).unwrap_or(0);
        let hash = parse_hash(&hash).map_err(JobError::retry)?;
        let canonical = chain.block_at(number).await?;
        if canonical.is_some_and(|b| b.hash == hash) {
            return Ok(Some(PinnedBlock {
                number,
                hash,
                timestamp: time.map_or(0, |t| u64::try_from(t.timestamp()).unwrap_or(0)),
            }));
        }
        tracing::warn!(
            chain_id,
            block = number,
            "pinned block of the resumed run is no longer canonical; re-pinning"
        );
        let block = chain.pin_block().await?;
        let mut tx = services.db.begin().await?;
        sqlx::query("DELETE FROM chainsync.sync_batches WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE chainsync.sync_runs SET block_number = $2, block_hash = $3, block_time = $4 \
             WHERE id = $1",
        )
        .bind(run_id)
        .bind(db_block(block.number)?)
        .bind(hash_text(&block.hash))
        .bind(block.time())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Some(block));
    }
    let block = chain.pin_block().await?;
    sqlx::query(
        "INSERT INTO chainsync.sync_runs (id, chain_id, scope, block_number, block_hash, \
         block_time, batch_size) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(run_id)
    .bind(chain_id)
    .bind(scope)
    .bind(db_block(block.number)?)
    .bind(hash_text(&block.hash))
    .bind(block.time())
    .bind(i32::try_from(chain.config.multicall_batch_size).unwrap_or(i32::MAX))
    .execute(&services.db)
    .await?;
    Ok(Some(block))
}

/// Full sync of every tracked address for the selected tokens of a chain, pinned to one block.
///
/// `run_id` identifies the run across attempts (the job id): a retried run reuses the pinned
/// block and skips the batches it already wrote.
pub async fn sync_full(
    services: &Services,
    run_id: Uuid,
    chain_id: u64,
    sel: &TokenSelector,
    progress: Option<ProgressFn<'_>>,
) -> Result<SyncReport, JobError> {
    let started = Instant::now();
    let chain = services.chains.get(chain_id)?;
    let tokens = resolve_tokens(&services.settings, chain_id, sel)?;
    let addresses = tracked_addresses(&services.db, &services.settings).await?;
    let Some(block) = open_run(services, &chain, run_id, &sel.describe()).await? else {
        tracing::info!(%run_id, "sync run already finished");
        return Ok(empty_report(run_id, chain_id, started));
    };
    let queries = cross(&tokens, &addresses);
    let size = chain.config.multicall_batch_size.max(1);
    let done: HashMap<i32, (String, String)> = sqlx::query_as::<_, (i32, String, String)>(
        "SELECT batch_index, first_key, last_key FROM chainsync.sync_batches WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_all(&services.db)
    .await?
    .into_iter()
    .map(|(i, f, l)| (i, (f, l)))
    .collect();
    let mut pending = Vec::new();
    let mut skipped = 0usize;
    let mut skipped_items = 0usize;
    for (i, chunk) in queries.chunks(size).enumerate() {
        let idx = i32::try_from(i).map_err(|_| JobError::fatal("too many batches"))?;
        let keys = (
            chunk.first().map(item_key).unwrap_or_default(),
            chunk.last().map(item_key).unwrap_or_default(),
        );
        if done.get(&idx) == Some(&keys) {
            skipped += 1;
            skipped_items += chunk.len();
        } else {
            pending.push((idx, chunk, keys));
        }
    }
    let batches_total = pending.len() + skipped;
    tracing::info!(
        chain_id,
        %run_id,
        block = block.number,
        tokens = tokens.len(),
        addresses = addresses.len(),
        batches = batches_total,
        skipped,
        "full balance sync"
    );
    let mut prog = SyncProgress {
        batches_done: skipped,
        batches_total,
        items_done: skipped_items,
        items_total: queries.len(),
        failed: 0,
    };
    if let Some(p) = progress {
        p(&prog);
    }
    let mut outcome = WriteOutcome::default();
    let mut failures: BTreeMap<TokenKey, (usize, String)> = BTreeMap::new();
    let chain_ref = &*chain;
    let block_ref = &block;
    // Futures built eagerly (not in a stream combinator's closure) so the job future stays Send
    // for any borrow lifetime.
    let batches: Vec<_> = pending
        .into_iter()
        .map(|(idx, chunk, keys)| async move {
            // Pinned to the run's block; on a chain without historical state, each batch at
            // the head it was read at.
            let (read_at, reads) = read_consistent(chain_ref, chunk, Some(block_ref)).await?;
            let mut rows = Vec::with_capacity(chunk.len());
            let mut failed = Vec::new();
            for (q, r) in chunk.iter().zip(reads) {
                match r {
                    Ok(amount) => rows.push(BalanceRow {
                        token: q.token,
                        address: q.holder,
                        amount,
                    }),
                    Err(e) => failed.push((q.token, q.holder, e)),
                }
            }
            let o = store_balances(services, chain_id, &read_at, &rows).await?;
            sqlx::query(
                "INSERT INTO chainsync.sync_batches (run_id, batch_index, first_key, last_key, \
                 items, failed) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, batch_index) \
                 DO UPDATE SET first_key = EXCLUDED.first_key, last_key = EXCLUDED.last_key, \
                 items = EXCLUDED.items, failed = EXCLUDED.failed, written_at = now()",
            )
            .bind(run_id)
            .bind(idx)
            .bind(&keys.0)
            .bind(&keys.1)
            .bind(i32::try_from(chunk.len()).unwrap_or(i32::MAX))
            .bind(i32::try_from(failed.len()).unwrap_or(i32::MAX))
            .execute(&services.db)
            .await?;
            Ok::<_, JobError>((chunk.len(), o, failed))
        })
        .collect();
    let mut results = stream::iter(batches).buffer_unordered(chain.config.batches_in_flight.max(1));
    let mut last_log = Instant::now();
    while let Some(r) = results.next().await {
        let (n, o, failed) = r?;
        outcome.add(o);
        prog.batches_done += 1;
        prog.items_done += n;
        prog.failed += failed.len();
        for (token, holder, e) in failed {
            let entry = failures.entry(token).or_insert_with(|| (0, String::new()));
            if entry.0 == 0 {
                entry.1 = format!("{}: {e}", address_text(&holder));
            }
            entry.0 += 1;
        }
        if let Some(p) = progress {
            p(&prog);
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(
                chain_id,
                batches_done = prog.batches_done,
                batches_total = prog.batches_total,
                items_done = prog.items_done,
                "full balance sync progress"
            );
        }
    }
    drop(results);
    for (token, (count, first)) in &failures {
        tracing::warn!(chain_id, %token, failed_calls = count, first_failure = %first,
            "balance reads failed; those balances were left unchanged");
    }
    sqlx::query(
        "UPDATE chainsync.sync_runs SET state = 'done', finished_at = now(), total_items = $2, \
         failed_items = $3 WHERE id = $1",
    )
    .bind(run_id)
    .bind(i64::try_from(queries.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(prog.failed).unwrap_or(i64::MAX))
    .execute(&services.db)
    .await?;
    let report = SyncReport {
        run_id,
        chain_id,
        block_number: block.number,
        block_hash: hash_text(&block.hash),
        tokens: tokens.len(),
        addresses: addresses.len(),
        items: queries.len(),
        batches: batches_total,
        skipped_batches: skipped,
        written: outcome.written,
        changed: outcome.changed,
        stale: outcome.stale,
        points_dirty: outcome.points_dirty,
        failed: prog.failed,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        chain_id,
        block = report.block_number,
        items = report.items,
        written = report.written,
        changed = report.changed,
        failed = report.failed,
        elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        "full balance sync finished"
    );
    Ok(report)
}

fn empty_report(run_id: Uuid, chain_id: u64, started: Instant) -> SyncReport {
    SyncReport {
        run_id,
        chain_id,
        block_number: 0,
        block_hash: String::new(),
        tokens: 0,
        addresses: 0,
        items: 0,
        batches: 0,
        skipped_batches: 0,
        written: 0,
        changed: 0,
        stale: 0,
        points_dirty: 0,
        failed: 0,
        elapsed: started.elapsed(),
    }
}

/// `queries` for `tokens` × `holders`, token-major.
pub fn cross(tokens: &[ResolvedToken], holders: &[Address]) -> Vec<BalanceQuery> {
    tokens
        .iter()
        .flat_map(|t| {
            holders.iter().map(|a| BalanceQuery {
                token: t.key,
                holder: *a,
            })
        })
        .collect()
}

/// Reads one holder's balance of one token (or of every configured token when `token` is
/// `None`) at a pinned block and stores it: what `sync-user-balance` does, callable directly
/// (the HTTP API's realtime read, the CLI). A failing read of an explicitly asked token is
/// `Fatal`; with `None`, failing tokens are skipped with a warning.
pub async fn sync_holder(
    services: &Services,
    chain_id: u64,
    address: &str,
    token: Option<&str>,
) -> Result<WriteOutcome, JobError> {
    let chain = services.chains.get(chain_id)?;
    let holder = chain
        .family()
        .parse_address(address)
        .map_err(|e| JobError::fatal_from("address", e))?;
    let sel = TokenSelector {
        token: token.map(str::to_string),
        asset_class: None,
    };
    let tokens = resolve_tokens(&services.settings, chain_id, &sel)?;
    let queries = cross(&tokens, &[holder]);
    let (block, reads) = read_consistent(&chain, &queries, None).await?;
    let mut rows = Vec::with_capacity(reads.len());
    for (t, (q, r)) in tokens.iter().zip(queries.iter().zip(reads)) {
        match r {
            Ok(amount) => rows.push(BalanceRow {
                token: q.token,
                address: q.holder,
                amount,
            }),
            Err(e) if token.is_some() => {
                // The caller asked for this token and the chain answers the same way at this
                // block however often we ask.
                return Err(JobError::fatal_from(
                    format!(
                        "{} balanceOf({}) failed at block {}",
                        t.symbol, address, block.number
                    ),
                    e,
                ));
            }
            Err(e) => tracing::warn!(chain_id = chain_id, token = %t.key, error = %e,
                "balance read failed; left unchanged"),
        }
    }
    store_balances(services, chain_id, &block, &rows).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DomainConfig {
        serde_json::from_value(serde_json::json!({
            "chains": [{"chain_id": 1, "name": "a", "rpc_urls": ["http://127.0.0.1:1"]},
                       {"chain_id": 2, "name": "b", "rpc_urls": ["http://127.0.0.1:1"]}],
            "tokens": [
                {"chain_id": 1, "symbol": "ETH", "decimals": 18, "asset_class": "native"},
                {"chain_id": 1, "symbol": "RAT", "decimals": 18, "asset_class": "major",
                 "address": "0x00000000000000000000000000000000000000bb"},
                {"chain_id": 1, "symbol": "FOO", "decimals": 6, "asset_class": "erc20",
                 "address": "0x00000000000000000000000000000000000000aa"},
                {"chain_id": 2, "symbol": "USDT", "decimals": 6, "asset_class": "erc20",
                 "address": "0x00000000000000000000000000000000000000cc"}
            ]
        }))
        .unwrap()
    }

    fn sel(token: Option<&str>, class: Option<AssetClass>) -> TokenSelector {
        TokenSelector {
            token: token.map(str::to_string),
            asset_class: class,
        }
    }

    #[test]
    fn tokens_by_symbol_address_class_or_all() {
        let s = settings();
        s.validate().unwrap();
        let syms = |v: Vec<ResolvedToken>| v.into_iter().map(|t| t.symbol).collect::<Vec<_>>();
        assert_eq!(
            syms(resolve_tokens(&s, 1, &sel(Some("rat"), None)).unwrap()),
            ["RAT"]
        );
        assert_eq!(
            syms(
                resolve_tokens(
                    &s,
                    1,
                    &sel(Some("0x00000000000000000000000000000000000000AA"), None)
                )
                .unwrap()
            ),
            ["FOO"]
        );
        assert_eq!(
            syms(resolve_tokens(&s, 1, &sel(Some("native"), None)).unwrap()),
            ["ETH"]
        );
        assert_eq!(
            syms(resolve_tokens(&s, 1, &sel(None, Some(AssetClass::Erc20))).unwrap()),
            ["FOO"]
        );
        // sorted by key: native first, then addresses
        assert_eq!(
            syms(resolve_tokens(&s, 1, &sel(None, None)).unwrap()),
            ["ETH", "FOO", "RAT"]
        );
    }

    #[test]
    fn unknown_tokens_are_fatal() {
        let s = settings();
        for (chain, sl) in [
            (1, sel(Some("USDT"), None)),
            (2, sel(Some("native"), None)),
            (1, sel(None, Some(AssetClass::Nft))),
            (9, sel(None, None)),
        ] {
            let e = resolve_tokens(&s, chain, &sl).unwrap_err();
            assert!(matches!(e, JobError::Fatal { .. }), "{e}");
        }
    }
}
