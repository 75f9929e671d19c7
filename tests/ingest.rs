#![allow(clippy::unwrap_used)]
//! Event ingestion on anvil and a real Postgres: exactly once across runs, reorgs, range
//! shrinking against a node that refuses large ranges, referral counts.

mod common;
use common::{db_url, running::Running};

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use alloy::primitives::{Address, U256};
use axum::{Json, Router, extract::State, routing::post};
use chainsync::{app::App, config::Config};
use chainsync_dev::devchain::{self, DevChain};
use chainsync_jobs::{JobContext, JobMeta};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn app(
    pool: &PgPool,
    rpc: &str,
    token: Address,
    referral: Address,
    initial_range: u64,
) -> App {
    let cfg = Config::from_toml(&format!(
        r#"
database_url = "{}"
[[chains]]
chain_id = 31337
name = "anvil"
rpc_urls = ["{rpc}"]
confirmations = 0
[[tokens]]
chain_id = 31337
symbol = "TST"
address = "{token:#x}"
decimals = 18
asset_class = "erc20"
[[ingest]]
chain_id = 31337
initial_range = {initial_range}
max_range = 5000
contracts = [
  {{ address = "{token:#x}" }},
  {{ address = "{referral:#x}", events = ["ReferralRegistered(address indexed user, address indexed referrer)"] }},
]
"#,
        db_url(pool)
    ))
    .unwrap();
    let app = App::with_pool(cfg, pool.clone()).unwrap();
    app.migrate().await.unwrap();
    app
}

async fn ingest(app: &App) {
    let ctx = JobContext {
        meta: JobMeta {
            id: uuid::Uuid::now_v7(),
            kind: "ingest-events".into(),
            queue: "default".into(),
            attempt: 1,
            max_attempts: 1,
        },
        db: app.pool().clone(),
        enqueuer: std::sync::Arc::new(app.queue.clone()),
        services: app.services().await.unwrap(),
    };
    app.registry
        .run("ingest-events", json!({"chain_id": 31337}), ctx)
        .unwrap()
        .await
        .unwrap();
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every (tx, log index) of the token on the canonical chain.
async fn chain_logs(chain: &DevChain, token: Address) -> Vec<(String, i64)> {
    use alloy::providers::Provider;
    let logs = chain
        .provider()
        .get_logs(
            &alloy::rpc::types::Filter::new()
                .address(token)
                .from_block(0),
        )
        .await
        .unwrap();
    let mut v: Vec<(String, i64)> = logs
        .iter()
        .map(|l| {
            (
                format!("{:#x}", l.transaction_hash.unwrap()),
                l.log_index.unwrap() as i64,
            )
        })
        .collect();
    v.sort();
    v
}

async fn stored_logs(pool: &PgPool, token: Address) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT tx_hash, log_index FROM chainsync.events WHERE contract = $1 ORDER BY 1, 2",
    )
    .bind(format!("{token:#x}"))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn transfers_ingested_exactly_once_across_runs(pool: PgPool) {
    let chain = DevChain::start().await.unwrap();
    chain.install_multicall3().await.unwrap();
    let token = chain.deploy_token("T", "TST", 18).await.unwrap();
    let referral = chain.deploy_referral().await.unwrap();
    let holders = devchain::random_holders(3, 2000, devchain::units(100, 18));
    chain.mint_many(token, &holders).await.unwrap();
    let app = app(&pool, &chain.url(), token, referral, 100).await;
    ingest(&app).await;
    let transfers: Vec<(Address, Address, U256)> = holders
        .windows(2)
        .take(500)
        .map(|w| (w[0].0, w[1].0, U256::from(1u64)))
        .collect();
    chain.holder_transfers(token, &transfers).await.unwrap();
    ingest(&app).await;
    ingest(&app).await; // nothing new: a no-op
    let want = chain_logs(&chain, token).await;
    assert_eq!(want.len(), 2500);
    assert_eq!(stored_logs(&pool, token).await, want);
    // Every touched holder's balance is read at its touched blocks: balances exact, one history
    // row per change (the mint, then each transfer in or out), and no follow-up jobs.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.balances").await,
        2000
    );
    for (h, _) in holders.iter().step_by(40) {
        let stored: String =
            sqlx::query_scalar("SELECT amount::text FROM chainsync.balances WHERE address = $1")
                .bind(format!("{h:#x}"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            stored,
            chain.balance_of(token, *h).await.unwrap().to_string()
        );
    }
    let history = count(&pool, "SELECT count(*) FROM chainsync.balance_changes").await;
    assert!(history >= 2000, "{history}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes WHERE source <> 'log'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'sync-user-balance'"
        )
        .await,
        0
    );
    ingest(&app).await;
    // Replaying from scratch stores nothing twice.
    sqlx::query("DELETE FROM chainsync.ingest_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    ingest(&app).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.events").await,
        2500
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.balance_changes").await,
        history,
        "a replayed range writes no history twice"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_reorg_is_rolled_back_to_the_common_ancestor(pool: PgPool) {
    let chain = DevChain::start().await.unwrap();
    chain.install_multicall3().await.unwrap();
    let token = chain.deploy_token("T", "TST", 18).await.unwrap();
    let referral = chain.deploy_referral().await.unwrap();
    let holders = devchain::random_holders(5, 50, devchain::units(100, 18));
    chain.mint_many(token, &holders).await.unwrap();
    let app = app(&pool, &chain.url(), token, referral, 1000).await;
    ingest(&app).await;
    let snap = chain.snapshot().await.unwrap();
    // Blocks on the old branch: transfers 0→1, then ingested.
    for i in 0..3 {
        chain
            .transfer_from_holder(token, holders[i].0, holders[i + 1].0, U256::from(7u64))
            .await
            .unwrap();
    }
    ingest(&app).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.events").await,
        53
    );
    // Reorg: back to the snapshot, a different history of more blocks.
    assert!(chain.revert(snap).await.unwrap());
    for i in 10..15 {
        chain
            .transfer_from_holder(token, holders[i].0, holders[i + 2].0, U256::from(9u64))
            .await
            .unwrap();
    }
    ingest(&app).await;
    assert_eq!(
        stored_logs(&pool, token).await,
        chain_logs(&chain, token).await
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.events").await,
        55
    );
    // History and balances of the holders of the orphaned transfers follow the canonical chain:
    // no row from an orphaned block is left, every stored balance equals balanceOf.
    let orphaned_rows = count(
        &pool,
        "SELECT count(*) FROM chainsync.balance_changes c WHERE NOT EXISTS (
             SELECT 1 FROM chainsync.events e WHERE e.block_number = c.block_number)",
    )
    .await;
    assert_eq!(orphaned_rows, 0);
    for (h, _) in holders.iter().take(17) {
        let stored: String =
            sqlx::query_scalar("SELECT amount::text FROM chainsync.balances WHERE address = $1")
                .bind(format!("{h:#x}"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            stored,
            chain.balance_of(token, *h).await.unwrap().to_string()
        );
        let last: String = sqlx::query_scalar(
            "SELECT new_amount::text FROM chainsync.balance_changes WHERE address = $1
             ORDER BY block_number DESC LIMIT 1",
        )
        .bind(format!("{h:#x}"))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(last, stored);
    }
}

/// A JSON-RPC proxy in front of anvil that refuses eth_getLogs over `max` blocks like a provider.
async fn strict_proxy(upstream: String, max: u64, refused: Arc<AtomicU64>) -> String {
    #[derive(Clone)]
    struct S {
        upstream: String,
        max: u64,
        refused: Arc<AtomicU64>,
        http: reqwest::Client,
    }
    async fn handle(State(s): State<S>, Json(req): Json<Value>) -> Json<Value> {
        if req["method"] == "eth_getLogs" {
            let p = &req["params"][0];
            let num = |v: &Value| {
                u64::from_str_radix(v.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
                    .unwrap_or(0)
            };
            let (from, to) = (num(&p["fromBlock"]), num(&p["toBlock"]));
            if to >= from && to - from + 1 > s.max {
                s.refused.fetch_add(1, Ordering::SeqCst);
                return Json(
                    json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32005,
                    "message": format!("query returned more than 10000 results. Try with this block range [{:#x}, {:#x}].", from, from + s.max - 1)}}),
                );
            }
        }
        let r: Value = s
            .http
            .post(&s.upstream)
            .json(&req)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Json(r)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let router = Router::new().route("/", post(handle)).with_state(S {
        upstream,
        max,
        refused,
        http: reqwest::Client::new(),
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn ranges_shrink_to_what_the_node_accepts_and_referrals_count_once(pool: PgPool) {
    let chain = DevChain::start().await.unwrap();
    let token = chain.deploy_token("T", "TST", 18).await.unwrap();
    let referral = chain.deploy_referral().await.unwrap();
    let users = devchain::holder_addresses(9, 6);
    // u1 <- u0 (u0 referred by nobody), u2 <- u1, u3 <- u1, u4 <- u2, u5 <- u0
    for (u, r) in [(1, 0), (2, 1), (3, 1), (4, 2), (5, 0)] {
        chain
            .register_referral(referral, users[u], users[r])
            .await
            .unwrap();
    }
    chain.mine(40).await.unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let proxy = strict_proxy(chain.url(), 8, refused.clone()).await;
    let app = app(&pool, &proxy, token, referral, 1000).await;
    ingest(&app).await;
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the proxy never refused a range"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.referrals").await,
        5
    );
    // Replay the same range twice: counts stay right (derived from unique rows).
    for _ in 0..2 {
        sqlx::query("DELETE FROM chainsync.ingest_checkpoints")
            .execute(&pool)
            .await
            .unwrap();
        ingest(&app).await;
    }
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT r.user_address, g.level1_count, g.level2_count FROM chainsync.referrals r
         JOIN chainsync.referral_graph g USING (chain_id, user_address) ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let of = |i: usize| {
        counts
            .iter()
            .find(|c| c.0 == format!("{:#x}", users[i]))
            .map(|c| (c.1, c.2))
    };
    assert_eq!(of(1), Some((2, 1)), "u1 referred u2 and u3; u2 referred u4");
    assert_eq!(of(2), Some((1, 0)));
    let u0_level1: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chainsync.referrals WHERE referrer = $1")
            .bind(format!("{:#x}", users[0]))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(u0_level1, 2);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn live_mode_follows_new_blocks_to_the_balance_rows(pool: PgPool) {
    let chain = DevChain::start().await.unwrap();
    chain.install_multicall3().await.unwrap();
    let token = chain.deploy_token("T", "TST", 18).await.unwrap();
    let referral = chain.deploy_referral().await.unwrap();
    let app = app(&pool, &chain.url(), token, referral, 100).await;
    let running = Running::start(&app).await;
    let holders = devchain::random_holders(9, 20, devchain::units(5, 18));
    chain.mint_many(token, &holders).await.unwrap();
    chain
        .transfer_from_holder(token, holders[0].0, holders[1].0, U256::from(777u64))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT address, amount::text FROM chainsync.balances WHERE chain_id = 31337",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut exact = rows.len() == holders.len();
        for (a, amount) in &rows {
            let on_chain = chain.balance_of(token, a.parse().unwrap()).await.unwrap();
            exact &= *amount == on_chain.to_string();
        }
        if exact {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "live mode did not bring the balances to the chain's: {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    running.stop().await;
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn tracked_only_records_history_of_tracked_holders_only(pool: PgPool) {
    let chain = DevChain::start().await.unwrap();
    chain.install_multicall3().await.unwrap();
    let token = chain.deploy_token("T", "TST", 18).await.unwrap();
    let holders = devchain::random_holders(4, 10, devchain::units(100, 18));
    chain.mint_many(token, &holders).await.unwrap();
    let tracked: Vec<String> = holders[..3]
        .iter()
        .map(|(h, _)| format!("\"{h:#x}\""))
        .collect();
    let cfg = Config::from_toml(&format!(
        r#"
database_url = "{}"
[tracking]
addresses = [{}]
[[chains]]
chain_id = 31337
name = "anvil"
rpc_urls = ["{}"]
confirmations = 0
[[tokens]]
chain_id = 31337
symbol = "TST"
address = "{token:#x}"
decimals = 18
asset_class = "erc20"
[[ingest]]
chain_id = 31337
tracked_only = true
contracts = [{{ address = "{token:#x}" }}]
"#,
        db_url(&pool),
        tracked.join(", "),
        chain.url()
    ))
    .unwrap();
    let app = App::with_pool(cfg, pool.clone()).unwrap();
    app.migrate().await.unwrap();
    ingest(&app).await;
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT address FROM chainsync.balance_changes ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut want: Vec<String> = holders[..3]
        .iter()
        .map(|(h, _)| format!("{h:#x}"))
        .collect();
    want.sort();
    assert_eq!(recorded, want);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.events").await,
        10,
        "every event is still stored"
    );
}
