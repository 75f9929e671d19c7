//! Maintenance passes: the rescuer (expired leases) and the pruner (old finished jobs).

use std::time::Duration;

use super::{Queue, QueueError};

const RESCUE: &str = include_str!("sql/rescue.sql");
const PRUNE: &str = include_str!("sql/prune.sql");

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

    /// Deletes finished jobs older than `retention`, `batch` rows per statement, until none are
    /// left or `max_batches` ran. Returns the rows deleted.
    pub async fn prune(
        &self,
        retention: Duration,
        batch: i64,
        max_batches: u32,
    ) -> Result<u64, QueueError> {
        let mut total = 0;
        for _ in 0..max_batches {
            let n = sqlx::query(PRUNE)
                .bind(retention.as_secs_f64())
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                break;
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
        Ok(total)
    }
}
