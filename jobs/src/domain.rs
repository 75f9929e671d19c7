//! What the daemon, the CLI and the HTTP API need from the domain, without naming a kind: jobs
//! to enqueue at start-up, the live follower, the domain's health, and the follow-up jobs of
//! work run outside the queue.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    Enqueuer, JobError, NewJob, Services,
    health::DomainHealth,
    ingest::IngestSink,
    kinds::{
        backfill_window::BackfillWindow, compute_points::ComputePoints, ingest_events::FollowUps,
    },
    points::backfill::{Gap, stale_chains},
};

/// The domain behind one set of [`Services`].
#[derive(Clone)]
pub struct Domain {
    pub services: Services,
}

impl Domain {
    /// Wire name of the jobs [`Self::backfill_jobs`] makes (a caller may wait for them).
    pub const BACKFILL_KIND: &'static str = <BackfillWindow as crate::Job>::KIND;

    pub fn new(services: Services) -> Self {
        Self { services }
    }

    /// Work found stale at start-up: the `compute-points` pass of every chain whose points
    /// windows lag or wait for a recompute (it computes exactly what is missing, by chain time).
    pub async fn startup_jobs(
        &self,
        chain: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<NewJob>, JobError> {
        stale_chains(&self.services, chain, now)
            .await?
            .into_iter()
            .map(|chain_id| NewJob::typed(&ComputePoints { chain_id }).map_err(JobError::fatal))
            .collect()
    }

    /// The jobs that compute the points windows of `gaps`.
    pub fn backfill_jobs(gaps: &[Gap]) -> Result<Vec<NewJob>, JobError> {
        BackfillWindow::jobs_for(gaps).map_err(JobError::fatal)
    }

    /// Follows the heads of chains with live ingestion until `stop`, enqueuing passes.
    pub async fn follow(&self, enqueuer: Arc<dyn Enqueuer>, stop: CancellationToken) {
        crate::follow::run(enqueuer, self.services.clone(), stop).await;
    }

    /// The domain's part of health.
    pub async fn health(&self) -> Result<DomainHealth, sqlx::Error> {
        crate::health::check(&self.services.db, &self.services.settings).await
    }

    /// Describes the domain's metrics and registers the series of the configured chains and
    /// tokens, so that the first scrape lists them.
    pub fn describe_metrics(&self) {
        crate::observe::describe(&self.services.settings);
    }

    /// Measures the lags of every configured chain and token (database and chain heads) and
    /// sets their gauges.
    pub async fn sample_metrics(&self) -> Result<crate::observe::Sample, sqlx::Error> {
        let sample = crate::observe::sample(&self.services).await?;
        crate::observe::record(&sample);
        Ok(sample)
    }

    /// Whether an alert rule reads the health score (the caller computes it only then).
    pub fn alerts_need_health_score(&self) -> bool {
        self.services
            .settings
            .alerts
            .rules
            .iter()
            .any(|r| r.kind == crate::alerts::RuleKind::HealthScore)
    }

    /// Evaluates `[[alerts.rules]]`: opens and resolves incidents, enqueuing their
    /// notifications.
    pub async fn evaluate_alerts(
        &self,
        sample: Option<&crate::observe::Sample>,
        health_score: Option<u8>,
    ) -> Result<crate::alerts::Evaluation, sqlx::Error> {
        let inputs = crate::alerts::Inputs {
            sample,
            health_score,
        };
        crate::alerts::evaluate(&self.services.db, &self.services.settings, &inputs).await
    }

    /// Where an ingestion pass run outside the queue (the CLI) sends what is left to do: the
    /// same `compute-points` jobs a queued pass enqueues.
    pub fn ingest_sink(enqueuer: Arc<dyn Enqueuer>) -> impl IngestSink {
        FollowUps(enqueuer)
    }
}
