//! What to follow: tracked addresses and tracked transactions.
//!
//! The public API for applications written in Rust and for the CLI (`tracked addresses
//! add|remove|import`, `tx track`). Applications in other languages insert into
//! `chainsync.tracked_addresses` / `chainsync.tracked_txs` directly.

use std::collections::BTreeSet;

use alloy::primitives::Address;
use sqlx::{PgPool, Row};

use crate::{
    JobError,
    ids::{address_text, hash_text, parse_address, parse_address_any, parse_hash},
    settings::DomainConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// An address or hash that does not parse.
    #[error(transparent)]
    Id(#[from] crate::ids::IdError),
    #[error("chain id {0} is too large")]
    ChainId(u64),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Adds an address to `chainsync.tracked_addresses`; `Ok(false)` when it was already there.
pub async fn track_address(
    db: &PgPool,
    address: &str,
    label: Option<&str>,
) -> Result<bool, TrackingError> {
    let a = parse_address_any(address).map_err(TrackingError::Id)?;
    let r = sqlx::query(
        "INSERT INTO chainsync.tracked_addresses (address, label, source) VALUES ($1, $2, 'api') \
         ON CONFLICT (address) DO NOTHING",
    )
    .bind(address_text(&a))
    .bind(label)
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes an address; `Ok(false)` when it was not tracked. Stored balances are kept.
pub async fn untrack_address(db: &PgPool, address: &str) -> Result<bool, TrackingError> {
    let a = parse_address_any(address).map_err(TrackingError::Id)?;
    let r = sqlx::query("DELETE FROM chainsync.tracked_addresses WHERE address = $1")
        .bind(address_text(&a))
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Result of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub inserted: u64,
    pub already_tracked: u64,
    /// (1-based line, error) of lines that are not addresses.
    pub invalid: Vec<(usize, crate::ids::IdError)>,
}

/// Imports addresses from text: one per line, the first comma/whitespace-separated field of each
/// line (so a CSV export works); empty lines and `#` comments are skipped; a header line that is
/// not an address is reported as invalid and skipped, like any other bad line.
pub async fn import_addresses(db: &PgPool, text: &str) -> Result<ImportReport, TrackingError> {
    let mut report = ImportReport::default();
    let mut set = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let field = line
            .split([',', ';', '\t', ' '])
            .next()
            .unwrap_or_default()
            .trim_matches('"');
        match parse_address_any(field) {
            Ok(a) => {
                set.insert(address_text(&a));
            }
            Err(e) => report.invalid.push((i + 1, e)),
        }
    }
    let all: Vec<String> = set.into_iter().collect();
    for chunk in all.chunks(10_000) {
        let r = sqlx::query(
            "INSERT INTO chainsync.tracked_addresses (address, source) \
             SELECT a, 'import' FROM UNNEST($1::text[]) AS a ON CONFLICT (address) DO NOTHING",
        )
        .bind(chunk)
        .execute(db)
        .await?;
        report.inserted += r.rows_affected();
        report.already_tracked += chunk.len() as u64 - r.rows_affected();
    }
    Ok(report)
}

/// Registers a submitted transaction for `check-pending-tx`, with the addresses it touches (their
/// balances are re-synced once it confirms). `Ok(false)` when it was already tracked; the
/// addresses are then merged in. The hash is 64 hex digits with or without `0x` (TRON writes
/// transaction ids without), the addresses in any form of [`parse_address_any`]; both are stored
/// canonically, as the table's trigger does for rows an application inserts itself.
pub async fn track_tx(
    db: &PgPool,
    chain_id: u64,
    hash: &str,
    addresses: &[&str],
) -> Result<bool, TrackingError> {
    let h = parse_hash(hash).map_err(TrackingError::Id)?;
    let chain = i64::try_from(chain_id).map_err(|_| TrackingError::ChainId(chain_id))?;
    let mut list = BTreeSet::new();
    for a in addresses {
        list.insert(address_text(
            &parse_address_any(a).map_err(TrackingError::Id)?,
        ));
    }
    let list: Vec<String> = list.into_iter().collect();
    let inserted: bool = sqlx::query_scalar(
        "INSERT INTO chainsync.tracked_txs (chain_id, hash, addresses) VALUES ($1, $2, $3) \
         ON CONFLICT (chain_id, hash) DO UPDATE SET addresses = ARRAY( \
             SELECT DISTINCT unnest(chainsync.tracked_txs.addresses || EXCLUDED.addresses) ORDER BY 1) \
         RETURNING (xmax = 0)",
    )
    .bind(chain)
    .bind(hash_text(&h))
    .bind(&list)
    .fetch_one(db)
    .await?;
    Ok(inserted)
}

/// A row of `chainsync.tracked_addresses`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TrackedAddress {
    pub address: String,
    pub label: Option<String>,
    pub source: String,
    pub added_at: chrono::DateTime<chrono::Utc>,
}

/// Addresses registered in the table, newest first.
pub async fn list_addresses(
    db: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<Vec<TrackedAddress>, TrackingError> {
    Ok(sqlx::query_as(
        "SELECT address, label, source, added_at FROM chainsync.tracked_addresses
         ORDER BY added_at DESC, address LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?)
}

/// A row of `chainsync.tracked_txs`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TrackedTx {
    pub chain_id: i64,
    pub hash: String,
    pub state: String,
    pub block_number: Option<i64>,
    pub confirmations: i64,
    pub first_seen: chrono::DateTime<chrono::Utc>,
    pub error: Option<String>,
}

/// Tracked transactions, optionally of one chain and in one state, newest first.
pub async fn list_txs(
    db: &PgPool,
    chain_id: Option<u64>,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<TrackedTx>, TrackingError> {
    let chain = chain_id
        .map(|c| i64::try_from(c).map_err(|_| TrackingError::ChainId(c)))
        .transpose()?;
    Ok(sqlx::query_as(
        "SELECT chain_id, hash, state, block_number, confirmations, first_seen, error
         FROM chainsync.tracked_txs
         WHERE ($1::bigint IS NULL OR chain_id = $1) AND ($2::text IS NULL OR state = $2)
         ORDER BY first_seen DESC LIMIT $3",
    )
    .bind(chain)
    .bind(state)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Every tracked address, from all configured sources, sorted and without duplicates:
/// `tracking.addresses`, the `tracked_addresses` table (`tracking.use_table`) and the rows of
/// `tracking.query` (run in a read-only transaction; rows that are not addresses are skipped and
/// counted in a warning).
pub async fn tracked_addresses(
    db: &PgPool,
    settings: &DomainConfig,
) -> Result<Vec<Address>, JobError> {
    let t = &settings.tracking;
    let mut set = BTreeSet::new();
    set.extend(t.addresses.iter().map(|a| a.address));
    if t.use_table {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT address FROM chainsync.tracked_addresses")
                .fetch_all(db)
                .await?;
        for a in rows {
            // The table's CHECK constraint guarantees the format.
            if let Ok(a) = parse_address(&a) {
                set.insert(a);
            }
        }
    }
    if let Some(q) = &t.query {
        let mut tx = db.begin().await?;
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| match e {
                e @ sqlx::Error::Database(_) => JobError::fatal_from("tracking.query failed", e),
                other => JobError::from(other),
            })?;
        tx.rollback().await?;
        let mut skipped = 0usize;
        for row in rows {
            let v: Result<Option<String>, _> = row.try_get(0);
            match v {
                Ok(Some(s)) => match parse_address_any(&s) {
                    Ok(a) => {
                        set.insert(a);
                    }
                    Err(_) => skipped += 1,
                },
                Ok(None) => skipped += 1,
                Err(e) => {
                    return Err(JobError::fatal_from(
                        "tracking.query: the first column must be text holding addresses",
                        e,
                    ));
                }
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "tracking.query returned rows that are not addresses"
            );
        }
    }
    Ok(set.into_iter().collect())
}
