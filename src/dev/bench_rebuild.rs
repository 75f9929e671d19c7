//! `chainsync bench rebuild`: the balance history and points rebuilt after an outage, on anvil.
//!
//! 1. Hour 0 of chain time: `holders` holders minted (`mintMany`); the daemon's parts (worker
//!    runtime with the app's registry, live follower) run until ingestion is at the head and
//!    window 0 is computed. Then they stop: the outage.
//! 2. `hours` hours of chain time pass with `transfers` holder-to-holder transfers, one block
//!    every `block_seconds` of chain time (`anvil_setNextBlockTimestamp`), each block holding its
//!    share; then one empty block closes the last window.
//! 3. The daemon's parts start again; the clock runs until ingestion is at the head, then until
//!    every closed window of every holder is computed and no `ingest-events`/`compute-points` job
//!    is open.
//! 4. Verification from the chain alone: every holder's stored balance equals `balanceOf`, and
//!    every points window of every holder equals floor(Σ balance × seconds / 3600) × rate
//!    integrated from the token's own `Transfer` logs and block timestamps. Any difference fails.
//!
//! The daemon reaches anvil through a counting TCP proxy, so its JSON-RPC requests (`eth_call`,
//! `eth_getLogs`, all) during the rebuild are counted; the verification talks to anvil directly.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, U256},
    providers::{Provider, ext::AnvilApi},
    rpc::types::Filter,
    sol,
    sol_types::SolEvent,
};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{App, Running},
    config::Config,
};
use chainsync_dev::devchain::{self, DevChain, DevChainOptions};

sol! {
    event Transfer(address indexed from, address indexed to, uint256 value);
}

const HOUR: u64 = 3600;
const CHAIN: u64 = 31337;
/// The token's points rate, "0.25": points = floor(twab / 4).
const RATE: &str = "0.25";
const RATE_DIV: u64 = 4;

/// What to run.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub admin_url: String,
    pub holders: usize,
    pub transfers: usize,
    pub hours: u64,
    pub block_seconds: u64,
}

fn config(url: &str, rpc: &str, token: &str) -> anyhow::Result<Config> {
    Ok(Config::from_toml(&format!(
        r#"
database_url = "{url}"
[worker]
concurrency = 8
[[chains]]
chain_id = {CHAIN}
name = "anvil"
rpc_urls = ["{rpc}"]
confirmations = 0
[[tokens]]
chain_id = {CHAIN}
symbol = "RBD"
address = "{token}"
decimals = 18
asset_class = "erc20"
[[ingest]]
chain_id = {CHAIN}
initial_range = 500
max_range = 5000
contracts = [{{ address = "{token}" }}]
[points]
rates = [{{ chain_id = {CHAIN}, token = "{token}", rate = "{RATE}" }}]
"#
    ))?)
}

/// JSON-RPC requests seen by the counting proxy.
#[derive(Default)]
struct RpcCounts {
    all: AtomicU64,
    eth_call: AtomicU64,
    get_logs: AtomicU64,
}

impl RpcCounts {
    fn snapshot(&self) -> [u64; 3] {
        [
            self.all.load(Ordering::Relaxed),
            self.eth_call.load(Ordering::Relaxed),
            self.get_logs.load(Ordering::Relaxed),
        ]
    }
}

const NEEDLES: [&[u8]; 3] = [
    b"\"method\":\"",
    b"\"method\":\"eth_call\"",
    b"\"method\":\"eth_getLogs\"",
];

/// Counts the needles in `buf` that end after `carry` bytes (those ending inside the carry were
/// counted with the previous chunk).
fn count_in(buf: &[u8], carry: usize, counts: &RpcCounts) {
    for (i, needle) in NEEDLES.iter().enumerate() {
        let n = buf
            .windows(needle.len())
            .enumerate()
            .filter(|(at, w)| w == needle && at + needle.len() > carry)
            .count() as u64;
        let counter = match i {
            0 => &counts.all,
            1 => &counts.eth_call,
            _ => &counts.get_logs,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A TCP proxy on a free loopback port in front of `upstream` (`host:port`) that counts
/// JSON-RPC methods in the request bytes. Runs until `stop`.
async fn counting_proxy(
    upstream: String,
    counts: Arc<RpcCounts>,
    stop: CancellationToken,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((client, _)) = accepted else { continue };
            let (upstream, counts, stop) = (upstream.clone(), counts.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let up = async {
                    let keep = NEEDLES.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut carry: Vec<u8> = Vec::new();
                    loop {
                        let n = match client_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let mut scan = std::mem::take(&mut carry);
                        let carried = scan.len();
                        scan.extend_from_slice(chunk);
                        count_in(&scan, carried, &counts);
                        carry = scan[scan.len().saturating_sub(keep)..].to_vec();
                        if server_tx.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut server_rx, &mut client_tx);
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = up => {}
                    _ = down => {}
                }
            });
        }
    });
    Ok(format!("http://{addr}"))
}

async fn scalar(pool: &PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

async fn checkpoint(pool: &PgPool) -> anyhow::Result<i64> {
    scalar(
        pool,
        "SELECT coalesce(max(block_number), -1) FROM chainsync.ingest_checkpoints WHERE chain_id = 31337",
    )
    .await
}

/// Ingestion and points work still open (queued or running).
async fn open_work(pool: &PgPool) -> anyhow::Result<i64> {
    scalar(
        pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state IN ('available', 'running')
         AND kind IN ('ingest-events', 'compute-points')",
    )
    .await
}

async fn rows_at(pool: &PgPool, window: DateTime<Utc>) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM chainsync.points_history WHERE chain_id = 31337 AND window_start = $1",
    )
    .bind(window)
    .fetch_one(pool)
    .await?)
}

/// Why a wait gave up: the failing jobs, if any.
async fn failing_jobs(pool: &PgPool) -> String {
    let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT kind, state::text, errors FROM chainsync.jobs WHERE errors <> '[]'
         ORDER BY created_at DESC LIMIT 5",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    format!("{rows:?}")
}

/// Waits until ingestion is at `head`; seconds since `t`.
async fn wait_ingested(
    pool: &PgPool,
    head: u64,
    t: Instant,
    limit: Duration,
) -> anyhow::Result<f64> {
    let head = i64::try_from(head)?;
    loop {
        if checkpoint(pool).await? >= head {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > limit {
            bail!(
                "ingestion at block {} of {head} after {limit:?}; failing jobs: {}",
                checkpoint(pool).await?,
                failing_jobs(pool).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until window `last` has a row per holder and no ingestion or points job is open.
async fn wait_points(
    pool: &PgPool,
    last: DateTime<Utc>,
    holders: usize,
    t: Instant,
    limit: Duration,
) -> anyhow::Result<f64> {
    loop {
        if rows_at(pool, last).await? >= holders as i64 && open_work(pool).await? == 0 {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > limit {
            bail!(
                "window {last}: {} of {holders} rows after {limit:?}; failing jobs: {}",
                rows_at(pool, last).await?,
                failing_jobs(pool).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deterministic pseudo-random transfers between holders. Amounts of at most 10 tokens against
/// mints of at least 1,000: no transfer can fail whatever the order within a block.
fn plan_transfers(holders: &[Address], n: usize, seed: u64) -> Vec<(Address, Address, U256)> {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        s >> 11
    };
    let len = holders.len() as u64;
    (0..n)
        .map(|_| {
            let from = next() % len;
            let to = (from + 1 + next() % (len - 1)) % len;
            let amount = U256::from(next() % 10_000_000_000_000_000_000 + 1);
            (holders[from as usize], holders[to as usize], amount)
        })
        .collect()
}

/// Holder → (block time, balance after the block) at each block where its balance changed,
/// from the token's Transfer logs alone.
async fn log_timeline(
    chain: &DevChain,
    token: Address,
    head: u64,
) -> anyhow::Result<(BTreeMap<Address, Vec<(i64, U256)>>, usize)> {
    let provider = chain.provider();
    let step = 50u64;
    let ranges: Vec<(u64, u64)> = (0..=head / step)
        .map(|i| (i * step, ((i + 1) * step - 1).min(head)))
        .collect();
    let chunks: Vec<Vec<alloy::rpc::types::Log>> = futures::stream::iter(ranges)
        .map(|(from, to)| async move {
            provider
                .get_logs(
                    &Filter::new()
                        .address(token)
                        .event_signature(Transfer::SIGNATURE_HASH)
                        .from_block(from)
                        .to_block(to),
                )
                .await
        })
        .buffered(4)
        .try_collect()
        .await?;
    let logs: Vec<_> = chunks.into_iter().flatten().collect();
    let mut blocks: Vec<u64> = logs.iter().filter_map(|l| l.block_number).collect();
    blocks.dedup();
    let times: BTreeMap<u64, i64> = futures::stream::iter(blocks)
        .map(|bn| async move {
            let b = provider
                .get_block_by_number(bn.into())
                .await?
                .with_context(|| format!("block {bn} missing"))?;
            Ok::<_, anyhow::Error>((bn, i64::try_from(b.header.timestamp)?))
        })
        .buffered(8)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .collect();
    let mut balances: BTreeMap<Address, U256> = BTreeMap::new();
    let mut out: BTreeMap<Address, Vec<(u64, i64, U256)>> = BTreeMap::new();
    for log in &logs {
        let bn = log.block_number.context("log without a block number")?;
        let at = *times.get(&bn).context("block time missing")?;
        let t = Transfer::decode_log_data(log.data())?;
        for (who, incoming) in [(t.from, false), (t.to, true)] {
            if who.is_zero() {
                continue;
            }
            let b = balances.entry(who).or_default();
            *b = if incoming {
                b.checked_add(t.value).context("balance overflow")?
            } else {
                b.checked_sub(t.value)
                    .with_context(|| format!("{who:#x} below zero at block {bn}"))?
            };
            let series = out.entry(who).or_default();
            match series.last_mut() {
                Some(last) if last.0 == bn => last.2 = *b,
                _ => series.push((bn, at, *b)),
            }
        }
    }
    let timeline = out
        .into_iter()
        .map(|(who, series)| {
            let mut prev: Option<U256> = None;
            let kept = series
                .into_iter()
                .filter(|(_, _, b)| {
                    let keep = prev != Some(*b);
                    prev = Some(*b);
                    keep
                })
                .map(|(_, t, b)| (t, b))
                .collect();
            (who, kept)
        })
        .collect();
    Ok((timeline, logs.len()))
}

/// floor(Σ balance × seconds / 3600) and floor(twab × rate) per holder and window starting at
/// each of `windows` (unix seconds); no window before a holder's first change.
fn reference(
    timeline: &BTreeMap<Address, Vec<(i64, U256)>>,
    windows: &[i64],
) -> BTreeMap<(Address, i64), (U256, U256)> {
    let hour = HOUR as i64;
    let mut out = BTreeMap::new();
    for (who, changes) in timeline {
        for &w in windows {
            let end = w + hour;
            if changes.first().is_none_or(|c| c.0 >= end) {
                continue;
            }
            let mut amount = changes
                .iter()
                .rev()
                .find(|c| c.0 <= w)
                .map_or(U256::ZERO, |c| c.1);
            let mut at = w;
            let mut sum = U256::ZERO;
            for (t, a) in changes.iter().filter(|c| c.0 > w && c.0 < end) {
                sum += amount * U256::from((t - at).unsigned_abs());
                at = *t;
                amount = *a;
            }
            sum += amount * U256::from((end - at).unsigned_abs());
            let twab = sum / U256::from(HOUR);
            out.insert((*who, w), (twab, twab / U256::from(RATE_DIV)));
        }
    }
    out
}

fn num(s: &str) -> anyhow::Result<U256> {
    U256::from_str_radix(s, 10).with_context(|| format!("not a number: {s}"))
}

/// Runs the scenario; see the module docs.
pub async fn run(opts: &RebuildOptions) -> anyhow::Result<serde_json::Value> {
    if opts.holders < 2 {
        bail!("--holders must be at least 2");
    }
    if opts.hours == 0 || opts.block_seconds == 0 || opts.block_seconds > HOUR {
        bail!("--hours must be positive and --block-seconds within 1..=3600");
    }
    // A block gas limit far above what a block of transfers uses: the base fee falls instead of
    // rising by 12.5 % a block, and impersonated holders keep enough ether for gas.
    let chain = DevChain::start_with(DevChainOptions {
        gas_limit: Some(1_000_000_000),
        ..DevChainOptions::default()
    })
    .await?;
    chain.install_multicall3().await?;
    let token = chain.deploy_token("Rebuild", "RBD", 18).await?;
    let provider = chain.provider();
    let latest = provider
        .get_block_by_number(BlockNumberOrTag::Latest)
        .await?
        .context("no latest block")?
        .header
        .timestamp;
    let t0 = (latest / HOUR + 2) * HOUR;

    // Hour 0: mints of 1,000 to 2,000 tokens.
    let holders: Vec<(Address, U256)> =
        devchain::random_holders(31, opts.holders, devchain::units(1_000, 18))
            .into_iter()
            .map(|(a, v)| (a, v + devchain::units(1_000, 18)))
            .collect();
    let addresses: Vec<Address> = holders.iter().map(|(a, _)| *a).collect();
    provider.anvil_set_next_block_timestamp(t0 + 60).await?;
    chain
        .mint_many(token, &holders)
        .await
        .context("minting to the holders")?;
    provider.anvil_set_next_block_timestamp(t0 + HOUR).await?;
    provider.evm_mine(None).await?;

    let counts = Arc::new(RpcCounts::default());
    let proxy_stop = CancellationToken::new();
    let rpc = counting_proxy(chain.host_port(), counts.clone(), proxy_stop.clone()).await?;
    let url = chainsync_dev::scratch::recreate_database(&opts.admin_url, "bench_rebuild").await?;
    let app = App::connect(config(&url, &rpc, &format!("{token:#x}"))?).await?;
    app.migrate().await?;
    let pool = app.pool().clone();
    let window = |secs: u64| -> anyhow::Result<DateTime<Utc>> {
        DateTime::from_timestamp(i64::try_from(t0 + secs)?, 0).context("time out of range")
    };

    // The daemon runs and catches up with the mints; window 0 is computed.
    let t = Instant::now();
    let running = Running::start(&app).await?;
    let head = chain.block_number().await?;
    let limit = Duration::from_secs(600);
    let initial_ingest = wait_ingested(&pool, head, t, limit).await?;
    let initial_points = wait_points(&pool, window(0)?, opts.holders, t, limit).await?;
    let _ = running.stop().await;

    // The outage: `hours` of chain time, a block every `block_seconds`, transfers spread over them.
    let blocks = usize::try_from(opts.hours * HOUR / opts.block_seconds)?;
    let plan = plan_transfers(&addresses, opts.transfers, 0x5eed);
    let t = Instant::now();
    for k in 0..blocks {
        let (from, to) = (
            opts.transfers * k / blocks,
            opts.transfers * (k + 1) / blocks,
        );
        let at = t0 + HOUR + k as u64 * opts.block_seconds + opts.block_seconds / 2;
        provider.anvil_set_next_block_timestamp(at).await?;
        if from == to {
            provider
                .evm_mine(None)
                .await
                .with_context(|| format!("outage block {k}"))?;
        } else {
            let outcome = chain
                .holder_transfers(token, &plan[from..to])
                .await
                .with_context(|| format!("transfers of outage block {k}"))?;
            if outcome.first_block != outcome.last_block {
                bail!(
                    "block {k}: transfers landed in blocks {}..={}",
                    outcome.first_block,
                    outcome.last_block
                );
            }
        }
    }
    let last_window = window(opts.hours * HOUR)?;
    provider
        .anvil_set_next_block_timestamp(t0 + (opts.hours + 1) * HOUR + 5)
        .await?;
    provider.evm_mine(None).await?;
    let outage_secs = t.elapsed().as_secs_f64();
    let head = chain.block_number().await?;

    // Restart: the clock runs until the history and the points are complete.
    let before = counts.snapshot();
    let t = Instant::now();
    let running = Running::start(&app).await?;
    let limit = Duration::from_secs(3600);
    let ingest_secs = wait_ingested(&pool, head, t, limit).await?;
    let rpc_at_ingested = counts.snapshot();
    let points_secs = wait_points(&pool, last_window, opts.holders, t, limit).await?;
    let rpc_at_points = counts.snapshot();
    let _ = running.stop().await;
    proxy_stop.cancel();
    let dead = scalar(&pool, "SELECT count(*) FROM chainsync.dead_letters").await?;
    if dead > 0 {
        bail!("{dead} jobs failed for good: {}", failing_jobs(&pool).await);
    }

    // Verification, from the chain alone.
    let verify_started = Instant::now();
    let stored: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT address, amount::text FROM chainsync.balances WHERE chain_id = 31337 AND token = $1",
    )
    .bind(format!("{token:#x}"))
    .fetch_all(&pool)
    .await?
    .into_iter()
    .collect();
    let on_chain: Vec<(Address, U256)> = futures::stream::iter(addresses.iter().copied())
        .map(|a| {
            let chain = &chain;
            async move {
                let b = chain.balance_of(token, a).await.context("balanceOf")?;
                Ok::<_, anyhow::Error>((a, b))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut balance_diffs = Vec::new();
    for (a, want) in &on_chain {
        let got = stored.get(&format!("{a:#x}")).map(|s| num(s)).transpose()?;
        if got != Some(*want) {
            balance_diffs.push(format!("{a:#x}: stored {got:?}, balanceOf {want}"));
        }
    }
    let (timeline, logs) = log_timeline(&chain, token, head)
        .await
        .context("reading the Transfer logs")?;
    let expected_logs = opts.holders + opts.transfers;
    if logs != expected_logs {
        bail!("{logs} Transfer logs on the chain, expected {expected_logs}");
    }
    let windows: Vec<i64> = (0..=opts.hours)
        .map(|h| i64::try_from(t0 + h * HOUR))
        .collect::<Result<_, _>>()?;
    let want = reference(&timeline, &windows);
    let rows: Vec<(String, DateTime<Utc>, String, String)> = sqlx::query_as(
        "SELECT address, window_start, twab::text, points::text FROM chainsync.points_history
         WHERE chain_id = 31337 AND token = $1",
    )
    .bind(format!("{token:#x}"))
    .fetch_all(&pool)
    .await?;
    let mut got: BTreeMap<(Address, i64), (U256, U256)> = BTreeMap::new();
    for (a, w, twab, points) in rows {
        got.insert((a.parse()?, w.timestamp()), (num(&twab)?, num(&points)?));
    }
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .map(|(k, v)| format!("{:#x} @ {}: want {v:?}, got {:?}", k.0, k.1, got.get(k)))
        .collect();
    let extra = got.keys().filter(|k| !want.contains_key(k)).count();
    let verify_secs = verify_started.elapsed().as_secs_f64();
    if !balance_diffs.is_empty() || !wrong.is_empty() || extra > 0 {
        bail!(
            "NOT EXACT: {} of {} balances differ {:?}; {} of {} points windows differ {:?}; {extra} unexpected windows",
            balance_diffs.len(),
            on_chain.len(),
            balance_diffs.iter().take(5).collect::<Vec<_>>(),
            wrong.len(),
            want.len(),
            wrong.iter().take(5).collect::<Vec<_>>()
        );
    }
    let history_rows = scalar(&pool, "SELECT count(*) FROM chainsync.balance_changes").await?;
    let audit = scalar(&pool, "SELECT count(*) FROM chainsync.points_audit").await?;
    let delta = |a: [u64; 3], b: [u64; 3]| json!({"all": a[0] - b[0], "eth_call": a[1] - b[1], "eth_getLogs": a[2] - b[2]});
    Ok(json!({
        "holders": opts.holders,
        "transfers": opts.transfers,
        "hours": opts.hours,
        "block_seconds": opts.block_seconds,
        "blocks": blocks,
        "head": head,
        "initial": {"ingest_s": initial_ingest, "window0_s": initial_points},
        "outage_mining_s": outage_secs,
        "restart_to_ingested_s": ingest_secs,
        "restart_to_points_s": points_secs,
        "events_per_s": opts.transfers as f64 / ingest_secs,
        "rpc_to_ingested": delta(rpc_at_ingested, before),
        "rpc_to_points": delta(rpc_at_points, before),
        "history_rows": history_rows,
        "points_windows": got.len(),
        "points_audit_rows": audit,
        "verification": {
            "exact": true,
            "balances_checked": on_chain.len(),
            "windows_checked": want.len(),
            "transfer_logs": logs,
            "seconds": verify_secs,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needles_split_across_chunks_are_counted_once() {
        let counts = RpcCounts::default();
        let body = br#"{"method":"eth_call","params":[]}{"method":"eth_getLogs"}"#;
        let keep = NEEDLES.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
        for cut in 1..body.len() {
            let c = RpcCounts::default();
            let (a, b) = body.split_at(cut);
            count_in(a, 0, &c);
            let carry = &a[a.len().saturating_sub(keep)..];
            let mut scan = carry.to_vec();
            scan.extend_from_slice(b);
            count_in(&scan, carry.len(), &c);
            assert_eq!(c.snapshot(), [2, 1, 1], "cut at {cut}");
        }
        count_in(body, 0, &counts);
        assert_eq!(counts.snapshot(), [2, 1, 1]);
    }

    #[test]
    fn reference_integrates_by_the_second() {
        let who = Address::repeat_byte(1);
        let mut t = BTreeMap::new();
        t.insert(
            who,
            vec![(60, U256::from(3600u64)), (1800, U256::from(7200u64))],
        );
        let r = reference(&t, &[0, 3600]);
        // 3600 × 1740 s + 7200 × 1800 s over 3600 s.
        assert_eq!(r[&(who, 0)].0, U256::from(1740 + 3600));
        assert_eq!(r[&(who, 3600)], (U256::from(7200u64), U256::from(1800u64)));
    }
}
