//! The `balances` table and its history: multi-row upserts pinned to a block, change rows only
//! when a value changed, and the Redis write-through.

use alloy::primitives::{Address, U256};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    JobError, Services,
    chain::PinnedBlock,
    ids::{TokenKey, address_text, hash_text, parse_amount},
};

/// One balance to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceRow {
    pub token: TokenKey,
    pub address: Address,
    pub amount: U256,
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Rows inserted or updated (at this block or newer than what was stored).
    pub written: usize,
    /// Of those, rows whose amount changed (a `balance_changes` row each).
    pub changed: usize,
    /// Rows skipped because a newer block was already stored.
    pub stale: usize,
}

impl WriteOutcome {
    pub fn add(&mut self, o: WriteOutcome) {
        self.written += o.written;
        self.changed += o.changed;
        self.stale += o.stale;
    }
}

/// A row as written, for the cache.
#[derive(Debug, Clone)]
pub struct WrittenRow {
    pub token: String,
    pub address: String,
    pub amount: String,
    pub block_number: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<(String, String, String, i64, DateTime<Utc>)> for WrittenRow {
    /// From a `RETURNING token, address, amount::text, block_number, updated_at` row.
    fn from(
        (token, address, amount, block_number, updated_at): (
            String,
            String,
            String,
            i64,
            DateTime<Utc>,
        ),
    ) -> Self {
        Self {
            token,
            address,
            amount,
            block_number,
            updated_at,
        }
    }
}

/// Upsert of many balances read at `block`, in one statement.
///
/// - A stored row of a newer block is never overwritten (the stale result is dropped).
/// - `balance_changes` gets a row only when the amount differs from the stored one (the first
///   observation of an address has `old_amount` NULL).
/// - Duplicated (token, address) pairs in `rows` are collapsed (the last wins).
const UPSERT: &str = r#"
WITH input AS (
    SELECT DISTINCT ON (token, address) token, address, amount::numeric AS amount
    FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(token, address, amount, n)
    ORDER BY token, address, n DESC
),
old AS (
    -- Locked in key order so that concurrent writers of overlapping keys queue instead of
    -- deadlocking; read committed returns the latest committed amount after the wait.
    SELECT b.token, b.address, b.amount
    FROM chainsync.balances b
    JOIN input i ON b.chain_id = $4 AND b.token = i.token AND b.address = i.address
    ORDER BY b.token, b.address
    FOR UPDATE OF b
),
up AS (
    INSERT INTO chainsync.balances AS b
        (chain_id, token, address, amount, block_number, block_hash, updated_at)
    -- Joining `old` here makes Postgres read (and lock) the old rows before the upsert; read
    -- after it, rows this statement already updated would be skipped by FOR UPDATE and their
    -- change recorded as a first observation.
    SELECT $4, i.token, i.address, i.amount, $5, $6, now()
    FROM input i LEFT JOIN old o ON o.token = i.token AND o.address = i.address
    ON CONFLICT (chain_id, token, address) DO UPDATE
        SET amount = EXCLUDED.amount,
            block_number = EXCLUDED.block_number,
            block_hash = EXCLUDED.block_hash,
            updated_at = EXCLUDED.updated_at
        WHERE b.block_number <= EXCLUDED.block_number
    RETURNING b.token, b.address, b.amount, b.block_number, b.updated_at
),
changes AS (
    INSERT INTO chainsync.balance_changes
        (chain_id, token, address, old_amount, new_amount, block_number, block_hash, block_time)
    SELECT $4, up.token, up.address, old.amount, up.amount, $5, $6, $7
    FROM up LEFT JOIN old ON old.token = up.token AND old.address = up.address
    WHERE old.amount IS DISTINCT FROM up.amount
    RETURNING 1
)
SELECT up.token, up.address, up.amount::text, up.block_number, up.updated_at,
       (SELECT count(*) FROM changes) AS changed
FROM up
"#;

/// Stores balances read at `block`; writes through to Redis when configured.
pub async fn store_balances(
    services: &Services,
    chain_id: u64,
    block: &PinnedBlock,
    rows: &[BalanceRow],
) -> Result<WriteOutcome, JobError> {
    if rows.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let mut tokens = Vec::with_capacity(rows.len());
    let mut addresses = Vec::with_capacity(rows.len());
    let mut amounts = Vec::with_capacity(rows.len());
    for r in rows {
        tokens.push(r.token.text());
        addresses.push(address_text(&r.address));
        amounts.push(r.amount.to_string());
    }
    let distinct = {
        let mut keys: Vec<(&String, &String)> = tokens.iter().zip(addresses.iter()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    let written: Vec<(String, String, String, i64, DateTime<Utc>, i64)> = sqlx::query_as(UPSERT)
        .bind(&tokens)
        .bind(&addresses)
        .bind(&amounts)
        .bind(db_chain_id(chain_id)?)
        .bind(db_block(block.number)?)
        .bind(hash_text(&block.hash))
        .bind(block.time())
        .fetch_all(&services.db)
        .await?;
    let changed = written.first().map_or(0, |r| r.5);
    let outcome = WriteOutcome {
        written: written.len(),
        changed: usize::try_from(changed).unwrap_or(0),
        stale: distinct.saturating_sub(written.len()),
    };
    let rows: Vec<WrittenRow> = written
        .into_iter()
        .map(|(token, address, amount, block_number, updated_at, _)| {
            WrittenRow::from((token, address, amount, block_number, updated_at))
        })
        .collect();
    cache_write_through(services, chain_id, &rows).await;
    Ok(outcome)
}

/// Redis key of one cached balance.
pub fn cache_key(chain_id: u64, token: &str, address: &str) -> String {
    format!("chainsync:balance:{chain_id}:{token}:{address}")
}

#[derive(Serialize)]
struct CachedBalance<'a> {
    amount: &'a str,
    block_number: i64,
    updated_at: DateTime<Utc>,
}

/// Writes rows to the Redis cache (when configured). Failures are logged and ignored: Postgres is
/// the source of truth and readers fall back to it.
pub async fn cache_write_through(services: &Services, chain_id: u64, rows: &[WrittenRow]) {
    if rows.is_empty() {
        return;
    }
    if services.redis.is_none() {
        return;
    }
    let ttl = services.settings.cache.balance_ttl_secs;
    let mut pipe = redis::pipe();
    for r in rows {
        let value = match serde_json::to_string(&CachedBalance {
            amount: &r.amount,
            block_number: r.block_number,
            updated_at: r.updated_at,
        }) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "balance cache: encoding failed");
                return;
            }
        };
        pipe.set_ex(cache_key(chain_id, &r.token, &r.address), value, ttl)
            .ignore();
    }
    // Taken last: every path after it reports the outcome to the breaker.
    let Some(mut conn) = services.cache_conn() else {
        return;
    };
    let r = tokio::time::timeout(crate::CACHE_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
    services.cache_outcome(matches!(r, Ok(Ok(()))));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            metrics::counter!("chainsync_cache_errors_total", "op" => "write").increment(1);
            tracing::debug!(chain_id, rows = rows.len(), error = %e, "balance cache write failed; continuing without it");
        }
        Err(_) => {
            metrics::counter!("chainsync_cache_errors_total", "op" => "write").increment(1);
            tracing::debug!(
                chain_id,
                rows = rows.len(),
                "balance cache write timed out; continuing without it"
            );
        }
    }
}

/// A stored balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBalance {
    pub token: TokenKey,
    pub address: Address,
    pub amount: U256,
    pub block_number: u64,
}

/// Stored balances of `tokens` on a chain.
pub async fn load_balances(
    db: &sqlx::PgPool,
    chain_id: u64,
    tokens: &[TokenKey],
) -> Result<Vec<StoredBalance>, JobError> {
    let token_texts: Vec<String> = tokens.iter().map(TokenKey::text).collect();
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT token, address, amount::text, block_number FROM chainsync.balances \
         WHERE chain_id = $1 AND token = ANY($2) ORDER BY token, address",
    )
    .bind(db_chain_id(chain_id)?)
    .bind(&token_texts)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(t, a, amount, b)| {
            Ok(StoredBalance {
                token: TokenKey::parse(&t).map_err(JobError::Retry)?,
                address: crate::ids::parse_address(&a).map_err(JobError::Retry)?,
                amount: parse_amount(&amount).map_err(JobError::Retry)?,
                block_number: u64::try_from(b).unwrap_or(0),
            })
        })
        .collect()
}

/// One holder's stored balance as the API shows it (amount as a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HolderBalance {
    pub token: String,
    pub amount: String,
    pub block_number: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Stored balances of one holder (`address` in canonical lower-case form), of one token or all.
pub async fn holder_balances(
    db: &sqlx::PgPool,
    chain_id: u64,
    address: &str,
    token: Option<&str>,
) -> Result<Vec<HolderBalance>, sqlx::Error> {
    sqlx::query_as(
        "SELECT token, amount::text AS amount, block_number, updated_at FROM chainsync.balances
         WHERE chain_id = $1 AND address = $2 AND ($3::text IS NULL OR token = $3) ORDER BY token",
    )
    .bind(i64::try_from(chain_id).unwrap_or(i64::MAX))
    .bind(address)
    .bind(token)
    .fetch_all(db)
    .await
}

/// Chain ids are `bigint` in the database.
pub fn db_chain_id(chain_id: u64) -> Result<i64, JobError> {
    i64::try_from(chain_id)
        .map_err(|_| JobError::Fatal(format!("chain id {chain_id} is too large")))
}

/// Block numbers are `bigint` in the database.
pub fn db_block(n: u64) -> Result<i64, JobError> {
    i64::try_from(n).map_err(|_| JobError::Retry(format!("block number {n} out of range")))
}
