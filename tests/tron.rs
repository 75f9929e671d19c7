#![allow(clippy::unwrap_used)]
//! TRON chains (`family = "tron"`) on a real Postgres, with anvil behind a stand-in that answers
//! like java-tron's JSON-RPC (`tron/standin.rs`: `latest`-only calls, hex-only addresses, strict
//! call objects, java-tron's block shape). Every chainsync request goes through it and none may
//! be refused: that is what shows the requests are ones a TRON node serves. Addresses are given
//! in TRON's forms (base58check `T…`, `41…` hex) in config, SQL, jobs and HTTP.

mod common;
use common::db_url;

mod tron {
    pub mod standin;
}
use tron::standin::StandIn;

use std::net::SocketAddr;

use alloy::{
    primitives::{Address, U256},
    providers::Provider,
};
use chainsync::{
    app::App,
    config::Config,
    http::{HttpState, metrics_handle, serve},
};
use chainsync_dev::{devchain::contracts::TestToken, scenario::TokenChain};
use chainsync_jobs::{
    JobContext, JobMeta,
    ids::{ChainFamily, tron_base58},
};
use serde_json::{Value, json};
use sqlx::PgPool;

const MULTICALL3: Address = chainsync_jobs::settings::MULTICALL3;

fn b58(a: &Address) -> String {
    tron_base58(a)
}

struct Env {
    s: TokenChain,
    standin: StandIn,
    app: App,
}

/// anvil with a 6-decimal token minted to `holders` holders and some transfers between them; the
/// stand-in in front; an app whose chain is `family = "tron"`, with the token and Multicall3
/// named in base58check (or without a Multicall3: JSON-RPC batches).
async fn setup(pool: &PgPool, holders: usize, multicall: bool, ingest: bool) -> Env {
    let s = TokenChain::builder("USDT")
        .decimals(6)
        .holders(holders)
        .start()
        .await
        .unwrap();
    let transfers: Vec<(Address, Address, U256)> = s
        .holders
        .iter()
        .zip(s.holders.iter().skip(1))
        .step_by(3)
        .map(|(a, b)| (a.0, b.0, a.1 / U256::from(3)))
        .collect();
    s.chain.holder_transfers(s.token, &transfers).await.unwrap();
    let standin = StandIn::start(&s.chain.url()).await;
    let ingest = if ingest {
        format!(
            "[[ingest]]\nchain_id = 31337\ninitial_range = 3\nmax_range = 50\nlive = false\n\
             contracts = [{{ address = \"{}\" }}]\n",
            b58(&s.token)
        )
    } else {
        String::new()
    };
    let mc = if multicall {
        format!("multicall_address = \"{}\"\n", b58(&MULTICALL3))
    } else {
        String::new()
    };
    let config = format!(
        r#"
database_url = "{}"
[[chains]]
chain_id = 31337
name = "tron"
family = "tron"
rpc_urls = ["{}"]
confirmations = 0
multicall_batch_size = 25
{mc}
[[tokens]]
chain_id = 31337
symbol = "USDT"
address = "{}"
decimals = 6
asset_class = "major"
[[tokens]]
chain_id = 31337
symbol = "TRX"
decimals = 6
asset_class = "native"
{ingest}"#,
        db_url(pool),
        standin.url,
        b58(&s.token),
    );
    let app = App::with_pool(Config::from_toml(&config).unwrap(), pool.clone()).unwrap();
    app.migrate().await.unwrap();
    // Tracked in TRON's forms straight from SQL: half base58check, half 41-prefixed hex.
    for (i, (h, _)) in s.holders.iter().enumerate() {
        let given = if i % 2 == 0 {
            b58(h)
        } else {
            format!("41{}", hex::encode(h))
        };
        sqlx::query("INSERT INTO chainsync.tracked_addresses (address) VALUES ($1)")
            .bind(given)
            .execute(pool)
            .await
            .unwrap();
    }
    Env { s, standin, app }
}

impl Env {
    async fn run(&self, kind: &str, args: Value) {
        let ctx = JobContext {
            meta: JobMeta {
                id: uuid::Uuid::now_v7(),
                kind: kind.into(),
                queue: "default".into(),
                attempt: 1,
                max_attempts: 1,
            },
            db: self.app.pool().clone(),
            enqueuer: std::sync::Arc::new(self.app.queue.clone()),
            services: self.app.services().await.unwrap(),
        };
        let r = self
            .app
            .registry
            .run(kind, args.clone(), ctx)
            .unwrap()
            .await;
        assert!(r.is_ok(), "{kind} {args}: {r:?}");
    }

    async fn stored(&self, token: &str, holder: &Address) -> Option<(String, i64, String)> {
        sqlx::query_as(
            "SELECT amount::text, block_number, block_hash FROM chainsync.balances
             WHERE token = $1 AND address = $2",
        )
        .bind(token)
        .bind(format!("{holder:#x}"))
        .fetch_optional(self.app.pool())
        .await
        .unwrap()
    }

    fn token(&self) -> String {
        format!("{:#x}", self.s.token)
    }

    /// No request was refused by the stand-in.
    fn assert_tron_compatible(&self) {
        let refused = self.standin.refused();
        assert!(
            refused.is_empty(),
            "refused by the TRON stand-in: {refused:#?}"
        );
    }

    /// The block a stored row names is a real block of the chain, with that hash.
    async fn assert_real_block(&self, number: i64, hash: &str) {
        let b = self
            .s
            .chain
            .provider()
            .get_block_by_number((number as u64).into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(format!("{:#x}", b.header.hash), hash, "block {number}");
    }
}

async fn check_balances_sync_and_reconcile(env: &Env) {
    let s = &env.s;
    env.run("sync-balances", json!({"chain_id": 31337, "token": "USDT"}))
        .await;
    env.run(
        "sync-balances",
        json!({"chain_id": 31337, "asset_class": "native"}),
    )
    .await;
    for (h, _) in &s.holders {
        let (amount, block, hash) = env.stored(&env.token(), h).await.unwrap();
        assert_eq!(
            amount,
            s.chain.balance_of(s.token, *h).await.unwrap().to_string()
        );
        env.assert_real_block(block, &hash).await;
        let (trx, _, _) = env.stored("native", h).await.unwrap();
        assert_eq!(trx, s.chain.eth_balance(*h).await.unwrap().to_string());
    }

    // An event-driven sync of one holder named in base58check, after a transfer.
    let (a, b) = (s.holders[0].0, s.holders[1].0);
    s.chain
        .transfer_from_holder(s.token, a, b, U256::from(777u64))
        .await
        .unwrap();
    let head = s.chain.block_number().await.unwrap() as i64;
    env.run(
        "sync-user-balance",
        json!({"chain_id": 31337, "address": b58(&b), "token": b58(&s.token)}),
    )
    .await;
    let (amount, block, hash) = env.stored(&env.token(), &b).await.unwrap();
    assert_eq!(
        amount,
        s.chain.balance_of(s.token, b).await.unwrap().to_string()
    );
    assert!(block >= head, "read at {block}, the transfer was in {head}");
    env.assert_real_block(block, &hash).await;

    // Reconcile at the head: a planted difference is found and repaired.
    let victim = s.holders[2].0;
    sqlx::query(
        "UPDATE chainsync.balances SET amount = amount + 5 WHERE token = $1 AND address = $2",
    )
    .bind(env.token())
    .bind(format!("{victim:#x}"))
    .execute(env.app.pool())
    .await
    .unwrap();
    env.run(
        "reconcile-chain",
        json!({"chain_id": 31337, "token": "USDT", "repair": true}),
    )
    .await;
    let (address, diff, mblock, mhash): (String, String, i64, String) = sqlx::query_as(
        "SELECT address, difference::text, block_number, block_hash FROM chainsync.balance_mismatches",
    )
    .fetch_one(env.app.pool())
    .await
    .unwrap();
    assert_eq!((address, diff), (format!("{victim:#x}"), "-5".to_string()));
    env.assert_real_block(mblock, &mhash).await;
    let (amount, _, _) = env.stored(&env.token(), &victim).await.unwrap();
    assert_eq!(
        amount,
        s.chain
            .balance_of(s.token, victim)
            .await
            .unwrap()
            .to_string()
    );
    env.assert_tron_compatible();
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn tron_balances_through_multicall_at_latest(pool: PgPool) {
    let env = setup(&pool, 60, true, false).await;
    check_balances_sync_and_reconcile(&env).await;
    assert!(env.standin.calls("eth_call") > 0);
    assert_eq!(
        env.standin.calls("eth_getBalance"),
        0,
        "native through Multicall3"
    );

    // The stand-in itself refuses what java-tron refuses (else the checks above prove nothing).
    let http = reqwest::Client::new();
    let call =
        |params: Value| json!({"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": params});
    let to = format!("{:#x}", env.s.token);
    for bad in [
        call(json!([{"to": to, "data": "0x"}, "0x1"])),
        call(json!([{"to": to, "data": "0x"}, {"blockHash": format!("0x{}", "00".repeat(32))}])),
        call(json!([{"to": b58(&env.s.token), "data": "0x"}, "latest"])),
        call(json!([{"to": to, "input": "0x"}, "latest"])),
    ] {
        let r: Value = http
            .post(&env.standin.url)
            .json(&bad)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r["error"].is_object(), "{bad} was answered: {r}");
    }
    assert_eq!(env.standin.refused().len(), 4);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn tron_balances_through_json_rpc_batches(pool: PgPool) {
    let env = setup(&pool, 40, false, false).await;
    check_balances_sync_and_reconcile(&env).await;
    // One eth_call per holder and token, one eth_getBalance per holder: no Multicall3.
    assert!(env.standin.calls("eth_call") >= 40);
    assert!(env.standin.calls("eth_getBalance") >= 40);
}

/// Every history row of `holder` equals `balanceOf` at its block (read from anvil directly,
/// which keeps history), and the newest equals the stored balance and the chain now.
async fn assert_history_exact(env: &Env, holder: Address) -> usize {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT block_number, new_amount::text, source FROM chainsync.balance_changes
         WHERE token = $1 AND address = $2 ORDER BY block_number",
    )
    .bind(env.token())
    .bind(format!("{holder:#x}"))
    .fetch_all(env.app.pool())
    .await
    .unwrap();
    let erc20 = TestToken::new(env.s.token, env.s.chain.provider());
    for (n, amount, source) in &rows {
        let at: U256 = erc20
            .balanceOf(holder)
            .block((*n as u64).into())
            .call()
            .await
            .unwrap();
        assert_eq!(
            amount,
            &at.to_string(),
            "{holder:#x} at block {n} ({source})"
        );
    }
    let now = env.s.chain.balance_of(env.s.token, holder).await.unwrap();
    assert_eq!(
        rows.last().map(|r| r.1.clone()),
        Some(now.to_string()),
        "{holder:#x}"
    );
    let (stored, _, _) = env.stored(&env.token(), &holder).await.unwrap();
    assert_eq!(stored, now.to_string(), "{holder:#x}");
    rows.len()
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn tron_ingestion_derives_history_from_transfers(pool: PgPool) {
    // Ingested from block 0, so every holder's history starts at the token's deployment.
    let env = setup(&pool, 12, true, true).await;
    let s = &env.s;
    let h: Vec<Address> = s.holders.iter().map(|x| x.0).collect();
    // Transfers in blocks of their own, some holders several times.
    for (from, to, v) in [(0, 5, 11u64), (5, 7, 3), (7, 0, 1), (0, 5, 2)] {
        s.chain
            .transfer_from_holder(s.token, h[from], h[to], U256::from(v))
            .await
            .unwrap();
    }
    env.run("ingest-events", json!({"chain_id": 31337})).await;
    let rows: usize = {
        let mut n = 0;
        for a in &h {
            n += assert_history_exact(&env, *a).await;
        }
        n
    };
    assert!(rows >= h.len() + 4, "{rows} history rows");
    let checkpoint: i64 =
        sqlx::query_scalar("SELECT block_number FROM chainsync.ingest_checkpoints")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(checkpoint as u64, s.chain.block_number().await.unwrap());

    // A sync at the head (a read row where it differs, none where it does not), more transfers,
    // a replayed range: still exact, nothing written twice.
    env.run(
        "sync-user-balance",
        json!({"chain_id": 31337, "address": b58(&h[5]), "token": "USDT"}),
    )
    .await;
    for (from, to, v) in [(5, 9, 4u64), (9, 5, 1)] {
        s.chain
            .transfer_from_holder(s.token, h[from], h[to], U256::from(v))
            .await
            .unwrap();
    }
    env.run("ingest-events", json!({"chain_id": 31337})).await;
    let before: i64 = common::count(&pool, "SELECT count(*) FROM chainsync.balance_changes").await;
    sqlx::query("UPDATE chainsync.ingest_checkpoints SET block_number = block_number - 4")
        .execute(&pool)
        .await
        .unwrap();
    env.run("ingest-events", json!({"chain_id": 31337})).await;
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM chainsync.balance_changes").await,
        before,
        "a replayed range wrote history twice"
    );
    for a in &h {
        assert_history_exact(&env, *a).await;
    }
    assert!(env.standin.calls("eth_getLogs") > 0);
    env.assert_tron_compatible();
}

/// Base58check addresses through the CLI, SQL and HTTP, shown in base58check for TRON chains.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn tron_addresses_through_cli_sql_and_http(pool: PgPool) {
    let env = setup(&pool, 3, true, false).await;
    let usdt = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t";
    let typo = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u";
    // The CLI: the interface of the issue, with chain 728126428 in the config.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tron.toml");
    std::fs::write(
        &cfg,
        "[[chains]]\nchain_id = 728126428\nname = \"tron\"\nfamily = \"tron\"\n\
         rpc_urls = [\"http://127.0.0.1:1/jsonrpc\"]\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_chainsync");
    let enqueue = |address: &str| {
        std::process::Command::new(bin)
            .arg("--database-url")
            .arg(db_url(&pool))
            .arg("--config")
            .arg(&cfg)
            .args(["enqueue", "sync-user-balance", "--args"])
            .arg(format!(
                r#"{{"chain_id": 728126428, "address": "{address}"}}"#
            ))
            .output()
            .unwrap()
    };
    let ok = enqueue(usdt);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = enqueue(typo);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("address") && err.contains("checksum is wrong"),
        "{err}"
    );
    assert_eq!(
        common::count(
            &pool,
            "SELECT count(*) FROM chainsync.jobs WHERE kind = 'sync-user-balance'"
        )
        .await,
        1
    );
    // `track add` in both forms; a typo refused.
    let track = |a: &str| {
        std::process::Command::new(bin)
            .arg("--database-url")
            .arg(db_url(&pool))
            .args(["track", "add", a])
            .output()
            .unwrap()
    };
    assert!(track(usdt).status.success());
    assert!(
        track("41a614f803b6fd780986a42c78ec9c7f77e6ded13c")
            .status
            .success()
    );
    let t = track(typo);
    assert!(!t.status.success());
    assert!(String::from_utf8_lossy(&t.stderr).contains("checksum"));
    assert_eq!(
        common::count(
            &pool,
            "SELECT count(*) FROM chainsync.tracked_addresses
             WHERE address = '0xa614f803b6fd780986a42c78ec9c7f77e6ded13c'"
        )
        .await,
        1
    );
    // SQL: a mistyped address in tracked_addresses is refused by name of the problem.
    let e = sqlx::query("INSERT INTO chainsync.tracked_addresses (address) VALUES ($1)")
        .bind(typo)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("checksum is wrong"), "{e}");

    // The SQL function takes a base58check holder; the job reads it through the stand-in.
    let holder = env.s.holders[0].0;
    sqlx::query("SELECT chainsync.enqueue('sync-user-balance', $1::jsonb)")
        .bind(json!({"chain_id": 31337, "address": b58(&holder)}))
        .execute(&pool)
        .await
        .unwrap();
    let args: Value = sqlx::query_scalar(
        "SELECT args FROM chainsync.jobs WHERE kind = 'sync-user-balance' ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    env.run("sync-user-balance", args).await;
    let chain_amount = env.s.chain.balance_of(env.s.token, holder).await.unwrap();

    // HTTP: asked in any form, answered in base58check.
    let services = env.app.services().await.unwrap();
    let http_cfg = Config::from_toml(
        "[http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"test-token-0123456789\"\n",
    )
    .unwrap()
    .http;
    let stop = tokio_util::sync::CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let state = HttpState {
        settings: http_cfg,
        app: env.app.clone(),
        services,
        metrics: metrics_handle(),
    };
    tokio::spawn(serve(state, stop.clone(), Some(tx)));
    let addr = rx.await.unwrap();
    let get = |path: String| async move {
        let r = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .bearer_auth("test-token-0123456789")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    for form in [
        b58(&holder),
        format!("41{}", hex::encode(holder)),
        format!("{holder:#x}"),
    ] {
        let (status, v) = get(format!("/v1/balances/tron/{form}?token=USDT")).await;
        assert_eq!(status, 200, "{form}: {v}");
        assert_eq!(v["address"], b58(&holder));
        assert_eq!(v["token"], b58(&env.s.token));
        assert_eq!(v["amount"], chain_amount.to_string());
    }
    let (status, v) = get(format!("/v1/balances/tron/{}?token=USDT", typo)).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("checksum"), "{v}");
    stop.cancel();
    assert_eq!(ChainFamily::Tron.show_address(&holder), b58(&holder));
    env.assert_tron_compatible();
}
