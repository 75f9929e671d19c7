//! Partitioned history (`balance_changes`, `events`, `points_history`): partitions created ahead
//! of time and retention that drops whole partitions, run by the daemon's maintenance pass.
//!
//! `balance_changes` and `events` have a table per chain, split into periods of the chain's
//! blocks (a month of block time each); `points_history` a partition per month of windows. The
//! work is done by SQL functions (migration `20261130000100_partitioned_history.sql`); several
//! daemons may run the pass at once (a transaction-scoped advisory lock serializes them).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use chainsync_engine::Invalid;

/// How long a history is kept: a duration, or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    #[default]
    Forever,
    For(Duration),
}

impl Serialize for Keep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Forever => s.serialize_str("forever"),
            Self::For(d) => s.serialize_str(&chainsync_engine::duration::format_duration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "forever" {
            return Ok(Self::Forever);
        }
        chainsync_engine::duration::parse_duration(&s)
            .map(Self::For)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"forever\"")))
    }
}

/// `[history]` in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Balance history; each holder's last row before the kept time stays (amounts before a
    /// block stay exact).
    pub balance_changes: Keep,
    /// Decoded events.
    pub events: Keep,
    /// Computed points windows.
    pub points_history: Keep,
    /// Blocks per period of a chain whose block times do not tell its rate.
    pub period_blocks: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            balance_changes: Keep::Forever,
            events: Keep::Forever,
            points_history: Keep::Forever,
            period_blocks: 216_000,
        }
    }
}

/// Partitions are whole months: a shorter retention would drop nothing sooner.
const MIN_KEEP: Duration = Duration::from_secs(86_400);

impl HistoryConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (table, keep) in self.kept() {
            if let Keep::For(d) = keep
                && d < MIN_KEEP
            {
                return Err(Invalid::at(
                    format!("history.{table}"),
                    "must be at least 1d (or \"forever\")",
                ));
            }
        }
        if !(1..=i64::MAX as u64 / 4).contains(&self.period_blocks) {
            return Err(Invalid::at("history.period_blocks", "must be positive"));
        }
        Ok(())
    }

    fn kept(&self) -> [(&'static str, Keep); 3] {
        [
            ("balance_changes", self.balance_changes),
            ("events", self.events),
            ("points_history", self.points_history),
        ]
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryPass {
    pub created: i64,
    pub dropped: i64,
}

/// Serializes passes of several daemons (transaction-scoped: no session state).
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('chainsync.history', 0))";
/// A pass waits this long for a partition's lock, then gives up until the next pass (rather than
/// queue every reader of the table behind it).
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

/// A transaction of the pass: other daemons' passes wait for it, its partition locks do not wait
/// long.
async fn pass_tx(
    db: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(LOCK).execute(&mut *tx).await?;
    sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
    Ok(tx)
}

/// Creates the partitions the next writes need and drops those past their retention, at `now`.
pub async fn maintain(
    db: &sqlx::PgPool,
    config: &HistoryConfig,
    now: DateTime<Utc>,
) -> Result<HistoryPass, sqlx::Error> {
    let mut pass = HistoryPass::default();
    let period = i64::try_from(config.period_blocks).unwrap_or(i64::MAX);
    let mut tx = pass_tx(db).await?;
    let created: i32 = sqlx::query_scalar("SELECT chainsync.history_prepare($1, $2)")
        .bind(now)
        .bind(period)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    pass.created = i64::from(created);
    for (table, keep) in config.kept() {
        let Keep::For(d) = keep else { continue };
        let Ok(d) = chrono::Duration::from_std(d) else {
            continue;
        };
        let mut tx = pass_tx(db).await?;
        let dropped: i32 = sqlx::query_scalar("SELECT chainsync.history_retain($1, $2)")
            .bind(table)
            .bind(now - d)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        pass.dropped += i64::from(dropped);
    }
    Ok(pass)
}
