#![allow(clippy::unwrap_used)]
//! Balance jobs on a real chain (anvil) and a real Postgres, run through the worker runtime.

mod common;
use common::{TokenChain, track_holders, wait, wait_for};

use std::time::Duration;

use alloy::primitives::{Address, U256};
use chainsync::{
    app::App,
    runtime::{Runtime, WorkerSettings},
};
use chainsync_dev::devchain::{self, DevChain, DevChainError};
use chainsync_jobs::NewJob;
use serde_json::json;
use sqlx::PgPool;

struct Env {
    chain: DevChain,
    app: App,
    token: Address,
    broken: Address,
    holders: Vec<(Address, U256)>,
}

impl Env {
    fn token(&self) -> String {
        format!("{:#x}", self.token)
    }

    async fn stored(&self, holder: Address) -> Option<String> {
        sqlx::query_scalar(
            "SELECT amount::text FROM chainsync.balances WHERE token = $1 AND address = $2",
        )
        .bind(self.token())
        .bind(format!("{holder:#x}"))
        .fetch_optional(self.app.pool())
        .await
        .unwrap()
    }

    fn runtime(&self) -> Runtime {
        let settings = WorkerSettings {
            poll_interval: Duration::from_millis(100),
            ..self.app.config.worker.clone()
        };
        let services = futures::executor::block_on(self.app.services()).unwrap();
        Runtime::start(
            self.app.queue.clone(),
            self.app.registry.clone(),
            services,
            settings,
        )
    }

    async fn run_until_idle(&self, job: NewJob) -> uuid::Uuid {
        let id = self.app.queue.enqueue(job).await.unwrap().id;
        wait(
            format!("job {id} to complete or die"),
            Duration::from_secs(120),
        )
        .until_ok(async || {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state::text FROM chainsync.all_jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.app.pool())
                    .await
                    .unwrap();
            let dead: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM chainsync.dead_letters WHERE id = $1)",
            )
            .bind(id)
            .fetch_one(self.app.pool())
            .await
            .unwrap();
            if state.as_deref() == Some("completed") || dead {
                Ok(id)
            } else {
                Err(state)
            }
        })
        .await
    }
}

async fn setup(pool: &PgPool, holders: usize) -> Env {
    let s = TokenChain::builder("TST")
        .name("Test")
        .holders(holders)
        .start()
        .await
        .unwrap();
    let broken = s.chain.deploy_reverting_token().await.unwrap();
    // Random transfers between holders so balances are not just the minted amounts.
    let transfers: Vec<(Address, Address, U256)> = s
        .holders
        .iter()
        .zip(s.holders.iter().skip(1))
        .step_by(5)
        .map(|(a, b)| (a.0, b.0, a.1 / U256::from(7)))
        .collect();
    s.chain.holder_transfers(s.token, &transfers).await.unwrap();
    let app = common::app(
        pool,
        &format!(
            r#"
[worker]
concurrency = 10
{}confirmations = 5
multicall_batch_size = 400
{}[[tokens]]
chain_id = 31337
symbol = "BROKEN"
address = "{broken:#x}"
decimals = 18
asset_class = "erc20"
[[tokens]]
chain_id = 31337
symbol = "ETH"
decimals = 18
asset_class = "native"
"#,
            s.chain_toml(),
            s.token_toml()
        ),
    )
    .await;
    track_holders(pool, &s).await;
    Env {
        token: s.token,
        holders: s.holders,
        chain: s.chain,
        app,
        broken,
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn full_sync_matches_the_chain_exactly(pool: PgPool) {
    let env = setup(&pool, 1500).await;
    let rt = env.runtime();
    env.run_until_idle(NewJob::untyped(
        "sync-balances",
        json!({"chain_id": 31337, "asset_class": "erc20"}),
    ))
    .await;
    rt.stop().await;
    // Every holder's stored balance equals balanceOf on chain, to the wei.
    for (holder, _) in &env.holders {
        let chain = env.chain.balance_of(env.token, *holder).await.unwrap();
        assert_eq!(
            env.stored(*holder).await,
            Some(chain.to_string()),
            "{holder:#x}"
        );
    }
    // The token whose balanceOf reverts failed call by call and stored nothing, without sinking
    // the batches of the good token.
    let broken: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chainsync.balances WHERE token = $1")
            .bind(format!("{:#x}", env.broken))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(broken, 0);
    let first_changes: i64 = sqlx::query_scalar("SELECT count(*) FROM chainsync.balance_changes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(first_changes, 1500);
    // A second full sync with nothing changed on chain appends no change rows.
    let rt = env.runtime();
    env.run_until_idle(NewJob::untyped(
        "sync-balances",
        json!({"chain_id": 31337, "token": "TST"}),
    ))
    .await;
    rt.stop().await;
    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM chainsync.balance_changes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        changes, first_changes,
        "an unchanged balance got a change row"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn event_driven_sync_and_reconcile_repair(pool: PgPool) {
    let env = setup(&pool, 50).await;
    let rt = env.runtime();
    env.run_until_idle(NewJob::untyped(
        "sync-balances",
        json!({"chain_id": 31337, "token": "TST"}),
    ))
    .await;
    let (a, b) = (env.holders[0].0, env.holders[1].0);
    env.chain
        .transfer_from_holder(env.token, a, b, U256::from(12345u64))
        .await
        .unwrap();
    for who in [a, b] {
        env.run_until_idle(NewJob::untyped(
            "sync-user-balance",
            json!({"chain_id": 31337, "address": format!("{who:#x}"), "token": env.token()}),
        ))
        .await;
        let chain = env.chain.balance_of(env.token, who).await.unwrap();
        assert_eq!(env.stored(who).await, Some(chain.to_string()));
    }
    let changes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chainsync.balance_changes WHERE address = $1")
            .bind(format!("{b:#x}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(changes, 2, "the first observation and the transfer");

    // Corrupt one stored balance; reconcile with repair finds it and writes an audit row.
    let victim = format!("{:#x}", env.holders[3].0);
    sqlx::query(
        "UPDATE chainsync.balances SET amount = amount + 1 WHERE token = $1 AND address = $2",
    )
    .bind(env.token())
    .bind(&victim)
    .execute(&pool)
    .await
    .unwrap();
    env.run_until_idle(NewJob::untyped(
        "reconcile-chain",
        json!({"chain_id": 31337, "token": env.token(), "repair": true}),
    ))
    .await;
    rt.stop().await;
    let (addr, diff): (String, String) =
        sqlx::query_as("SELECT address, difference::text FROM chainsync.balance_mismatches")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((addr.as_str(), diff.as_str()), (victim.as_str(), "-1"));
    let (old, new): (String, String) = sqlx::query_as(
        "SELECT old_amount::text, new_amount::text FROM chainsync.balance_repairs WHERE address = $1",
    )
    .bind(&victim)
    .fetch_one(&pool)
    .await
    .unwrap();
    let chain = env
        .chain
        .balance_of(env.token, env.holders[3].0)
        .await
        .unwrap();
    assert_eq!(new, chain.to_string());
    assert_eq!(old, (chain + U256::from(1)).to_string());
    assert_eq!(env.stored(env.holders[3].0).await, Some(chain.to_string()));
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn pending_tx_confirms_after_n_blocks_or_fails_on_revert(pool: PgPool) {
    let env = setup(&pool, 5).await;
    let to = env.holders[0].0;
    let ok = env.chain.transfer(env.token, 0, to, U256::from(1u64)).await;
    // Signer 0 holds no tokens of its own? Mint first so the transfer succeeds.
    let ok = match ok {
        Ok(r) => r,
        Err(_) => {
            env.chain
                .mint(env.token, env.chain.accounts()[0], U256::from(10u64))
                .await
                .unwrap();
            env.chain
                .transfer(env.token, 0, to, U256::from(1u64))
                .await
                .unwrap()
        }
    };
    let ok_hash = format!("{:#x}", ok.transaction_hash);
    // A transfer of more than the sender holds reverts, and is still mined.
    let call = devchain::contracts::TestToken::transferCall {
        to,
        amount: U256::from(10u64).pow(U256::from(30u64)),
    };
    let tx = env
        .chain
        .tx_from(1, env.token, alloy::sol_types::SolCall::abi_encode(&call))
        .unwrap()
        .gas_limit(200_000);
    let bad = env.chain.send(tx).await;
    let bad_hash = match bad {
        Err(DevChainError::Reverted { hash }) => format!("{hash:#x}"),
        other => panic!("expected a revert, got {other:?}"),
    };
    let to_text = format!("{to:#x}");
    for h in [&ok_hash, &bad_hash] {
        chainsync_jobs::tracking::track_tx(&pool, 31337, h, &[to_text.as_str()])
            .await
            .unwrap();
    }
    let rt = env.runtime();
    let state = |h: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT state FROM chainsync.tracked_txs WHERE hash = $1",
            )
            .bind(h)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    env.run_until_idle(NewJob::untyped(
        "check-pending-tx",
        json!({"chain_id": 31337}),
    ))
    .await;
    assert_eq!(
        state(ok_hash.clone()).await,
        "submitted",
        "not yet 5 confirmations"
    );
    env.chain.mine(5).await.unwrap();
    env.run_until_idle(NewJob::untyped(
        "check-pending-tx",
        json!({"chain_id": 31337}),
    ))
    .await;
    assert_eq!(state(ok_hash.clone()).await, "confirmed");
    assert_eq!(state(bad_hash.clone()).await, "failed");
    // The confirmed tx's addresses get a balance sync.
    wait_for(
        "the follow-up balance sync of the confirmed tx's address",
        Duration::from_secs(30),
        async || env.stored(to).await,
    )
    .await;
    rt.stop().await;
    assert_eq!(
        env.stored(to).await,
        Some(
            env.chain
                .balance_of(env.token, to)
                .await
                .unwrap()
                .to_string()
        )
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn rpc_down_retries_then_dead_letter_then_replay(pool: PgPool) {
    let env = setup(&pool, 5).await;
    let rt = env.runtime();
    env.chain.stop().await.unwrap();
    let holder = format!("{:#x}", env.holders[0].0);
    let id = env
        .run_until_idle(NewJob {
            max_attempts: Some(3),
            backoff_base_ms: Some(100),
            backoff_cap_ms: Some(300),
            ..NewJob::untyped(
                "sync-user-balance",
                json!({"chain_id": 31337, "address": holder, "token": env.token()}),
            )
        })
        .await;
    let dl = env.app.queue.get_dead(id).await.unwrap();
    assert_eq!((dl.reason.as_str(), dl.attempt), ("exhausted", 3));
    assert!(
        dl.errors
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["class"] == "retry")
    );
    // Invalid input is fatal at once.
    let fatal = env
        .run_until_idle(NewJob::untyped(
            "sync-user-balance",
            json!({"chain_id": 4242, "address": holder}),
        ))
        .await;
    assert_eq!(env.app.queue.get_dead(fatal).await.unwrap().reason, "fatal");
    // Bad addresses never get in.
    let err = env
        .app
        .queue
        .enqueue(NewJob::untyped(
            "sync-user-balance",
            json!({"chain_id": 31337, "address": "0x12"}),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("address"), "{err}");

    env.chain.restart().await.unwrap();
    env.app.queue.replay(id).await.unwrap();
    env.run_until_idle(NewJob::untyped("noop", json!({}))).await;
    wait("the replayed job to complete", Duration::from_secs(30))
        .until_ok(
            async || match env.app.queue.get_job(id).await.unwrap().state {
                s if s == "completed" => Ok(()),
                s => Err(s),
            },
        )
        .await;
    rt.stop().await;
    assert_eq!(
        env.stored(env.holders[0].0).await,
        Some(
            env.chain
                .balance_of(env.token, env.holders[0].0)
                .await
                .unwrap()
                .to_string()
        )
    );
}
