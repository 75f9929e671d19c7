//! Fetching runnable jobs with a lease.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::{Queue, QueueError};

const FETCH: &str = include_str!("sql/fetch.sql");
const FETCH_CONTROLLED: &str = "SELECT * FROM chainsync.fetch_controlled($1, $2::int, $3, $4)";
/// [`FETCH_CONTROLLED`] with each job's stored traceparent (trace propagation on): a look-up by
/// primary key per job taken, in the same statement.
const FETCH_CONTROLLED_TRACED: &str = "WITH f AS MATERIALIZED (
    SELECT * FROM chainsync.fetch_controlled($1, $2::int, $3, $4))
SELECT f.*, (SELECT j.traceparent FROM chainsync.jobs j WHERE j.id = f.id) AS traceparent FROM f";
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
    /// Taken under a cluster-wide limit (of its queue or kind): its end may let another start.
    #[sqlx(default)]
    pub limited: bool,
    /// W3C traceparent given at enqueue: the parent of the run's span.
    #[sqlx(default)]
    pub traceparent: Option<String>,
}

/// What stands between a fetch and the jobs of its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The plain fetch statement serves the queue (no limit, or none that holds anything back).
    None,
    /// The queue is paused: nothing was taken.
    Paused,
    /// Limits narrow the fetches (fetch through `chainsync.fetch_controlled`), but held nothing
    /// back this time.
    Open,
    /// Limits held jobs back: fetch again when a token comes (`retry`), or when a limited job
    /// ends (`None`).
    Held { retry: Option<Duration> },
}

/// One fetch: the jobs taken and what controls the queue.
#[derive(Debug, Clone)]
pub struct FetchBatch {
    pub jobs: Vec<Fetched>,
    pub control: Control,
}

#[derive(sqlx::FromRow)]
struct FetchRow {
    id: Option<Uuid>,
    kind: Option<String>,
    queue: Option<String>,
    args: Option<Value>,
    attempt: Option<i32>,
    max_attempts: Option<i32>,
    backoff_base_ms: Option<i64>,
    backoff_cap_ms: Option<i64>,
    limited: Option<bool>,
    control: Option<String>,
    retry_ms: Option<i32>,
    #[sqlx(default)]
    traceparent: Option<String>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Queue {
    /// Leases up to `limit` runnable jobs of `queue` to `owner` for `lease`, whatever controls
    /// the queue (pause, limits).
    pub async fn fetch(
        &self,
        queue: &str,
        limit: usize,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Vec<Fetched>, QueueError> {
        let mut batch = self.fetch_batch(queue, limit, owner, lease, false).await?;
        if batch.control != Control::None && batch.jobs.is_empty() {
            batch = self.fetch_batch(queue, limit, owner, lease, true).await?;
        }
        Ok(batch.jobs)
    }

    /// One fetch statement: the plain one (`controlled = false`), which serves limits that hold
    /// nothing back and otherwise takes nothing and says so (`Control::Open`), or
    /// `chainsync.fetch_controlled`, which applies pause and every limit and says `Control::None`
    /// after a fetch that no limit narrowed.
    pub async fn fetch_batch(
        &self,
        queue: &str,
        limit: usize,
        owner: Uuid,
        lease: Duration,
        controlled: bool,
    ) -> Result<FetchBatch, QueueError> {
        let sql = match (controlled, crate::trace::enabled()) {
            (false, _) => FETCH,
            (true, false) => FETCH_CONTROLLED,
            (true, true) => FETCH_CONTROLLED_TRACED,
        };
        let rows: Vec<FetchRow> = sqlx::query_as(sql)
            .bind(queue)
            .bind(
                i64::try_from(limit)
                    .unwrap_or(i64::MAX)
                    .min(i64::from(i32::MAX)),
            )
            .bind(owner)
            .bind(millis(lease))
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut control = Control::None;
        for r in rows {
            if let Some(c) = r.control {
                control = match c.as_str() {
                    "paused" => Control::Paused,
                    "held" => Control::Held {
                        retry: r
                            .retry_ms
                            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
                    },
                    "none" => Control::None,
                    _ => Control::Open,
                };
                continue;
            }
            let (Some(id), Some(kind), Some(queue), Some(args), Some(attempt), Some(max_attempts)) =
                (r.id, r.kind, r.queue, r.args, r.attempt, r.max_attempts)
            else {
                continue;
            };
            jobs.push(Fetched {
                id,
                kind,
                queue,
                args,
                attempt,
                max_attempts,
                backoff_base_ms: r.backoff_base_ms,
                backoff_cap_ms: r.backoff_cap_ms,
                limited: r.limited.unwrap_or(false),
                traceparent: r.traceparent,
            });
        }
        Ok(FetchBatch { jobs, control })
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
