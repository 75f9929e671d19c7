//! The domain's part of health: per chain, how fresh stored balances and event ingestion are,
//! and whether points windows keep up. The daemon folds it into its score (see the binary's
//! health module for the formula).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::settings::DomainConfig;

#[derive(Debug, Clone, Serialize)]
pub struct ChainHealth {
    pub chain_id: u64,
    pub name: String,
    pub last_block: Option<i64>,
    pub sync_lag_seconds: Option<i64>,
    pub ingest_block: Option<i64>,
    pub ingest_lag_seconds: Option<i64>,
}

/// What the domain reports; `deduction` is subtracted from the score (0–70).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainHealth {
    pub chains: Vec<ChainHealth>,
    pub points_lagging_addresses: Option<i64>,
    #[serde(skip)]
    pub deduction: i64,
    #[serde(skip)]
    pub problems: Vec<String>,
}

/// Seconds since `t` (0 for a time in the future).
pub fn age_secs(t: DateTime<Utc>) -> i64 {
    (Utc::now() - t).num_seconds().max(0)
}

/// Deductions (each capped): per configured chain whose newest stored balance is older than
/// 1 hour (or none at all): −20, at most −40; per chain with `[[ingest]]` whose checkpoint has
/// not advanced for 10 minutes: −10, at most −20; addresses with no points window computed for
/// more than 2 hours (when points are used): −10.
pub async fn check(pool: &PgPool, settings: &DomainConfig) -> Result<DomainHealth, sqlx::Error> {
    let mut r = DomainHealth::default();
    let mut chain_penalty = 0;
    let mut ingest_penalty = 0;
    for c in &settings.chains {
        let cid = i64::try_from(c.chain_id).unwrap_or(i64::MAX);
        let (last_block, updated): (Option<i64>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT max(block_number), max(updated_at) FROM chainsync.balances WHERE chain_id = $1",
        )
        .bind(cid)
        .fetch_one(pool)
        .await?;
        let lag = updated.map(age_secs);
        if lag.is_none_or(|l| l > 3600) {
            chain_penalty += 20;
            r.problems.push(format!(
                "chain {}: no balance synced in the last hour",
                c.name
            ));
        }
        let ingest: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT block_number, updated_at FROM chainsync.ingest_checkpoints WHERE chain_id = $1",
        )
        .bind(cid)
        .fetch_optional(pool)
        .await?;
        let ingest_lag = ingest.map(|(_, t)| age_secs(t));
        if settings.ingest.iter().any(|g| g.chain_id == c.chain_id)
            && ingest_lag.is_none_or(|l| l > 600)
        {
            ingest_penalty += 10;
            r.problems
                .push(format!("chain {}: event ingestion not advancing", c.name));
        }
        r.chains.push(ChainHealth {
            chain_id: c.chain_id,
            name: c.name.clone(),
            last_block,
            sync_lag_seconds: lag,
            ingest_block: ingest.map(|(b, _)| b),
            ingest_lag_seconds: ingest_lag,
        });
    }
    r.deduction = i64::min(chain_penalty, 40) + i64::min(ingest_penalty, 20);
    let lagging: i64 = sqlx::query_scalar(
        // Windows close by chain time: on a chain with ingestion, "now" is the time of the
        // ingestion checkpoint's block (a stalled ingestion is reported above).
        "SELECT count(*) FROM (SELECT chain_id, token, address, max(window_start) AS last
           FROM chainsync.points_history GROUP BY 1, 2, 3) p
         LEFT JOIN chainsync.ingest_checkpoints c USING (chain_id)
         WHERE p.last < coalesce(c.block_time, now()) - interval '2 hours'",
    )
    .fetch_one(pool)
    .await?;
    r.points_lagging_addresses = Some(lagging);
    if lagging > 0 {
        r.deduction += 10;
        r.problems.push(format!(
            "{lagging} address(es) with points older than 2 hours"
        ));
    }
    Ok(r)
}
