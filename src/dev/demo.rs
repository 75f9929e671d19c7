//! `chainsync demo`: the main job end to end on a local chain. Starts anvil (or uses
//! `CHAINSYNC_RPC_URL`), deploys a token with thousands of holders, runs the worker runtime, and
//! shows a full sync, an event-driven sync, a reconcile that repairs a planted mismatch, jobs that
//! fail into the dead letters and their replay, then prints a summary.
//!
//! `--family tron` walks through the same on a `family = "tron"` chain: the daemon reaches anvil
//! through the TRON JSON-RPC stand-in (`chainsync_dev::tron_standin`), and every address — in the
//! config, the tracked addresses, the enqueued args, the output and the summary — is written in
//! base58check `T…`.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use anyhow::{Context, bail};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;
use chainsync_dev::{
    devchain::{self, DevChain, DevChainOptions, RpcGate},
    tron_standin::{self, TronStandIn},
};
use chainsync_jobs::ids::ChainFamily;

/// Options of `chainsync demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub holders: usize,
    pub database: String,
    pub admin_url: String,
    /// `evm`, or `tron`: the chain is a TRON chain reached through the stand-in.
    pub family: ChainFamily,
}

/// How the daemon reaches the node: through a gate that step 9 closes, as if the node went away;
/// on a TRON chain the gate is in front of the TRON stand-in, which is in front of anvil.
struct Node {
    gate: RpcGate,
    standin: Option<TronStandIn>,
    rpc: String,
}

impl Node {
    async fn open(chain: &DevChain, family: ChainFamily) -> anyhow::Result<Self> {
        Ok(match family {
            ChainFamily::Evm => {
                let gate = RpcGate::open_to(&chain.host_port()).await?;
                let rpc = gate.url();
                Self {
                    gate,
                    standin: None,
                    rpc,
                }
            }
            ChainFamily::Tron => {
                let standin = TronStandIn::start(&chain.url()).await?;
                let gate = RpcGate::open_to(&standin.host_port()).await?;
                let rpc = format!("{}{}", gate.url(), tron_standin::PATH);
                Self {
                    gate,
                    standin: Some(standin),
                    rpc,
                }
            }
        })
    }
}

struct Summary(Vec<(String, String)>);

impl Summary {
    fn add(&mut self, k: &str, v: impl ToString) {
        self.0.push((k.to_string(), v.to_string()));
    }
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

async fn wait_jobs(pool: &PgPool, kind: &str, limit: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chainsync.jobs WHERE kind = $1 AND state IN ('available', 'running')",
        )
        .bind(kind)
        .fetch_one(pool)
        .await?;
        if open == 0 {
            return Ok(());
        }
        if t.elapsed() > limit {
            bail!("{kind} jobs still open after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored(
    pool: &PgPool,
    chain_id: u64,
    token: &str,
    holder: Address,
) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT amount::text FROM chainsync.balances WHERE chain_id = $1 AND token = $2 AND address = $3",
    )
    .bind(i64::try_from(chain_id)?)
    .bind(token)
    .bind(format!("{holder:#x}"))
    .fetch_optional(pool)
    .await?)
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut summary = Summary(Vec::new());
    let family = opts.family;
    let show = |a: &Address| family.show_address(a);
    // TRC20 tokens mostly have 6 decimals.
    let (chain_name, decimals) = match family {
        ChainFamily::Evm => ("anvil", 18u8),
        ChainFamily::Tron => ("tron", 6u8),
    };
    let chain = match std::env::var("CHAINSYNC_RPC_URL") {
        Ok(url) if !url.trim().is_empty() => {
            step(
                1,
                "using the dev node at CHAINSYNC_RPC_URL and deploying contracts",
            );
            DevChain::attach(
                url.trim(),
                std::env::var("CHAINSYNC_DEV_KEY").ok().as_deref(),
            )
            .await
            .context("CHAINSYNC_RPC_URL must be an anvil-compatible dev node")?
        }
        _ => {
            step(1, "starting a local chain (anvil) and deploying contracts");
            DevChain::start_with(DevChainOptions::default())
                .await
                .context("starting anvil (scripts/install-deps.sh installs it)")?
        }
    };
    let chain_id = chain.chain_id();
    let node = Node::open(&chain, family).await?;
    let rpc = node.rpc.clone();
    let multicall = chain.install_multicall3().await?;
    let token = chain
        .deploy_token("Demo Reward Token", "RAT", decimals)
        .await?;
    let broken = chain.deploy_reverting_token().await?;
    // As the database stores it (the same 20 bytes on every family).
    let token_text = format!("{token:#x}");
    println!(
        "    chain {chain_id} at {}, token RAT at {}, a token whose balanceOf reverts at {}",
        chain.url(),
        show(&token),
        show(&broken)
    );
    if node.standin.is_some() {
        println!(
            "    the daemon reaches it as a TRON node: through a stand-in of java-tron's JSON-RPC at {rpc} \
             (calls at `latest` only, hex addresses only, java-tron's shapes of blocks and receipts)"
        );
    }
    summary.add(
        "chain",
        format!(
            "{chain_id} \"{chain_name}\", family {family}{}",
            if node.standin.is_some() {
                " (anvil behind the TRON JSON-RPC stand-in)"
            } else {
                ""
            }
        ),
    );
    summary.add("token RAT", show(&token));

    step(
        2,
        &format!(
            "creating {} holders with real mints and transfers",
            opts.holders
        ),
    );
    let t = Instant::now();
    let holders = devchain::random_holders(7, opts.holders, devchain::units(10_000, decimals));
    chain.mint_many(token, &holders).await?;
    let transfers: Vec<(Address, Address, U256)> = holders
        .windows(2)
        .step_by(7)
        .take(300)
        .map(|w| (w[0].0, w[1].0, w[0].1 / U256::from(3)))
        .collect();
    chain.holder_transfers(token, &transfers).await?;
    println!(
        "    {} mints + {} transfers in {:.1}s",
        holders.len(),
        transfers.len(),
        t.elapsed().as_secs_f64()
    );
    summary.add("holders", holders.len());

    step(
        3,
        &format!("fresh database {} and the chainsync schema", opts.database),
    );
    let config = format!(
        r#"[worker]
concurrency = 20
poll_interval = "200ms"
[[chains]]
chain_id = {chain_id}
name = "{chain_name}"
family = "{family}"
rpc_urls = ["{rpc}"]
confirmations = 1
multicall_address = "{multicall}"
[[tokens]]
chain_id = {chain_id}
symbol = "RAT"
address = "{token}"
decimals = {decimals}
asset_class = "erc20"
[[tokens]]
chain_id = {chain_id}
symbol = "BROKEN"
address = "{broken}"
decimals = {decimals}
asset_class = "erc20"
[reconcile]
auto_repair = true
"#,
        multicall = show(&multicall),
        token = show(&token),
        broken = show(&broken),
    );
    let app = super::scratch_app(&opts.admin_url, &opts.database, &config).await?;
    println!("    config:");
    for line in config.lines().filter(|l| {
        l.starts_with("[[")
            || ["family", "multicall_address", "symbol", "address"]
                .iter()
                .any(|k| l.starts_with(&format!("{k} ")))
    }) {
        println!("      {line}");
    }
    let pool = app.pool().clone();
    // Given as the family writes addresses; the table's trigger stores the canonical form.
    let addresses: Vec<String> = holders.iter().map(|(a, _)| show(a)).collect();
    sqlx::query("INSERT INTO chainsync.tracked_addresses (address, source) SELECT unnest($1::text[]), 'demo'")
        .bind(&addresses)
        .execute(&pool)
        .await?;
    println!(
        "    {} addresses tracked in chainsync.tracked_addresses ({}, …)",
        addresses.len(),
        addresses
            .iter()
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );

    step(
        4,
        "starting the worker runtime (what `chainsync daemon` runs)",
    );
    let services = app.services().await?;
    let runtime = Runtime::start(
        app.queue.clone(),
        app.registry.clone(),
        services,
        app.config.worker.clone(),
    );
    let stop = CancellationToken::new();
    let maintenance = tokio::spawn(crate::runtime::maintenance::run(
        app.queue.clone(),
        app.config.maintenance.clone(),
        stop.clone(),
    ));

    step(
        5,
        &format!(
            "full sync: sync-balances {{chain_id: {chain_id}, asset_class: erc20}} through Multicall3 at {}",
            show(&multicall)
        ),
    );
    let t = Instant::now();
    app.queue
        .enqueue(chainsync_jobs::NewJob::untyped(
            "sync-balances",
            json!({"chain_id": chain_id, "asset_class": "erc20"}),
        ))
        .await?;
    wait_jobs(&pool, "sync-balances", Duration::from_secs(300)).await?;
    let secs = t.elapsed().as_secs_f64();
    let synced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chainsync.balances WHERE token = $1")
            .bind(&token_text)
            .fetch_one(&pool)
            .await?;
    println!(
        "    {synced} RAT balances stored in {secs:.2}s ({:.0} addresses/s); BROKEN failed per call, not per batch",
        synced as f64 / secs
    );
    summary.add(
        "full sync",
        format!(
            "{synced} balances in {secs:.2}s ({:.0}/s)",
            synced as f64 / secs
        ),
    );

    step(
        6,
        "checking every stored balance against the chain (reconcile-chain, no repair)",
    );
    app.queue
        .enqueue(chainsync_jobs::NewJob::untyped(
            "reconcile-chain",
            json!({"chain_id": chain_id, "token": show(&token), "repair": false}),
        ))
        .await?;
    wait_jobs(&pool, "reconcile-chain", Duration::from_secs(120)).await?;
    let mismatches: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chainsync.balance_mismatches WHERE token = $1")
            .bind(&token_text)
            .fetch_one(&pool)
            .await?;
    println!(
        "    {mismatches} mismatches: every stored balance equals the chain's to the last base unit"
    );
    summary.add("mismatches after full sync", mismatches);

    step(
        7,
        "event-driven sync: a withdrawal on chain, then the app enqueues sync-user-balance in SQL",
    );
    let (from, _) = holders[0];
    let (to, _) = holders[1];
    let before = stored(&pool, chain_id, &token_text, to)
        .await?
        .unwrap_or_default();
    chain
        .transfer_from_holder(token, from, to, devchain::units(1, decimals))
        .await?;
    for who in [from, to] {
        let args = json!({"chain_id": chain_id, "address": show(&who), "token": show(&token)});
        println!(
            "    SELECT chainsync.enqueue('sync-user-balance', '{args}', unique_key => 'demo:{}')",
            show(&who)
        );
        sqlx::query("SELECT chainsync.enqueue('sync-user-balance', $1, unique_key => $2)")
            .bind(args)
            .bind(format!("demo:{}", show(&who)))
            .execute(&pool)
            .await?;
    }
    wait_jobs(&pool, "sync-user-balance", Duration::from_secs(60)).await?;
    let after = stored(&pool, chain_id, &token_text, to)
        .await?
        .unwrap_or_default();
    let chain_now = chain.balance_of(token, to).await?;
    println!(
        "    {}: {before} -> {after} (chain: {chain_now})",
        show(&to)
    );
    summary.add("event-driven sync exact", after == chain_now.to_string());

    step(
        8,
        "reconcile with repair: plant a wrong balance, let reconcile-chain find and fix it",
    );
    let victim = format!("{:#x}", holders[2].0);
    println!(
        "    planted: {} holds 12345 more in chainsync.balances",
        show(&holders[2].0)
    );
    sqlx::query(
        "UPDATE chainsync.balances SET amount = amount + 12345 WHERE token = $1 AND address = $2",
    )
    .bind(&token_text)
    .bind(&victim)
    .execute(&pool)
    .await?;
    chain.mine(1).await?;
    app.queue
        .enqueue(chainsync_jobs::NewJob::untyped(
            "reconcile-chain",
            json!({"chain_id": chain_id, "token": show(&token), "repair": true}),
        ))
        .await?;
    wait_jobs(&pool, "reconcile-chain", Duration::from_secs(120)).await?;
    let repairs: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT address, old_amount::text, new_amount::text, reason FROM chainsync.balance_repairs ORDER BY id",
    )
    .fetch_all(&pool)
    .await?;
    for (a, old, new, reason) in &repairs {
        println!(
            "    repaired {}: {old} -> {new} ({reason})",
            family.show_stored(a)
        );
    }
    summary.add(
        "planted mismatches repaired",
        format!(
            "{} ({})",
            repairs.len(),
            repairs
                .iter()
                .map(|r| family.show_stored(&r.0))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    step(
        9,
        "failures: the node goes away (retries, then dead letter) and a bad job (fatal)",
    );
    node.gate.close();
    let down = app
        .queue
        .enqueue(chainsync_jobs::NewJob {
            max_attempts: Some(3),
            backoff_base_ms: Some(300),
            backoff_cap_ms: Some(1000),
            ..chainsync_jobs::NewJob::untyped(
                "sync-user-balance",
                json!({"chain_id": chain_id, "address": show(&holders[2].0), "token": show(&token)}),
            )
        })
        .await?;
    let fatal: uuid::Uuid = sqlx::query_scalar("SELECT chainsync.enqueue('sync-user-balance', $1)")
        .bind(json!({"chain_id": 999, "address": show(&holders[2].0)}))
        .fetch_one(&pool)
        .await?;
    let t = Instant::now();
    while app.queue.count_dead().await? < 2 {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("jobs did not reach the dead letters");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in [down.id, fatal] {
        let d = app.queue.get_dead(id).await?;
        let last = d
            .errors
            .as_array()
            .and_then(|a| a.last())
            .and_then(|e| e.get("error"))
            .cloned();
        println!(
            "    dead letter {} ({}, {} attempt(s)): {}",
            d.id,
            d.reason,
            d.attempt,
            last.unwrap_or_default()
        );
    }
    summary.add("dead letters", 2);

    step(
        10,
        "the node is back: replay the dead letter (chainsync dlq replay <id>)",
    );
    node.gate.reopen().await?;
    app.queue.replay(down.id).await?;
    wait_jobs(&pool, "sync-user-balance", Duration::from_secs(60)).await?;
    let replayed = app.queue.get_job(down.id).await?;
    println!(
        "    job {} is {} after replay (attempt {})",
        replayed.id, replayed.state, replayed.attempt
    );
    summary.add("replayed and completed", replayed.state == "completed");

    stop.cancel();
    runtime.stop().await;
    let _ = maintenance.await;
    if let Some(standin) = node.standin {
        // What java-tron would have refused (none: every request was one a TRON node serves).
        let refused = standin.refused();
        for r in &refused {
            println!("    refused by the TRON stand-in: {r}");
        }
        summary.add(
            "requests to the TRON stand-in",
            format!(
                "{} eth_call, {} eth_getBlockByNumber, {} refused",
                standin.calls("eth_call"),
                standin.calls("eth_getBlockByNumber"),
                refused.len()
            ),
        );
        standin.shutdown().await?;
    }
    let exact: i64 = sqlx::query_scalar("SELECT count(*) FROM chainsync.balances WHERE token = $1")
        .bind(&token_text)
        .fetch_one(&pool)
        .await?;
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state::text, count(*) FROM chainsync.all_jobs GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    summary.add("RAT balances stored", exact);
    // The holders the walk-through touched, as stored at the end.
    for (who, _) in holders.iter().take(3) {
        summary.add(
            &format!("RAT balance of {}", show(who)),
            stored(&pool, chain_id, &token_text, *who)
                .await?
                .unwrap_or_else(|| "-".into()),
        );
    }
    summary.add(
        "jobs by state",
        states
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    summary.add("dead letters left", app.queue.count_dead().await?);
    summary.add(
        "demo took",
        format!("{:.1}s", started.elapsed().as_secs_f64()),
    );

    println!("\n== summary ==");
    let rows: Vec<Vec<String>> = summary.0.into_iter().map(|(k, v)| vec![k, v]).collect();
    print!("{}", crate::cli::output::table(&["WHAT", "RESULT"], &rows));
    println!(
        "\nThe database {} is kept for a look: psql {}",
        opts.database,
        crate::app::redact_url(&app.config.database_url)
    );
    Ok(())
}
