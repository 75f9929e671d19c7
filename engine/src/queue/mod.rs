//! The queue engine: SQL over the `chainsync` schema. Enqueue, fetch with leases, batched
//! completion with fencing, persisted backoff, dead letters and replay, rescue and pruning.
//!
//! The statements over many rows of the hot table (fetch, outcomes, heartbeat, release, rescue,
//! prune) are written so that every access to `chainsync.jobs` has an index condition (ids
//! gathered first and matched with `id = ANY(…)`, never a join the planner could turn into a scan
//! of the whole table). Queue tables defeat statistics: a prepared statement's generic plan made
//! while the table was empty stays a sequential scan when a million jobs arrive, and a VACUUM that
//! could not truncate a drained table leaves it "0 rows in N pages", so every estimate is one row
//! until the next ANALYZE. The daemon's pools therefore force custom plans
//! (the application's connect options): statements stay prepared, and each run is planned against
//! the table as it is. `tests/planner.rs` checks the plans in each of these states.

pub mod admin;
pub mod browse;
pub mod complete;
pub mod control;
pub mod enqueue;
pub mod fetch;
pub mod maintenance;
pub mod policy;
pub mod stats;

use std::sync::Arc;

use crate::Kinds;
use sqlx::PgPool;

pub use admin::{DeadLetter, DlqFilter, JobFilter, JobRow};
pub use browse::{
    BulkJobAction, DeadCursor, DeadQuery, GroupCount, JobQuery, JobsPage, Latency, MinuteActivity,
    Searched,
};
pub use complete::{CompleteStats, Completion, JobErrorKind, Outcome};
pub use control::{KindLimits, LimitConfig, QueueControl, QueueLimits, QueueStatus};
pub use fetch::{Control, FetchBatch, Fetched};
pub use policy::{KindOverride, Policies};
pub use stats::{DeadLetterCount, QueueBacklog};

/// Errors of the engine's public operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Bad input: unknown kind, args that do not decode, bad filter. Nothing was written.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Where a worker runtime listens for `NOTIFY chainsync_jobs` (new jobs) between polls.
#[derive(Clone, Debug, Default)]
pub enum Listen {
    /// A connection of its own made with the queue pool's connect options (the default).
    #[default]
    Pool,
    /// A connection of its own made with this pool's options: a direct connection when the
    /// queue pool goes through a transaction-mode pooler, which cannot deliver notifications.
    On(PgPool),
    /// No LISTEN: fetch loops poll every `poll_interval` only.
    Off,
}

/// Handle on the queue: a pool, the known kinds and their effective policies.
#[derive(Clone)]
pub struct Queue {
    pool: PgPool,
    kinds: Arc<Kinds>,
    policies: Arc<Policies>,
    retain_completed: bool,
    listen: Listen,
}

impl Queue {
    pub fn new(pool: PgPool, kinds: Arc<Kinds>, policies: Arc<Policies>) -> Self {
        Self {
            pool,
            kinds,
            policies,
            retain_completed: true,
            listen: Listen::Pool,
        }
    }

    /// Where worker runtimes on this queue listen for new jobs (see [`Listen`]).
    pub fn listening(mut self, listen: Listen) -> Self {
        self.listen = listen;
        self
    }

    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// Keep successful jobs as `completed` until the pruner removes them (`true`, the default),
    /// or delete them at once (`false`: the hot table stays smallest).
    pub fn retaining_completed(mut self, retain: bool) -> Self {
        self.retain_completed = retain;
        self
    }

    pub fn retain_completed(&self) -> bool {
        self.retain_completed
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn kinds(&self) -> &Arc<Kinds> {
        &self.kinds
    }

    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    /// Applies the migrations and records the known kinds for `chainsync.enqueue()`.
    pub async fn migrate(&self) -> Result<(), QueueError> {
        migrate(&self.pool).await?;
        self.sync_kinds().await
    }

    /// Upserts `chainsync.kinds` from the kinds and config overrides, with each kind's argument
    /// schema, which `chainsync.enqueue()` checks args against.
    pub async fn sync_kinds(&self) -> Result<(), QueueError> {
        let mut kinds = Vec::new();
        let mut queues = Vec::new();
        let mut attempts = Vec::new();
        let mut bases = Vec::new();
        let mut caps = Vec::new();
        let mut while_running = Vec::new();
        let mut schemas = Vec::new();
        for spec in self.kinds.specs() {
            let p = self.policies.get(spec.kind);
            kinds.push(spec.kind.to_string());
            queues.push(p.queue.clone());
            attempts.push(i32::try_from(p.retry.max_attempts).unwrap_or(i32::MAX));
            bases.push(i64::try_from(p.retry.base.as_millis()).unwrap_or(i64::MAX));
            caps.push(i64::try_from(p.retry.cap.as_millis()).unwrap_or(i64::MAX));
            while_running.push(spec.unique_while_running);
            schemas.push(spec.args_schema.clone());
        }
        sqlx::query(
            "INSERT INTO chainsync.kinds (kind, queue, max_attempts, backoff_base_ms, backoff_cap_ms,
                                         unique_while_running, args_schema)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[],
                                  $6::bool[], $7::jsonb[])
             ON CONFLICT (kind) DO UPDATE SET queue = EXCLUDED.queue,
                max_attempts = EXCLUDED.max_attempts, backoff_base_ms = EXCLUDED.backoff_base_ms,
                backoff_cap_ms = EXCLUDED.backoff_cap_ms,
                unique_while_running = EXCLUDED.unique_while_running,
                args_schema = EXCLUDED.args_schema, updated_at = now()",
        )
        .bind(&kinds)
        .bind(&queues)
        .bind(&attempts)
        .bind(&bases)
        .bind(&caps)
        .bind(&while_running)
        .bind(&schemas)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Runs the engine's embedded migrations (schema `chainsync`: jobs, dead letters, cron claims,
/// the kinds table and `chainsync.enqueue()`).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut migrator = sqlx::migrate!("../migrations/engine");
    // The application's own migrations share sqlx's bookkeeping table.
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .map_err(|e| sqlx::Error::Migrate(Box::new(e)))
}
