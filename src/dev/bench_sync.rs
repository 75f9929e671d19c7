//! `chainsync bench sync`: full balance sync of N anvil holders through `sync-balances`
//! (Multicall3 batches, multi-row upserts) against the original scripts' way — one `eth_call`
//! per address, 50 at a time, one UPDATE per user — in the same run.

use std::time::Instant;

use alloy::primitives::Address;
use futures::future::join_all;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use chainsync_dev::devchain::{self, DevChain};

pub async fn run(admin_url: &str, holders: usize) -> anyhow::Result<serde_json::Value> {
    let chain = DevChain::start().await?;
    chain.install_multicall3().await?;
    let token = chain.deploy_token("Bench", "BEN", 18).await?;
    let list = devchain::random_holders(99, holders, devchain::units(1000, 18));
    let t = Instant::now();
    chain.mint_many(token, &list).await?;
    let mint_s = t.elapsed().as_secs_f64();
    let app = super::scratch_app(
        admin_url,
        "bench_sync",
        &format!(
            r#"
[[chains]]
chain_id = 31337
name = "anvil"
rpc_urls = ["{}"]
[[tokens]]
chain_id = 31337
symbol = "BEN"
address = "{token:#x}"
decimals = 18
asset_class = "erc20"
"#,
            chain.url()
        ),
    )
    .await?;
    let addrs: Vec<String> = list.iter().map(|(a, _)| format!("{a:#x}")).collect();
    sqlx::query("INSERT INTO chainsync.tracked_addresses (address) SELECT unnest($1::text[])")
        .bind(&addrs)
        .execute(app.pool())
        .await?;
    let services = app.services().await?;
    let sel = chainsync_jobs::balance_sync::TokenSelector {
        token: Some("BEN".into()),
        asset_class: None,
    };
    let t = Instant::now();
    chainsync_jobs::balance_sync::sync_full(&services, uuid::Uuid::now_v7(), 31337, &sel, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ours = t.elapsed().as_secs_f64();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chainsync.balances")
        .fetch_one(app.pool())
        .await?;
    if stored != holders as i64 {
        anyhow::bail!("stored {stored} balances, expected {holders}");
    }

    // The original scripts: batches of 50 addresses, one eth_call each, one UPDATE per user.
    let naive_pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&app.config.database_url)
        .await?;
    sqlx::query("CREATE TABLE naive_users (address text PRIMARY KEY, balance_wei numeric(78,0))")
        .execute(&naive_pool)
        .await?;
    sqlx::query("INSERT INTO naive_users (address) SELECT unnest($1::text[])")
        .bind(&addrs)
        .execute(&naive_pool)
        .await?;
    let naive_n = holders.min(20_000);
    let t = Instant::now();
    for chunk in list[..naive_n].chunks(50) {
        let reads = join_all(chunk.iter().map(|(a, _)| chain.balance_of(token, *a))).await;
        let writes = chunk
            .iter()
            .zip(reads)
            .map(|((a, _), r): (&(Address, _), _)| {
                let pool = naive_pool.clone();
                async move {
                    let v = r.map_err(|e| anyhow::anyhow!("{e}"))?;
                    sqlx::query(
                        "UPDATE naive_users SET balance_wei = $2::numeric WHERE address = $1",
                    )
                    .bind(format!("{a:#x}"))
                    .bind(v.to_string())
                    .execute(&pool)
                    .await?;
                    Ok::<_, anyhow::Error>(())
                }
            });
        for r in join_all(writes).await {
            r?;
        }
    }
    let naive = t.elapsed().as_secs_f64();
    let ours_rate = holders as f64 / ours;
    let naive_rate = naive_n as f64 / naive;
    Ok(json!({
        "holders": holders,
        "mint_s": mint_s,
        "chainsync_s": ours,
        "chainsync_addresses_per_s": ours_rate,
        "naive_addresses": naive_n,
        "naive_s": naive,
        "naive_addresses_per_s": naive_rate,
        "ratio": ours_rate / naive_rate,
    }))
}
