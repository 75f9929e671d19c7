//! What a running job can reach: its own metadata and the shared services.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Job, chain::Chains, settings::DomainConfig};

/// Identity of the run in progress.
#[derive(Debug, Clone)]
pub struct JobMeta {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    /// 1 on the first run.
    pub attempt: i32,
    pub max_attempts: i32,
}

/// Shared, cheaply clonable services every job run gets.
#[derive(Clone)]
pub struct Services {
    pub db: PgPool,
    /// Optional: without Redis everything works from Postgres.
    pub redis: Option<redis::aio::ConnectionManager>,
    pub settings: Arc<DomainConfig>,
    pub enqueuer: Arc<dyn Enqueuer>,
    /// One provider per configured chain, built from `settings.chains`.
    pub chains: Arc<Chains>,
    /// Skips `redis` for a while after it failed (see [`crate::cache`]).
    pub cache: Arc<crate::cache::CacheBreaker>,
}

impl Services {
    pub fn new(
        db: PgPool,
        redis: Option<redis::aio::ConnectionManager>,
        settings: Arc<DomainConfig>,
        enqueuer: Arc<dyn Enqueuer>,
    ) -> Result<Self, String> {
        let chains = Arc::new(Chains::from_settings(&settings)?);
        Ok(Self {
            db,
            redis,
            settings,
            enqueuer,
            chains,
            cache: Arc::default(),
        })
    }
}

impl Services {
    /// The Redis connection when one is configured and the cache breaker lets a call through;
    /// report the call's outcome with [`Self::cache_outcome`].
    pub fn cache_conn(&self) -> Option<redis::aio::ConnectionManager> {
        let conn = self.redis.as_ref()?;
        self.cache.allow().then(|| conn.clone())
    }

    /// Records whether a cache call worked (a failure makes callers skip Redis for a while).
    pub fn cache_outcome(&self, ok: bool) {
        if ok {
            self.cache.success();
        } else {
            self.cache.failure();
        }
    }
}

/// Longest wait for one cache call before falling back to Postgres.
pub const CACHE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Context of one job run.
#[derive(Clone)]
pub struct JobContext {
    pub meta: JobMeta,
    pub services: Services,
}

impl JobContext {
    pub fn db(&self) -> &PgPool {
        &self.services.db
    }

    /// Enqueues a follow-up job (deduplicated by its unique key).
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<Enqueued, crate::JobError> {
        let new = NewJob::typed(job).map_err(crate::JobError::fatal)?;
        self.services
            .enqueuer
            .enqueue(new)
            .await
            .map_err(crate::JobError::retry)
    }

    /// Enqueues many follow-up jobs in one round trip.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, crate::JobError> {
        self.services
            .enqueuer
            .enqueue_many(jobs)
            .await
            .map_err(crate::JobError::retry)
    }
}

/// A job to insert, in wire form.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub args: Value,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub priority: Option<i16>,
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub unique_key: Option<String>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// Per-job backoff override (milliseconds); `None` = the kind's policy.
    #[serde(default)]
    pub backoff_base_ms: Option<i64>,
    #[serde(default)]
    pub backoff_cap_ms: Option<i64>,
}

impl NewJob {
    /// Wire form of a typed job, with the kind's unique key.
    pub fn typed<J: Job>(job: &J) -> Result<Self, String> {
        job.validate()?;
        Ok(Self {
            kind: J::KIND.to_string(),
            args: serde_json::to_value(job).map_err(|e| e.to_string())?,
            queue: None,
            priority: None,
            run_at: None,
            unique_key: job.unique_key(),
            ..Self::default()
        })
    }

    pub fn untyped(kind: impl Into<String>, args: Value) -> Self {
        Self {
            kind: kind.into(),
            args,
            ..Self::default()
        }
    }
}

/// Outcome of an enqueue: the id, and whether a unique duplicate already existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub id: Uuid,
    /// `false` when an active job with the same unique key was found and returned instead.
    pub inserted: bool,
}

/// Inserts jobs; implemented by the engine so that jobs can schedule follow-up work.
#[async_trait]
pub trait Enqueuer: Send + Sync {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, String>;
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, String>;
}
