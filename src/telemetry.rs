//! Logs (tracing; JSON in the daemon) and metrics (the `metrics` facade, exported as Prometheus
//! text by the HTTP server).

use std::time::Duration;

use chainsync_jobs::JobError;
use metrics::{counter, histogram};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::queue::CompleteStats;

/// Installs the global subscriber. `json` for the daemon, human-readable otherwise.
/// The level comes from `RUST_LOG` (default `info`, or `warn` for one-shot CLI commands).
pub fn init(json: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_target(false),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

pub fn record_run(kind: &str, elapsed: Duration, err: Option<&JobError>) {
    let outcome = match err {
        None => "ok",
        Some(e) => e.class(),
    };
    histogram!("chainsync_job_duration_seconds", "kind" => kind.to_string())
        .record(elapsed.as_secs_f64());
    counter!("chainsync_job_runs_total", "kind" => kind.to_string(), "outcome" => outcome)
        .increment(1);
}

pub fn record_completions(stats: &CompleteStats) {
    counter!("chainsync_jobs_completed_total").increment(stats.done);
    counter!("chainsync_jobs_retried_total").increment(stats.retried);
    counter!("chainsync_jobs_snoozed_total").increment(stats.snoozed);
    counter!("chainsync_jobs_dead_lettered_total").increment(stats.dead);
    counter!("chainsync_outcomes_fenced_total").increment(stats.fenced);
}

pub fn record_rescued(requeued: i64, dead: i64) {
    counter!("chainsync_jobs_rescued_total").increment(u64::try_from(requeued).unwrap_or(0));
    counter!("chainsync_jobs_dead_lettered_total").increment(u64::try_from(dead).unwrap_or(0));
}
