//! The domain's part of health: per chain, how fresh stored balances and event ingestion are,
//! and whether points windows keep up. The daemon folds it into its score (see the binary's
//! health module for the formula).

use std::time::Duration;

use chainsync_engine::Invalid;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::settings::DomainConfig;

/// `[health]`: the thresholds of the score (see config/default.toml for the formula).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A configured chain whose newest stored balance is older than this costs 20 points.
    #[serde(with = "chainsync_engine::duration::text")]
    pub balance_max_age: Duration,
    /// A chain with `[[ingest]]` whose checkpoint has not advanced for this long costs 10.
    #[serde(with = "chainsync_engine::duration::text")]
    pub ingest_max_age: Duration,
    /// Addresses without a points window computed for this long cost 10.
    #[serde(with = "chainsync_engine::duration::text")]
    pub points_max_age: Duration,
    /// `chainsync health` exits non-zero (and `healthy` is false) below this score.
    pub min_score: u8,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            balance_max_age: Duration::from_secs(3600),
            ingest_max_age: Duration::from_secs(600),
            points_max_age: Duration::from_secs(2 * 3600),
            min_score: 60,
        }
    }
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, d) in [
            ("balance_max_age", self.balance_max_age),
            ("ingest_max_age", self.ingest_max_age),
            ("points_max_age", self.points_max_age),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(30 * 86400) {
                return Err(Invalid::at(format!("health.{key}"), "must be in 1s..=30d"));
            }
        }
        if !(1..=100).contains(&self.min_score) {
            return Err(Invalid::at(
                "health.min_score",
                format!("must be in 1..=100, got {}", self.min_score),
            ));
        }
        Ok(())
    }
}

/// One deduction from the score and why.
#[derive(Debug, Clone, Serialize)]
pub struct Deduction {
    pub reason: String,
    pub points: i64,
}

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
    /// The thresholds used.
    pub thresholds: HealthConfig,
    /// The domain's deductions, each with its reason (already capped).
    pub deductions: Vec<Deduction>,
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
/// `health.balance_max_age` (or none at all): −20, at most −40; per chain with `[[ingest]]` whose
/// checkpoint has not advanced for `health.ingest_max_age`: −10, at most −20; addresses with no
/// points window computed for more than `health.points_max_age` (when points are used): −10.
pub async fn check(pool: &PgPool, settings: &DomainConfig) -> Result<DomainHealth, sqlx::Error> {
    let th = &settings.health;
    let balance_max = i64::try_from(th.balance_max_age.as_secs()).unwrap_or(i64::MAX);
    let ingest_max = i64::try_from(th.ingest_max_age.as_secs()).unwrap_or(i64::MAX);
    let mut r = DomainHealth {
        thresholds: th.clone(),
        ..DomainHealth::default()
    };
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
        if lag.is_none_or(|l| l > balance_max) {
            chain_penalty += 20;
            r.problems.push(format!(
                "chain {}: no balance synced in the last {}",
                c.name,
                chainsync_engine::duration::format_duration(th.balance_max_age)
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
            && ingest_lag.is_none_or(|l| l > ingest_max)
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
    let chain_penalty = i64::min(chain_penalty, 40);
    let ingest_penalty = i64::min(ingest_penalty, 20);
    if chain_penalty > 0 {
        r.deductions.push(Deduction {
            reason: "balances older than health.balance_max_age".into(),
            points: chain_penalty,
        });
    }
    if ingest_penalty > 0 {
        r.deductions.push(Deduction {
            reason: "ingestion not advancing within health.ingest_max_age".into(),
            points: ingest_penalty,
        });
    }
    r.deduction = chain_penalty + ingest_penalty;
    let lagging: i64 = sqlx::query_scalar(
        // Windows close by chain time: on a chain with ingestion, "now" is the time of the
        // ingestion checkpoint's block (a stalled ingestion is reported above).
        "SELECT count(*) FROM (SELECT chain_id, token, address, max(window_start) AS last
           FROM chainsync.points_history GROUP BY 1, 2, 3) p
         LEFT JOIN chainsync.ingest_checkpoints c USING (chain_id)
         WHERE p.last < coalesce(c.block_time, now()) - make_interval(secs => $1)",
    )
    .bind(th.points_max_age.as_secs_f64())
    .fetch_one(pool)
    .await?;
    r.points_lagging_addresses = Some(lagging);
    if lagging > 0 {
        r.deduction += 10;
        r.deductions.push(Deduction {
            reason: "points older than health.points_max_age".into(),
            points: 10,
        });
        r.problems.push(format!(
            "{lagging} address(es) with points older than {}",
            chainsync_engine::duration::format_duration(th.points_max_age)
        ));
    }
    Ok(r)
}
