//! Health: database reachable and migrated, queue depth, dead letters, per-chain sync lag,
//! ingestion lag, points lag, folded into a score 0–100.
//!
//! Score formula (each deduction capped):
//! - database unreachable or migrations missing: score 0;
//! - dead letters: −1 per dead letter, at most −30;
//! - overdue jobs (runnable for more than 5 minutes): −1 per 100, at most −20;
//! - per configured chain whose newest stored balance is older than 1 hour (or none at all while
//!   addresses are tracked): −20 each, at most −40;
//! - ingestion checkpoint not advanced for 10 minutes (chains with `[[ingest]]`): −10 each, at most −20;
//! - points: −10 when addresses have no window computed for more than 2 hours (if points are used).
//!
//! `chainsync health` exits non-zero below `min_score` (60).

use serde::Serialize;
use sqlx::PgPool;

use crate::app::App;

#[derive(Debug, Clone, Serialize)]
pub struct ChainHealth {
    pub chain_id: u64,
    pub name: String,
    pub last_block: Option<i64>,
    pub sync_lag_seconds: Option<i64>,
    pub ingest_block: Option<i64>,
    pub ingest_lag_seconds: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub score: u8,
    pub healthy: bool,
    pub database: bool,
    pub migrated: bool,
    pub queue_available: i64,
    pub queue_running: i64,
    pub queue_overdue: i64,
    pub dead_letters: i64,
    pub chains: Vec<ChainHealth>,
    pub points_lagging_addresses: Option<i64>,
    pub problems: Vec<String>,
}

pub const MIN_SCORE: u8 = 60;

async fn scalar(pool: &PgPool, sql: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
}

async fn table_exists(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
}

/// Builds the report; never fails (an unreachable database is a score of 0).
pub async fn report(app: &App) -> HealthReport {
    let mut r = HealthReport {
        score: 0,
        healthy: false,
        database: false,
        migrated: false,
        queue_available: 0,
        queue_running: 0,
        queue_overdue: 0,
        dead_letters: 0,
        chains: Vec::new(),
        points_lagging_addresses: None,
        problems: Vec::new(),
    };
    match collect(app, &mut r).await {
        Ok(()) => {}
        Err(e) => {
            r.problems.push(format!("database: {e}"));
            r.score = 0;
        }
    }
    r.healthy = r.score >= MIN_SCORE;
    r
}

async fn collect(app: &App, r: &mut HealthReport) -> Result<(), sqlx::Error> {
    let pool = app.pool();
    scalar(pool, "SELECT 1::bigint").await?;
    r.database = true;
    let expected = sqlx::migrate!("./migrations").iter().count() as i64;
    let applied = if table_exists(pool, "public._sqlx_migrations").await? {
        scalar(pool, "SELECT count(*) FROM _sqlx_migrations WHERE success").await?
    } else {
        0
    };
    r.migrated = applied >= expected;
    if !r.migrated {
        r.problems.push(format!(
            "{applied} of {expected} migrations applied: run chainsync migrate"
        ));
        return Ok(());
    }
    r.queue_available = scalar(
        pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'available'",
    )
    .await?;
    r.queue_running = scalar(
        pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'running'",
    )
    .await?;
    r.queue_overdue = scalar(
        pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'available' AND run_at < now() - interval '5 minutes'",
    )
    .await?;
    r.dead_letters = scalar(pool, "SELECT count(*) FROM chainsync.dead_letters").await?;
    let mut score: i64 = 100;
    score -= r.dead_letters.min(30);
    score -= (r.queue_overdue / 100).min(20);
    if r.dead_letters > 0 {
        r.problems
            .push(format!("{} dead letter(s)", r.dead_letters));
    }
    let mut chain_penalty = 0;
    let mut ingest_penalty = 0;
    for c in &app.config.domain.chains {
        let cid = i64::try_from(c.chain_id).unwrap_or(i64::MAX);
        let (last_block, updated): (Option<i64>, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT max(block_number), max(updated_at) FROM chainsync.balances WHERE chain_id = $1",
        )
        .bind(cid)
        .fetch_one(pool)
        .await?;
        let lag = updated.map(crate::http::age_secs);
        if lag.is_none_or(|l| l > 3600) {
            chain_penalty += 20;
            r.problems.push(format!(
                "chain {}: no balance synced in the last hour",
                c.name
            ));
        }
        let ingest: Option<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT block_number, updated_at FROM chainsync.ingest_checkpoints WHERE chain_id = $1",
        )
        .bind(cid)
        .fetch_optional(pool)
        .await?;
        let ingest_lag = ingest.map(|(_, t)| crate::http::age_secs(t));
        if app
            .config
            .domain
            .ingest
            .iter()
            .any(|g| g.chain_id == c.chain_id)
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
    score -= i64::min(chain_penalty, 40) + i64::min(ingest_penalty, 20);
    if table_exists(pool, "chainsync.points_history").await? {
        let lagging = scalar(
            pool,
            "SELECT count(*) FROM (SELECT chain_id, token, address, max(window_start) AS last
               FROM chainsync.points_history GROUP BY 1, 2, 3) p
             WHERE p.last < now() - interval '2 hours'",
        )
        .await?;
        r.points_lagging_addresses = Some(lagging);
        if lagging > 0 {
            score -= 10;
            r.problems.push(format!(
                "{lagging} address(es) with points older than 2 hours"
            ));
        }
    }
    r.score = u8::try_from(score.clamp(0, 100)).unwrap_or(0);
    Ok(())
}
