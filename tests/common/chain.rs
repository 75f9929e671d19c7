//! Chain scenarios: anvil with Multicall3 and a token minted to N holders
//! ([`TokenChain::builder`], from `chainsync-dev`), and what the tests do with them.

use sqlx::PgPool;

pub use chainsync_dev::scenario::{TokenChain, TokenChainBuilder};

/// Tracks every holder of `chain` (`chainsync.tracked_addresses`), as `chainsync track` would.
pub async fn track_holders(pool: &PgPool, chain: &TokenChain) {
    sqlx::query("INSERT INTO chainsync.tracked_addresses (address) SELECT unnest($1::text[])")
        .bind(chain.holder_addresses())
        .execute(pool)
        .await
        .unwrap();
}
