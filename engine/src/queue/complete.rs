//! Recording outcomes in batches: success, retry at a persisted backoff time, snooze, or dead
//! letter. Every statement is fenced on (id, attempt, lease owner).

use std::time::Duration;

use crate::{JobError, RetryPolicy};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Fetched, Policies, Queue, QueueError};

const COMPLETE_DELETE: &str = include_str!("sql/complete_delete.sql");
const COMPLETE_RETAIN: &str = include_str!("sql/complete_retain.sql");
const RETRY: &str = include_str!("sql/retry.sql");
const DEAD_LETTER: &str = include_str!("sql/dead_letter.sql");

/// What a run ended with.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done,
    Failed(JobErrorKind),
}

/// A `JobError` in plain data (the engine needs to clone and batch it).
#[derive(Debug, Clone)]
pub enum JobErrorKind {
    Retry(String),
    Snooze(Duration),
    Fatal(String),
}

impl From<JobError> for Outcome {
    fn from(e: JobError) -> Self {
        // The stored text is the whole chain: the message and every cause.
        Outcome::Failed(match &e {
            JobError::Retry { .. } => JobErrorKind::Retry(e.report()),
            JobError::Snooze(d) => JobErrorKind::Snooze(*d),
            JobError::Fatal { .. } => JobErrorKind::Fatal(e.report()),
        })
    }
}

/// The outcome of one run, with what is needed to fence and schedule it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: Uuid,
    pub kind: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub backoff_base_ms: Option<i64>,
    pub backoff_cap_ms: Option<i64>,
    pub outcome: Outcome,
    /// The job was taken under a cluster-wide limit (see [`Fetched::limited`]).
    pub limited: bool,
    /// How long the run took, as the worker measured it (recorded with a failed attempt).
    pub ran: Option<Duration>,
}

impl Completion {
    pub fn new(job: &Fetched, outcome: Outcome) -> Self {
        Self {
            id: job.id,
            kind: job.kind.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            backoff_base_ms: job.backoff_base_ms,
            backoff_cap_ms: job.backoff_cap_ms,
            outcome,
            limited: job.limited,
            ran: None,
        }
    }

    /// With the run's duration.
    pub fn ran_for(mut self, d: Duration) -> Self {
        self.ran = Some(d);
        self
    }
}

/// Counts of one `complete` call. `fenced` = outcomes refused because the job was no longer
/// leased to this worker at this attempt (rescued, cancelled or released meanwhile).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompleteStats {
    pub done: u64,
    pub retried: u64,
    pub snoozed: u64,
    pub dead: u64,
    pub fenced: u64,
}

/// Columns of the success statements: id, attempt (with the owner, the lease token).
#[derive(Debug, Default, PartialEq)]
struct DoneColumns {
    ids: Vec<Uuid>,
    attempts: Vec<i32>,
}

/// Columns of retry.sql: id, attempt, delay in ms, refund (1: the run does not use an attempt,
/// as for a snooze), the error entry appended to the job's history (none for a snooze).
#[derive(Debug, Default, PartialEq)]
struct RetryColumns {
    ids: Vec<Uuid>,
    attempts: Vec<i32>,
    delays_ms: Vec<i64>,
    refunds: Vec<i32>,
    errors: Vec<Option<Value>>,
}

/// Columns of dead_letter.sql: id, attempt, the last error entry, the reason.
#[derive(Debug, Default, PartialEq)]
struct DeadColumns {
    ids: Vec<Uuid>,
    attempts: Vec<i32>,
    errors: Vec<Value>,
    reasons: Vec<&'static str>,
}

/// A batch of outcomes sorted into the statements that record them.
#[derive(Debug, Default, PartialEq)]
struct Grouped {
    done: DoneColumns,
    retry: RetryColumns,
    dead: DeadColumns,
    /// Entries of `retry` that are snoozes.
    snoozed: u64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The fencing token of a lease as `chainsync.lease_token(id, attempt, owner)` writes it (the one
/// definition, in the migrations; `lease_token_matches_sql` checks that the two agree). Outcome
/// statements take the tokens as a parameter: Postgres then looks each row up in a hashed array,
/// where an array computed inside the statement would be searched linearly for every row.
pub fn lease_token(id: Uuid, attempt: i32, owner: Uuid) -> String {
    format!("{id}/{attempt}/{owner}")
}

/// The lease tokens of `ids` at `attempts` for `owner`.
fn lease_tokens(ids: &[Uuid], attempts: &[i32], owner: Uuid) -> Vec<String> {
    ids.iter()
        .zip(attempts)
        .map(|(id, attempt)| lease_token(*id, *attempt, owner))
        .collect()
}

/// The history entry of a failed attempt: its number, when it ended, how long it ran (when
/// measured), the class and message. The statements that record it add `started_at` (the
/// database's time of the fetch that started the attempt).
fn error_entry(c: &Completion, class: &str, msg: &str) -> Value {
    let mut e = json!({
        "attempt": c.attempt,
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "class": class,
        "error": msg,
    });
    if let (Some(d), Some(m)) = (c.ran, e.as_object_mut()) {
        m.insert("ran_ms".into(), json!(millis(d)));
    }
    e
}

/// Retry policy for a job: per-job override, else the kind's.
fn retry_policy(policies: &Policies, c: &Completion) -> RetryPolicy {
    let mut p = policies.get(&c.kind).retry;
    if let Some(b) = c.backoff_base_ms.and_then(|b| u64::try_from(b).ok()) {
        p.base = Duration::from_millis(b);
    }
    if let Some(cap) = c.backoff_cap_ms.and_then(|c| u64::try_from(c).ok()) {
        p.cap = Duration::from_millis(cap);
    }
    p
}

/// Sorts outcomes: successes; snoozes and retries with attempts left (at a backoff delay drawn
/// from the job's policy); exhausted retries and fatal errors to the dead letters.
fn group(policies: &Policies, batch: &[Completion]) -> Grouped {
    let mut g = Grouped::default();
    for c in batch {
        match &c.outcome {
            Outcome::Done => {
                g.done.ids.push(c.id);
                g.done.attempts.push(c.attempt);
            }
            Outcome::Failed(JobErrorKind::Snooze(d)) => {
                g.retry.ids.push(c.id);
                g.retry.attempts.push(c.attempt);
                g.retry.delays_ms.push(millis(*d));
                g.retry.refunds.push(1);
                g.retry.errors.push(None);
                g.snoozed += 1;
            }
            Outcome::Failed(JobErrorKind::Retry(msg)) if c.attempt < c.max_attempts => {
                let attempt = u32::try_from(c.attempt).unwrap_or(1);
                let delay = retry_policy(policies, c).delay_random(attempt);
                g.retry.ids.push(c.id);
                g.retry.attempts.push(c.attempt);
                g.retry.delays_ms.push(millis(delay));
                g.retry.refunds.push(0);
                g.retry.errors.push(Some(error_entry(c, "retry", msg)));
            }
            Outcome::Failed(JobErrorKind::Retry(msg)) => {
                g.dead.ids.push(c.id);
                g.dead.attempts.push(c.attempt);
                g.dead.errors.push(error_entry(c, "retry", msg));
                g.dead.reasons.push("exhausted");
            }
            Outcome::Failed(JobErrorKind::Fatal(msg)) => {
                g.dead.ids.push(c.id);
                g.dead.attempts.push(c.attempt);
                g.dead.errors.push(error_entry(c, "fatal", msg));
                g.dead.reasons.push("fatal");
            }
        }
    }
    g
}

impl Queue {
    /// Retry policy for a job: per-job override, else the kind's.
    pub fn retry_policy(&self, c: &Completion) -> RetryPolicy {
        retry_policy(&self.policies, c)
    }

    /// Records a batch of outcomes in one transaction. `retain` keeps successful jobs as
    /// `completed` (for the pruner) instead of deleting them.
    pub async fn complete(
        &self,
        owner: Uuid,
        batch: &[Completion],
        retain: bool,
    ) -> Result<CompleteStats, QueueError> {
        let Grouped {
            done,
            retry,
            dead,
            snoozed,
        } = group(&self.policies, batch);
        let mut stats = CompleteStats {
            snoozed,
            ..CompleteStats::default()
        };
        let sql_done = if retain {
            COMPLETE_RETAIN
        } else {
            COMPLETE_DELETE
        };
        if retry.ids.is_empty() && dead.ids.is_empty() {
            // The common case: only successes, one statement, no explicit transaction.
            if !done.ids.is_empty() {
                stats.done = sqlx::query(sql_done)
                    .bind(&done.ids)
                    .bind(lease_tokens(&done.ids, &done.attempts, owner))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            stats.fenced = (batch.len() as u64).saturating_sub(stats.done);
            return Ok(stats);
        }
        let mut tx = self.pool.begin().await?;
        if !done.ids.is_empty() {
            stats.done = sqlx::query(sql_done)
                .bind(&done.ids)
                .bind(lease_tokens(&done.ids, &done.attempts, owner))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if !retry.ids.is_empty() {
            let n = sqlx::query(RETRY)
                .bind(&retry.ids)
                .bind(lease_tokens(&retry.ids, &retry.attempts, owner))
                .bind(&retry.delays_ms)
                .bind(&retry.refunds)
                .bind(&retry.errors)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // rows_affected cannot tell snoozes from retries; count retries as the rest.
            stats.retried = n.saturating_sub(stats.snoozed.min(n));
            stats.snoozed = stats.snoozed.min(n);
        }
        if !dead.ids.is_empty() {
            stats.dead = sqlx::query(DEAD_LETTER)
                .bind(&dead.ids)
                .bind(lease_tokens(&dead.ids, &dead.attempts, owner))
                .bind(&dead.errors)
                .bind(&dead.reasons)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        let recorded = stats.done + stats.retried + stats.snoozed + stats.dead;
        stats.fenced = (batch.len() as u64).saturating_sub(recorded);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(n: u128, attempt: i32, max_attempts: i32, outcome: Outcome) -> Completion {
        Completion {
            id: Uuid::from_u128(n),
            kind: "k".into(),
            attempt,
            max_attempts,
            backoff_base_ms: None,
            backoff_cap_ms: None,
            outcome,
            limited: false,
            ran: None,
        }
    }

    fn retry(msg: &str) -> Outcome {
        Outcome::from(JobError::retry(msg))
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn outcomes_go_to_their_statement_with_their_attempt() {
        let batch = vec![
            completion(1, 1, 3, Outcome::Done),
            completion(2, 2, 3, retry("flaky")),
            completion(3, 3, 3, retry("still flaky")),
            completion(4, 1, 3, Outcome::from(JobError::fatal("bad args"))),
            completion(
                5,
                2,
                3,
                Outcome::from(JobError::Snooze(Duration::from_secs(7))),
            ),
            completion(6, 5, 9, Outcome::Done),
        ];
        let g = group(&Policies::default(), &batch);
        assert_eq!(g.done.ids, vec![id(1), id(6)]);
        assert_eq!(g.done.attempts, vec![1, 5]);
        // Retries and snoozes share a statement; a snooze gives its attempt back, no error.
        assert_eq!(g.retry.ids, vec![id(2), id(5)]);
        assert_eq!(g.retry.attempts, vec![2, 2]);
        assert_eq!(g.retry.refunds, vec![0, 1]);
        assert_eq!(g.retry.delays_ms[1], 7000);
        assert!(g.retry.errors[1].is_none());
        assert_eq!(g.snoozed, 1);
        // The last attempt's retry is exhausted; fatal is dead at any attempt.
        assert_eq!(g.dead.ids, vec![id(3), id(4)]);
        assert_eq!(g.dead.attempts, vec![3, 1]);
        assert_eq!(g.dead.reasons, vec!["exhausted", "fatal"]);
        // Every column of a statement has one entry per job.
        assert_eq!(g.retry.delays_ms.len(), 2);
        assert_eq!(g.retry.errors.len(), 2);
        assert_eq!(g.dead.errors.len(), 2);
    }

    #[test]
    fn error_entries_name_attempt_class_and_message() {
        let batch = vec![
            completion(1, 2, 5, retry("not ready")).ran_for(Duration::from_millis(1234)),
            completion(2, 5, 5, retry("gave up")),
            completion(3, 1, 5, Outcome::from(JobError::fatal("broken"))),
        ];
        let g = group(&Policies::default(), &batch);
        let Some(entry) = &g.retry.errors[0] else {
            panic!("a retry without its error")
        };
        for (e, attempt, class, msg) in [
            (entry, 2, "retry", "not ready"),
            (&g.dead.errors[0], 5, "retry", "gave up"),
            (&g.dead.errors[1], 1, "fatal", "broken"),
        ] {
            assert_eq!(e["attempt"], attempt, "{e}");
            assert_eq!(e["class"], class, "{e}");
            assert_eq!(e["error"], msg, "{e}");
            let at = e["at"].as_str().unwrap_or_default();
            assert!(
                chrono::DateTime::parse_from_rfc3339(at).is_ok(),
                "`at` is not a timestamp: {e}"
            );
        }
        // The run's duration, when the worker measured it.
        assert_eq!(entry["ran_ms"], 1234, "{entry}");
        assert!(g.dead.errors[0].get("ran_ms").is_none());
    }

    #[test]
    fn retry_delays_follow_the_policy_and_the_jobs_overrides() {
        let policy = RetryPolicy::default();
        for attempt in 1..=12 {
            let g = group(
                &Policies::default(),
                &[completion(1, attempt, 20, retry("x"))],
            );
            let nominal = policy.nominal_delay(u32::try_from(attempt).unwrap_or(1));
            let delay = Duration::from_millis(u64::try_from(g.retry.delays_ms[0]).unwrap_or(0));
            let (lo, hi) = (
                nominal.mul_f64(1.0 - policy.jitter),
                nominal.mul_f64(1.0 + policy.jitter),
            );
            assert!(
                delay + Duration::from_millis(1) >= lo && delay <= hi + Duration::from_millis(1),
                "attempt {attempt}: {delay:?} outside {lo:?}..{hi:?}"
            );
        }
        // A job's own base and cap win over the kind's.
        let mut c = completion(1, 6, 20, retry("x"));
        c.backoff_base_ms = Some(100);
        c.backoff_cap_ms = Some(1500);
        let p = retry_policy(&Policies::default(), &c);
        assert_eq!(
            (p.base, p.cap),
            (Duration::from_millis(100), Duration::from_millis(1500))
        );
        let g = group(&Policies::default(), &[c]);
        // 100 ms · 2^5 = 3.2 s, capped at 1.5 s, ± 10 %.
        assert!(
            (1350..=1650).contains(&g.retry.delays_ms[0]),
            "{:?}",
            g.retry.delays_ms
        );
    }

    #[test]
    fn a_batch_of_successes_needs_no_other_statement() {
        let batch: Vec<Completion> = (0..100)
            .map(|n| completion(n, 1, 3, Outcome::Done))
            .collect();
        let g = group(&Policies::default(), &batch);
        assert_eq!(g.done.ids.len(), 100);
        assert_eq!(g.retry, RetryColumns::default());
        assert_eq!(g.dead, DeadColumns::default());
        assert_eq!(group(&Policies::default(), &[]), Grouped::default());
    }
}
