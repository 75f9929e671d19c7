#![allow(clippy::unwrap_used)]
//! TRON chains (`family = "tron"`) on a real Postgres, with anvil behind a stand-in that answers
//! like java-tron's JSON-RPC (`chainsync_dev::tron_standin`: `latest`-only calls, hex-only
//! addresses, strict call objects, java-tron's shapes of blocks, receipts and transactions).
//! Every chainsync request goes through it and none may be refused: that is what shows the
//! requests are ones a TRON node serves. Addresses are given in TRON's forms (base58check `T…`,
//! `41…` hex) in config, SQL, jobs and HTTP. `chainsync demo --family tron` runs end to end too.

mod common;
use common::db_url;

use std::{collections::BTreeSet, net::SocketAddr};

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
    sol_types::SolCall,
};
use chainsync::{
    app::App,
    config::Config,
    http::{HttpState, metrics_handle, serve},
};
use chainsync_dev::{
    devchain::{DevChainError, contracts::TestToken},
    scenario::TokenChain,
    tron_standin::TronStandIn,
};
use chainsync_jobs::{
    JobContext, JobMeta,
    ids::{ChainFamily, parse_tron_address, tron_base58},
};
use serde_json::{Value, json};
use sqlx::PgPool;

const MULTICALL3: Address = chainsync_jobs::settings::MULTICALL3;

fn b58(a: &Address) -> String {
    tron_base58(a)
}

struct Env {
    s: TokenChain,
    standin: TronStandIn,
    app: App,
}

/// anvil with a 6-decimal token minted to `holders` holders and some transfers between them; the
/// stand-in in front; an app whose chain is `family = "tron"`, with the token and Multicall3
/// named in base58check (or without a Multicall3: JSON-RPC batches), and `confirmations` when
/// given (else TRON's default).
async fn setup(
    pool: &PgPool,
    holders: usize,
    multicall: bool,
    ingest: bool,
    confirmations: Option<u64>,
) -> Env {
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
    let standin = TronStandIn::start(&s.chain.url()).await.unwrap();
    let ingest = if ingest {
        format!(
            "[[ingest]]\nchain_id = 31337\ninitial_range = 3\nmax_range = 50\nlive = false\n\
             contracts = [{{ address = \"{}\" }}]\n",
            b58(&s.token)
        )
    } else {
        String::new()
    };
    let confirmations = confirmations
        .map(|c| format!("confirmations = {c}\n"))
        .unwrap_or_default();
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
multicall_batch_size = 25
{confirmations}{mc}
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
        standin.url(),
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
    let env = setup(&pool, 60, true, false, Some(0)).await;
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
            .post(env.standin.url())
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
    let env = setup(&pool, 40, false, false, Some(0)).await;
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
    let env = setup(&pool, 12, true, true, Some(0)).await;
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
    let env = setup(&pool, 3, true, false, Some(0)).await;
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
            "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'sync-user-balance'"
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
        "SELECT args FROM chainsync.all_jobs WHERE kind = 'sync-user-balance' ORDER BY created_at DESC LIMIT 1",
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

/// State, block and confirmations of a tracked transaction.
async fn tx_row(pool: &PgPool, hash: B256) -> (String, Option<i64>, i64, Option<String>) {
    sqlx::query_as(
        "SELECT state, block_number, confirmations, error FROM chainsync.tracked_txs WHERE hash = $1",
    )
    .bind(format!("{hash:#x}"))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The addresses of the enqueued `sync-user-balance` jobs.
async fn sync_job_addresses(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT args->>'address' FROM chainsync.all_jobs WHERE kind = 'sync-user-balance'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn hex_of(a: &Address) -> String {
    format!("{a:#x}")
}

/// check-pending-tx on a TRON chain through the stand-in: transaction ids as TRON writes them (no
/// `0x`) and addresses in base58check when registered, receipts in java-tron's shape, no view of
/// the node's pool, and confirmation at the solidified depth (19 blocks with its own, TRON's
/// default `confirmations`) — not one block earlier.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn tron_pending_txs_confirm_at_solidified_depth(pool: PgPool) {
    let env = setup(&pool, 6, true, false, None).await;
    let s = &env.s;
    let h: Vec<Address> = s.holders.iter().map(|x| x.0).collect();
    let dev = s.chain.accounts();
    // A TRC20 transfer between holders.
    let ok = s
        .chain
        .transfer_from_holder(s.token, h[0], h[1], U256::from(1234u64))
        .await
        .unwrap()
        .transaction_hash;
    // A transfer of more than the sender holds: mined, reverted.
    let call = TestToken::transferCall {
        to: h[2],
        amount: U256::from(10u64).pow(U256::from(30u64)),
    };
    let tx = s
        .chain
        .tx_from(1, s.token, call.abi_encode())
        .unwrap()
        .with_gas_limit(200_000);
    let bad = match s.chain.send(tx).await {
        Err(DevChainError::Reverted { hash }) => hash,
        other => panic!("expected a revert, got {other:?}"),
    };
    // A TRX transfer that waits in the node's pool until a block is mined.
    s.chain.set_automine(false).await.unwrap();
    let trx = *s
        .chain
        .provider()
        .send_transaction(
            s.chain
                .tx_from(0, h[3], Bytes::new())
                .unwrap()
                .with_value(U256::from(5_000_000u64)),
        )
        .await
        .unwrap()
        .tx_hash();
    let unknown = B256::repeat_byte(0x77);

    // Registered as an application would: a TRON transaction id and a base58check address
    // straight into the table, the others through the Rust API in TRON's forms.
    sqlx::query(
        "INSERT INTO chainsync.tracked_txs (chain_id, hash, addresses) VALUES (31337, $1, $2)",
    )
    .bind(hex::encode(ok))
    .bind(vec![b58(&h[0])])
    .execute(&pool)
    .await
    .unwrap();
    chainsync_jobs::tracking::track_tx(&pool, 31337, &hex::encode(bad), &[b58(&h[2]).as_str()])
        .await
        .unwrap();
    let h3_41 = format!("41{}", hex::encode(h[3]));
    chainsync_jobs::tracking::track_tx(&pool, 31337, &format!("{trx:#x}"), &[h3_41.as_str()])
        .await
        .unwrap();
    chainsync_jobs::tracking::track_tx(&pool, 31337, &hex::encode(unknown), &[])
        .await
        .unwrap();
    let rows: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT hash, addresses FROM chainsync.tracked_txs ORDER BY hash")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut want = vec![
        (hex_of_hash(ok), vec![hex_of(&h[0])]),
        (hex_of_hash(bad), vec![hex_of(&h[2])]),
        (hex_of_hash(trx), vec![hex_of(&h[3])]),
        (hex_of_hash(unknown), vec![]),
    ];
    want.sort();
    assert_eq!(rows, want, "stored in the canonical forms");

    let check = async || {
        env.run("check-pending-tx", json!({"chain_id": 31337}))
            .await
    };
    check().await;
    let ok_block = tx_row(&pool, ok).await.1.unwrap();
    assert_eq!(tx_row(&pool, ok).await.0, "submitted");
    assert_eq!(tx_row(&pool, bad).await.0, "submitted");
    // java-tron shows no transaction of its pool: still pending, not submitted.
    assert_eq!(tx_row(&pool, trx).await.0, "pending");
    assert_eq!(tx_row(&pool, unknown).await.0, "pending");
    assert!(env.standin.calls("eth_getTransactionByHash") >= 2);

    s.chain.mine(1).await.unwrap();
    check().await;
    let (state, trx_block, _, _) = tx_row(&pool, trx).await;
    assert_eq!(state, "submitted");
    let trx_block = trx_block.unwrap() as u64;

    // One block short of the solidified depth: still submitted, nothing enqueued.
    let head = s.chain.block_number().await.unwrap();
    s.chain.mine(ok_block as u64 + 17 - head).await.unwrap();
    check().await;
    assert_eq!(
        tx_row(&pool, ok).await,
        ("submitted".to_string(), Some(ok_block), 18, None)
    );
    assert!(sync_job_addresses(&pool).await.is_empty());

    // Solidified: confirmed, and every address it touched gets a balance sync.
    s.chain.mine(1).await.unwrap();
    check().await;
    assert_eq!(
        tx_row(&pool, ok).await,
        ("confirmed".to_string(), Some(ok_block), 19, None)
    );
    assert_eq!(tx_row(&pool, bad).await.0, "submitted", "a block later");
    let want: BTreeSet<String> = [h[0], h[1], s.token].iter().map(hex_of).collect();
    assert_eq!(sync_job_addresses(&pool).await, want);

    // The reverted one fails a block later: its sender and the registered address get a sync.
    s.chain.mine(1).await.unwrap();
    check().await;
    let (state, _, _, error) = tx_row(&pool, bad).await;
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("reverted"));
    let head = s.chain.block_number().await.unwrap();
    s.chain.mine(trx_block + 18 - head).await.unwrap();
    check().await;
    assert_eq!(tx_row(&pool, trx).await.0, "confirmed");
    assert_eq!(tx_row(&pool, unknown).await.0, "pending");
    let want: BTreeSet<String> = [h[0], h[1], s.token, h[2], dev[1], h[3], dev[0]]
        .iter()
        .map(hex_of)
        .collect();
    assert_eq!(sync_job_addresses(&pool).await, want);

    // The follow-up syncs store what the chain holds.
    let jobs: Vec<Value> = sqlx::query_scalar(
        "SELECT args FROM chainsync.all_jobs WHERE kind = 'sync-user-balance' ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for args in jobs {
        env.run("sync-user-balance", args).await;
    }
    for holder in [h[0], h[1]] {
        let (amount, _, _) = env.stored(&env.token(), &holder).await.unwrap();
        assert_eq!(
            amount,
            s.chain
                .balance_of(s.token, holder)
                .await
                .unwrap()
                .to_string()
        );
    }
    let (trx_amount, _, _) = env.stored("native", &h[3]).await.unwrap();
    assert_eq!(
        trx_amount,
        s.chain.eth_balance(h[3]).await.unwrap().to_string()
    );
    assert!(env.standin.calls("eth_getTransactionReceipt") >= 8);
    env.assert_tron_compatible();

    // What the stand-in answered is java-tron's shape, which the receipts above were read from.
    let ask = async |method: &str, hash: String| -> Value {
        let r: Value = reqwest::Client::new()
            .post(env.standin.url())
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": [hash]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["result"].clone()
    };
    let receipt = ask("eth_getTransactionReceipt", hex::encode(ok)).await;
    assert_eq!(receipt["type"], "0x0");
    assert_eq!(receipt["logsBloom"], format!("0x{}", "00".repeat(256)));
    assert!(receipt.get("blobGasPrice").is_none(), "{receipt}");
    assert_eq!(receipt["logs"][0]["address"], hex_of(&s.token));
    let tx = ask("eth_getTransactionByHash", hex_of_hash(ok)).await;
    assert_eq!(tx["nonce"], Value::Null, "{tx}");
    assert!(tx.get("type").is_none(), "{tx}");
}

fn hex_of_hash(h: B256) -> String {
    format!("{h:#x}")
}

/// Every `0x` + exactly 40 hex digits in `text`: an address written the EVM way.
fn evm_addresses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("0x") {
        let start = from + at;
        let digits = text[start + 2..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        if digits == 40 {
            found.push(text[start..start + 42].to_string());
        }
        from = start + 2;
    }
    found
}

/// `chainsync demo --family tron` end to end, on an anvil of the test's own so that the chain can
/// be read after the demo: base58check addresses in its config, enqueued args, output and summary
/// and no address written the EVM way; the balances its summary shows, and every balance it
/// stored, equal the chain's; the stand-in refused nothing.
#[cfg(feature = "dev")]
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn tron_demo_walks_through_with_base58_addresses(pool: PgPool) {
    let chain = chainsync_dev::devchain::DevChain::start().await.unwrap();
    let database = format!("chainsync_demo_tron_{}", std::process::id());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chainsync"))
        .arg("--database-url")
        .arg(db_url(&pool))
        .args(["demo", "--family", "tron", "--holders", "40", "--database"])
        .arg(&database)
        .env("CHAINSYNC_RPC_URL", chain.url())
        .env_remove("CHAINSYNC_DEV_KEY")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        evm_addresses(&stdout),
        Vec::<String>::new(),
        "EVM hex addresses in the output:\n{stdout}"
    );
    for shown in [
        "family = \"tron\"",
        "multicall_address = \"T",
        "address = \"T",
        "\"address\":\"T",
        "SELECT chainsync.enqueue('sync-user-balance'",
        "repaired T",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not shown:\n{stdout}");
    }
    let summary = stdout
        .split("== summary ==")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let row = |what: &str| -> String {
        summary
            .lines()
            .find_map(|l| l.strip_prefix(what))
            .unwrap_or_else(|| panic!("no {what:?} row:\n{summary}"))
            .trim()
            .to_string()
    };
    assert!(row("chain").contains("family tron"), "{summary}");
    let token = parse_tron_address(&row("token RAT")).unwrap();
    assert_eq!(row("mismatches after full sync"), "0");
    assert_eq!(row("event-driven sync exact"), "true");
    assert_eq!(row("replayed and completed"), "true");
    assert!(row("requests to the TRON stand-in").ends_with(" 0 refused"));
    assert!(row("planted mismatches repaired").starts_with("1 (T"));
    // The balances the summary shows are the chain's.
    let mut shown = 0;
    for line in summary.lines() {
        let Some(rest) = line.strip_prefix("RAT balance of ") else {
            continue;
        };
        let mut cells = rest.split_whitespace();
        let (address, amount) = (cells.next().unwrap(), cells.next().unwrap());
        assert!(address.starts_with('T'), "{line}");
        let holder = parse_tron_address(address).unwrap();
        assert_eq!(
            amount,
            chain.balance_of(token, holder).await.unwrap().to_string(),
            "{line}"
        );
        shown += 1;
    }
    assert_eq!(shown, 3, "{summary}");

    // Every balance the demo stored (kept for a look) is the chain's.
    let url = chainsync_dev::scratch::database_url(&db_url(&pool), &database).unwrap();
    let demo = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT address, amount::text FROM chainsync.balances WHERE token = $1")
            .bind(hex_of(&token))
            .fetch_all(&demo)
            .await
            .unwrap();
    assert_eq!(stored.len(), 40);
    for (address, amount) in stored {
        let holder: Address = address.parse().unwrap();
        assert_eq!(
            amount,
            chain.balance_of(token, holder).await.unwrap().to_string(),
            "{}",
            b58(&holder)
        );
    }
    demo.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .unwrap();
}
