//! The engine's metrics, through the `metrics` facade (the application picks the exporter).

use std::time::Duration;

use metrics::{counter, histogram};

use crate::{JobError, queue::CompleteStats};

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
