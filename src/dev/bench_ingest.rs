//! `chainsync bench ingest`: event ingestion on anvil.
//!
//! 1. Throughput: N mints (one `Transfer` each) to a set of holders in turn, in small batches, one
//!    block each, so that the events spread over at least `blocks` blocks and each holder's
//!    balance changes many times; then ingestion passes from the token's deployment to
//!    the head as `chainsync ingest` runs them: `eth_getLogs` in adaptive ranges, events stored
//!    with their block hashes, each touched holder's balance history recorded at the blocks that
//!    changed it (the logs' deltas, checked by Multicall3 reads before and after each range).
//!    Repeated after a reset (events, history and balances); events/s of each repetition and the
//!    median.
//! 2. Live lag: anvil mining a block every second, the worker runtime and the live follower of
//!    the daemon running. Transfers to fresh addresses; the lag of each is the time from its
//!    receipt first being visible to the recipient's balance row holding a block at or after it.
//!    Each round restarts the follower at a random offset, so every phase between the block clock
//!    and the poll clock is sampled.

use std::time::{Duration, Instant};

use alloy::{
    network::TransactionBuilder, primitives::U256, providers::Provider,
    rpc::types::TransactionRequest, sol_types::SolCall,
};
use anyhow::{Context, bail};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;
use chainsync_dev::devchain::{self, DevChain, DevChainOptions, contracts::TestToken};

/// The config of both parts, but `database_url`.
fn config(rpc: &str, token: &str, live: bool) -> String {
    format!(
        r#"
[worker]
concurrency = 20
[[chains]]
chain_id = 31337
name = "anvil"
rpc_urls = ["{rpc}"]
confirmations = 0
[[tokens]]
chain_id = 31337
symbol = "ING"
address = "{token}"
decimals = 18
asset_class = "erc20"
[[ingest]]
chain_id = 31337
initial_range = 500
max_range = 5000
live = {live}
contracts = [{{ address = "{token}" }}]
"#
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn count(pool: &PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// The throughput part's sizes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Transfer events (mints) in all.
    pub events: usize,
    /// Blocks they spread over (at least).
    pub blocks: usize,
    /// Holders they go to, in turn.
    pub holders: usize,
}

/// Runs both parts; `sizes` for the throughput, `transfers` samples for the lag.
pub async fn run(
    admin_url: &str,
    sizes: Sizes,
    transfers: usize,
    reps: usize,
) -> anyhow::Result<serde_json::Value> {
    let throughput = throughput(admin_url, sizes, reps.max(1)).await?;
    let lag = live_lag(admin_url, transfers).await?;
    Ok(json!({"throughput": throughput, "live": lag}))
}

async fn throughput(
    admin_url: &str,
    sizes: Sizes,
    reps: usize,
) -> anyhow::Result<serde_json::Value> {
    let Sizes {
        events,
        blocks,
        holders,
    } = sizes;
    if holders == 0 {
        bail!("--holders must be positive");
    }
    // anvil keeps the state of its last 500 blocks in memory and a few thousand more on disk;
    // ingestion reads balances at old blocks (every range's boundaries), as from an archive node.
    let chain = DevChain::start_with(DevChainOptions {
        extra_args: vec![
            "--max-persisted-states".into(),
            (blocks + 1_000).to_string(),
        ],
        ..DevChainOptions::default()
    })
    .await?;
    chain.install_multicall3().await?;
    let token = chain.deploy_token("Ingest", "ING", 18).await?;
    // Event i mints to holder i mod `holders`: each holder's balance changes again and again
    // (a history of events/holders rows each), and the chain's state stays the size of the
    // holder set, as a token's does, however many events there are.
    let set = devchain::random_holders(5, holders.min(events.max(1)), U256::from(1u64));
    let amounts = devchain::random_holders(6, events, devchain::units(100, 18));
    let mints: Vec<(alloy::primitives::Address, U256)> = amounts
        .iter()
        .enumerate()
        .map(|(i, (_, v))| (set[i % set.len()].0, *v))
        .collect();
    // Every history row: holder → its balance after each of its mints, in order.
    let mut expected: Vec<(String, String)> = Vec::with_capacity(events);
    let mut running: std::collections::BTreeMap<alloy::primitives::Address, U256> =
        std::collections::BTreeMap::new();
    for (a, v) in &mints {
        let b = running.entry(*a).or_default();
        *b += *v;
        expected.push((format!("{a:#x}"), b.to_string()));
    }
    expected.sort();
    // One mint transaction per block (automine): `per_block` events each.
    let per_block = events.div_ceil(blocks.max(1)).max(1);
    let first = chain.block_number().await?;
    let mint_started = Instant::now();
    chain.mint_across_blocks(token, &mints, per_block).await?;
    let mint_secs = mint_started.elapsed().as_secs_f64();
    let rpc = chain.url();
    let app = super::scratch_app(
        admin_url,
        "bench_ingest",
        &config(&rpc, &format!("{token:#x}"), false),
    )
    .await?;
    let services = app.services().await?;
    let sink = chainsync_jobs::domain::Domain::ingest_sink(std::sync::Arc::new(app.queue.clone()));
    let head = chain.block_number().await?;
    let mut rates = Vec::new();
    let mut requests = 0;
    for _ in 0..reps {
        chainsync_jobs::ingest::reset(app.pool(), 31337).await?;
        sqlx::query("TRUNCATE chainsync.jobs, chainsync.finished_jobs, chainsync.balance_changes, chainsync.balances")
            .execute(app.pool())
            .await?;
        let t = Instant::now();
        // From the token's deployment, as `start_block` would be configured.
        let mut next = Some(first);
        loop {
            let r = chainsync_jobs::ingest::ingest_pass(
                &services,
                &sink,
                31337,
                Some(head),
                chainsync_jobs::ingest::PassOptions {
                    from_block: next,
                    progress: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            requests = r.requests;
            if r.caught_up {
                break;
            }
            next = Some(r.to_block + 1);
        }
        let secs = t.elapsed().as_secs_f64();
        let stored = count(app.pool(), "SELECT count(*) FROM chainsync.events").await?;
        let history = count(
            app.pool(),
            "SELECT count(*) FROM chainsync.balance_changes WHERE source = 'log'",
        )
        .await?;
        if stored != events as i64 || history != events as i64 {
            bail!("stored {stored} events and {history} history rows, expected {events} of each");
        }
        // Every change of every holder is its balance after that mint, to the wei.
        let mut got: Vec<(String, String)> =
            sqlx::query_as("SELECT address, new_amount::text FROM chainsync.balance_changes")
                .fetch_all(app.pool())
                .await?;
        got.sort();
        if got != expected {
            bail!("the balance history differs from the running sums of the mints");
        }
        rates.push(events as f64 / secs);
    }
    let all = rates.clone();
    let with_events = count(
        app.pool(),
        "SELECT count(DISTINCT block_number) FROM chainsync.events",
    )
    .await?;
    Ok(json!({
        "events": events,
        "holders": set.len(),
        "blocks": head,
        "blocks_with_events": with_events,
        "first_block": first,
        "mint_seconds": mint_secs,
        "get_logs_requests": requests,
        "events_per_s": all,
        "median_events_per_s": median(&mut rates),
    }))
}

async fn live_lag(admin_url: &str, transfers: usize) -> anyhow::Result<serde_json::Value> {
    let chain = DevChain::start_with(DevChainOptions {
        block_time: Some(Duration::from_secs(1)),
        ..DevChainOptions::default()
    })
    .await?;
    chain.install_multicall3().await?;
    let token = chain.deploy_token("Ingest", "ING", 18).await?;
    let senders: Vec<usize> = (1..chain.accounts().len()).collect();
    for &i in &senders {
        chain
            .mint(
                token,
                chain.signer(i)?.address(),
                devchain::units(1_000, 18),
            )
            .await?;
    }
    let rpc = chain.url();
    let app = super::scratch_app(
        admin_url,
        "bench_ingest_live",
        &config(&rpc, &format!("{token:#x}"), true),
    )
    .await?;
    let pool = app.pool().clone();
    let poll_ms = app.config.domain.ingest.first().map_or(0, |c| {
        u64::try_from(c.poll_interval.as_millis()).unwrap_or(u64::MAX)
    });
    let services = app.services().await?;
    let runtime = Runtime::start(
        app.queue.clone(),
        app.registry.clone(),
        services.clone(),
        app.config.worker.clone(),
    );
    // Blocks come every second and the follower polls on its own clock: each round starts a
    // fresh follower at a random offset so that the lags sample every phase between the two, as
    // a daemon started at an arbitrary time would see.
    let start_follower = |delay_ms: u64| {
        let stop = CancellationToken::new();
        let queue = app.queue.clone();
        let domain = chainsync_jobs::domain::Domain::new(services.clone());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            domain.follow(std::sync::Arc::new(queue), token).await;
        });
        (stop, task)
    };
    let (stop, follower) = start_follower(0);
    // Caught up once the mints' recipients have balance rows.
    let t = Instant::now();
    while count(&pool, "SELECT count(*) FROM chainsync.balances").await? < senders.len() as i64 {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("live ingestion did not catch up within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = follower.await;

    let recipients = devchain::holder_addresses(77, transfers);
    let mut lags = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in recipients.chunks(senders.len()) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (stop, follower) = start_follower(seed % 1000);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let sends = round.iter().zip(&senders).map(|(&to, &sender)| {
            let chain = &chain;
            let pool = pool.clone();
            async move {
                let input = TestToken::transferCall {
                    to,
                    amount: U256::from(1_000_000u64),
                }
                .abi_encode();
                let tx: TransactionRequest = chain.tx_from(sender, token, input)?;
                let pending = chain
                    .provider()
                    .send_transaction(tx.with_gas_limit(100_000))
                    .await?;
                let hash = *pending.tx_hash();
                let (block, mined) = loop {
                    if let Some(r) = chain.provider().get_transaction_receipt(hash).await? {
                        break (r.block_number.unwrap_or_default(), Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let deadline = mined + Duration::from_secs(30);
                loop {
                    let at: Option<i64> = sqlx::query_scalar(
                        "SELECT block_number FROM chainsync.balances WHERE chain_id = 31337 AND address = $1",
                    )
                    .bind(format!("{to:#x}"))
                    .fetch_optional(&pool)
                    .await?;
                    if at.is_some_and(|b| b >= i64::try_from(block).unwrap_or(i64::MAX)) {
                        return Ok::<_, anyhow::Error>(mined.elapsed().as_secs_f64() * 1000.0);
                    }
                    if Instant::now() > deadline {
                        bail!("balance of {to:#x} not updated 30 s after block {block}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        for r in futures::future::join_all(sends).await {
            lags.push(r.context("live transfer")?);
        }
        stop.cancel();
        let _ = follower.await;
    }
    runtime.stop().await;
    lags.sort_by(f64::total_cmp);
    Ok(json!({
        "block_time_s": 1,
        "poll_interval_ms": poll_ms,
        "transfers": lags.len(),
        "lag_ms_p50": percentile(&lags, 50.0),
        "lag_ms_p99": percentile(&lags, 99.0),
        "lag_ms_max": lags.last().copied().unwrap_or(0.0),
    }))
}
