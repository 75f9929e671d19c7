#![allow(clippy::unwrap_used)]
//! Queue semantics and the worker runtime against a real Postgres, through the application's
//! queue and registry: enqueue and its checks, retries with backoff, dead letters and replay,
//! uniqueness, transactions, fencing, snoozes, many workers, graceful shutdown, pruning,
//! cancellation, rescue after SIGKILL. One database per test (`#[sqlx::test]`).

mod common;

use chrono::{DateTime, Utc};
use common::{count, db_url, own_pool, pgbouncer::PgBouncer, wait, wait_count};

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chainsync::{
    db::Pooler,
    queue::{Completion, DlqFilter, Listen, Outcome, Policies, Queue, QueueError},
    runtime::{Runtime, WorkerSettings},
};
use chainsync_engine::Registry;
use chainsync_jobs::{
    Job, JobContext, JobError, NewJob, RetryPolicy, Services, settings::DomainConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

/// Records each run in `test_runs`; fails while `test_flags.fail` holds its tag.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Record {
    tag: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail: Option<String>,
}

#[async_trait]
impl Job for Record {
    const KIND: &'static str = "record";
    type Services = Services;

    fn retry_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(300),
            cap: Duration::from_secs(5),
            jitter: 0.1,
        }
    }

    fn validate(&self) -> Result<(), chainsync_engine::Invalid> {
        if self.tag.is_empty() {
            return Err(chainsync_engine::Invalid::new("tag must not be empty"));
        }
        Ok(())
    }

    fn unique_key(&self) -> Option<String> {
        self.tag
            .starts_with("u-")
            .then(|| format!("record:{}", self.tag))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        sqlx::query("INSERT INTO test_runs (job_id, attempt, tag) VALUES ($1, $2, $3)")
            .bind(ctx.meta.id)
            .bind(ctx.meta.attempt)
            .bind(&self.tag)
            .execute(ctx.db())
            .await?;
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        }
        let failing: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM test_flags WHERE tag = $1)")
                .bind(&self.tag)
                .fetch_one(ctx.db())
                .await?;
        match (failing, self.fail.as_deref()) {
            (true, Some("fatal")) => Err(JobError::fatal(format!("{} is broken", self.tag))),
            // A failure with its cause: the history keeps the whole chain.
            (true, Some("fatal-cause")) => Err(JobError::fatal_from(
                format!("{} is broken", self.tag),
                std::io::Error::other("disk on fire"),
            )),
            (true, _) => Err(JobError::retry(format!("{} not ready", self.tag))),
            (false, _) => Ok(()),
        }
    }
}

fn registry() -> Arc<Registry<Services>> {
    Arc::new(chainsync_jobs::registry().register::<Record>())
}

async fn setup(pool: &PgPool) -> Queue {
    sqlx::query("CREATE TABLE test_runs (job_id uuid, attempt int, tag text, at timestamptz DEFAULT clock_timestamp())")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE test_flags (tag text PRIMARY KEY)")
        .execute(pool)
        .await
        .unwrap();
    let reg = registry();
    let policies = Arc::new(Policies::from_kinds(reg.kinds()));
    let q = Queue::new(pool.clone(), reg.kinds().clone(), policies);
    q.sync_kinds().await.unwrap();
    q
}

fn services(q: &Queue) -> Services {
    Services::new(q.pool().clone(), None, Arc::new(DomainConfig::default())).unwrap()
}

fn fast_settings() -> WorkerSettings {
    WorkerSettings {
        concurrency: 20,
        fetch_batch: 20,
        poll_interval: Duration::from_millis(100),
        lease: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(5),
        ..WorkerSettings::default()
    }
}

fn record(tag: &str) -> NewJob {
    NewJob::untyped("record", json!({ "tag": tag }))
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn enqueue_run_complete(pool: PgPool) {
    let q = setup(&pool).await;
    let e = q.enqueue(record("a")).await.unwrap();
    assert!(e.inserted);
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        1,
        Duration::from_secs(10),
    )
    .await;
    rt.stop().await;
    let job = q.get_job(e.id).await.unwrap();
    assert_eq!(job.state, "completed");
    assert_eq!(job.attempt, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM test_runs").await, 1);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn retries_follow_backoff_then_dead_letter_then_replay(pool: PgPool) {
    let q = setup(&pool).await;
    sqlx::query("INSERT INTO test_flags VALUES ('flaky')")
        .execute(&pool)
        .await
        .unwrap();
    let e = q.enqueue(record("flaky")).await.unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.dead_letters",
        1,
        Duration::from_secs(20),
    )
    .await;

    // Three attempts, each no earlier than the persisted backoff after the previous failure.
    let runs: Vec<(i32, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT attempt, at FROM test_runs ORDER BY at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    let policy = Record::retry_policy();
    for w in runs.windows(2) {
        let gap = (w[1].1 - w[0].1).to_std().unwrap();
        let min = policy
            .nominal_delay(u32::try_from(w[0].0).unwrap())
            .mul_f64(1.0 - policy.jitter);
        assert!(
            gap >= min,
            "attempt {} ran {gap:?} after the previous, backoff minimum {min:?}",
            w[1].0
        );
    }
    let dl = q.get_dead(e.id).await.unwrap();
    assert_eq!(dl.reason, "exhausted");
    assert_eq!(dl.attempt, 3);
    let errors = dl.errors.as_array().unwrap();
    assert_eq!(errors.len(), 3, "one error per attempt: {errors:?}");
    assert!(errors.iter().all(|e| e["error"] == "flaky not ready"));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        0
    );

    // Fix the cause, replay: it runs again from attempt 1 and completes.
    sqlx::query("DELETE FROM test_flags")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(q.replay(e.id).await.unwrap(), e.id);
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        1,
        Duration::from_secs(10),
    )
    .await;
    rt.stop().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );
    let job = q.get_job(e.id).await.unwrap();
    assert_eq!(job.attempt, 1);
    assert_eq!(
        job.errors.as_array().unwrap().len(),
        3,
        "history kept across replay"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn fatal_goes_straight_to_dead_letters_and_replay_by_filter(pool: PgPool) {
    let q = setup(&pool).await;
    sqlx::query("INSERT INTO test_flags VALUES ('bad1'), ('bad2')")
        .execute(&pool)
        .await
        .unwrap();
    let mut with_cause = None;
    for (t, fail) in [("bad1", "fatal"), ("bad2", "fatal-cause")] {
        let e = q
            .enqueue(NewJob::untyped("record", json!({"tag": t, "fail": fail})))
            .await
            .unwrap();
        with_cause = Some(e.id);
    }
    // Args through the SQL API that decode but fail the kind's validate(), which the args schema
    // cannot see: dead-lettered as fatal on the first run.
    let raw: Uuid = sqlx::query_scalar("SELECT chainsync.enqueue('record', '{\"tag\": \"\"}')")
        .fetch_one(&pool)
        .await
        .unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.dead_letters WHERE reason = 'fatal' AND attempt = 1",
        3,
        Duration::from_secs(10),
    )
    .await;
    let dl = q.get_dead(with_cause.unwrap()).await.unwrap();
    assert_eq!(
        dl.errors[0]["error"], "bad2 is broken: disk on fire",
        "the message and its cause: {:?}",
        dl.errors
    );
    let dl = q.get_dead(raw).await.unwrap();
    assert!(
        dl.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid args for record"),
        "{:?}",
        dl.errors
    );
    let listed = q
        .list_dead(&DlqFilter {
            kind: Some("record".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);

    sqlx::query("DELETE FROM test_flags")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM chainsync.dead_letters WHERE id = $1")
        .bind(raw)
        .execute(&pool)
        .await
        .unwrap();
    let replayed = q.replay_filter(Some("record"), None).await.unwrap();
    assert_eq!(replayed.len(), 2);
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        2,
        Duration::from_secs(10),
    )
    .await;
    rt.stop().await;
    assert!(matches!(
        q.replay_filter(None, None).await,
        Err(QueueError::Invalid(_))
    ));
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn unique_jobs_return_the_existing_id(pool: PgPool) {
    let q = setup(&pool).await;
    let a = q.enqueue(record("u-1")).await.unwrap();
    let b = q.enqueue(record("u-1")).await.unwrap();
    assert!(a.inserted && !b.inserted);
    assert_eq!(a.id, b.id);
    let many = q
        .enqueue_many(vec![
            record("u-1"),
            record("u-2"),
            record("u-2"),
            record("x"),
        ])
        .await
        .unwrap();
    assert_eq!(many[0].id, a.id);
    assert!(!many[0].inserted && many[1].inserted && !many[2].inserted && many[3].inserted);
    assert_eq!(many[1].id, many[2].id);
    // The SQL API answers the same way.
    let c: Uuid = sqlx::query_scalar(
        "SELECT chainsync.enqueue('record', '{\"tag\":\"u-1\"}', unique_key => 'record:u-1')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(c, a.id);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        3
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn transactional_enqueue_rolls_back(pool: PgPool) {
    let q = setup(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    q.enqueue_in(&mut tx, record("t1")).await.unwrap();
    sqlx::query("SELECT chainsync.enqueue('record', '{\"tag\":\"t2\"}')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        0
    );
    let mut tx = pool.begin().await.unwrap();
    q.enqueue_in(&mut tx, record("t3")).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        1
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn bad_input_is_refused_and_writes_nothing(pool: PgPool) {
    let q = setup(&pool).await;
    for (job, needle) in [
        (NewJob::untyped("nope", json!({})), "unknown job kind"),
        (
            NewJob::untyped("record", json!({"tag": 1})),
            "invalid args for record",
        ),
        (
            NewJob::untyped("record", json!({"tag": ""})),
            "tag must not be empty",
        ),
        (
            NewJob::untyped("record", json!({"tag": "a", "extra": 1})),
            "unknown field",
        ),
        (
            NewJob {
                priority: Some(500),
                ..record("p")
            },
            "priority",
        ),
        (
            NewJob {
                max_attempts: Some(0),
                ..record("m")
            },
            "max_attempts",
        ),
        (
            NewJob {
                queue: Some(String::new()),
                ..record("q")
            },
            "queue",
        ),
    ] {
        let e = q.enqueue(job).await.unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }
    // One bad job in a bulk insert: nothing of the batch is written.
    let e = q
        .enqueue_many(vec![record("ok"), NewJob::untyped("nope", json!({}))])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("job 1"), "{e}");
    for (sql, needle) in [
        ("SELECT chainsync.enqueue('nope', '{}')", "unknown job kind"),
        (
            "SELECT chainsync.enqueue('record', '[1]')",
            "must be a JSON object",
        ),
        (
            "SELECT chainsync.enqueue('record', '{}', priority => 101::smallint)",
            "priority",
        ),
        (
            "SELECT chainsync.enqueue('record', '{}', max_attempts => 0)",
            "max_attempts",
        ),
    ] {
        let e = sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{sql}: {e}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        0
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn stale_lease_cannot_complete_a_rescued_job(pool: PgPool) {
    let q = setup(&pool).await;
    let e = q.enqueue(record("fence")).await.unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let first = q
        .fetch("default", 10, a, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // Worker A goes silent; its lease runs out and the rescuer requeues the job.
    sqlx::query("UPDATE chainsync.jobs SET lease_expires_at = now() - interval '1 s'")
        .execute(&pool)
        .await
        .unwrap();
    let r = q.rescue(100).await.unwrap();
    assert_eq!((r.requeued, r.dead), (1, 0));
    let second = q
        .fetch("default", 10, b, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(second[0].attempt, 2);
    // A's late success is refused; B's is recorded.
    let late = q
        .complete(a, &[Completion::new(&first[0], Outcome::Done)], true)
        .await
        .unwrap();
    assert_eq!((late.done, late.fenced), (0, 1));
    let ok = q
        .complete(b, &[Completion::new(&second[0], Outcome::Done)], true)
        .await
        .unwrap();
    assert_eq!((ok.done, ok.fenced), (1, 0));
    let job = q.get_job(e.id).await.unwrap();
    assert_eq!(job.state, "completed");
    assert_eq!(job.errors[0]["class"], "lease_expired");
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn snooze_does_not_use_an_attempt(pool: PgPool) {
    let q = setup(&pool).await;
    let e = q.enqueue(record("s")).await.unwrap();
    let owner = Uuid::now_v7();
    for _ in 0..5 {
        sqlx::query("UPDATE chainsync.jobs SET run_at = now()")
            .execute(&pool)
            .await
            .unwrap();
        let f = q
            .fetch("default", 1, owner, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(f[0].attempt, 1);
        let s = q
            .complete(
                owner,
                &[Completion::new(
                    &f[0],
                    Outcome::from(JobError::Snooze(Duration::from_secs(60))),
                )],
                true,
            )
            .await
            .unwrap();
        assert_eq!(s.snoozed, 1);
    }
    let job = q.get_job(e.id).await.unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("available", 0));
    assert!(job.run_at > chrono::Utc::now() + chrono::Duration::seconds(50));
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn two_runtimes_process_ten_thousand_jobs_exactly_once(pool: PgPool) {
    let q = setup(&pool).await;
    let jobs: Vec<NewJob> = (0..10_000).map(|i| record(&format!("j{i}"))).collect();
    for chunk in jobs.chunks(2000) {
        q.enqueue_many(chunk.to_vec()).await.unwrap();
    }
    let mut rts = Vec::new();
    for _ in 0..2 {
        let own = own_pool(&pool, 8).await;
        let reg = registry();
        let qq = Queue::new(
            own,
            reg.kinds().clone(),
            Arc::new(Policies::from_kinds(reg.kinds())),
        );
        rts.push(Runtime::start(
            qq.clone(),
            registry(),
            services(&qq),
            WorkerSettings {
                concurrency: 50,
                fetch_batch: 50,
                ..fast_settings()
            },
        ));
    }
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        10_000,
        Duration::from_secs(120),
    )
    .await;
    for rt in rts {
        rt.stop().await;
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM test_runs").await, 10_000);
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT job_id) FROM test_runs").await,
        10_000
    );
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT tag) FROM test_runs").await,
        10_000
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn graceful_shutdown_finishes_or_gives_back_running_jobs(pool: PgPool) {
    let q = setup(&pool).await;
    // Finishes: the job outlives the stop call but not the shutdown timeout.
    let a = q
        .enqueue(NewJob::untyped(
            "record",
            json!({"tag": "slow", "sleep_ms": 800}),
        ))
        .await
        .unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_count(
        &pool,
        "SELECT count(*) FROM test_runs",
        1,
        Duration::from_secs(10),
    )
    .await;
    rt.stop().await;
    assert_eq!(q.get_job(a.id).await.unwrap().state, "completed");

    // Gives back: the job outlives the shutdown timeout; it returns to the queue unchanged.
    sqlx::query("TRUNCATE chainsync.jobs, chainsync.finished_jobs")
        .execute(&pool)
        .await
        .unwrap();
    let b = q
        .enqueue(NewJob::untyped(
            "record",
            json!({"tag": "slower", "sleep_ms": 10_000}),
        ))
        .await
        .unwrap();
    let rt = Runtime::start(
        q.clone(),
        registry(),
        services(&q),
        WorkerSettings {
            shutdown_timeout: Duration::from_millis(300),
            ..fast_settings()
        },
    );
    wait_count(
        &pool,
        "SELECT count(*) FROM test_runs WHERE tag = 'slower'",
        1,
        Duration::from_secs(10),
    )
    .await;
    rt.stop().await;
    let job = q.get_job(b.id).await.unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt, job.lease_owner),
        ("available", 0, None)
    );
}

/// Ranges of `chainsync.finished_jobs` (leaf partitions besides the DEFAULT one), as attached.
async fn attached_ranges(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM pg_inherits
         WHERE inhparent = 'chainsync.finished_jobs'::regclass
           AND inhrelid <> 'chainsync.finished_jobs_default'::regclass",
    )
    .await
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn pruner_drops_ranges_of_finished_jobs_past_the_retention(pool: PgPool) {
    let q = setup(&pool).await;
    q.enqueue_many((0..300).map(|i| record(&format!("r{i}"))).collect())
        .await
        .unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.finished_jobs WHERE state = 'completed'",
        300,
        Duration::from_secs(30),
    )
    .await;
    rt.stop().await;
    // Completed jobs left the hot table. No maintenance pass ran yet (a fresh database has no
    // ranges): the DEFAULT partition holds them.
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 0);
    let in_default = "SELECT count(*) FROM chainsync.finished_jobs_default";
    assert_eq!(count(&pool, in_default).await, 300);
    assert_eq!(attached_ranges(&pool).await, 0);

    let db_now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    // The first pass, within the retention: ranges from the oldest finished job to ahead of the
    // clock, the DEFAULT partition's rows moved into theirs, none dropped.
    let p = q
        .prune_as_of(Some(db_now + chrono::Duration::minutes(30)), day, 100, 10)
        .await
        .unwrap();
    assert_eq!((p.jobs, p.ranges_dropped, p.busy), (0, 0, false));
    assert!(p.ranges_created > 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        300
    );
    assert_eq!(count(&pool, in_default).await, 0);
    let listed = "SELECT count(*) FROM chainsync.finished_job_partitions";
    assert_eq!(attached_ranges(&pool).await, count(&pool, listed).await);
    // Each range is a 12th of the retention (2 hours).
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.finished_job_partitions
             WHERE to_time - from_time <> interval '2 hours'"
        )
        .await,
        0
    );
    // Two days later: the ranges holding them go whole, with the count of what they held.
    let p = q
        .prune_as_of(Some(db_now + chrono::Duration::days(2)), day, 100, 10)
        .await
        .unwrap();
    assert_eq!(p.jobs, 300);
    assert!(p.ranges_dropped >= 1 && p.ranges_created >= 1, "{p:?}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        0
    );
    assert_eq!(attached_ranges(&pool).await, count(&pool, listed).await);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.finished_job_partitions WHERE to_time <= now() + interval '1 day'"
        )
        .await,
        0
    );
    // Jobs finishing at a time whose range went (the clock said otherwise) still finish: the
    // DEFAULT partition takes them.
    let late = q.enqueue(record("late")).await.unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.finished_jobs_default WHERE state = 'completed'",
        1,
        Duration::from_secs(10),
    )
    .await;
    rt.stop().await;
    assert_eq!(q.get_job(late.id).await.unwrap().state, "completed");
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn pruner_deletes_old_rows_outside_every_range_in_batches(pool: PgPool) {
    let q = setup(&pool).await;
    q.enqueue_many((0..250).map(|i| record(&format!("p{i}"))).collect())
        .await
        .unwrap();
    sqlx::query("SELECT chainsync.finish_jobs(ARRAY(SELECT id FROM chainsync.jobs), 'completed')")
        .execute(&pool)
        .await
        .unwrap();
    // Finished before the first range: the DEFAULT partition holds them.
    sqlx::query("UPDATE chainsync.finished_jobs SET finished_at = now() - interval '2 days'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.finished_jobs_default"
        )
        .await,
        250
    );
    q.enqueue(record("fresh")).await.unwrap();
    let p = q.prune(Duration::from_secs(86_400), 100, 10).await.unwrap();
    assert_eq!((p.jobs, p.ranges_dropped), (250, 0));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        1
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn completions_beside_prune_passes_lose_nothing(pool: PgPool) {
    // Jobs complete while prune passes (as of a clock running ahead, an hour per pass) create
    // ranges, drop ranges holding finished jobs and delete rows of the DEFAULT partition: every
    // job runs once and is either still there or counted by a prune, once.
    let q = setup(&pool).await;
    let n = 3000;
    q.enqueue_many((0..n).map(|i| record(&format!("c{i}"))).collect())
        .await
        .unwrap();
    let db_now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    let mut removed = 0u64;
    let mut dropped = 0;
    let mut hours = 0;
    loop {
        let open = count(&pool, "SELECT count(*) FROM chainsync.jobs").await;
        let p = q
            .prune_as_of(
                Some(db_now + chrono::Duration::hours(hours)),
                Duration::from_secs(86_400),
                50,
                100,
            )
            .await
            .unwrap();
        removed += p.jobs;
        dropped += p.ranges_dropped;
        hours += 1;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.stop().await;
    // The clock ran far enough for the ranges of the first completions to go.
    let p = q
        .prune_as_of(
            Some(db_now + chrono::Duration::hours(hours + 48)),
            Duration::from_secs(86_400),
            50,
            1000,
        )
        .await
        .unwrap();
    removed += p.jobs;
    dropped += p.ranges_dropped;
    assert!(dropped > 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.finished_jobs").await,
        0
    );
    assert_eq!(removed, n as u64, "finished jobs counted by the prunes");
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT job_id) FROM test_runs").await,
        n as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM test_runs").await,
        n as i64
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn cancel_and_listing(pool: PgPool) {
    let q = setup(&pool).await;
    let e = q.enqueue(record("c")).await.unwrap();
    q.cancel_job(e.id).await.unwrap();
    assert!(matches!(
        q.cancel_job(e.id).await,
        Err(QueueError::Conflict(_))
    ));
    assert!(matches!(
        q.cancel_job(Uuid::now_v7()).await,
        Err(QueueError::NotFound(_))
    ));
    let f = chainsync::queue::JobFilter {
        state: Some("cancelled".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(q.list_jobs(&f).await.unwrap().len(), 1);
    let bad = chainsync::queue::JobFilter {
        state: Some("zombie".into()),
        limit: 10,
        ..Default::default()
    };
    assert!(matches!(
        q.list_jobs(&bad).await,
        Err(QueueError::Invalid(_))
    ));
}

/// Entry point of the worker child process used by `orphans_are_rescued_after_sigkill`;
/// does nothing when run as an ordinary test.
#[test]
fn child_worker() {
    let Ok(url) = std::env::var("CHAINSYNC_TEST_CHILD_DB") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .unwrap();
        let reg = registry();
        let q = Queue::new(
            pool,
            reg.kinds().clone(),
            Arc::new(Policies::from_kinds(reg.kinds())),
        );
        let settings = WorkerSettings {
            lease: Duration::from_secs(2),
            heartbeat: Duration::from_millis(500),
            ..fast_settings()
        };
        let _rt = Runtime::start(q.clone(), registry(), services(&q), settings);
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn orphans_are_rescued_after_sigkill(pool: PgPool) {
    let q = setup(&pool).await;
    let n = 30;
    q.enqueue_many(
        (0..n)
            .map(|i| NewJob::untyped("record", json!({"tag": format!("k{i}"), "sleep_ms": 1500})))
            .collect(),
    )
    .await
    .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_worker", "--nocapture"])
        .env("CHAINSYNC_TEST_CHILD_DB", db_url(&pool))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill the child while it holds jobs mid-run.
    wait("the child to start 10 jobs", Duration::from_secs(30))
        .every(Duration::from_millis(20))
        .until_ok(
            async || match count(&pool, "SELECT count(*) FROM test_runs").await {
                n if n >= 10 => Ok(()),
                n => Err(n),
            },
        )
        .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let held = count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'running'",
    )
    .await;
    assert!(held > 0, "the killed child held no jobs");

    // A healthy worker plus the rescuer finish everything.
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait(
        "every job completed after the kill",
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(200))
    .until_ok(async || {
        q.rescue(100).await.unwrap();
        let sql = "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'";
        match count(&pool, sql).await {
            done if done == n => Ok(()),
            done => Err(format!("{done} of {n} completed")),
        }
    })
    .await;
    rt.stop().await;
    // No job lost, none run to completion twice: orphaned jobs ran once more, at the next attempt.
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT job_id) FROM test_runs").await,
        n
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM (SELECT job_id, attempt FROM test_runs GROUP BY 1, 2 HAVING count(*) > 1) d").await, 0);
    let rescued = count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE errors @> '[{\"class\": \"lease_expired\"}]'",
    )
    .await;
    assert_eq!(rescued, held, "every job the child held was rescued once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE attempt = 2"
        )
        .await,
        held
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );
}

// ---- Through a transaction-mode pooler ----------------------------------------------------

/// A pool on the test's database through a private PgBouncer in `pool_mode = transaction`
/// with `servers` server connections, connected as `database.pooler = "transaction"` connects.
async fn through_pgbouncer(pool: &PgPool, servers: u32, clients: u32) -> (PgBouncer, PgPool) {
    let o = pool.connect_options();
    let pgb = PgBouncer::start(o.get_port(), servers);
    let url = pgb.url(o.get_database().unwrap());
    let opts = chainsync::db::pool_options(url.parse().unwrap(), Pooler::Transaction);
    let pooled = PgPoolOptions::new()
        .max_connections(clients)
        .connect_with(opts)
        .await
        .unwrap();
    (pgb, pooled)
}

fn queue_on(pool: PgPool) -> Queue {
    let reg = registry();
    Queue::new(
        pool,
        reg.kinds().clone(),
        Arc::new(Policies::from_kinds(reg.kinds())),
    )
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn through_pgbouncer_jobs_run_retry_dead_letter_and_replay(pool: PgPool) {
    setup(&pool).await;
    // More clients than server connections: every transaction may land on another server.
    let (_pgb, pooled) = through_pgbouncer(&pool, 2, 10).await;
    let q = queue_on(pooled.clone()).listening(Listen::Off);
    sqlx::query("INSERT INTO test_flags VALUES ('flaky')")
        .execute(&pooled)
        .await
        .unwrap();
    let ok = q.enqueue(record("a")).await.unwrap();
    let flaky = q.enqueue(record("flaky")).await.unwrap();
    // An enqueue in the caller's transaction through the pooler, rolled back with it.
    let mut tx = pooled.begin().await.unwrap();
    q.enqueue_in(&mut tx, record("rolled-back")).await.unwrap();
    tx.rollback().await.unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.dead_letters",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(q.get_job(ok.id).await.unwrap().state, "completed");
    let dl = q.get_dead(flaky.id).await.unwrap();
    assert_eq!((dl.reason.as_str(), dl.attempt), ("exhausted", 3));
    sqlx::query("DELETE FROM test_flags")
        .execute(&pooled)
        .await
        .unwrap();
    assert_eq!(q.replay(flaky.id).await.unwrap(), flaky.id);
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        2,
        Duration::from_secs(20),
    )
    .await;
    rt.stop().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM test_runs WHERE tag = 'flaky'").await,
        4,
        "three attempts, then one after the replay"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM test_runs WHERE tag = 'rolled-back'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        2
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn through_pgbouncer_two_runtimes_run_every_job_once(pool: PgPool) {
    let direct = setup(&pool).await;
    let (_pgb, enqueuer) = through_pgbouncer(&pool, 4, 4).await;
    let n = 5_000;
    let jobs: Vec<NewJob> = (0..n).map(|i| record(&format!("j{i}"))).collect();
    for chunk in jobs.chunks(1000) {
        queue_on(enqueuer.clone())
            .enqueue_many(chunk.to_vec())
            .await
            .unwrap();
    }
    let mut rts = Vec::new();
    // Two daemons' worth of pools (16 clients) on 4 server connections; one runtime LISTENs on
    // a direct connection of its own, the other polls.
    for listen in [Listen::On(direct.pool().clone()), Listen::Off] {
        let url = format!(
            "postgres://root@127.0.0.1:{}/{}",
            _pgb.port,
            pool.connect_options().get_database().unwrap()
        );
        let opts = chainsync::db::pool_options(url.parse().unwrap(), Pooler::Transaction);
        let own = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .unwrap();
        let qq = queue_on(own).listening(listen);
        rts.push(Runtime::start(
            qq.clone(),
            registry(),
            services(&qq),
            WorkerSettings {
                concurrency: 50,
                fetch_batch: 50,
                ..fast_settings()
            },
        ));
    }
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        n,
        Duration::from_secs(120),
    )
    .await;
    for rt in rts {
        rt.stop().await;
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM test_runs").await, n);
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT job_id) FROM test_runs").await,
        n
    );
}

/// A database with finished jobs in the hot table (before `finished_jobs`) keeps every job: the
/// finished ones move to ranges over their span, live ones stay, nothing changes but the table.
#[sqlx::test(migrations = false)]
async fn migration_moves_finished_jobs_out_of_the_hot_table(pool: PgPool) {
    let before = sqlx::migrate::Migrator::with_migrations(
        chainsync_jobs::MIGRATOR
            .iter()
            .filter(|m| m.version < 20_261_201_000_000)
            .cloned()
            .collect(),
    );
    before.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO chainsync.jobs (id, kind, args, state, attempt, errors, run_at, created_at,
                                     started_at, finished_at, lease_owner, lease_expires_at)
         SELECT chainsync.uuid_v7(), 'noop', jsonb_build_object('n', g),
                (ARRAY['available', 'running', 'completed', 'cancelled'])[1 + g % 4]::chainsync.job_state,
                1, '[]', now() - g * interval '1 minute', now() - g * interval '1 minute',
                CASE WHEN g % 4 >= 1 THEN now() - g * interval '1 minute' END,
                CASE WHEN g % 4 >= 2 THEN now() - g * interval '1 minute' END,
                CASE WHEN g % 4 = 1 THEN gen_random_uuid() END,
                CASE WHEN g % 4 = 1 THEN now() + interval '1 minute' END
         FROM generate_series(0, 11999) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let digest = "SELECT md5(string_agg(concat_ws(',', id, kind, args, state, attempt, run_at,
                      created_at, started_at, finished_at, lease_owner), ';' ORDER BY id))
                  FROM chainsync.%s";
    let d0: String = sqlx::query_scalar(sqlx::AssertSqlSafe(digest.replace("%s", "jobs")))
        .fetch_one(&pool)
        .await
        .unwrap();
    chainsync_jobs::MIGRATOR.run(&pool).await.unwrap();
    let d1: String = sqlx::query_scalar(sqlx::AssertSqlSafe(digest.replace("%s", "all_jobs")))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(d0, d1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.jobs").await,
        6000
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.finished_jobs").await,
        6000
    );
    // Over the 8 1/3 days they span: ranges of 12 hours (a 12th of that, rounded down to a width
    // of the list), none of the rows left in DEFAULT.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.finished_jobs_default"
        )
        .await,
        0
    );
    let widths: Vec<f64> = sqlx::query_scalar(
        "SELECT DISTINCT extract(epoch FROM to_time - from_time)::float8 FROM chainsync.finished_job_partitions",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(widths, vec![43_200.0]);
    // The hot table takes live jobs only.
    let err = sqlx::query(
        "UPDATE chainsync.jobs SET state = 'completed', finished_at = now()
         WHERE id = (SELECT id FROM chainsync.jobs LIMIT 1)",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("jobs_live"), "{err}");
}

/// A prune that would drop a range while a reader holds the table gives up within
/// `PRUNE_LOCK_TIMEOUT` (nothing dropped, `busy`), and the next pass drops it.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_prune_behind_a_long_reader_gives_up_and_the_next_one_drops(pool: PgPool) {
    let q = setup(&pool).await;
    q.enqueue_many((0..20).map(|i| record(&format!("b{i}"))).collect())
        .await
        .unwrap();
    sqlx::query("SELECT chainsync.finish_jobs(ARRAY(SELECT id FROM chainsync.jobs), 'completed')")
        .execute(&pool)
        .await
        .unwrap();
    let db_now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    q.prune_as_of(Some(db_now), day, 100, 10).await.unwrap();
    let later = Some(db_now + chrono::Duration::days(2));

    let mut reader = pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM chainsync.all_jobs")
        .execute(&mut *reader)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let p = q.prune_as_of(later, day, 100, 10).await.unwrap();
    assert!(p.busy, "{p:?}");
    assert_eq!((p.jobs, p.ranges_dropped), (0, 0));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        20
    );
    reader.commit().await.unwrap();

    let p = q.prune_as_of(later, day, 100, 10).await.unwrap();
    assert!(!p.busy);
    assert_eq!(p.jobs, 20);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        0
    );
}
