//! Maintenance passes: the rescuer (expired leases) and the pruner (ranges of finished jobs).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Queue, QueueError};

const RESCUE: &str = include_str!("sql/rescue.sql");

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rescued {
    pub requeued: i64,
    pub dead: i64,
}

impl Queue {
    /// One rescue pass over at most `limit` expired leases.
    pub async fn rescue(&self, limit: i64) -> Result<Rescued, QueueError> {
        let (requeued, dead): (i64, i64) = sqlx::query_as(RESCUE)
            .bind(limit)
            .fetch_one(&self.pool)
            .await?;
        Ok(Rescued { requeued, dead })
    }

    /// Retention of finished jobs: creates the ranges of `chainsync.finished_jobs` the next
    /// completions need (their width follows `retention`: see migration
    /// `20261201000000_finished_jobs.sql`), drops the ranges that ended `retention` ago, and
    /// deletes rows of the DEFAULT partition older than that, `batch` per statement, at most
    /// `max_batches` statements. Several daemons may prune at once (an advisory lock serializes
    /// the passes); a pass that cannot lock the table within [`PRUNE_LOCK_TIMEOUT`] (a long reader)
    /// gives up until the next one ([`Pruned::busy`]) rather than hold completions back.
    pub async fn prune(
        &self,
        retention: Duration,
        batch: i64,
        max_batches: u32,
    ) -> Result<Pruned, QueueError> {
        self.prune_as_of(None, retention, batch, max_batches).await
    }

    /// [`Queue::prune`] as if the database's clock said `now` (`None`: it does).
    pub async fn prune_as_of(
        &self,
        now: Option<DateTime<Utc>>,
        retention: Duration,
        batch: i64,
        max_batches: u32,
    ) -> Result<Pruned, QueueError> {
        let mut pruned = Pruned::default();
        let batch_i32 = i32::try_from(batch).unwrap_or(i32::MAX);
        for i in 0..max_batches.max(1) {
            match self.prune_pass(now, retention, batch_i32, i == 0).await {
                Ok((p, strays)) => {
                    pruned.ranges_created += p.ranges_created;
                    pruned.ranges_dropped += p.ranges_dropped;
                    pruned.jobs += p.jobs;
                    if strays < i64::from(batch_i32) {
                        break;
                    }
                }
                Err(QueueError::Db(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55P03") =>
                {
                    pruned.busy = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // Unique windows that have closed (bounded like the jobs).
        sqlx::query(
            "DELETE FROM chainsync.unique_windows WHERE unique_key = ANY(ARRAY(
                 SELECT unique_key FROM chainsync.unique_windows WHERE expires_at < now() LIMIT $1))",
        )
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(pruned)
    }

    async fn prune_pass(
        &self,
        now: Option<DateTime<Utc>>,
        retention: Duration,
        batch: i32,
        prepare: bool,
    ) -> Result<(Pruned, i64), QueueError> {
        let secs = retention.as_secs_f64();
        let mut tx = self.pool.begin().await?;
        sqlx::query(PRUNE_LOCK).execute(&mut *tx).await?;
        let lock_timeout = format!(
            "SET LOCAL lock_timeout = '{}ms'",
            PRUNE_LOCK_TIMEOUT.as_millis()
        );
        sqlx::query(sqlx::AssertSqlSafe(lock_timeout))
            .execute(&mut *tx)
            .await?;
        let ranges_created = if prepare {
            sqlx::query_scalar(
                "SELECT chainsync.finished_jobs_prepare(coalesce($2, now()), make_interval(secs => $1))",
            )
            .bind(secs)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
        } else {
            0
        };
        let (ranges_dropped, jobs, strays): (i32, i64, i64) = sqlx::query_as(
            "SELECT dropped, removed, strays
             FROM chainsync.finished_jobs_retain(coalesce($3, now()) - make_interval(secs => $1), $2)",
        )
        .bind(secs)
        .bind(batch)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        // What the pass removed: the dropped ranges' jobs and the DEFAULT partition's old rows
        // (`strays`, also returned: a full batch of them means more may be left).
        let pruned = Pruned {
            jobs: u64::try_from(jobs + strays).unwrap_or(0),
            ranges_created,
            ranges_dropped,
            busy: false,
        };
        Ok((pruned, strays))
    }
}

/// What a prune did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Finished jobs removed (rows of the dropped ranges and old rows of the DEFAULT partition).
    pub jobs: u64,
    pub ranges_created: i32,
    pub ranges_dropped: i32,
    /// The table stayed locked by others past [`PRUNE_LOCK_TIMEOUT`]: nothing was done.
    pub busy: bool,
}

/// How long a prune waits for the finished jobs' table lock (creating, dropping a range) before
/// giving up until the next pass: completions wait behind it meanwhile.
pub const PRUNE_LOCK_TIMEOUT: Duration = Duration::from_millis(500);
/// Serializes the prunes of several daemons (transaction-scoped: no session state).
const PRUNE_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('chainsync.finished_jobs', 0))";
