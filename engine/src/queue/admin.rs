//! Listing, inspecting and cancelling jobs; listing, replaying and purging dead letters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Queue, QueueError};

const REPLAY: &str = include_str!("sql/replay.sql");

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub args: Value,
    pub unique_key: Option<String>,
    pub errors: Value,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<Uuid>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// W3C traceparent given at enqueue.
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub args: Value,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    pub errors: Value,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub failed_at: DateTime<Utc>,
    /// W3C traceparent given at enqueue (kept on replay).
    pub traceparent: Option<String>,
}

/// Job states a filter may name.
pub const STATES: [&str; 4] = ["available", "running", "completed", "cancelled"];

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

fn check_page(limit: i64, offset: i64) -> Result<(), QueueError> {
    if !(1..=10_000).contains(&limit) {
        return Err(QueueError::Invalid(format!(
            "limit must be in 1..=10000, got {limit}"
        )));
    }
    if offset < 0 {
        return Err(QueueError::Invalid(format!(
            "offset must not be negative, got {offset}"
        )));
    }
    Ok(())
}

pub(super) const JOB_COLUMNS: &str =
    "id, kind, queue, state::text AS state, attempt, max_attempts, priority, args,
    unique_key, errors, run_at, created_at, started_at, finished_at, lease_owner, lease_expires_at,
    traceparent";

/// How deep the queue is, for health checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Depth {
    pub available: i64,
    pub running: i64,
    /// Runnable for longer than the `overdue_after` asked for.
    pub overdue: i64,
    pub dead_letters: i64,
}

/// A job that failed at least once and will run again, with its last error.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Failure {
    pub id: Uuid,
    pub kind: String,
    pub attempt: i32,
    pub last_error: Value,
}

impl Queue {
    /// Counts by state in one statement.
    pub async fn depth(&self, overdue_after: std::time::Duration) -> Result<Depth, QueueError> {
        Ok(sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'available') AS available,
                    count(*) FILTER (WHERE state = 'running') AS running,
                    count(*) FILTER (WHERE state = 'available'
                                     AND run_at < now() - make_interval(secs => $1)) AS overdue,
                    (SELECT count(*) FROM chainsync.dead_letters) AS dead_letters
             FROM chainsync.jobs WHERE state IN ('available', 'running')",
        )
        .bind(overdue_after.as_secs_f64())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Jobs that failed and wait for (or run) another attempt, most recent first.
    pub async fn recent_failures(&self, limit: i64) -> Result<Vec<Failure>, QueueError> {
        check_page(limit, 0)?;
        Ok(sqlx::query_as(
            "SELECT id, kind, attempt, errors -> -1 AS last_error FROM chainsync.jobs
             WHERE jsonb_array_length(errors) > 0 AND state IN ('available', 'running')
             ORDER BY run_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Jobs of `kind` not finished yet (queued, waiting for a retry or running).
    pub async fn open_jobs(&self, kind: &str) -> Result<i64, QueueError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM chainsync.jobs WHERE kind = $1 AND state IN ('available', 'running')",
        )
        .bind(kind)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<JobRow>, QueueError> {
        check_page(f.limit, f.offset)?;
        if let Some(s) = &f.state
            && !STATES.contains(&s.as_str())
        {
            return Err(QueueError::Invalid(format!(
                "unknown state {s:?} (one of: {})",
                STATES.join(", ")
            )));
        }
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM chainsync.all_jobs
             WHERE ($1::text IS NULL OR state::text = $1) AND ($2::text IS NULL OR kind = $2)
               AND ($3::text IS NULL OR queue = $3)
             ORDER BY id DESC LIMIT $4 OFFSET $5"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&f.state)
            .bind(&f.kind)
            .bind(&f.queue)
            .bind(f.limit)
            .bind(f.offset)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn get_job(&self, id: Uuid) -> Result<JobRow, QueueError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM chainsync.all_jobs WHERE id = $1");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| QueueError::NotFound(format!("job {id}")))
    }

    /// Cancels an available or running job. A running job's eventual outcome is then refused by
    /// fencing; its side effects so far stay (they are idempotent by design).
    pub async fn cancel_job(&self, id: Uuid) -> Result<(), QueueError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chainsync.finish_jobs(ARRAY[$1::uuid], 'cancelled')",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        if n == 1 {
            return Ok(());
        }
        let job = self.get_job(id).await?;
        Err(QueueError::Conflict(format!(
            "job {id} is {} and cannot be cancelled",
            job.state
        )))
    }

    /// Jobs per (queue, kind, state), for health and metrics.
    pub async fn counts(&self) -> Result<Vec<(String, String, String, i64)>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT queue, kind, state::text, count(*) FROM chainsync.all_jobs
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn list_dead(&self, f: &DlqFilter) -> Result<Vec<DeadLetter>, QueueError> {
        check_page(f.limit, f.offset)?;
        Ok(sqlx::query_as(
            "SELECT id, kind, queue, args, priority, attempt, max_attempts, unique_key, errors,
                    reason, created_at, failed_at, traceparent
             FROM chainsync.dead_letters
             WHERE ($1::text IS NULL OR kind = $1) AND ($2::timestamptz IS NULL OR failed_at >= $2)
               AND ($3::timestamptz IS NULL OR failed_at < $3)
             ORDER BY failed_at DESC, id DESC LIMIT $4 OFFSET $5",
        )
        .bind(&f.kind)
        .bind(f.since)
        .bind(f.until)
        .bind(f.limit)
        .bind(f.offset)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn get_dead(&self, id: Uuid) -> Result<DeadLetter, QueueError> {
        sqlx::query_as(
            "SELECT id, kind, queue, args, priority, attempt, max_attempts, unique_key, errors,
                    reason, created_at, failed_at, traceparent
             FROM chainsync.dead_letters WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| QueueError::NotFound(format!("dead letter {id}")))
    }

    pub async fn count_dead(&self) -> Result<i64, QueueError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM chainsync.dead_letters")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Moves one dead letter back to the queue with its attempts reset.
    pub async fn replay(&self, id: Uuid) -> Result<Uuid, QueueError> {
        let dl = self.get_dead(id).await?;
        let done = self.replay_where(Some(&[id]), None, None).await?;
        if done.contains(&id) {
            return Ok(id);
        }
        Err(QueueError::Conflict(format!(
            "dead letter {id} not replayed: an active {} job holds its unique key {:?}",
            dl.kind,
            dl.unique_key.unwrap_or_default()
        )))
    }

    /// Replays every dead letter of `kind` (and failed since `since`); returns the ids moved.
    /// Dead letters whose unique key is held by an active job stay where they are.
    pub async fn replay_filter(
        &self,
        kind: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Uuid>, QueueError> {
        if kind.is_none() && since.is_none() {
            return Err(QueueError::Invalid(
                "replay by filter needs a kind or a since time".into(),
            ));
        }
        self.replay_where(None, kind, since).await
    }

    /// Replays these dead letters; returns the ids moved back to the queue.
    pub async fn replay_ids(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, QueueError> {
        self.replay_where(Some(ids), None, None).await
    }

    async fn replay_where(
        &self,
        ids: Option<&[Uuid]>,
        kind: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Uuid>, QueueError> {
        Ok(sqlx::query_scalar(REPLAY)
            .bind(ids)
            .bind(kind)
            .bind(since)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Deletes dead letters for good: one id, or every one of `kind` / failed before `before`.
    pub async fn purge(
        &self,
        id: Option<Uuid>,
        kind: Option<&str>,
        before: Option<DateTime<Utc>>,
        all: bool,
    ) -> Result<u64, QueueError> {
        if id.is_none() && kind.is_none() && before.is_none() && !all {
            return Err(QueueError::Invalid(
                "purge needs an id, a kind, a before time, or --all".into(),
            ));
        }
        let n = sqlx::query(
            "DELETE FROM chainsync.dead_letters
             WHERE ($1::uuid IS NULL OR id = $1) AND ($2::text IS NULL OR kind = $2)
               AND ($3::timestamptz IS NULL OR failed_at < $3)",
        )
        .bind(id)
        .bind(kind)
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if let (Some(id), 0) = (id, n) {
            return Err(QueueError::NotFound(format!("dead letter {id}")));
        }
        Ok(n)
    }
}
