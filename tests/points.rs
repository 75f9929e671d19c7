#![allow(clippy::unwrap_used)]
//! Balance history and points at the chain level, on anvil with real transfers: an outage of
//! hours of chain time, a reorg, balance changes no log reveals, and windows computed as chain
//! hours close. Expected values are computed in the test from the chain itself (the token's
//! Transfer logs, block timestamps, `balanceOf`), never from rows chainsync wrote.

mod common;
use common::{
    db_url,
    running::Running,
    timeline::{self, HOUR, Timeline, Transfer, reference, times_only},
};
#[allow(dead_code)]
#[path = "chaos/support.rs"]
mod support;

use std::{collections::BTreeMap, time::Duration};

use alloy::{
    primitives::{Address, U256},
    providers::{Provider, ext::AnvilApi},
    rpc::types::Filter,
    sol,
    sol_types::SolEvent,
};
use chainsync::{app::App, config::Config};
use chainsync_dev::devchain::{self, DevChain};
use chainsync_jobs::{NewJob, points::window_of};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

sol!(
    #[sol(rpc)]
    AdminBalanceToken,
    "contracts/out/AdminBalanceToken.json"
);

/// (address, window, old twab, old points, new twab, new points, reason).
type AuditRow = (
    String,
    DateTime<Utc>,
    String,
    String,
    String,
    String,
    String,
);

struct Env {
    chain: DevChain,
    token: Address,
    app: App,
    pool: PgPool,
    holders: Vec<Address>,
    /// Chain time of hour 0 (aligned to the hour).
    t0: u64,
    /// The configuration, for daemon processes.
    toml: String,
}

impl Env {
    async fn new(pool: &PgPool, admin_token: bool, holders: usize) -> Self {
        Self::with_range(pool, admin_token, holders, 500).await
    }

    /// `range`: blocks per `eth_getLogs` (1: one range, and one history write, per block).
    async fn with_range(pool: &PgPool, admin_token: bool, holders: usize, range: u64) -> Self {
        let chain = DevChain::start().await.unwrap();
        chain.install_multicall3().await.unwrap();
        let token = if admin_token {
            let code = AdminBalanceToken::BYTECODE.clone();
            use alloy::network::TransactionBuilder;
            let tx = alloy::rpc::types::TransactionRequest::default()
                .with_from(chain.deployer())
                .with_deploy_code(code);
            chain.send(tx).await.unwrap().contract_address.unwrap()
        } else {
            chain.deploy_token("T", "TST", 18).await.unwrap()
        };
        let toml = format!(
            r#"
database_url = "{}"
[worker]
concurrency = 8
poll_interval = "50ms"
lease = "3s"
heartbeat = "500ms"
shutdown_timeout = "5s"
[maintenance]
rescue_interval = "1s"
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
poll_interval = "50ms"
initial_range = {range}
min_range = 1
max_range = {range}
contracts = [{{ address = "{token:#x}" }}]
[points]
rates = [{{ chain_id = 31337, token = "{token:#x}", rate = "0.25" }}]
"#,
            db_url(pool),
            chain.url()
        );
        let cfg = Config::from_toml(&toml).unwrap();
        let app = App::with_pool(cfg, pool.clone()).unwrap();
        app.migrate().await.unwrap();
        let latest = chain
            .provider()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .unwrap()
            .unwrap()
            .header
            .timestamp;
        let t0 = (latest / HOUR + 2) * HOUR;
        let holders = devchain::holder_addresses(77, holders);
        for h in &holders {
            chain
                .provider()
                .anvil_set_balance(*h, U256::from(10u64).pow(U256::from(18u64)))
                .await
                .unwrap();
        }
        Self {
            chain,
            token,
            app,
            pool: pool.clone(),
            holders,
            t0,
            toml,
        }
    }

    async fn start(&self) -> Running {
        Running::start(&self.app).await
    }

    /// The next block gets chain time `t0 + secs`.
    async fn at(&self, secs: u64) {
        self.chain
            .provider()
            .anvil_set_next_block_timestamp(self.t0 + secs)
            .await
            .unwrap();
    }

    /// An empty block at `t0 + secs`.
    async fn block_at(&self, secs: u64) {
        self.at(secs).await;
        self.chain.provider().evm_mine(None).await.unwrap();
    }

    async fn mint(&self, to: Address, amount: U256) {
        if self.is_admin().await {
            let c = AdminBalanceToken::new(self.token, self.chain.provider());
            let tx = c.mint(to, amount).into_transaction_request();
            self.chain
                .send(tx.from(self.chain.deployer()))
                .await
                .unwrap();
        } else {
            self.chain.mint(self.token, to, amount).await.unwrap();
        }
    }

    async fn is_admin(&self) -> bool {
        let code = self.chain.provider().get_code_at(self.token).await.unwrap();
        code.as_ref() == AdminBalanceToken::DEPLOYED_BYTECODE.as_ref()
    }

    async fn transfer(&self, from: usize, to: usize, amount: u64) {
        self.chain
            .transfer_from_holder(
                self.token,
                self.holders[from],
                self.holders[to],
                U256::from(amount),
            )
            .await
            .unwrap();
    }

    /// Hour 0: a mint per holder at its own second.
    async fn mint_all(&self) {
        for (i, h) in self.holders.clone().iter().enumerate() {
            self.at(60 + 97 * i as u64).await;
            let amount = U256::from(1_000_000_000_000_000_007u128 * (i as u128 + 1));
            self.mint(*h, amount).await;
        }
    }

    /// `n` transfers spread over hour `hour` (pseudo-random pairs and amounts, own seconds).
    async fn transfers_in_hour(&self, hour: u64, n: u64, seed: &mut u64) {
        for k in 0..n {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let from = (*seed >> 33) as usize % self.holders.len();
            let to =
                (from + 1 + (*seed >> 40) as usize % (self.holders.len() - 1)) % self.holders.len();
            let amount = (*seed >> 20) % 900_000_000_000_000_000 + 1;
            self.at(hour * HOUR + 30 + k * (HOUR - 60) / n).await;
            self.transfer(from, to, amount).await;
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until `sql` returns at least `want`.
    async fn wait_for(&self, sql: &str, want: i64, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let n = self.count(sql).await;
            if n >= want {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let errors: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
                    "SELECT kind, state::text, errors FROM chainsync.all_jobs WHERE errors <> '[]'
                     ORDER BY created_at DESC LIMIT 5",
                )
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
                panic!("{what}: {n} of {want} after 90 s; failing jobs: {errors:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn idle(&self) {
        self.wait_for(
            "SELECT (count(*) = 0)::int::int8 FROM chainsync.all_jobs WHERE state IN ('available', 'running')",
            1,
            "queue drained",
        )
        .await;
        assert_eq!(
            self.count("SELECT count(*) FROM chainsync.dead_letters")
                .await,
            0,
            "no job failed for good"
        );
    }

    /// Points rows of window `hour` for the token.
    async fn windows_at(&self, hour: u64) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM chainsync.points_history WHERE token = $1 AND window_start = $2",
        )
        .bind(format!("{:#x}", self.token))
        .bind(self.time(hour * HOUR))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    fn time(&self, secs: u64) -> DateTime<Utc> {
        DateTime::from_timestamp((self.t0 + secs) as i64, 0).unwrap()
    }

    /// From the chain: every holder's balance after each block where its balance changed,
    /// derived from the token's Transfer logs alone, with the block's timestamp.
    async fn log_timeline(&self) -> Timeline {
        timeline::log_timeline(&self.chain, self.token).await
    }

    /// History rows of the token as stored: holder → (block, amount, source).
    async fn stored_history(&self) -> BTreeMap<Address, Vec<(u64, u128, String)>> {
        timeline::stored_history(&self.pool, self.token)
            .await
            .into_iter()
            .map(|(a, rows)| {
                let rows = rows.into_iter().map(|r| (r.block, r.new, r.source));
                (a, rows.collect())
            })
            .collect()
    }

    /// Stored (holder, window start) → (twab, points) of windows `hours`.
    async fn stored_points(
        &self,
        hours: std::ops::Range<u64>,
    ) -> BTreeMap<(Address, DateTime<Utc>), (u128, u128)> {
        timeline::stored_points(
            &self.pool,
            self.token,
            self.time(hours.start * HOUR),
            self.time(hours.end * HOUR),
        )
        .await
    }
}

/// The history of every holder, as stored, equals the log-derived timeline: same blocks, same
/// amounts, all found through logs.
async fn assert_history_follows_logs(env: &Env) {
    let want = env.log_timeline().await;
    let got = env.stored_history().await;
    assert_eq!(got.len(), want.len(), "one history per holder");
    for (who, series) in &want {
        let stored = got.get(who).cloned().unwrap_or_default();
        let stored_blocks: Vec<(u64, u128)> = stored.iter().map(|r| (r.0, r.1)).collect();
        let want_blocks: Vec<(u64, u128)> = series.iter().map(|r| (r.0, r.2)).collect();
        assert_eq!(stored_blocks, want_blocks, "history of {who:#x}");
        assert!(stored.iter().all(|r| r.2 == "log"), "{who:#x}: {stored:?}");
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn outage_of_hours_every_window_equals_the_logs(pool: PgPool) {
    let env = Env::new(&pool, false, 20).await;
    let running = env.start().await;
    let mut seed = 5u64;
    env.mint_all().await;
    env.transfers_in_hour(1, 12, &mut seed).await;
    env.block_at(2 * HOUR).await;
    // Window 0 and 1 close while the daemon runs.
    env.wait_for(
        &format!(
            "SELECT count(*) FROM chainsync.points_history WHERE window_start = '{}'",
            env.time(HOUR).to_rfc3339()
        ),
        20,
        "window 1 computed live",
    )
    .await;
    env.idle().await;
    running.stop().await;

    // Down for hours 2–5 of chain time, transfers all along.
    for hour in 2..6 {
        env.transfers_in_hour(hour, 10, &mut seed).await;
    }
    env.transfers_in_hour(6, 3, &mut seed).await;
    env.block_at(7 * HOUR + 5).await;
    let before_restart = env.windows_at(3).await;
    assert_eq!(before_restart, 0, "nothing ran during the outage");

    let running = env.start().await;
    env.wait_for(
        &format!(
            "SELECT count(*) FROM chainsync.points_history WHERE window_start = '{}'",
            env.time(6 * HOUR).to_rfc3339()
        ),
        20,
        "window 6 computed after the restart",
    )
    .await;
    env.idle().await;
    running.stop().await;

    assert_history_follows_logs(&env).await;
    let timeline = times_only(&env.log_timeline().await);
    let windows: Vec<DateTime<Utc>> = (0..7).map(|h| env.time(h * HOUR)).collect();
    let want = reference(&timeline, &windows);
    assert_eq!(want.len(), 140, "20 holders × 7 windows");
    let got = env.stored_points(0..7).await;
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .map(|(k, v)| (k.0, k.1, *v, got.get(k).copied()))
        .collect();
    assert!(wrong.is_empty(), "{} of 140 wrong: {wrong:?}", wrong.len());
    assert_eq!(got.len(), 140);
    // Balances end exact.
    for h in &env.holders {
        let stored: String = sqlx::query_scalar(
            "SELECT amount::text FROM chainsync.balances WHERE token = $1 AND address = $2",
        )
        .bind(format!("{:#x}", env.token))
        .bind(format!("{h:#x}"))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            stored,
            env.chain
                .balance_of(env.token, *h)
                .await
                .unwrap()
                .to_string()
        );
    }
    // Replaying the whole range writes nothing twice and changes no window.
    let rows = env
        .count("SELECT count(*) FROM chainsync.balance_changes")
        .await;
    sqlx::query("UPDATE chainsync.ingest_checkpoints SET block_number = 0")
        .execute(&pool)
        .await
        .unwrap();
    let running = env.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.idle().await;
    running.stop().await;
    assert_eq!(
        env.count("SELECT count(*) FROM chainsync.balance_changes")
            .await,
        rows
    );
    assert_eq!(env.stored_points(0..7).await, got);
    assert_eq!(
        env.count("SELECT count(*) FROM chainsync.points_audit")
            .await,
        0,
        "no credited window changed"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn windows_appear_as_chain_hours_close(pool: PgPool) {
    let env = Env::new(&pool, false, 6).await;
    // Two daemons' worth of workers and followers.
    let running = env.start().await;
    let other = env.start().await;
    let mut seed = 9u64;
    env.mint_all().await;
    for hour in 1..5u64 {
        env.transfers_in_hour(hour, 4, &mut seed).await;
        // The first block of the next hour closes this one.
        env.block_at((hour + 1) * HOUR + 1).await;
        let started = std::time::Instant::now();
        env.wait_for(
            &format!(
                "SELECT count(*) FROM chainsync.points_history WHERE window_start = '{}'",
                env.time(hour * HOUR).to_rfc3339()
            ),
            6,
            &format!("window {hour} computed as it closed"),
        )
        .await;
        println!(
            "window {hour}: computed {:?} after it closed",
            started.elapsed()
        );
        assert_eq!(
            env.windows_at(hour + 1).await,
            0,
            "an open window is never computed"
        );
    }
    env.idle().await;
    // The project's own freshness checks see the points as current.
    let services = env.app.services().await.unwrap();
    let lag = chainsync_jobs::points::backfill::lag(&services, Some(31337), Utc::now())
        .await
        .unwrap();
    assert_eq!(lag[0].lagging_addresses, 0, "{lag:?}");
    let health = chainsync::health::report(&env.app).await;
    assert_eq!(health.points_lagging_addresses, Some(0), "{health:?}");
    running.stop().await;
    other.stop().await;
    // Each window was computed once, by one pass, for every holder.
    let passes: Vec<i64> = sqlx::query_scalar(
        "SELECT count(DISTINCT job_id) FROM chainsync.points_history GROUP BY window_start",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(passes, vec![1; 5], "one pass per window");
    let timeline = times_only(&env.log_timeline().await);
    let windows: Vec<DateTime<Utc>> = (0..5).map(|h| env.time(h * HOUR)).collect();
    assert_eq!(
        env.stored_points(0..5).await,
        reference(&timeline, &windows)
    );
    // Each window once: one forward pass per hour, no double work.
    assert_eq!(
        env.count("SELECT count(*) FROM chainsync.points_history")
            .await,
        30
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_reorg_replaces_history_and_recomputes_points_with_an_audit(pool: PgPool) {
    let env = Env::new(&pool, false, 8).await;
    let running = env.start().await;
    env.mint_all().await;
    for (k, (from, to)) in [(0, 7), (5, 2), (6, 4)].iter().enumerate() {
        env.at(HOUR + 100 + 200 * k as u64).await;
        env.transfer(*from, *to, 300_000_000_000_000_000).await;
    }
    env.block_at(HOUR + 1800).await;
    env.idle().await;
    running.stop().await;
    let snap = env.chain.snapshot().await.unwrap();
    // The branch that will be orphaned: transfers late in hour 1, hour 1 and 2 closed.
    let running = env.start().await;
    for (k, (from, to)) in [(0, 1), (2, 3), (4, 5)].iter().enumerate() {
        env.at(HOUR + 2000 + 100 * k as u64).await;
        env.transfer(*from, *to, 500_000_000_000_000_000).await;
    }
    env.block_at(3 * HOUR + 10).await;
    env.wait_for(
        &format!(
            "SELECT count(*) FROM chainsync.points_history WHERE window_start = '{}'",
            env.time(2 * HOUR).to_rfc3339()
        ),
        8,
        "windows 1 and 2 computed on the first branch",
    )
    .await;
    env.idle().await;
    running.stop().await;
    let before = env.stored_points(0..3).await;
    let orphaned_history = env.stored_history().await;

    // Reorg: back to the snapshot, other transfers at other times, a longer chain.
    assert!(env.chain.revert(snap).await.unwrap());
    for (k, (from, to)) in [(6, 7), (1, 0), (3, 6)].iter().enumerate() {
        env.at(HOUR + 2500 + 150 * k as u64).await;
        env.transfer(*from, *to, 700_000_000_000_000_000).await;
    }
    for k in 0..6 {
        env.block_at(2 * HOUR + 100 + k).await;
    }
    env.block_at(3 * HOUR + 20).await;
    let running = env.start().await;
    env.wait_for(
        "SELECT count(*) FROM chainsync.points_audit",
        1,
        "recomputed windows audited",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.idle().await;
    running.stop().await;

    assert_history_follows_logs(&env).await;
    assert_ne!(env.stored_history().await, orphaned_history);
    let timeline = times_only(&env.log_timeline().await);
    let windows: Vec<DateTime<Utc>> = (0..3).map(|h| env.time(h * HOUR)).collect();
    let want = reference(&timeline, &windows);
    let after = env.stored_points(0..3).await;
    assert_eq!(after, want, "points follow the canonical chain");
    // Every window whose value changed has an audit row with the old and new values.
    let audit: Vec<AuditRow> = sqlx::query_as(
        "SELECT address, window_start, old_twab::text, old_points::text, new_twab::text,
                    new_points::text, reason
             FROM chainsync.points_audit ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(k) != Some(v))
        .collect();
    assert!(!changed.is_empty(), "the reorg changed credited windows");
    assert_eq!(audit.len(), changed.len(), "{audit:?}");
    for ((who, w), old) in changed {
        let new = after[&(*who, *w)];
        let row = audit
            .iter()
            .find(|a| a.0 == format!("{who:#x}") && a.1 == *w)
            .unwrap_or_else(|| panic!("no audit row for {who:#x} at {w}"));
        assert_eq!(
            (&row.2, &row.3, &row.4, &row.5),
            (
                &old.0.to_string(),
                &old.1.to_string(),
                &new.0.to_string(),
                &new.1.to_string()
            )
        );
        assert!(!row.6.is_empty());
    }
    assert!(
        audit.iter().any(|a| a.6.contains("reorg")),
        "the reorg is named: {audit:?}"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn balance_changes_without_a_log_are_found_by_reconcile_and_marked(pool: PgPool) {
    let env = Env::new(&pool, true, 4).await;
    let running = env.start().await;
    env.mint_all().await;
    env.block_at(HOUR + 10).await;
    env.wait_for(
        &format!(
            "SELECT count(*) FROM chainsync.points_history WHERE window_start = '{}'",
            env.time(0).to_rfc3339()
        ),
        4,
        "window 0 computed",
    )
    .await;
    let c = AdminBalanceToken::new(env.token, env.chain.provider());
    // Hour 1: an admin correction of holder 0, then every balance rebased ×1.5; no logs.
    env.at(HOUR + 600).await;
    env.chain
        .send(
            c.setBalance(env.holders[0], U256::from(123_456_789u64))
                .into_transaction_request()
                .from(env.chain.deployer()),
        )
        .await
        .unwrap();
    env.at(HOUR + 1200).await;
    env.chain
        .send(
            c.rebase(U256::from(1_500_000_000_000_000_000u128))
                .into_transaction_request()
                .from(env.chain.deployer()),
        )
        .await
        .unwrap();
    env.block_at(HOUR + 1800).await;
    env.idle().await;
    // Ingestion saw no log: the history still has the minted amounts only.
    assert_history_follows_logs(&env).await;
    let reconcile_block = env.chain.block_number().await.unwrap();
    let seen_at = env.time(HOUR + 1800);
    env.app
        .queue
        .enqueue(NewJob::untyped(
            "reconcile-chain",
            json!({"chain_id": 31337, "token": "TST", "repair": true}),
        ))
        .await
        .unwrap();
    env.wait_for(
        "SELECT count(*) FROM chainsync.balance_changes WHERE source = 'reconcile'",
        4,
        "reconcile recorded the changes",
    )
    .await;
    env.block_at(2 * HOUR + 10).await;
    env.wait_for(
        &format!(
            "SELECT count(*) FROM chainsync.points_history WHERE window_start = '{}'",
            env.time(HOUR).to_rfc3339()
        ),
        4,
        "window 1 computed",
    )
    .await;
    env.idle().await;
    running.stop().await;

    // Expected: the log timeline, plus each holder's balanceOf at the reconcile block, recorded
    // at that block's time.
    let mut timeline = times_only(&env.log_timeline().await);
    for h in &env.holders {
        let on_chain: U256 = c
            .balanceOf(*h)
            .block(reconcile_block.into())
            .call()
            .await
            .unwrap();
        timeline
            .get_mut(h)
            .unwrap()
            .push((seen_at, on_chain.to::<u128>()));
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT block_number, new_amount::text, source FROM chainsync.balance_changes
             WHERE address = $1 AND source <> 'log'",
        )
        .bind(format!("{h:#x}"))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            rows,
            vec![(
                reconcile_block as i64,
                on_chain.to_string(),
                "reconcile".to_string()
            )],
            "{h:#x}"
        );
        let stored: String =
            sqlx::query_scalar("SELECT amount::text FROM chainsync.balances WHERE address = $1")
                .bind(format!("{h:#x}"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(stored, on_chain.to_string(), "repaired");
    }
    let windows: Vec<DateTime<Utc>> = (0..2).map(|h| env.time(h * HOUR)).collect();
    assert_eq!(
        env.stored_points(0..2).await,
        reference(&timeline, &windows)
    );
    assert_eq!(window_of(seen_at), env.time(HOUR));
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_rebuild_killed_with_sigkill_resumes_and_ends_exact(pool: PgPool) {
    // One block per range: the rebuild after the outage is many small steps to kill in between.
    let env = Env::with_range(&pool, false, 12, 1).await;
    let mut seed = 13u64;
    env.mint_all().await;
    for hour in 1..6 {
        env.transfers_in_hour(hour, 8, &mut seed).await;
    }
    env.block_at(6 * HOUR + 5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = support::Daemon::start(dir.path(), "first", &env.toml);
    env.wait_for(
        "SELECT count(*) FROM chainsync.balance_changes",
        20,
        "part of the history rebuilt",
    )
    .await;
    first.kill9();
    let partial = env
        .count("SELECT count(*) FROM chainsync.balance_changes")
        .await;
    let mut second = support::Daemon::start(dir.path(), "second", &env.toml);
    env.wait_for(
        &format!(
            "SELECT count(*) FROM chainsync.points_history WHERE window_start = '{}'",
            env.time(5 * HOUR).to_rfc3339()
        ),
        12,
        "window 5 computed after the restart",
    )
    .await;
    env.idle().await;
    second.assert_running();
    second.stop();
    assert_history_follows_logs(&env).await;
    let timeline = times_only(&env.log_timeline().await);
    let total: usize = timeline.values().map(Vec::len).sum();
    assert!(
        (partial as usize) < total,
        "killed mid-rebuild: {partial} of {total}"
    );
    let windows: Vec<DateTime<Utc>> = (0..6).map(|h| env.time(h * HOUR)).collect();
    assert_eq!(
        env.stored_points(0..6).await,
        reference(&timeline, &windows)
    );
    println!("killed after {partial} of {total} history rows; resumed and exact");
}

/// One ingested range in which a balance is set without a log: the logs no longer explain that
/// holder's reads, so its history comes from reads at each block a log touched it; the other
/// holders' from the logs checked against two reads. Either way every row equals `balanceOf` at
/// its block, read here independently.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn history_inside_one_range_equals_balance_of_at_every_touched_block(pool: PgPool) {
    let env = Env::new(&pool, true, 3).await;
    env.mint_all().await;
    env.at(HOUR).await;
    env.transfer(0, 1, 5_000).await;
    env.at(HOUR + 60).await;
    let c = AdminBalanceToken::new(env.token, env.chain.provider());
    env.chain
        .send(
            c.setBalance(env.holders[0], U256::from(777_777_777u64))
                .into_transaction_request()
                .from(env.chain.deployer()),
        )
        .await
        .unwrap();
    env.at(HOUR + 120).await;
    env.transfer(1, 0, 2_000).await;
    env.at(HOUR + 180).await;
    env.transfer(2, 1, 3_000).await;
    env.at(HOUR + 240).await;
    env.transfer(1, 2, 1_000).await;
    let head = env.chain.block_number().await.unwrap();

    // From the chain: the blocks where a Transfer log touched each holder.
    let logs = env
        .chain
        .provider()
        .get_logs(
            &Filter::new()
                .address(env.token)
                .event_signature(Transfer::SIGNATURE_HASH)
                .from_block(0),
        )
        .await
        .unwrap();
    // One range from the first transfer (Multicall3 exists before it, not at genesis).
    let first = logs.iter().filter_map(|l| l.block_number).min().unwrap();
    let services = env.app.services().await.unwrap();
    let sink =
        chainsync_jobs::domain::Domain::ingest_sink(std::sync::Arc::new(env.app.queue.clone()));
    let report = chainsync_jobs::ingest::ingest_pass(
        &services,
        &sink,
        31337,
        Some(head),
        chainsync_jobs::ingest::PassOptions {
            from_block: Some(first),
            progress: None,
        },
    )
    .await
    .unwrap();
    assert!(report.caught_up, "{report:?}");
    let mut touched: BTreeMap<Address, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for log in &logs {
        let t = Transfer::decode_log_data(log.data()).unwrap();
        for who in [t.from, t.to] {
            if !who.is_zero() {
                touched
                    .entry(who)
                    .or_default()
                    .insert(log.block_number.unwrap());
            }
        }
    }
    // Everyone is read before the range and at its end; holder 0 (mint, two transfers), whose
    // reads the logs do not explain, also at its three blocks.
    assert_eq!(touched[&env.holders[0]].len(), 3);
    assert_eq!(report.history_reads, 3 + 3 + 3, "{report:?}");
    let stored = env.stored_history().await;
    for (who, blocks) in &touched {
        let mut want = Vec::new();
        let mut prev: Option<u128> = None;
        for b in blocks {
            let v: U256 = c.balanceOf(*who).block((*b).into()).call().await.unwrap();
            let v: u128 = v.to();
            if prev != Some(v) {
                want.push((*b, v, "log".to_string()));
            }
            prev = Some(v);
        }
        assert_eq!(stored.get(who), Some(&want), "history of {who:#x}");
        let now: U256 = c.balanceOf(*who).block(head.into()).call().await.unwrap();
        let row: (String, i64) = sqlx::query_as(
            "SELECT amount::text, block_number FROM chainsync.balances WHERE address = $1",
        )
        .bind(format!("{who:#x}"))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(row, (now.to_string(), head as i64), "balance of {who:#x}");
    }
}
