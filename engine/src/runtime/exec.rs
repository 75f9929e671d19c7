//! The worker service apalis drives: runs one leased job through the registry, with a span,
//! a timeout and panic capture, then hands the outcome to the completer.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use apalis_core::{error::BoxDynError, task::Task};
use futures::{FutureExt, future::BoxFuture};
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, info_span, warn};

use super::ToCompleter;
use crate::{
    JobContext, JobError, JobMeta, Registry,
    queue::{Completion, Fetched, Outcome, Queue},
};

/// The application's kinds and the services their runs get.
pub(super) struct Runner<S> {
    pub registry: Arc<Registry<S>>,
    pub services: S,
}

pub struct Executor<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Executor<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    queue: Queue,
    /// The queue as every run's enqueuer of follow-up jobs (one allocation, shared).
    enqueuer: Arc<dyn crate::Enqueuer>,
    runner: Runner<S>,
    permits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<ToCompleter>,
}

impl<S> Executor<S> {
    pub(super) fn new(
        queue: Queue,
        runner: Runner<S>,
        permits: Arc<Semaphore>,
        done: mpsc::UnboundedSender<ToCompleter>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                enqueuer: Arc::new(queue.clone()),
                queue,
                runner,
                permits,
                done,
            }),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> tower::Service<Task<Fetched>> for Executor<S> {
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Fetched>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.execute(task.args).await;
            Ok(())
        })
    }
}

impl<S: Clone + Send + Sync + 'static> Inner<S> {
    async fn execute(&self, job: Fetched) {
        let span = info_span!(
            "job",
            job.kind = %job.kind,
            job.queue = %job.queue,
            job.id = %job.id,
            job.attempt = job.attempt,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(tp) = &job.traceparent {
            crate::trace::set_parent(&span, tp);
        }
        let started = Instant::now();
        let result = self.run(&job).instrument(span.clone()).await;
        let elapsed = started.elapsed();
        crate::metrics::record_run(&job.kind, elapsed, result.as_ref().err());
        if let Err(e) = &result {
            if !matches!(e, JobError::Snooze(_)) {
                span.record("otel.status_code", "ERROR");
            }
            span.in_scope(|| match e {
                JobError::Snooze(d) => tracing::debug!(delay = ?d, "job snoozed"),
                e => warn!(class = e.class(), error = %e.report(), "job failed"),
            });
        }
        let outcome = match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::from(e),
        };
        if self
            .done
            .send(ToCompleter::Done(
                Completion::new(&job, outcome).ran_for(elapsed),
            ))
            .is_err()
        {
            warn!(job = %job.id, "completer gone; the job will be rescued");
        }
        self.permits.add_permits(1);
    }

    async fn run(&self, job: &Fetched) -> Result<(), JobError> {
        let ctx = JobContext {
            meta: JobMeta {
                id: job.id,
                kind: job.kind.clone(),
                queue: job.queue.clone(),
                attempt: job.attempt,
                max_attempts: job.max_attempts,
            },
            db: self.queue.pool().clone(),
            enqueuer: self.enqueuer.clone(),
            services: self.runner.services.clone(),
        };
        let Some(run) = self.runner.registry.run(&job.kind, job.args.clone(), ctx) else {
            return Err(JobError::fatal(format!(
                "unknown job kind {:?}: no worker of this version can run it",
                job.kind
            )));
        };
        let timeout = self.queue.policies().get(&job.kind).timeout;
        let fut = AssertUnwindSafe(run).catch_unwind();
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(JobError::retry(format!("timed out after {timeout:?}"))),
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                Err(JobError::retry(format!("panicked: {msg}")))
            }
            Ok(Ok(r)) => r,
        }
    }
}
