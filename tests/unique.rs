#![allow(clippy::unwrap_used)]
//! Unique keys: an enqueue is never absorbed by a job that already started, whichever way it
//! comes in (SQL function, Rust API, CLI); kinds that opt into one active job keep one.

mod common;
use common::db_url;

use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use chainsync::{
    app::App,
    config::Config,
    queue::{Completion, Outcome},
    runtime::{Runtime, WorkerSettings},
};
use chainsync_dev::devchain::{self, DevChain};
use chainsync_jobs::NewJob;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

async fn sql_enqueue(pool: &PgPool, kind: &str, args: &Value, key: &str) -> Uuid {
    sqlx::query_scalar("SELECT chainsync.enqueue($1, $2, unique_key => $3)")
        .bind(kind)
        .bind(args)
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn cli_enqueue(
    pool: &PgPool,
    config: &std::path::Path,
    kind: &str,
    args: &Value,
    key: &str,
) -> Uuid {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chainsync"))
        .arg("--database-url")
        .arg(db_url(pool))
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args([
            "enqueue",
            kind,
            "--args",
            &args.to_string(),
            "--unique-key",
            key,
        ])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().parse().unwrap()
}

async fn wait_completed(pool: &PgPool, id: Uuid) {
    let t = Instant::now();
    loop {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state::text FROM chainsync.all_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .unwrap();
        if state.as_deref() == Some("completed") {
            return;
        }
        let dead: Option<Value> =
            sqlx::query_scalar("SELECT errors FROM chainsync.dead_letters WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .unwrap();
        assert!(dead.is_none(), "job {id} dead-lettered: {dead:?}");
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "job {id} not completed (state {state:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The event-driven sync of the README: a Claim changes a holder's balance while a sync of that
/// holder is running and has already read the chain. The application's enqueue with the same
/// unique key must get a job of its own, which runs and stores the new balance.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn an_enqueue_while_a_sync_runs_gets_its_own_job_that_reads_the_newer_block(pool: PgPool) {
    let chain = DevChain::start().await.unwrap();
    chain.install_multicall3().await.unwrap();
    let token = chain.deploy_token("Test", "TST", 18).await.unwrap();
    let holder = Address::repeat_byte(0x42);
    chain
        .mint(token, holder, devchain::units(1000, 18))
        .await
        .unwrap();
    let config_text = format!(
        r#"
database_url = "{}"
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
[[tokens]]
chain_id = 31337
symbol = "ETH"
decimals = 18
asset_class = "native"
"#,
        db_url(&pool),
        chain.url()
    );
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config_file.path(), &config_text).unwrap();
    let app = App::with_pool(Config::from_toml(&config_text).unwrap(), pool.clone()).unwrap();
    app.migrate().await.unwrap();
    let services = app.services().await.unwrap();

    let h = format!("{holder:#x}");
    let t = format!("{token:#x}");
    let args = json!({"chain_id": 31337, "address": h, "token": t});
    let key = format!("sync-user-balance:31337:{h}:{t}");

    // A worker takes the first job and reads the chain (the balance before the Claim).
    let first = sql_enqueue(&pool, "sync-user-balance", &args, &key).await;
    assert_eq!(
        sql_enqueue(&pool, "sync-user-balance", &args, &key).await,
        first,
        "a job that has not started absorbs a duplicate"
    );
    let owner = Uuid::now_v7();
    let leased = app
        .queue
        .fetch("default", 10, owner, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), vec![first]);
    chainsync_jobs::balance_sync::sync_holder(&services, 31337, &h, Some(t.as_str()))
        .await
        .unwrap();

    // The Claim lands, then the application enqueues, through each way in, while the first job
    // still runs.
    chain
        .mint(token, holder, devchain::units(500, 18))
        .await
        .unwrap();
    let second = sql_enqueue(&pool, "sync-user-balance", &args, &key).await;
    assert_ne!(second, first, "the running job must not absorb the enqueue");
    let rust = app
        .queue
        .enqueue(NewJob {
            unique_key: Some(key.clone()),
            ..NewJob::untyped("sync-user-balance", args.clone())
        })
        .await
        .unwrap();
    assert_eq!((rust.id, rust.inserted), (second, false));
    assert_eq!(
        cli_enqueue(&pool, config_file.path(), "sync-user-balance", &args, &key),
        second
    );
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM chainsync.all_jobs WHERE unique_key = $1 AND state = 'available'",
    )
    .bind(&key)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(queued, 1, "at most one queued job per key");

    // The first job finishes; the second runs and stores the balance after the Claim.
    let done = app
        .queue
        .complete(owner, &[Completion::new(&leased[0], Outcome::Done)], true)
        .await
        .unwrap();
    assert_eq!(done.done, 1);
    let runtime = Runtime::start(
        app.queue.clone(),
        app.registry.clone(),
        services,
        WorkerSettings {
            poll_interval: Duration::from_millis(50),
            ..WorkerSettings::default()
        },
    );
    wait_completed(&pool, second).await;
    runtime.stop().await;
    let stored: String = sqlx::query_scalar(
        "SELECT amount::text FROM chainsync.balances WHERE chain_id = 31337 AND token = $1 AND address = $2",
    )
    .bind(&t)
    .bind(&h)
    .fetch_one(&pool)
    .await
    .unwrap();
    let on_chain = chain.balance_of(token, holder).await.unwrap();
    assert_eq!(on_chain, devchain::units(1500, 18));
    assert_eq!(stored.parse::<U256>().unwrap(), on_chain);
    let changes: Vec<String> = sqlx::query_scalar(
        "SELECT new_amount::text FROM chainsync.balance_changes
         WHERE chain_id = 31337 AND token = $1 AND address = $2 ORDER BY block_number",
    )
    .bind(&t)
    .bind(&h)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        changes.last().map(|s| s.parse::<U256>().unwrap()),
        Some(on_chain)
    );
}

/// Kinds that opt into one active job per key (a full sync) keep it, running included: a tick
/// while one runs returns the running job, and a new one is accepted once it finished.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn one_active_job_kinds_keep_their_key_while_running(pool: PgPool) {
    let q = chainsync::app::builtin_queue(pool.clone());
    q.sync_kinds().await.unwrap();
    let args = json!({"chain_id": 1, "asset_class": "erc20"});
    let key = "sync-balances:1:erc20";
    let first = sql_enqueue(&pool, "sync-balances", &args, key).await;
    let owner = Uuid::now_v7();
    let leased = q
        .fetch("default", 10, owner, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(sql_enqueue(&pool, "sync-balances", &args, key).await, first);
    let typed = q
        .enqueue(NewJob {
            unique_key: Some(key.into()),
            ..NewJob::untyped("sync-balances", args.clone())
        })
        .await
        .unwrap();
    assert_eq!((typed.id, typed.inserted), (first, false));
    q.complete(owner, &[Completion::new(&leased[0], Outcome::Done)], true)
        .await
        .unwrap();
    let next = sql_enqueue(&pool, "sync-balances", &args, key).await;
    assert_ne!(next, first);
    // A job retried after a failure (started, back to available) does not block a new enqueue of
    // a kind without the opt-in, and the two never violate the key's index.
    let a = sql_enqueue(&pool, "noop", &json!({}), "noop-key").await;
    let leased = q
        .fetch("default", 10, owner, Duration::from_secs(60))
        .await
        .unwrap();
    let noop = leased.iter().find(|j| j.id == a).unwrap();
    let b = sql_enqueue(&pool, "noop", &json!({}), "noop-key").await;
    assert_ne!(a, b);
    let stats = q
        .complete(
            owner,
            &[Completion::new(
                noop,
                Outcome::from(chainsync_jobs::JobError::retry("later")),
            )],
            true,
        )
        .await
        .unwrap();
    assert_eq!(stats.retried, 1);
    let states: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, state::text FROM chainsync.all_jobs WHERE unique_key = 'noop-key' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        states,
        vec![(a, "available".to_string()), (b, "available".to_string())]
    );
    assert_eq!(sql_enqueue(&pool, "noop", &json!({}), "noop-key").await, b);
}
