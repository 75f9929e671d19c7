//! The engine's metrics, through the `metrics` facade (the application picks the exporter), and a
//! per-kind tally of recent run outcomes in this process, written to `chainsync.job_outcomes` so
//! that the failure rate of a kind is known across every daemon of the cluster.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::{JobError, queue::CompleteStats};

/// Describes the engine's metrics and starts the counters of `kinds` at 0, so that they are
/// listed from the first scrape.
pub fn describe(kinds: &[&str]) {
    for k in kinds {
        for outcome in ["ok", "retry", "snooze", "fatal"] {
            counter!("chainsync_job_runs_total", "kind" => (*k).to_string(), "outcome" => outcome)
                .absolute(0);
        }
    }
    for name in [
        "chainsync_jobs_completed_total",
        "chainsync_jobs_retried_total",
        "chainsync_jobs_snoozed_total",
        "chainsync_jobs_dead_lettered_total",
        "chainsync_outcomes_fenced_total",
        "chainsync_jobs_rescued_total",
    ] {
        counter!(name).absolute(0);
    }
    describe_histogram!(
        "chainsync_job_duration_seconds",
        metrics::Unit::Seconds,
        "Run time of one job attempt, by kind"
    );
    describe_counter!(
        "chainsync_job_runs_total",
        "Job attempts by kind and outcome (ok, retry, snooze, fatal)"
    );
    describe_counter!(
        "chainsync_jobs_completed_total",
        "Jobs completed successfully"
    );
    describe_counter!(
        "chainsync_jobs_retried_total",
        "Attempts scheduled for retry"
    );
    describe_counter!(
        "chainsync_jobs_snoozed_total",
        "Jobs snoozed (no attempt used)"
    );
    describe_counter!(
        "chainsync_jobs_dead_lettered_total",
        "Jobs moved to the dead letters by this process"
    );
    describe_counter!(
        "chainsync_outcomes_fenced_total",
        "Outcomes refused because the job's lease was lost"
    );
    describe_counter!(
        "chainsync_jobs_rescued_total",
        "Jobs requeued after their lease expired"
    );
    describe_gauge!(
        "chainsync_queue_depth",
        "Available jobs per queue (due now or scheduled later)"
    );
    describe_gauge!(
        "chainsync_queue_due",
        "Available jobs per queue whose run time has come"
    );
    describe_gauge!(
        "chainsync_queue_oldest_available_age_seconds",
        metrics::Unit::Seconds,
        "How long the oldest due job of a queue has waited"
    );
    describe_gauge!("chainsync_dead_letters", "Dead letters stored, by kind");
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
    match err {
        None => tally(kind, true),
        Some(JobError::Retry { .. } | JobError::Fatal { .. }) => tally(kind, false),
        Some(JobError::Snooze(_)) => {}
    }
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

/// Sets the backlog gauges of every queue in `queues` (0 for a queue with nothing available).
pub fn record_backlog(queues: &[String], backlog: &[crate::queue::QueueBacklog]) {
    for q in queues {
        let b = backlog.iter().find(|b| &b.queue == q);
        gauge!("chainsync_queue_depth", "queue" => q.clone())
            .set(b.map_or(0.0, |b| b.available as f64));
        gauge!("chainsync_queue_due", "queue" => q.clone()).set(b.map_or(0.0, |b| b.due as f64));
        gauge!("chainsync_queue_oldest_available_age_seconds", "queue" => q.clone())
            .set(b.map_or(0.0, |b| b.oldest_due_age_secs));
    }
}

/// Sets `chainsync_dead_letters` per kind for every kind in `kinds` (0 for a kind without).
pub fn record_dead_letters(kinds: &[&str], counts: &[crate::queue::DeadLetterCount]) {
    for k in kinds {
        let n = counts.iter().find(|c| c.kind == *k).map_or(0, |c| c.total);
        gauge!("chainsync_dead_letters", "kind" => (*k).to_string()).set(n as f64);
    }
}

/// Longest window [`recent_outcomes`] can answer for.
pub const OUTCOME_WINDOW_MAX: Duration = Duration::from_secs(24 * 3600);

/// Attempts of one kind in one minute; `dirty` until written to `chainsync.job_outcomes`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    minute: u64,
    ok: u64,
    failed: u64,
    dirty: bool,
}

/// Per kind: one bucket per minute, oldest first.
type Tally = HashMap<String, VecDeque<Bucket>>;

fn tally_map() -> &'static Mutex<Tally> {
    static TALLY: OnceLock<Mutex<Tally>> = OnceLock::new();
    TALLY.get_or_init(Mutex::default)
}

fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

fn tally(kind: &str, ok: bool) {
    tally_at(kind, ok, minute_now());
}

fn tally_at(kind: &str, ok: bool, minute: u64) {
    let mut map = tally_map().lock().unwrap_or_else(|e| e.into_inner());
    let buckets = match map.get_mut(kind) {
        Some(b) => b,
        None => map.entry(kind.to_string()).or_default(),
    };
    match buckets.back_mut() {
        Some(b) if b.minute == minute => {
            if ok {
                b.ok += 1;
            } else {
                b.failed += 1;
            }
            b.dirty = true;
        }
        _ => buckets.push_back(Bucket {
            minute,
            ok: u64::from(ok),
            failed: u64::from(!ok),
            dirty: true,
        }),
    }
    let keep_from = minute.saturating_sub(OUTCOME_WINDOW_MAX.as_secs() / 60);
    while buckets.front().is_some_and(|b| b.minute < keep_from) {
        buckets.pop_front();
    }
}

/// Attempts of each kind run by this process in the last `window` (whole minutes, the current
/// one included): (kind, successes, failures). Failures are retries and fatal errors; snoozes
/// are neither. [`cluster_outcomes`] answers for every daemon.
pub fn recent_outcomes(window: Duration) -> Vec<(String, u64, u64)> {
    recent_outcomes_at(window, minute_now())
}

fn first_minute(window: Duration, now_minute: u64) -> u64 {
    now_minute.saturating_sub(window.as_secs().div_ceil(60).saturating_sub(1))
}

fn recent_outcomes_at(window: Duration, now_minute: u64) -> Vec<(String, u64, u64)> {
    let from = first_minute(window, now_minute);
    let map = tally_map().lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<(String, u64, u64)> = map
        .iter()
        .map(|(kind, buckets)| {
            let (ok, failed) = buckets
                .iter()
                .filter(|b| b.minute >= from)
                .fold((0, 0), |acc, b| (acc.0 + b.ok, acc.1 + b.failed));
            (kind.clone(), ok, failed)
        })
        .collect();
    out.sort();
    out
}

/// This process in `chainsync.job_outcomes` (one id per process).
fn process_id() -> uuid::Uuid {
    static ID: OnceLock<uuid::Uuid> = OnceLock::new();
    *ID.get_or_init(uuid::Uuid::now_v7)
}

/// The buckets changed since the last flush, marked clean: (kind, minute, ok, failed).
fn take_dirty() -> Vec<(String, u64, u64, u64)> {
    let mut map = tally_map().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for (kind, buckets) in map.iter_mut() {
        for b in buckets.iter_mut().filter(|b| b.dirty) {
            b.dirty = false;
            out.push((kind.clone(), b.minute, b.ok, b.failed));
        }
    }
    out
}

fn mark_dirty(rows: &[(String, u64, u64, u64)]) {
    let mut map = tally_map().lock().unwrap_or_else(|e| e.into_inner());
    for (kind, minute, _, _) in rows {
        if let Some(b) = map
            .get_mut(kind)
            .and_then(|bs| bs.iter_mut().find(|b| b.minute == *minute))
        {
            b.dirty = true;
        }
    }
}

/// Writes this process's per-minute tally to `chainsync.job_outcomes` (the buckets changed since
/// the last call, as absolute counts of this process: a repeated write changes nothing) and
/// drops rows older than [`OUTCOME_WINDOW_MAX`]. Returns the rows written.
pub async fn flush_outcomes(db: &sqlx::PgPool) -> Result<usize, sqlx::Error> {
    let rows = take_dirty();
    if rows.is_empty() {
        return Ok(0);
    }
    let minute = |m: u64| i64::try_from(m).unwrap_or(i64::MAX);
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let result = sqlx::query(
        "WITH w AS (
            INSERT INTO chainsync.job_outcomes AS o (kind, minute, process, ok, failed)
            SELECT k, to_timestamp(m * 60), $5, ok, failed
            FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS t(k, m, ok, failed)
            ON CONFLICT (kind, minute, process) DO UPDATE SET ok = EXCLUDED.ok, failed = EXCLUDED.failed
        )
        DELETE FROM chainsync.job_outcomes WHERE minute < now() - make_interval(secs => $6)",
    )
    .bind(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| minute(r.1)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| count(r.2)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| count(r.3)).collect::<Vec<_>>())
    .bind(process_id())
    .bind(OUTCOME_WINDOW_MAX.as_secs_f64() + 3600.0)
    .execute(db)
    .await;
    match result {
        Ok(_) => Ok(rows.len()),
        Err(e) => {
            mark_dirty(&rows);
            Err(e)
        }
    }
}

/// Attempts of each kind run by every daemon in the last `window` (whole minutes, the current one
/// included), from `chainsync.job_outcomes`: (kind, successes, failures). Each daemon's figures
/// are as recent as its last [`flush_outcomes`].
pub async fn cluster_outcomes(
    db: &sqlx::PgPool,
    window: Duration,
) -> Result<Vec<(String, u64, u64)>, sqlx::Error> {
    let from = i64::try_from(first_minute(window, minute_now())).unwrap_or(i64::MAX);
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, sum(ok)::bigint, sum(failed)::bigint FROM chainsync.job_outcomes
         WHERE minute >= to_timestamp($1 * 60) GROUP BY kind ORDER BY kind",
    )
    .bind(from)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, ok, failed)| {
            (
                k,
                u64::try_from(ok).unwrap_or(0),
                u64::try_from(failed).unwrap_or(0),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_per_minute_and_age_out() {
        let kind = "tally-test-kind";
        tally_at(kind, true, 1000);
        tally_at(kind, false, 1000);
        tally_at(kind, false, 1004);
        tally_at(kind, true, 1005);
        let get = |w: u64, now: u64| {
            recent_outcomes_at(Duration::from_secs(w), now)
                .into_iter()
                .find(|r| r.0 == kind)
                .map(|r| (r.1, r.2))
        };
        assert_eq!(get(60, 1005), Some((1, 0)));
        assert_eq!(get(120, 1005), Some((1, 1)));
        assert_eq!(get(600, 1005), Some((2, 2)));
        // Buckets older than the longest window are dropped.
        tally_at(kind, true, 1005 + 24 * 60 + 1);
        assert_eq!(get(24 * 3600, 1005 + 24 * 60 + 1), Some((1, 0)));
    }
}
