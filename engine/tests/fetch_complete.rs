#![allow(clippy::unwrap_used)]
//! The fetch, lease and outcome statements and the worker runtime against a real Postgres (one
//! database per test, the engine's own migrations), with a kind of the tests' own: the engine
//! knows no application kinds.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use chainsync_engine::{
    Job, JobContext, JobError, NewJob, Registry, RetryPolicy,
    queue::{CompleteStats, Completion, Fetched, Outcome, Policies, Queue},
    runtime::{Runtime, WorkerSettings},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Fails its first `fail_times` attempts (retry), or every one (`fatal`).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Step {
    tag: String,
    #[serde(default)]
    fail_times: i32,
    #[serde(default)]
    fatal: bool,
}

const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base: Duration::from_millis(50),
    cap: Duration::from_millis(200),
    jitter: 0.1,
};

#[async_trait]
impl Job for Step {
    const KIND: &'static str = "step";
    type Services = ();

    fn retry_policy() -> RetryPolicy {
        POLICY
    }

    async fn run(&self, ctx: &JobContext<()>) -> Result<(), JobError> {
        if self.fatal {
            return Err(JobError::fatal(format!("{} is broken", self.tag)));
        }
        if ctx.meta.attempt <= self.fail_times {
            return Err(JobError::retry(format!("{} not ready", self.tag)));
        }
        Ok(())
    }
}

fn registry() -> Registry<()> {
    Registry::new().register::<Step>()
}

async fn queue(pool: &PgPool) -> Queue {
    let reg = registry();
    let policies = Arc::new(Policies::from_kinds(reg.kinds()));
    let q = Queue::new(pool.clone(), reg.kinds().clone(), policies);
    q.sync_kinds().await.unwrap();
    q
}

fn step(tag: &str) -> NewJob {
    NewJob::untyped("step", json!({ "tag": tag }))
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until `probe` holds; panics after `limit` naming `what`.
async fn wait_until<F: Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    state: String,
    attempt: i32,
    lease_owner: Option<Uuid>,
    lease_expires_at: Option<DateTime<Utc>>,
    run_at: DateTime<Utc>,
    errors: Value,
}

async fn row(pool: &PgPool, id: Uuid) -> Row {
    sqlx::query_as(
        "SELECT state::text, attempt, lease_owner, lease_expires_at, run_at, errors
         FROM chainsync.all_jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn ids(jobs: &[Fetched]) -> Vec<Uuid> {
    jobs.iter().map(|j| j.id).collect()
}

const LEASE: Duration = Duration::from_secs(30);

#[sqlx::test(migrations = "../migrations/engine")]
async fn fetch_leases_runnable_jobs_by_priority_up_to_the_limit(pool: PgPool) {
    let q = queue(&pool).await;
    let mut want = Vec::new();
    for (tag, priority) in [("c", 5), ("a", 1), ("d", 7), ("b", 3)] {
        let e = q
            .enqueue(NewJob {
                priority: Some(priority),
                ..step(tag)
            })
            .await
            .unwrap();
        want.push((priority, e.id));
    }
    want.sort();
    // Not runnable: due later, or on another queue.
    q.enqueue(NewJob {
        run_at: Some(Utc::now() + chrono::Duration::hours(1)),
        ..step("later")
    })
    .await
    .unwrap();
    q.enqueue(NewJob {
        queue: Some("other".into()),
        ..step("elsewhere")
    })
    .await
    .unwrap();

    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let first = q.fetch("default", 3, a, LEASE).await.unwrap();
    let second = q.fetch("default", 3, b, LEASE).await.unwrap();
    // The highest priorities (lowest numbers) first; rows come back in no particular order.
    let mut got = ids(&first);
    got.sort();
    let mut top: Vec<Uuid> = want[..3].iter().map(|w| w.1).collect();
    top.sort();
    assert_eq!(got, top);
    assert_eq!(ids(&second), vec![want[3].1], "each job leased once");
    assert!(
        q.fetch("default", 3, a, LEASE).await.unwrap().is_empty(),
        "nothing runnable left"
    );
    let t = now(&pool).await;
    for (job, owner) in first
        .iter()
        .map(|j| (j, a))
        .chain(second.iter().map(|j| (j, b)))
    {
        assert_eq!(job.attempt, 1);
        assert_eq!((job.kind.as_str(), job.max_attempts), ("step", 3));
        let r = row(&pool, job.id).await;
        assert_eq!((r.state.as_str(), r.attempt), ("running", 1));
        assert_eq!(r.lease_owner, Some(owner));
        let left = (r.lease_expires_at.unwrap() - t).to_std().unwrap();
        assert!(
            left > LEASE - Duration::from_secs(5) && left <= LEASE,
            "{left:?}"
        );
    }
    assert_eq!(q.fetch("other", 10, a, LEASE).await.unwrap().len(), 1);
}

#[sqlx::test(migrations = "../migrations/engine")]
async fn heartbeat_extends_its_owners_leases_and_release_gives_them_back_unused(pool: PgPool) {
    let q = queue(&pool).await;
    q.enqueue_many((0..5).map(|i| step(&format!("h{i}"))).collect())
        .await
        .unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mine = q.fetch("default", 3, a, LEASE).await.unwrap();
    let theirs = q.fetch("default", 2, b, LEASE).await.unwrap();

    // Only the jobs held are extended: not another owner's, not one `a` no longer holds.
    let all: Vec<Uuid> = mine.iter().chain(&theirs).map(|j| j.id).collect();
    assert_eq!(
        q.heartbeat(a, &all[..2], Duration::from_secs(600))
            .await
            .unwrap(),
        2
    );
    assert!(
        row(&pool, mine[2].id).await.lease_expires_at.unwrap() - now(&pool).await
            <= chrono::Duration::seconds(30),
        "a job not held is not extended"
    );
    assert_eq!(
        q.heartbeat(a, &all, Duration::from_secs(600))
            .await
            .unwrap(),
        3
    );
    let t = now(&pool).await;
    for j in &mine {
        let left = row(&pool, j.id).await.lease_expires_at.unwrap() - t;
        assert!(left > chrono::Duration::seconds(590), "{left}");
    }
    for j in &theirs {
        let left = row(&pool, j.id).await.lease_expires_at.unwrap() - t;
        assert!(left <= chrono::Duration::seconds(30), "{left}");
    }

    assert_eq!(q.release(a).await.unwrap(), 3);
    for j in &mine {
        let r = row(&pool, j.id).await;
        assert_eq!(
            (
                r.state.as_str(),
                r.attempt,
                r.lease_owner,
                r.lease_expires_at
            ),
            ("available", 0, None, None),
            "given back without using an attempt"
        );
    }
    for j in &theirs {
        assert_eq!(row(&pool, j.id).await.lease_owner, Some(b));
    }
    assert_eq!(q.release(a).await.unwrap(), 0);
    assert_eq!(q.heartbeat(a, &all, LEASE).await.unwrap(), 0);
}

/// One job per outcome, fetched by `owner`; `last` runs its last attempt.
async fn one_of_each(q: &Queue, owner: Uuid) -> Vec<Fetched> {
    let mut jobs = Vec::new();
    for (tag, max_attempts) in [
        ("ok", 3),
        ("retry", 3),
        ("snooze", 3),
        ("last", 1),
        ("fatal", 3),
    ] {
        jobs.push(
            q.enqueue(NewJob {
                max_attempts: Some(max_attempts),
                ..step(tag)
            })
            .await
            .unwrap()
            .id,
        );
    }
    let mut fetched = q.fetch("default", 10, owner, LEASE).await.unwrap();
    fetched.sort_by_key(|f| jobs.iter().position(|id| *id == f.id));
    assert_eq!(ids(&fetched), jobs);
    fetched
}

fn outcomes(jobs: &[Fetched]) -> Vec<Completion> {
    let outcome = [
        Outcome::Done,
        Outcome::from(JobError::retry("not ready")),
        Outcome::from(JobError::Snooze(Duration::from_secs(60))),
        Outcome::from(JobError::retry("still not ready")),
        Outcome::from(JobError::fatal("broken")),
    ];
    jobs.iter()
        .zip(outcome)
        .map(|(j, o)| Completion::new(j, o))
        .collect()
}

#[sqlx::test(migrations = "../migrations/engine")]
async fn complete_records_a_batch_of_every_outcome_at_once(pool: PgPool) {
    let q = queue(&pool).await;
    let owner = Uuid::now_v7();
    let jobs = one_of_each(&q, owner).await;
    // The statements' `now()` lies between these two.
    let t0 = now(&pool).await;
    let stats = q.complete(owner, &outcomes(&jobs), true).await.unwrap();
    let t1 = now(&pool).await;
    // The delay a row was scheduled with is within these bounds (ms).
    let delay = |run_at: DateTime<Utc>| {
        let ms = |d: chrono::Duration| d.num_microseconds().unwrap() as f64 / 1000.0;
        (ms(run_at - t1), ms(run_at - t0))
    };
    assert_eq!(
        stats,
        CompleteStats {
            done: 1,
            retried: 1,
            snoozed: 1,
            dead: 2,
            fenced: 0
        }
    );

    let done = row(&pool, jobs[0].id).await;
    assert_eq!((done.state.as_str(), done.lease_owner), ("completed", None));

    // The retry: available again at the persisted backoff (50 ms ± 10 %), its error kept.
    let retry = row(&pool, jobs[1].id).await;
    assert_eq!((retry.state.as_str(), retry.attempt), ("available", 1));
    let (lo, hi) = delay(retry.run_at);
    assert!(lo <= 55.0 && hi >= 45.0, "retry delay in {lo}..{hi} ms");
    let errors = retry.errors.as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (
            &errors[0]["attempt"],
            &errors[0]["class"],
            &errors[0]["error"]
        ),
        (&json!(1), &json!("retry"), &json!("not ready"))
    );
    // With the attempt's start (the fetch's time, from the database).
    assert!(
        chrono::DateTime::parse_from_rfc3339(errors[0]["started_at"].as_str().unwrap()).is_ok(),
        "{errors:?}"
    );

    // The snooze: the attempt given back, no error recorded.
    let snooze = row(&pool, jobs[2].id).await;
    assert_eq!((snooze.state.as_str(), snooze.attempt), ("available", 0));
    assert_eq!(snooze.errors, json!([]));
    let (lo, hi) = delay(snooze.run_at);
    assert!(
        lo <= 60_000.0 && hi >= 60_000.0,
        "snooze delay in {lo}..{hi} ms"
    );

    // Exhausted and fatal: out of the jobs table, into the dead letters with their errors.
    for (job, reason, class, msg) in [
        (&jobs[3], "exhausted", "retry", "still not ready"),
        (&jobs[4], "fatal", "fatal", "broken"),
    ] {
        let dl = q.get_dead(job.id).await.unwrap();
        assert_eq!((dl.reason.as_str(), dl.attempt), (reason, 1));
        let last = dl.errors.as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (&last["class"], &last["error"]),
            (&json!(class), &json!(msg))
        );
        assert!(last["started_at"].is_string(), "{last}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        3,
        "done (retained), retry, snooze"
    );
}

#[sqlx::test(migrations = "../migrations/engine")]
async fn successes_not_retained_are_deleted(pool: PgPool) {
    let q = queue(&pool).await;
    q.enqueue_many((0..4).map(|i| step(&format!("d{i}"))).collect())
        .await
        .unwrap();
    let owner = Uuid::now_v7();
    let jobs = q.fetch("default", 10, owner, LEASE).await.unwrap();
    let batch: Vec<Completion> = jobs
        .iter()
        .map(|j| Completion::new(j, Outcome::Done))
        .collect();
    let stats = q.complete(owner, &batch, false).await.unwrap();
    assert_eq!((stats.done, stats.fenced), (4, 0));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        0
    );
}

#[sqlx::test(migrations = "../migrations/engine")]
async fn outcomes_of_a_lease_no_longer_held_are_fenced(pool: PgPool) {
    let q = queue(&pool).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let jobs = one_of_each(&q, a).await;
    let batch = outcomes(&jobs);

    // Another worker's outcomes for these jobs: all refused, nothing changes.
    assert_eq!(
        q.complete(b, &batch, true).await.unwrap(),
        CompleteStats {
            fenced: 5,
            ..CompleteStats::default()
        }
    );
    // The right worker at a stale attempt (the job was rescued and re-run since): refused too.
    let stale: Vec<Completion> = batch
        .iter()
        .cloned()
        .map(|mut c| {
            c.attempt += 1;
            c
        })
        .collect();
    assert_eq!(q.complete(a, &stale, true).await.unwrap().fenced, 5);
    for j in &jobs {
        let r = row(&pool, j.id).await;
        assert_eq!((r.state.as_str(), r.lease_owner), ("running", Some(a)));
        assert_eq!(r.errors, json!([]));
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );

    // A batch mixing held and lost leases: the held ones are recorded, the others fenced.
    sqlx::query("UPDATE chainsync.jobs SET lease_owner = $1 WHERE id = ANY($2)")
        .bind(b)
        .bind(vec![jobs[1].id, jobs[4].id])
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        q.complete(a, &batch, true).await.unwrap(),
        CompleteStats {
            done: 1,
            retried: 0,
            snoozed: 1,
            dead: 1,
            fenced: 2
        }
    );
    for j in [&jobs[1], &jobs[4]] {
        let r = row(&pool, j.id).await;
        assert_eq!((r.state.as_str(), r.lease_owner), ("running", Some(b)));
    }
}

fn fast() -> WorkerSettings {
    WorkerSettings {
        concurrency: 8,
        fetch_batch: 8,
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(5),
        ..WorkerSettings::default()
    }
}

#[sqlx::test(migrations = "../migrations/engine")]
async fn the_runtime_runs_retries_and_dead_letters_then_stops_at_once(pool: PgPool) {
    let q = queue(&pool).await;
    let mut e = Vec::new();
    for args in [
        json!({"tag": "ok"}),
        json!({"tag": "second time", "fail_times": 1}),
        json!({"tag": "never", "fail_times": 9}),
        json!({"tag": "broken", "fatal": true}),
    ] {
        e.push(q.enqueue(NewJob::untyped("step", args)).await.unwrap().id);
    }
    let rt = Runtime::start(q.clone(), Arc::new(registry()), (), fast());
    wait_until(
        "two completed, two dead letters",
        Duration::from_secs(20),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
            )
            .await
                == 2
                && count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await == 2
        },
    )
    .await;
    // Idle: stopping takes no more than the round trips it needs (no wait for the apalis
    // worker, which a closed job stream ends).
    let t = std::time::Instant::now();
    rt.stop().await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?}");

    assert_eq!(q.get_job(e[0]).await.unwrap().attempt, 1);
    let second = q.get_job(e[1]).await.unwrap();
    assert_eq!((second.state.as_str(), second.attempt), ("completed", 2));
    let never = q.get_dead(e[2]).await.unwrap();
    assert_eq!((never.reason.as_str(), never.attempt), ("exhausted", 3));
    assert_eq!(never.errors.as_array().unwrap().len(), 3);
    let broken = q.get_dead(e[3]).await.unwrap();
    assert_eq!((broken.reason.as_str(), broken.attempt), ("fatal", 1));
}

/// The lease tokens workers send are exactly what `chainsync.lease_token` makes of the row.
#[sqlx::test(migrations = "../migrations/engine")]
async fn lease_token_matches_sql(pool: PgPool) {
    for (id, attempt, owner) in [
        (Uuid::now_v7(), 1, Uuid::now_v7()),
        (Uuid::nil(), 0, Uuid::max()),
        (Uuid::now_v7(), i32::MAX, Uuid::now_v7()),
    ] {
        let sql: String = sqlx::query_scalar("SELECT chainsync.lease_token($1, $2, $3)")
            .bind(id)
            .bind(attempt)
            .bind(owner)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            chainsync_engine::queue::complete::lease_token(id, attempt, owner),
            sql
        );
    }
}
