//! Health: database reachable and migrated, queue depth, dead letters, per-chain sync lag,
//! ingestion lag, points lag, folded into a score 0–100.
//!
//! Score formula (each deduction capped; thresholds in `[health]`, see config/default.toml):
//! - database unreachable or migrations missing: score 0;
//! - dead letters: −1 per dead letter, at most −30;
//! - overdue jobs (runnable for more than 5 minutes): −1 per 100, at most −20;
//! - the domain's deductions (`chainsync_jobs::health::check`): per configured chain whose newest
//!   stored balance is older than `health.balance_max_age` (1h), −20 each, at most −40;
//!   ingestion checkpoint not advanced for `health.ingest_max_age` (10m, chains with
//!   `[[ingest]]`), −10 each, at most −20; −10 when addresses have no points window computed for
//!   more than `health.points_max_age` (2h).
//!
//! `chainsync health` exits non-zero below `health.min_score` (60). The report lists the
//! thresholds and every deduction with its reason.

use serde::Serialize;

use chainsync_jobs::health::{ChainHealth, Deduction, HealthConfig};

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
    /// The thresholds in force (`[health]`).
    pub thresholds: HealthConfig,
    /// What was taken off 100, with the reasons.
    pub deductions: Vec<Deduction>,
    pub problems: Vec<String>,
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
        thresholds: app.config.domain.health.clone(),
        deductions: Vec::new(),
        problems: Vec::new(),
    };
    match collect(app, &mut r).await {
        Ok(()) => {}
        Err(e) => {
            r.problems.push(format!("database: {e}"));
            r.score = 0;
        }
    }
    r.healthy = r.score >= r.thresholds.min_score;
    r
}

async fn collect(app: &App, r: &mut HealthReport) -> anyhow::Result<()> {
    let pool = app.pool();
    sqlx::query("SELECT 1").execute(pool).await?;
    r.database = true;
    let (applied, expected) = chainsync_jobs::migrations_applied(pool).await?;
    r.migrated = applied >= expected;
    if !r.migrated {
        r.problems.push(format!(
            "{applied} of {expected} migrations applied: run chainsync migrate"
        ));
        return Ok(());
    }
    let depth = app.queue.depth(std::time::Duration::from_secs(300)).await?;
    r.queue_available = depth.available;
    r.queue_running = depth.running;
    r.queue_overdue = depth.overdue;
    r.dead_letters = depth.dead_letters;
    let mut score: i64 = 100;
    let dead = r.dead_letters.min(30);
    let overdue = (r.queue_overdue / 100).min(20);
    score -= dead + overdue;
    if dead > 0 {
        r.deductions.push(Deduction {
            reason: "dead letters (1 each)".into(),
            points: dead,
        });
    }
    if overdue > 0 {
        r.deductions.push(Deduction {
            reason: "jobs overdue by more than 5 minutes (1 per 100)".into(),
            points: overdue,
        });
    }
    if r.dead_letters > 0 {
        r.problems
            .push(format!("{} dead letter(s)", r.dead_letters));
    }
    let domain = chainsync_jobs::health::check(pool, &app.config.domain).await?;
    score -= domain.deduction;
    r.chains = domain.chains;
    r.points_lagging_addresses = domain.points_lagging_addresses;
    r.deductions.extend(domain.deductions);
    r.problems.extend(domain.problems);
    r.score = u8::try_from(score.clamp(0, 100)).unwrap_or(0);
    Ok(())
}
