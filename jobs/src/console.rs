//! What the admin console shows about one address: balances per token, their history, points
//! per window, reconcile mismatches and repairs, tracked transactions. Amounts are returned as
//! base-10 text (exact; `NUMERIC(78,0)` does not fit any integer type).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AddressBalance {
    pub chain_id: i64,
    pub token: String,
    pub amount: String,
    pub block_number: i64,
    pub block_hash: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AddressChange {
    pub chain_id: i64,
    pub token: String,
    pub old_amount: Option<String>,
    pub new_amount: String,
    pub block_number: i64,
    pub block_time: Option<DateTime<Utc>>,
    pub observed_at: DateTime<Utc>,
    /// `log` (a transfer log at its block), `read` (a balance read) or `reconcile` (found by a
    /// reconcile where no log showed it).
    pub source: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AddressPoints {
    pub chain_id: i64,
    pub token: String,
    pub window_start: DateTime<Utc>,
    pub twab: String,
    pub points: String,
    pub computed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AddressMismatch {
    pub id: i64,
    pub chain_id: i64,
    pub token: String,
    pub stored_amount: Option<String>,
    pub chain_amount: String,
    pub difference: String,
    pub above_threshold: bool,
    pub block_number: i64,
    pub found_at: DateTime<Utc>,
    /// The repair made for it, if any.
    pub repaired_at: Option<DateTime<Utc>>,
    pub repair_reason: Option<String>,
    pub repaired_to: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AddressTx {
    pub chain_id: i64,
    pub hash: String,
    pub state: String,
    pub block_number: Option<i64>,
    pub confirmations: i64,
    pub first_seen: DateTime<Utc>,
    pub error: Option<String>,
}

/// The newest `$3` points windows of address `$2` on chains `$1`, from `$4` on (NULL: all).
const POINTS_NEWEST: &str = "SELECT p.chain_id, p.token, p.window_start, p.twab::text AS twab,
        p.points::text AS points, p.computed_at
 FROM (SELECT DISTINCT chain_id, token FROM chainsync.balances
       WHERE chain_id = ANY($1) AND address = $2) b
 CROSS JOIN LATERAL (
     SELECT * FROM chainsync.points_history x
     WHERE x.chain_id = b.chain_id AND x.token = b.token AND x.address = $2
       AND ($4::timestamptz IS NULL OR x.window_start >= $4)
     ORDER BY x.window_start DESC LIMIT $3) p
 ORDER BY p.window_start DESC, p.chain_id, p.token LIMIT $3";

/// Everything stored about one address (lower-case hex).
#[derive(Debug, Clone, Serialize)]
pub struct AddressReport {
    pub tracked: bool,
    pub balances: Vec<AddressBalance>,
    pub changes: Vec<AddressChange>,
    pub points: Vec<AddressPoints>,
    pub mismatches: Vec<AddressMismatch>,
    pub txs: Vec<AddressTx>,
}

/// The newest `limit` rows of each part for `address` (lower-case hex) on `chains`.
/// History and points are read per stored (chain, token) along their primary indexes.
pub async fn address_report(
    db: &PgPool,
    chains: &[i64],
    address: &str,
    limit: i64,
) -> Result<AddressReport, sqlx::Error> {
    let tracked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM chainsync.tracked_addresses WHERE address = $1)",
    )
    .bind(address)
    .fetch_one(db)
    .await?;
    let balances: Vec<AddressBalance> = sqlx::query_as(
        "SELECT chain_id, token, amount::text AS amount, block_number, block_hash, updated_at
         FROM chainsync.balances WHERE chain_id = ANY($1) AND address = $2
         ORDER BY chain_id, token",
    )
    .bind(chains)
    .bind(address)
    .fetch_all(db)
    .await?;
    let changes = sqlx::query_as(
        "SELECT c.chain_id, c.token, c.old_amount::text AS old_amount,
                c.new_amount::text AS new_amount, c.block_number, c.block_time, c.observed_at,
                c.source
         FROM (SELECT DISTINCT chain_id, token FROM chainsync.balances
               WHERE chain_id = ANY($1) AND address = $2) b
         CROSS JOIN LATERAL (
             SELECT * FROM chainsync.balance_changes x
             WHERE x.chain_id = b.chain_id AND x.token = b.token AND x.address = $2
             ORDER BY x.block_number DESC LIMIT $3) c
         ORDER BY c.block_number DESC, c.chain_id, c.token LIMIT $3",
    )
    .bind(chains)
    .bind(address)
    .bind(limit)
    .fetch_all(db)
    .await?;
    // points_history has a partition per month: the windows of the last days first (planned over
    // those months only), all of them when that gives fewer than `limit`.
    let days = limit.clamp(1, 100_000) / 24 + 2;
    let mut points: Vec<AddressPoints> = Vec::new();
    for since in [Some(Utc::now() - chrono::Duration::days(days)), None] {
        points = sqlx::query_as(POINTS_NEWEST)
            .bind(chains)
            .bind(address)
            .bind(limit)
            .bind(since)
            .fetch_all(db)
            .await?;
        if i64::try_from(points.len()).unwrap_or(i64::MAX) >= limit {
            break;
        }
    }
    let mismatches = sqlx::query_as(
        "SELECT m.id, m.chain_id, m.token, m.stored_amount::text AS stored_amount,
                m.chain_amount::text AS chain_amount, m.difference::text AS difference,
                m.above_threshold, m.block_number, m.found_at, r.repaired_at,
                r.reason AS repair_reason, r.new_amount::text AS repaired_to
         FROM chainsync.balance_mismatches m
         LEFT JOIN chainsync.balance_repairs r ON r.mismatch_id = m.id
         WHERE m.address = $1 ORDER BY m.found_at DESC LIMIT $2",
    )
    .bind(address)
    .bind(limit)
    .fetch_all(db)
    .await?;
    let txs = sqlx::query_as(
        "SELECT chain_id, hash, state, block_number, confirmations, first_seen, error
         FROM chainsync.tracked_txs WHERE $1 = ANY(addresses)
         ORDER BY first_seen DESC LIMIT $2",
    )
    .bind(address)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(AddressReport {
        tracked,
        balances,
        changes,
        points,
        mismatches,
        txs,
    })
}
