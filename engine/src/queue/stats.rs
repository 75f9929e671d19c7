//! Figures for metrics and alerts: queue depth and the age of the oldest due job per queue,
//! dead letters per kind.

use chrono::{DateTime, Utc};

use super::{Queue, QueueError};

/// One queue's backlog: jobs available (due now or later) and how long the oldest due one has
/// waited (0 when none is due).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueBacklog {
    pub queue: String,
    pub available: i64,
    pub due: i64,
    pub oldest_due_age_secs: f64,
}

/// Dead letters of one kind: how many, and how many failed since a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterCount {
    pub kind: String,
    pub total: i64,
    pub since: i64,
}

impl Queue {
    /// Backlog of every queue that has available jobs (uses the fetch index).
    pub async fn backlog(&self) -> Result<Vec<QueueBacklog>, QueueError> {
        let rows: Vec<(String, i64, i64, Option<f64>)> = sqlx::query_as(
            "SELECT queue, count(*), count(*) FILTER (WHERE run_at <= now()),
                    extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
             FROM chainsync.jobs WHERE state = 'available' GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(queue, available, due, age)| QueueBacklog {
                queue,
                available,
                due,
                oldest_due_age_secs: age.unwrap_or(0.0).max(0.0),
            })
            .collect())
    }

    /// Dead letters per kind, with those that failed at or after `since`.
    pub async fn dead_letters_by_kind(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<DeadLetterCount>, QueueError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT kind, count(*), count(*) FILTER (WHERE failed_at >= $1)
             FROM chainsync.dead_letters GROUP BY 1 ORDER BY 1",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(kind, total, since)| DeadLetterCount { kind, total, since })
            .collect())
    }
}
