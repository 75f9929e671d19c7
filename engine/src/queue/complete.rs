//! Recording outcomes in batches: success, retry at a persisted backoff time, snooze, or dead
//! letter. Every statement is fenced on (id, attempt, lease owner).

use std::time::Duration;

use crate::{JobError, RetryPolicy};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Fetched, Queue, QueueError};

const COMPLETE_DELETE: &str = include_str!("sql/complete_delete.sql");
const COMPLETE_RETAIN: &str = include_str!("sql/complete_retain.sql");
const RETRY: &str = include_str!("sql/retry.sql");
const DEAD_LETTER: &str = include_str!("sql/dead_letter.sql");

/// What a run ended with.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done,
    Failed(JobErrorKind),
}

/// A `JobError` in plain data (the engine needs to clone and batch it).
#[derive(Debug, Clone)]
pub enum JobErrorKind {
    Retry(String),
    Snooze(Duration),
    Fatal(String),
}

impl From<JobError> for Outcome {
    fn from(e: JobError) -> Self {
        Outcome::Failed(match e {
            JobError::Retry(m) => JobErrorKind::Retry(m),
            JobError::Snooze(d) => JobErrorKind::Snooze(d),
            JobError::Fatal(m) => JobErrorKind::Fatal(m),
        })
    }
}

/// The outcome of one run, with what is needed to fence and schedule it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: Uuid,
    pub kind: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub backoff_base_ms: Option<i64>,
    pub backoff_cap_ms: Option<i64>,
    pub outcome: Outcome,
}

impl Completion {
    pub fn new(job: &Fetched, outcome: Outcome) -> Self {
        Self {
            id: job.id,
            kind: job.kind.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            backoff_base_ms: job.backoff_base_ms,
            backoff_cap_ms: job.backoff_cap_ms,
            outcome,
        }
    }
}

/// Counts of one `complete` call. `fenced` = outcomes refused because the job was no longer
/// leased to this worker at this attempt (rescued, cancelled or released meanwhile).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompleteStats {
    pub done: u64,
    pub retried: u64,
    pub snoozed: u64,
    pub dead: u64,
    pub fenced: u64,
}

/// Columns of retry.sql: id, lease token, delay_ms, refund, error.
type RetryColumns = (
    Vec<Uuid>,
    Vec<String>,
    Vec<i64>,
    Vec<i32>,
    Vec<Option<Value>>,
);

/// The fencing token an outcome statement compares with `id/attempt/lease_owner` of the row, in
/// Postgres' text forms (uuid lowercase with hyphens, as `Uuid`'s `Display`).
fn lease_token(id: Uuid, attempt: i32, owner: Uuid) -> String {
    format!("{id}/{attempt}/{owner}")
}

fn error_entry(attempt: i32, class: &str, msg: &str) -> Value {
    json!({
        "attempt": attempt,
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "class": class,
        "error": msg,
    })
}

impl Queue {
    /// Retry policy for a job: per-job override, else the kind's.
    pub fn retry_policy(&self, c: &Completion) -> RetryPolicy {
        let mut p = self.policies.get(&c.kind).retry;
        if let Some(b) = c.backoff_base_ms.and_then(|b| u64::try_from(b).ok()) {
            p.base = Duration::from_millis(b);
        }
        if let Some(cap) = c.backoff_cap_ms.and_then(|c| u64::try_from(c).ok()) {
            p.cap = Duration::from_millis(cap);
        }
        p
    }

    /// Records a batch of outcomes in one transaction. `retain` keeps successful jobs as
    /// `completed` (for the pruner) instead of deleting them.
    pub async fn complete(
        &self,
        owner: Uuid,
        batch: &[Completion],
        retain: bool,
    ) -> Result<CompleteStats, QueueError> {
        let mut done: (Vec<Uuid>, Vec<String>) = Default::default();
        let mut retry = RetryColumns::default();
        let mut dead: (Vec<Uuid>, Vec<String>, Vec<Value>, Vec<&str>) = Default::default();
        let mut stats = CompleteStats::default();
        for c in batch {
            match &c.outcome {
                Outcome::Done => {
                    done.0.push(c.id);
                    done.1.push(lease_token(c.id, c.attempt, owner));
                }
                Outcome::Failed(JobErrorKind::Snooze(d)) => {
                    retry.0.push(c.id);
                    retry.1.push(lease_token(c.id, c.attempt, owner));
                    retry
                        .2
                        .push(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                    retry.3.push(1);
                    retry.4.push(None);
                    stats.snoozed += 1;
                }
                Outcome::Failed(JobErrorKind::Retry(msg)) if c.attempt < c.max_attempts => {
                    let attempt = u32::try_from(c.attempt).unwrap_or(1);
                    let delay = self.retry_policy(c).delay_random(attempt);
                    retry.0.push(c.id);
                    retry.1.push(lease_token(c.id, c.attempt, owner));
                    retry
                        .2
                        .push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    retry.3.push(0);
                    retry.4.push(Some(error_entry(c.attempt, "retry", msg)));
                }
                Outcome::Failed(JobErrorKind::Retry(msg)) => {
                    dead.0.push(c.id);
                    dead.1.push(lease_token(c.id, c.attempt, owner));
                    dead.2.push(error_entry(c.attempt, "retry", msg));
                    dead.3.push("exhausted");
                }
                Outcome::Failed(JobErrorKind::Fatal(msg)) => {
                    dead.0.push(c.id);
                    dead.1.push(lease_token(c.id, c.attempt, owner));
                    dead.2.push(error_entry(c.attempt, "fatal", msg));
                    dead.3.push("fatal");
                }
            }
        }
        let sql_done = if retain {
            COMPLETE_RETAIN
        } else {
            COMPLETE_DELETE
        };
        if retry.0.is_empty() && dead.0.is_empty() {
            // The common case: only successes, one statement, no explicit transaction.
            if !done.0.is_empty() {
                stats.done = sqlx::query(sql_done)
                    .bind(&done.0)
                    .bind(&done.1)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            stats.fenced = (batch.len() as u64).saturating_sub(stats.done);
            return Ok(stats);
        }
        let mut tx = self.pool.begin().await?;
        if !done.0.is_empty() {
            stats.done = sqlx::query(sql_done)
                .bind(&done.0)
                .bind(&done.1)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if !retry.0.is_empty() {
            let n = sqlx::query(RETRY)
                .bind(&retry.0)
                .bind(&retry.1)
                .bind(&retry.2)
                .bind(&retry.3)
                .bind(&retry.4)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // rows_affected cannot tell snoozes from retries; count retries as the rest.
            stats.retried = n.saturating_sub(stats.snoozed.min(n));
            stats.snoozed = stats.snoozed.min(n);
        }
        if !dead.0.is_empty() {
            stats.dead = sqlx::query(DEAD_LETTER)
                .bind(&dead.0)
                .bind(&dead.1)
                .bind(&dead.2)
                .bind(&dead.3)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        let recorded = stats.done + stats.retried + stats.snoozed + stats.dead;
        stats.fenced = (batch.len() as u64).saturating_sub(recorded);
        Ok(stats)
    }
}
