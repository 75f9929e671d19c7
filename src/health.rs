//! Health: database reachable and migrated, queue depth, dead letters, per-chain sync lag,
//! ingestion lag, points lag, folded into a score 0–100.
//!
//! Score formula (each deduction capped):
//! - database unreachable or migrations missing: score 0;
//! - dead letters: −1 per dead letter, at most −30;
//! - overdue jobs (runnable for more than 5 minutes): −1 per 100, at most −20;
//! - the domain's deductions (`chainsync_jobs::health::check`): per configured chain whose newest
//!   stored balance is older than 1 hour, −20 each, at most −40; ingestion checkpoint not advanced
//!   for 10 minutes (chains with `[[ingest]]`), −10 each, at most −20; −10 when addresses have no
//!   points window computed for more than 2 hours.
//!
//! `chainsync health` exits non-zero below `min_score` (60).

use serde::Serialize;
use sqlx::PgPool;

use chainsync_jobs::health::ChainHealth;

use crate::app::App;

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
    let expected = chainsync_jobs::MIGRATOR.iter().count() as i64;
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
    let domain = chainsync_jobs::health::check(pool, &app.config.domain).await?;
    score -= domain.deduction;
    r.chains = domain.chains;
    r.points_lagging_addresses = domain.points_lagging_addresses;
    r.problems.extend(domain.problems);
    r.score = u8::try_from(score.clamp(0, 100)).unwrap_or(0);
    Ok(())
}
