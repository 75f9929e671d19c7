//! Operator control shared by every daemon through Postgres: pausing and resuming queues,
//! cluster-wide limits (running jobs per queue, per kind and per partition of a kind's args;
//! jobs started per second), and the overview of each queue. The SQL lives in the migration
//! `queue_control` (`chainsync.pause_queue`, `set_kind_limit`, `fetch_controlled`, …); the fetch
//! applies it (see `sql/fetch.sql`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Queue, QueueError};
use crate::Invalid;

/// The limits of one queue or kind, as the config and the API state them. `None` = no limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Running jobs in the whole cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Top-level args fields whose values partition a kind's running jobs (kinds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<Vec<String>>,
    /// Running jobs per partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_concurrency: Option<u32>,
    /// Jobs started per second in the whole cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Jobs that may start at once after a quiet spell (default: a tenth of a second's jobs,
    /// at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

impl LimitConfig {
    pub fn is_empty(&self) -> bool {
        self.concurrency.is_none()
            && self.partition_concurrency.is_none()
            && self.rate.is_none()
            && self.partition_by.is_none()
    }

    /// Checks what needs no database; errors name `key.<field>`.
    pub fn validate(&self, key: &str, fields: Option<&[String]>) -> Result<(), Invalid> {
        if self.concurrency == Some(0) {
            return Err(Invalid::at(
                format!("{key}.global_concurrency"),
                "must be at least 1 (pause the queue to stop it)",
            ));
        }
        if self.partition_concurrency == Some(0) {
            return Err(Invalid::at(
                format!("{key}.partition_concurrency"),
                "must be at least 1",
            ));
        }
        let by = self.partition_by.as_deref().unwrap_or_default();
        if by.is_empty() != self.partition_concurrency.is_none() {
            return Err(Invalid::at(
                format!("{key}.partition_by"),
                "partition_by and partition_concurrency go together",
            ));
        }
        if by.len() > 8 {
            return Err(Invalid::at(
                format!("{key}.partition_by"),
                "at most 8 fields",
            ));
        }
        if let Some(fields) = fields
            && let Some(f) = by.iter().find(|f| !fields.contains(f))
        {
            return Err(Invalid::at(
                format!("{key}.partition_by"),
                format!("{f:?} is not an args field (fields: {})", fields.join(", ")),
            ));
        }
        if let Some(r) = self.rate
            && (r.is_nan() || r <= 0.0 || r > 1_000_000.0)
        {
            return Err(Invalid::at(
                format!("{key}.rate_limit"),
                format!("must be above 0 and at most 1000000 jobs per second, got {r}"),
            ));
        }
        if let Some(b) = self.burst {
            if self.rate.is_none() {
                return Err(Invalid::at(format!("{key}.rate_burst"), "needs rate_limit"));
            }
            if b.is_nan() || b < 1.0 {
                return Err(Invalid::at(
                    format!("{key}.rate_burst"),
                    format!("must be at least 1, got {b}"),
                ));
            }
        }
        Ok(())
    }
}

/// One queue as an operator sees it (`chainsync.queue_overview`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueStatus {
    pub queue: String,
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    /// Available jobs due now.
    pub due: i64,
    /// Available jobs due later (scheduled, retries waiting for their backoff).
    pub scheduled: i64,
    pub running: i64,
    /// How long the oldest due job has waited (0 when none is due).
    pub oldest_due_age_secs: f64,
    pub concurrency: Option<i32>,
    pub rate: Option<f64>,
    pub burst: Option<f64>,
    /// The limits were set at runtime and win over the config.
    pub manual: bool,
}

/// A kind's limits in force, and how many of its jobs run now.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KindLimits {
    pub kind: String,
    pub concurrency: Option<i32>,
    pub partition_by: Option<Vec<String>>,
    pub partition_concurrency: Option<i32>,
    pub rate: Option<f64>,
    pub burst: Option<f64>,
    pub manual: bool,
    /// What the config says (`null`: nothing).
    pub config: Option<Value>,
    pub running: i64,
}

/// A queue's row of control: paused or not, its limits in force.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueControl {
    pub queue: String,
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub concurrency: Option<i32>,
    pub rate: Option<f64>,
    pub burst: Option<f64>,
    /// The limits were set at runtime and win over the config.
    pub manual: bool,
}

/// A queue's limits in force.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueLimits {
    pub queue: String,
    pub concurrency: Option<i32>,
    pub rate: Option<f64>,
    pub burst: Option<f64>,
    pub manual: bool,
    pub config: Option<Value>,
}

/// A database error raised by the control functions for bad input (SQLSTATE 22023) becomes
/// [`QueueError::Invalid`] with its message.
fn invalid(e: sqlx::Error) -> QueueError {
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("22023")
    {
        return QueueError::Invalid(d.message().to_string());
    }
    QueueError::Db(e)
}

fn i32_opt(v: Option<u32>) -> Option<i32> {
    v.map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

impl Queue {
    /// Pauses `queue` for every daemon; `Ok(false)` when it was paused already.
    pub async fn pause_queue(&self, queue: &str) -> Result<bool, QueueError> {
        sqlx::query_scalar("SELECT chainsync.pause_queue($1)")
            .bind(queue)
            .fetch_one(&self.pool)
            .await
            .map_err(invalid)
    }

    /// Resumes `queue`; `Ok(false)` when it was not paused.
    pub async fn resume_queue(&self, queue: &str) -> Result<bool, QueueError> {
        sqlx::query_scalar("SELECT chainsync.resume_queue($1)")
            .bind(queue)
            .fetch_one(&self.pool)
            .await
            .map_err(invalid)
    }

    /// Every queue: jobs by state, paused or not, the oldest due job's wait, limits.
    pub async fn queue_overview(&self) -> Result<Vec<QueueStatus>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT queue, paused, paused_at, due, scheduled, running, oldest_due_age_secs,
                    concurrency, rate, burst, manual
             FROM chainsync.queue_overview ORDER BY queue",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every queue that has a row of control (paused, limits), without counting jobs: what a
    /// page that takes its counts elsewhere needs, fresh, at any size of the jobs table.
    pub async fn queue_controls(&self) -> Result<Vec<QueueControl>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT queue, paused, paused_at, concurrency, rate, burst, manual
             FROM chainsync.queues ORDER BY queue",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The limits of every kind that has some (in force or in the config).
    pub async fn kind_limits(&self) -> Result<Vec<KindLimits>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT l.kind, l.concurrency, l.partition_by, l.partition_concurrency, l.rate, l.burst,
                    l.manual, l.config,
                    (SELECT count(*) FROM chainsync.jobs j WHERE j.state = 'running' AND j.kind = l.kind) AS running
             FROM chainsync.kind_limits l ORDER BY l.kind",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The limits of every queue that has some (in force or in the config).
    pub async fn queue_limits(&self) -> Result<Vec<QueueLimits>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT queue, concurrency, rate, burst, manual, config FROM chainsync.queues
             WHERE concurrency IS NOT NULL OR rate IS NOT NULL OR config IS NOT NULL OR manual
             ORDER BY queue",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sets every limit of `queue` (`None` = no limit) for the whole cluster, at once; wins
    /// over the config until [`Queue::reset_queue_limit`].
    pub async fn set_queue_limit(&self, queue: &str, l: &LimitConfig) -> Result<(), QueueError> {
        if l.partition_by.is_some() || l.partition_concurrency.is_some() {
            return Err(QueueError::Invalid(
                "partition_by: partitions are limits of a kind, not of a queue".into(),
            ));
        }
        sqlx::query("SELECT chainsync.set_queue_limit($1, $2, $3, $4)")
            .bind(queue)
            .bind(i32_opt(l.concurrency))
            .bind(l.rate)
            .bind(l.burst)
            .execute(&self.pool)
            .await
            .map_err(invalid)?;
        Ok(())
    }

    /// Sets every limit of `kind` (`None` = no limit) for the whole cluster, at once; wins over
    /// the config until [`Queue::reset_kind_limit`].
    pub async fn set_kind_limit(&self, kind: &str, l: &LimitConfig) -> Result<(), QueueError> {
        sqlx::query("SELECT chainsync.set_kind_limit($1, $2, $3, $4, $5, $6)")
            .bind(kind)
            .bind(i32_opt(l.concurrency))
            .bind(&l.partition_by)
            .bind(i32_opt(l.partition_concurrency))
            .bind(l.rate)
            .bind(l.burst)
            .execute(&self.pool)
            .await
            .map_err(invalid)?;
        Ok(())
    }

    /// Back to the config's limits of `queue`.
    pub async fn reset_queue_limit(&self, queue: &str) -> Result<(), QueueError> {
        sqlx::query("SELECT chainsync.reset_queue_limit($1)")
            .bind(queue)
            .execute(&self.pool)
            .await
            .map_err(invalid)?;
        Ok(())
    }

    /// Back to the config's limits of `kind`.
    pub async fn reset_kind_limit(&self, kind: &str) -> Result<(), QueueError> {
        sqlx::query("SELECT chainsync.reset_kind_limit($1)")
            .bind(kind)
            .execute(&self.pool)
            .await
            .map_err(invalid)?;
        Ok(())
    }

    /// Writes the configuration's limits (`[queues.<name>]`, `[kinds.<kind>]`); limits set at
    /// runtime stay in force. Every daemon applies them at its next fetch.
    pub async fn apply_config_limits(
        &self,
        queues: &BTreeMap<String, LimitConfig>,
        kinds: &BTreeMap<String, LimitConfig>,
    ) -> Result<(), QueueError> {
        let to_json = |m: &BTreeMap<String, LimitConfig>| {
            serde_json::to_value(
                m.iter()
                    .filter(|(_, l)| !l.is_empty())
                    .collect::<BTreeMap<_, _>>(),
            )
            .map_err(|e| QueueError::Invalid(e.to_string()))
        };
        sqlx::query("SELECT chainsync.apply_config_limits($1, $2)")
            .bind(to_json(queues)?)
            .bind(to_json(kinds)?)
            .execute(&self.pool)
            .await
            .map_err(invalid)?;
        Ok(())
    }
}
