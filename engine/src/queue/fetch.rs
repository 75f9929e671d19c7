//! Fetching runnable jobs with a lease.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::{Queue, QueueError};

const FETCH: &str = include_str!("sql/fetch.sql");
const HEARTBEAT: &str = include_str!("sql/heartbeat.sql");
const RELEASE: &str = include_str!("sql/release.sql");

/// A job taken by a worker: everything needed to run it and to report its outcome.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Fetched {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub args: Value,
    /// This run's attempt number (1-based); the fencing token together with the owner.
    pub attempt: i32,
    pub max_attempts: i32,
    pub backoff_base_ms: Option<i64>,
    pub backoff_cap_ms: Option<i64>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Queue {
    /// Leases up to `limit` runnable jobs of `queue` to `owner` for `lease`.
    pub async fn fetch(
        &self,
        queue: &str,
        limit: usize,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Vec<Fetched>, QueueError> {
        Ok(sqlx::query_as(FETCH)
            .bind(queue)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(owner)
            .bind(millis(lease))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Extends the leases of the jobs `held` that `owner` still runs; returns how many.
    pub async fn heartbeat(
        &self,
        owner: Uuid,
        held: &[Uuid],
        lease: Duration,
    ) -> Result<u64, QueueError> {
        if held.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(HEARTBEAT)
            .bind(owner)
            .bind(millis(lease))
            .bind(held)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Gives back every job `owner` still holds, without using an attempt.
    pub async fn release(&self, owner: Uuid) -> Result<u64, QueueError> {
        Ok(sqlx::query(RELEASE)
            .bind(owner)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
