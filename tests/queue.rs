#![allow(clippy::unwrap_used)]
//! Queue engine against a real Postgres: one database per test (`#[sqlx::test]`).

mod common;
use common::db_url;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chainsync::{
    queue::{Completion, DlqFilter, Outcome, Policies, Queue, QueueError},
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
#[derive(Debug, Serialize, Deserialize)]
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

    fn validate(&self) -> Result<(), String> {
        if self.tag.is_empty() {
            return Err("tag must not be empty".into());
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
            (true, Some("fatal")) => Err(JobError::Fatal(format!("{} is broken", self.tag))),
            (true, _) => Err(JobError::Retry(format!("{} not ready", self.tag))),
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

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until `sql` returns `want`, or panics after `limit`.
async fn wait_for(pool: &PgPool, sql: &str, want: i64, limit: Duration) {
    let t = std::time::Instant::now();
    loop {
        let n = count(pool, sql).await;
        if n == want {
            return;
        }
        assert!(t.elapsed() < limit, "timeout: `{sql}` = {n}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn enqueue_run_complete(pool: PgPool) {
    let q = setup(&pool).await;
    let e = q.enqueue(record("a")).await.unwrap();
    assert!(e.inserted);
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_for(
        &pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'completed'",
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
    wait_for(
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
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 0);

    // Fix the cause, replay: it runs again from attempt 1 and completes.
    sqlx::query("DELETE FROM test_flags")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(q.replay(e.id).await.unwrap(), e.id);
    wait_for(
        &pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'completed'",
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
    for t in ["bad1", "bad2"] {
        q.enqueue(NewJob::untyped(
            "record",
            json!({"tag": t, "fail": "fatal"}),
        ))
        .await
        .unwrap();
    }
    // Undecodable args through the SQL API: dead-lettered as fatal on the first run.
    let raw: Uuid = sqlx::query_scalar("SELECT chainsync.enqueue('record', '{\"tag\": 5}')")
        .fetch_one(&pool)
        .await
        .unwrap();
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    wait_for(
        &pool,
        "SELECT count(*) FROM chainsync.dead_letters WHERE reason = 'fatal' AND attempt = 1",
        3,
        Duration::from_secs(10),
    )
    .await;
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
    wait_for(
        &pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'completed'",
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
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 3);
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
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 0);
    let mut tx = pool.begin().await.unwrap();
    q.enqueue_in(&mut tx, record("t3")).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 1);
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
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 0);
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
        let own = PgPoolOptions::new()
            .max_connections(8)
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap();
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
    wait_for(
        &pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'completed'",
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
    wait_for(
        &pool,
        "SELECT count(*) FROM test_runs",
        1,
        Duration::from_secs(10),
    )
    .await;
    rt.stop().await;
    assert_eq!(q.get_job(a.id).await.unwrap().state, "completed");

    // Gives back: the job outlives the shutdown timeout; it returns to the queue unchanged.
    sqlx::query("DELETE FROM chainsync.jobs")
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
    wait_for(
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

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn pruner_deletes_old_finished_jobs_in_batches(pool: PgPool) {
    let q = setup(&pool).await;
    q.enqueue_many((0..250).map(|i| record(&format!("p{i}"))).collect())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE chainsync.jobs SET state = 'completed', finished_at = now() - interval '2 days'",
    )
    .execute(&pool)
    .await
    .unwrap();
    q.enqueue(record("fresh")).await.unwrap();
    let n = q.prune(Duration::from_secs(86_400), 100, 10).await.unwrap();
    assert_eq!(n, 250);
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 1);
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
    let t = std::time::Instant::now();
    while count(&pool, "SELECT count(*) FROM test_runs").await < 10 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "child never started jobs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let held = count(
        &pool,
        "SELECT count(*) FROM chainsync.jobs WHERE state = 'running'",
    )
    .await;
    assert!(held > 0, "the killed child held no jobs");

    // A healthy worker plus the rescuer finish everything.
    let rt = Runtime::start(q.clone(), registry(), services(&q), fast_settings());
    let t = std::time::Instant::now();
    loop {
        q.rescue(100).await.unwrap();
        if count(
            &pool,
            "SELECT count(*) FROM chainsync.jobs WHERE state = 'completed'",
        )
        .await
            == n
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "jobs not all completed after the kill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rt.stop().await;
    // No job lost, none run to completion twice: orphaned jobs ran once more, at the next attempt.
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT job_id) FROM test_runs").await,
        n
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM (SELECT job_id, attempt FROM test_runs GROUP BY 1, 2 HAVING count(*) > 1) d").await, 0);
    let rescued = count(
        &pool,
        "SELECT count(*) FROM chainsync.jobs WHERE errors @> '[{\"class\": \"lease_expired\"}]'",
    )
    .await;
    assert_eq!(rescued, held, "every job the child held was rescued once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.jobs WHERE attempt = 2"
        )
        .await,
        held
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn cli_bad_input_fails_with_one_line_and_writes_nothing(pool: PgPool) {
    setup(&pool).await;
    let url = db_url(&pool);
    let bin = env!("CARGO_BIN_EXE_chainsync");
    let cases: &[(&[&str], &str)] = &[
        (&["enqueue", "nope"], "unknown job kind"),
        (
            &["enqueue", "noop", "--args", "{not json"],
            "not valid JSON",
        ),
        (&["enqueue", "noop", "--args", "[1]"], "JSON object"),
        (
            &["enqueue", "noop", "--args", "{\"sleep_ms\": \"x\"}"],
            "invalid args for noop",
        ),
        (&["jobs", "show", "not-a-uuid"], "invalid value"),
        (&["jobs", "list", "--state", "zombie"], "unknown state"),
        (&["dlq", "replay"], "needs a kind or a since time"),
        (&["dlq", "purge"], "needs an id"),
        (
            &["dlq", "show", "01a20aa5-4f07-7020-afc5-0430ca531b79"],
            "not found",
        ),
    ];
    for (args, needle) in cases {
        let out = std::process::Command::new(bin)
            .arg("--database-url")
            .arg(&url)
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = std::process::Command::new(bin)
        .args([
            "--database-url",
            &url,
            "--json",
            "enqueue",
            "noop",
            "--args",
            "{}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inserted"], true);
    assert_eq!(count(&pool, "SELECT count(*) FROM chainsync.jobs").await, 1);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn environment_overrides_apply_and_other_chainsync_variables_are_left_alone(pool: PgPool) {
    setup(&pool).await;
    let url = db_url(&pool);
    let bin = env!("CARGO_BIN_EXE_chainsync");
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--database-url", &url, "--json", "jobs", "list"]);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // Variables of the demo and the scripts share the prefix but are not config keys.
    let out = run(&[
        ("CHAINSYNC_RPC_URL", "http://127.0.0.1:1"),
        ("CHAINSYNC_TOOLS", "/nowhere"),
        ("CHAINSYNC_STRESS", "1"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SECTION__KEY is always config: a bad value and a misspelt section both stop with the key.
    let out = run(&[("CHAINSYNC_WORKER__CONCURRENCY", "0")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("worker.concurrency"),
        "{err}"
    );
    let out = run(&[("CHAINSYNC_WORKR__CONCURRENCY", "4")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("workr"), "{err}");
    // A plain top-level key is config too.
    let out = run(&[("CHAINSYNC_POOL_SIZE", "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("pool_size"), "{err}");
}

/// Every access to `chainsync.jobs` in a plan: (node type, has an index condition).
fn jobs_scans(node: &serde_json::Value, out: &mut Vec<(String, bool)>) {
    let scan = node["Node Type"]
        .as_str()
        .is_some_and(|t| t.ends_with("Scan"));
    if scan && node["Relation Name"] == "jobs" {
        // The partial index of running rows holds at most the total concurrency (plus dead
        // entries until vacuum): walking it whole is what heartbeat and release mean to do.
        let cond = node.get("Index Cond").is_some()
            || node.get("Recheck Cond").is_some()
            || node["Index Name"] == "jobs_running_idx";
        out.push((node["Node Type"].as_str().unwrap_or("?").to_string(), cond));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        jobs_scans(child, out);
    }
}

/// Whether a plan has a nested loop that rescans the list of per-job values (`unnest(…)`) once
/// per row of the other side: quadratic in the batch size.
fn rescans_value_list(node: &serde_json::Value) -> bool {
    let children: Vec<&serde_json::Value> =
        node["Plans"].as_array().into_iter().flatten().collect();
    let quadratic = node["Node Type"] == "Nested Loop"
        && children
            .get(1)
            .is_some_and(|inner| inner["Node Type"] == "Function Scan");
    quadratic || children.into_iter().any(rescans_value_list)
}

/// Plans of the hot statements, as they run (custom plans made with their arguments, which the
/// daemon's pools force; see `daemon_pools_plan_each_run_of_the_hot_statements`), in the
/// states statistics of a queue table go through: never analyzed; analyzed while empty, then a
/// burst; a drained table vacuumed without truncation ("0 rows in N pages"), then a burst.
/// In each, every access to the jobs table must use an index condition: no sequential scan, no
/// walk of a whole index.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn hot_statements_use_index_conditions_whatever_the_statistics_say(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let owner = uuid::Uuid::now_v7();
    let ids: Vec<uuid::Uuid> = (0..500).map(|_| uuid::Uuid::now_v7()).collect();
    let ints = vec![1i32; 500];
    let tokens: Vec<String> = ids.iter().map(|id| format!("{id}/1/{owner}")).collect();
    let check_all = async |conn: &mut sqlx::PgConnection, state: &str| {
        let stmts: [(&str, &str); 9] = [
            ("fetch", include_str!("../engine/src/queue/sql/fetch.sql")),
            (
                "complete_retain",
                include_str!("../engine/src/queue/sql/complete_retain.sql"),
            ),
            (
                "complete_delete",
                include_str!("../engine/src/queue/sql/complete_delete.sql"),
            ),
            ("retry", include_str!("../engine/src/queue/sql/retry.sql")),
            (
                "dead_letter",
                include_str!("../engine/src/queue/sql/dead_letter.sql"),
            ),
            ("prune", include_str!("../engine/src/queue/sql/prune.sql")),
            ("rescue", include_str!("../engine/src/queue/sql/rescue.sql")),
            (
                "heartbeat",
                include_str!("../engine/src/queue/sql/heartbeat.sql"),
            ),
            (
                "release",
                include_str!("../engine/src/queue/sql/release.sql"),
            ),
        ];
        for (name, sql) in stmts {
            let q = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(format!(
                "EXPLAIN (FORMAT JSON) {sql}"
            )))
            .persistent(false);
            let q = match name {
                "fetch" => q.bind("default").bind(500i64).bind(owner).bind(60_000i64),
                "complete_retain" | "complete_delete" => q.bind(&ids).bind(&tokens),
                "retry" => q
                    .bind(&ids)
                    .bind(&tokens)
                    .bind(vec![1000i64; 500])
                    .bind(&ints)
                    .bind(vec![serde_json::json!({}); 500]),
                "dead_letter" => q
                    .bind(&ids)
                    .bind(&tokens)
                    .bind(vec![serde_json::json!({}); 500])
                    .bind(vec!["fatal"; 500]),
                "prune" => q.bind(2.0f64).bind(20_000i64),
                "rescue" => q.bind(1000i64),
                "heartbeat" => q.bind(owner).bind(60_000i64),
                _ => q.bind(owner),
            };
            let plan = q.fetch_one(&mut *conn).await.unwrap();
            let mut scans = Vec::new();
            jobs_scans(&plan[0]["Plan"], &mut scans);
            assert!(
                !scans.is_empty(),
                "{state}/{name}: no scan of jobs in {plan}"
            );
            for (node, cond) in &scans {
                assert!(
                    node != "Seq Scan" && *cond,
                    "{state}/{name}: {node} without an index condition\n{plan:#}"
                );
            }
            // Successes never join; retries and dead letters join their values by primary key,
            // and only a table believed empty ("0 rows in N pages", until the next ANALYZE) can
            // make the planner loop over the values (bounded: batch size squared).
            let loops_allowed =
                state == "zero rows in many pages" && matches!(name, "retry" | "dead_letter");
            assert!(
                loops_allowed || !rescans_value_list(&plan[0]["Plan"]),
                "{state}/{name}: nested loop over the value list\n{plan:#}"
            );
        }
    };
    let burst = async |conn: &mut sqlx::PgConnection, n: i32| {
        // Half available, half running (leased), a few expired and finished.
        sqlx::query(
            "INSERT INTO chainsync.jobs (id, kind, args, state, attempt, lease_owner, lease_expires_at, finished_at)
             SELECT gen_random_uuid(), 'noop', '{}',
                    CASE WHEN i % 3 = 0 THEN 'available' WHEN i % 3 = 1 THEN 'running' ELSE 'completed' END::chainsync.job_state,
                    1,
                    CASE WHEN i % 3 = 1 THEN gen_random_uuid() END,
                    CASE WHEN i % 3 = 1 THEN now() + interval '1 minute' END,
                    CASE WHEN i % 3 = 2 THEN now() END
             FROM generate_series(1, $1) AS i",
        )
        .bind(n)
        .execute(&mut *conn)
        .await
        .unwrap();
    };
    let run = async |conn: &mut sqlx::PgConnection, sql: &str| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut *conn)
            .await
            .unwrap();
    };

    // Never analyzed, then a burst.
    burst(&mut conn, 150_000).await;
    check_all(&mut conn, "never analyzed").await;

    // Drained and vacuumed (truncated to nothing: statistics say empty), then a burst.
    run(&mut conn, "DELETE FROM chainsync.jobs").await;
    run(&mut conn, "VACUUM ANALYZE chainsync.jobs").await;
    burst(&mut conn, 150_000).await;
    check_all(&mut conn, "analyzed empty").await;

    // Drained and vacuumed without truncation (as when VACUUM cannot get its lock on a busy
    // table): "0 rows in N pages", then a burst.
    run(&mut conn, "DELETE FROM chainsync.jobs").await;
    run(
        &mut conn,
        "ALTER TABLE chainsync.jobs SET (vacuum_truncate = false)",
    )
    .await;
    run(&mut conn, "VACUUM ANALYZE chainsync.jobs").await;
    let (pages, tuples): (i32, f32) = sqlx::query_as(
        "SELECT relpages, reltuples FROM pg_class WHERE oid = 'chainsync.jobs'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(pages > 100 && tuples == 0.0, "{pages} pages, {tuples} rows");
    burst(&mut conn, 150_000).await;
    check_all(&mut conn, "zero rows in many pages").await;
}

/// Postgres turns a prepared statement into a generic plan after five runs; made on an empty
/// queue, that plan stays a sequential scan when the table fills. The daemon's pools force a
/// custom plan at every run. Checked through `pg_prepared_statements` (statements with
/// parameters; one without has a single plan anyway), on one connection each: the plain pool
/// goes generic, the daemon's never does.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn daemon_pools_plan_each_run_of_the_hot_statements(pool: PgPool) {
    let reg = registry();
    let opts = (*pool.connect_options()).clone();
    let mut seen = Vec::new();
    for daemon in [false, true] {
        let opts = if daemon {
            chainsync::app::force_custom_plans(opts.clone())
        } else {
            opts.clone()
        };
        let one = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        let q = Queue::new(
            one.clone(),
            reg.kinds().clone(),
            Arc::new(Policies::from_kinds(reg.kinds())),
        );
        for _ in 0..8 {
            let got = q
                .fetch("default", 500, Uuid::now_v7(), Duration::from_secs(60))
                .await
                .unwrap();
            assert!(got.is_empty());
            q.heartbeat(Uuid::now_v7(), Duration::from_secs(60))
                .await
                .unwrap();
        }
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(&one)
            .await
            .unwrap();
        let (generic, custom): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(generic_plans), 0)::bigint, coalesce(sum(custom_plans), 0)::bigint
             FROM pg_prepared_statements
             WHERE statement LIKE '%chainsync.jobs%' AND cardinality(parameter_types) > 0",
        )
        .fetch_one(&one)
        .await
        .unwrap();
        seen.push((mode, generic, custom));
        one.close().await;
    }
    let (plain, daemon) = (&seen[0], &seen[1]);
    assert!(plain.1 > 0, "plain pool never went generic: {plain:?}");
    assert_eq!(daemon.0, "force_custom_plan", "{daemon:?}");
    assert_eq!(daemon.1, 0, "daemon pool used a generic plan: {daemon:?}");
    assert!(daemon.2 >= 16, "daemon pool: {daemon:?}");
}
