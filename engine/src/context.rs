//! What a running job can reach: its own metadata, the database, an enqueuer for follow-up
//! work and the application's services; the wire form of a new job.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Job, JobError, queue::QueueError};

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

/// Context of one job run: `S` is the application's services.
#[derive(Clone)]
pub struct JobContext<S> {
    pub meta: JobMeta,
    pub db: PgPool,
    pub enqueuer: Arc<dyn Enqueuer>,
    pub services: S,
}

impl<S> JobContext<S> {
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// Enqueues a follow-up job (deduplicated by its unique key).
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<Enqueued, JobError> {
        let new = NewJob::typed(job).map_err(JobError::fatal)?;
        self.enqueuer.enqueue(new).await.map_err(JobError::retry)
    }

    /// Enqueues many follow-up jobs in one round trip.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, JobError> {
        self.enqueuer
            .enqueue_many(jobs)
            .await
            .map_err(JobError::retry)
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
    /// Window of the unique key (milliseconds): while it lasts, enqueues of the same key return
    /// the job that opened it, whatever became of that job (debounce). `None`: the key only
    /// deduplicates against a job that has not started yet.
    #[serde(default)]
    pub unique_for_ms: Option<i64>,
    /// W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`): the job's run span becomes a
    /// child of it. `None`: the current span's, when trace propagation is on
    /// ([`crate::trace::enable`]), else none.
    #[serde(default)]
    pub traceparent: Option<String>,
}

impl NewJob {
    /// Wire form of a typed job, with the kind's unique key.
    pub fn typed<J: Job>(job: &J) -> Result<Self, crate::Invalid> {
        job.validate()
            .map_err(|e| crate::Invalid::at("args", format!("{}: {e}", J::KIND)))?;
        Ok(Self {
            kind: J::KIND.to_string(),
            args: serde_json::to_value(job)
                .map_err(|e| crate::Invalid::at("args", format!("{}: {e}", J::KIND)))?,
            queue: None,
            priority: None,
            run_at: None,
            unique_key: job.unique_key(),
            ..Self::default()
        })
    }

    /// At most one job of this unique key per `window` (debounce): an enqueue while the window
    /// of the key is open returns the job that opened it. Needs a unique key.
    pub fn unique_for(mut self, window: std::time::Duration) -> Self {
        self.unique_for_ms = Some(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        self
    }

    /// Sets the unique key (replacing the kind's).
    pub fn with_unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Continues the trace `traceparent` (W3C format, checked at enqueue) in the job's run.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Continues the current span's trace in the job's run, when the current span is recorded by
    /// an OpenTelemetry layer; otherwise leaves the job as it is.
    pub fn with_current_trace(mut self) -> Self {
        if let Some(tp) = crate::trace::traceparent_of(&tracing::Span::current()) {
            self.traceparent = Some(tp);
        }
        self
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
    /// `false` when a job with the same unique key that has not started yet was returned instead.
    pub inserted: bool,
}

/// Inserts jobs; implemented by the engine so that jobs can schedule follow-up work.
#[async_trait]
pub trait Enqueuer: Send + Sync {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError>;
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError>;
}
