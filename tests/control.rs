#![allow(clippy::unwrap_used)]
//! Operator control with three real `chainsync daemon` processes on one database: a paused
//! queue runs nothing (scheduled ticks still recorded) and resumes; cluster-wide concurrency
//! limits (per kind, per partition of the args) are never exceeded; a limited kind does not
//! starve the other kinds of its queue; a rate limit holds over time; unique keys with a window;
//! bad input names what is wrong.

mod common;
#[allow(dead_code)]
#[path = "chaos/support.rs"]
mod support;

use std::time::{Duration, Instant};

use chainsync_jobs::NewJob;
use common::{app, count, db_url, wait, wait_count};
use serde_json::json;
use sqlx::PgPool;
use support::Daemon;

const TOKEN: &str = "control-admin-token-0123456789";

/// Three daemons on the test's database with `extra` config.
fn three(pool: &PgPool, dir: &std::path::Path, extra: &str) -> Vec<Daemon> {
    let cfg = config(pool, extra);
    ["a", "b", "c"]
        .iter()
        .map(|n| Daemon::start(dir, n, &cfg))
        .collect()
}

fn config(pool: &PgPool, extra: &str) -> String {
    let cfg = format!(
        r#"database_url = "{}"
{extra}
[worker]
concurrency = 20
fetch_batch = 20
poll_interval = "200ms"
lease = "10s"
heartbeat = "2s"
shutdown_timeout = "5s"
[maintenance]
rescue_interval = "1s"
"#,
        db_url(pool)
    );
    cfg
}

fn noops(n: usize, sleep_ms: u64, payload: impl Fn(usize) -> serde_json::Value) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob::untyped("noop", json!({"sleep_ms": sleep_ms, "payload": payload(i)})))
        .collect()
}

/// Samples `sql` (one bigint) every 10 ms until `done` holds; returns the largest value seen.
async fn max_while(pool: &PgPool, sql: &str, done: &str, limit: Duration) -> i64 {
    let t = Instant::now();
    let mut most = 0;
    loop {
        most = most.max(count(pool, sql).await);
        if count(pool, done).await > 0 {
            return most;
        }
        assert!(t.elapsed() < limit, "not done after {limit:?}: `{done}`");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_paused_queue_runs_nothing_keeps_its_ticks_and_resumes(pool: PgPool) {
    let app = app(&pool, "").await;
    let dir = tempfile::tempdir().unwrap();
    let schedule = r#"
[http]
admin_token = "control-admin-token-0123456789"
[[schedule]]
name = "tick"
kind = "noop"
every = "1s"
overlap = "queue"
"#;
    let mut daemons = three(&pool, dir.path(), schedule);
    // Jobs are running when the pause comes.
    app.queue
        .enqueue_many(noops(30, 300, |i| json!(i)))
        .await
        .unwrap();
    wait("jobs running", Duration::from_secs(30))
        .until(async || {
            (count(
                &pool,
                "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'running'",
            )
            .await
                > 0)
            .then_some(())
        })
        .await;

    // Paused over HTTP (admin token) on daemon a: no daemon starts anything a second later.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", daemons[0].http_port);
    let r = http
        .post(format!("{base}/v1/queues/default/pause"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = http
        .post(format!("{base}/v1/queues/default/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "pause needs the admin token");
    let paused_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Running jobs finish.
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'running'",
        0,
        Duration::from_secs(10),
    )
    .await;
    let started = "SELECT count(*) FROM chainsync.all_jobs WHERE started_at IS NOT NULL";
    let before = count(&pool, started).await;
    // A daemon restarted meanwhile keeps the pause (it is in the database).
    daemons[2].stop();
    daemons[2] = Daemon::start(dir.path(), "c2", &config(&pool, schedule));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM chainsync.all_jobs WHERE started_at > $1 + interval '1 second'",
    )
    .bind(paused_at)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(late, 0, "jobs started more than a second after the pause");
    assert_eq!(count(&pool, started).await, before);
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'available'"
        )
        .await
            > 0
    );
    // The schedule kept recording and enqueueing its ticks while paused.
    let ticks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM chainsync.cron_claims c JOIN chainsync.all_jobs j ON j.id = c.job_id
         WHERE c.schedule = 'tick' AND c.claimed_at > $1 AND j.state = 'available'",
    )
    .bind(paused_at)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(ticks >= 2, "ticks enqueued while paused: {ticks}");

    // The overview says so, over HTTP and in Rust.
    let list: serde_json::Value = http
        .get(format!("{base}/v1/queues"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let default = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap()
        .clone();
    assert_eq!(default["paused"], true, "{default}");
    assert!(default["due"].as_i64().unwrap() > 0, "{default}");
    assert!(
        default["oldest_due_age_secs"].as_f64().unwrap() > 0.5,
        "{default}"
    );

    // Resumed with the CLI: everything runs, the ticks' jobs included.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chainsync"))
        .args([
            "--database-url",
            &db_url(&pool),
            "queue",
            "resume",
            "default",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed"));
    wait(
        "the queue to drain after resume",
        Duration::from_secs(30),
    )
    .until(async || {
        (count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'available' AND run_at <= now() - interval '1 second'",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE (args->>'payload') IS NOT NULL AND state <> 'completed'",
        0,
        Duration::from_secs(30),
    )
    .await;
    for d in &mut daemons {
        d.assert_running();
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn concurrency_limits_hold_across_three_daemons(pool: PgPool) {
    // At most 4 noop jobs at once in the cluster, and at most 2 per payload.
    let limits = r#"
[kinds.noop]
global_concurrency = 4
partition_by = ["payload"]
partition_concurrency = 2
"#;
    let app = app(&pool, limits).await;
    let dir = tempfile::tempdir().unwrap();
    let daemons = three(&pool, dir.path(), limits);
    app.queue
        .enqueue_many(noops(60, 60, |i| json!(i % 3)))
        .await
        .unwrap();
    let done = "SELECT (count(*) FILTER (WHERE state = 'completed') = 60)::int::bigint FROM chainsync.all_jobs";
    let most_partition =
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM chainsync.all_jobs
                          WHERE state = 'running' AND kind = 'noop' GROUP BY args->'payload') t";
    let running =
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'running' AND kind = 'noop'";
    let t = Instant::now();
    let (mut most, mut most_p) = (0, 0);
    loop {
        most = most.max(count(&pool, running).await);
        most_p = most_p.max(count(&pool, most_partition).await);
        if count(&pool, done).await > 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "not drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most <= 4, "{most} noop jobs ran at once");
    assert!(most_p <= 2, "{most_p} jobs of one payload ran at once");
    assert!(
        most >= 3,
        "the limit was never approached ({most}): a test that cannot fail"
    );

    // Raised at runtime (SQL), with no restart: more run at once.
    sqlx::query("SELECT chainsync.set_kind_limit('noop', concurrency => 12)")
        .execute(&pool)
        .await
        .unwrap();
    app.queue
        .enqueue_many(noops(60, 100, |i| json!(i % 3)))
        .await
        .unwrap();
    let done2 = "SELECT (count(*) FILTER (WHERE state = 'completed') = 120)::int::bigint FROM chainsync.all_jobs";
    let most = max_while(&pool, running, done2, Duration::from_secs(60)).await;
    assert!(most <= 12, "{most} ran at once under a limit of 12");
    assert!(most > 4, "the raised limit did not apply ({most})");
    drop(daemons);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_limited_kind_does_not_starve_the_others_in_its_queue(pool: PgPool) {
    let limits = "[kinds.noop]\nglobal_concurrency = 1\n";
    let app = app(&pool, limits).await;
    // A backlog of the limited kind ahead of everything else in the queue.
    app.queue
        .enqueue_many(noops(200, 200, |i| json!(i)))
        .await
        .unwrap();
    // Jobs of another kind behind it (an unknown chain: each run fails at once, fatal).
    let others: Vec<NewJob> = (0..20)
        .map(|i| NewJob::untyped("compute-points", json!({"chain_id": 999_000 + i})))
        .collect();
    app.queue.enqueue_many(others).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _daemons = three(&pool, dir.path(), limits);
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'compute-points' AND started_at IS NOT NULL",
        20,
        Duration::from_secs(30),
    )
    .await;
    let noop_done = count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'noop' AND started_at IS NOT NULL",
    )
    .await;
    assert!(
        noop_done < 150,
        "the other kind waited for the limited backlog ({noop_done} noop started)"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_rate_limit_holds_over_time(pool: PgPool) {
    // 20 jobs per second for the cluster, bucket of 2.
    let limits = "[kinds.noop]\nrate_limit = 20\n";
    let app = app(&pool, limits).await;
    app.queue
        .enqueue_many(noops(300, 0, |i| json!(i)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t0: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let _daemons = three(&pool, dir.path(), limits);
    wait("100 jobs started", Duration::from_secs(30))
        .until(async || {
            (count(
                &pool,
                "SELECT count(*) FROM chainsync.all_jobs WHERE started_at IS NOT NULL",
            )
            .await
                >= 100)
                .then_some(())
        })
        .await;
    // Jobs started per whole second (the seconds the daemons were fetching in).
    let per_second: Vec<(f64, i64)> = sqlx::query_as(
        "SELECT extract(epoch FROM date_trunc('second', started_at))::float8, count(*)
         FROM chainsync.all_jobs WHERE started_at IS NOT NULL AND started_at > $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(t0)
    .fetch_all(&pool)
    .await
    .unwrap();
    let counts: Vec<i64> = per_second.iter().map(|(_, n)| *n).collect();
    // In any window of t seconds at most burst + rate·t start (some slack for the clock read).
    assert!(counts.iter().all(|&n| n <= 24), "per second: {counts:?}");
    // Over the whole run: about the rate, not a burst of everything.
    let first = per_second.first().unwrap().0;
    let last_full = per_second.last().unwrap().0;
    let span = (last_full - first).max(1.0);
    let started_in_span: i64 = counts[..counts.len() - 1].iter().sum();
    assert!(
        (started_in_span as f64) <= 20.0 * span + 4.0,
        "{started_in_span} in {span}s: {counts:?}"
    );
    assert!(
        counts.iter().filter(|&&n| n >= 10).count() >= 3,
        "the rate was not used: {counts:?}"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn unique_windows_debounce_in_sql_and_rust(pool: PgPool) {
    let app = app(&pool, "").await;
    let args = json!({"payload": "reconcile 1"});
    // SQL: a second enqueue within the window returns the first job, even after it ran.
    let first = chainsync::queue::enqueue::enqueue_sql_for(
        &pool,
        "noop",
        &args,
        "k1",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    sqlx::query("SELECT chainsync.finish_jobs(ARRAY[$1::uuid], 'completed')")
        .bind(first)
        .execute(&pool)
        .await
        .unwrap();
    let again = chainsync::queue::enqueue::enqueue_sql_for(
        &pool,
        "noop",
        &args,
        "k1",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    assert_eq!(first, again, "within the window");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE unique_key = 'k1'"
        )
        .await,
        1
    );
    // A short window ends: a new job.
    let short = chainsync::queue::enqueue::enqueue_sql_for(
        &pool,
        "noop",
        &args,
        "k2",
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    // (Finished: a queued job of the key would absorb the enqueue, as without a window.)
    sqlx::query("SELECT chainsync.finish_jobs(ARRAY[$1::uuid], 'completed')")
        .bind(short)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = chainsync::queue::enqueue::enqueue_sql_for(
        &pool,
        "noop",
        &args,
        "k2",
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert_ne!(short, later, "after the window");
    // Without a window the key keeps today's meaning: a finished job does not hold it.
    let plain = chainsync::queue::enqueue::enqueue_sql(&pool, "noop", &args, Some("k1"))
        .await
        .unwrap();
    assert_ne!(plain, first);

    // Rust: the builder, single and bulk (duplicates inside one batch too).
    let job = || {
        NewJob::untyped("noop", json!({"payload": "r"}))
            .with_unique_key("k3")
            .unique_for(Duration::from_secs(600))
    };
    let a = app.queue.enqueue(job()).await.unwrap();
    let b = app.queue.enqueue(job()).await.unwrap();
    assert!(a.inserted && !b.inserted && a.id == b.id);
    let many = app
        .queue
        .enqueue_many(vec![
            job(),
            NewJob::untyped("noop", json!({}))
                .with_unique_key("k4")
                .unique_for(Duration::from_secs(600)),
            NewJob::untyped("noop", json!({}))
                .with_unique_key("k4")
                .unique_for(Duration::from_secs(600)),
            NewJob::untyped("noop", json!({})),
        ])
        .await
        .unwrap();
    assert_eq!((many[0].id, many[0].inserted), (a.id, false));
    assert!(many[1].inserted && !many[2].inserted && many[1].id == many[2].id);
    assert!(many[3].inserted);
    // Inside a transaction that rolls back, the window goes too.
    let mut tx = pool.begin().await.unwrap();
    app.queue
        .enqueue_in(
            &mut tx,
            NewJob::untyped("noop", json!({}))
                .with_unique_key("k5")
                .unique_for(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.unique_windows WHERE unique_key = 'k5'"
        )
        .await,
        0
    );
    // Bad input.
    let e = app
        .queue
        .enqueue(NewJob::untyped("noop", json!({})).unique_for(Duration::from_secs(1)))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unique_for"), "{e}");
    let e = sqlx::query(
        "SELECT chainsync.enqueue('noop', '{}', unique_key => 'x', unique_for => '-1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("unique_for must be positive"), "{e}");
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn bad_control_input_names_the_key(pool: PgPool) {
    let app = app(&pool, "").await;
    for (sql, needle) in [
        (
            "SELECT chainsync.pause_queue('nope')",
            "unknown queue \"nope\"",
        ),
        (
            "SELECT chainsync.resume_queue('')",
            "queue must be a non-empty name",
        ),
        (
            "SELECT chainsync.set_kind_limit('noop', concurrency => -1)",
            "concurrency must be at least 1",
        ),
        (
            "SELECT chainsync.set_kind_limit('nope', concurrency => 1)",
            "unknown job kind \"nope\"",
        ),
        (
            "SELECT chainsync.set_kind_limit('noop', partition_by => '{chain}', partition_concurrency => 1)",
            "partition_by: \"chain\" is not an args field",
        ),
        (
            "SELECT chainsync.set_kind_limit('noop', partition_by => '{payload}')",
            "partition_by and partition_concurrency go together",
        ),
        (
            "SELECT chainsync.set_queue_limit('default', rate => 0)",
            "rate must be above 0",
        ),
        (
            "SELECT chainsync.set_queue_limit('nope', concurrency => 1)",
            "unknown queue",
        ),
    ] {
        let e = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{sql}: {e}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.kind_limits").await,
        0,
        "nothing written"
    );
    // Config: errors name the key.
    for (toml, key) in [
        (
            "[kinds.noop]\nglobal_concurrency = -1",
            "kinds.noop.global_concurrency",
        ),
        (
            "[kinds.noop]\nglobal_concurrency = 0",
            "kinds.noop.global_concurrency",
        ),
        ("[kinds.nope]\nglobal_concurrency = 1", "kinds.nope"),
        (
            "[kinds.noop]\npartition_by = ['chain']\npartition_concurrency = 1",
            "kinds.noop.partition_by",
        ),
        ("[kinds.noop]\nrate_limit = -5.0", "kinds.noop.rate_limit"),
        ("[queues.nope]\nglobal_concurrency = 1", "queues.nope"),
        (
            "[queues.default]\nrate_burst = 3.0",
            "queues.default.rate_burst",
        ),
    ] {
        let e = chainsync::config::Config::from_toml(toml)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
    // CLI: one line naming the problem, exit code 1.
    let url = db_url(&pool);
    for (args, needle) in [
        (vec!["queue", "pause", "nope"], "unknown queue \"nope\""),
        (
            vec!["queue", "limit", "--kind", "noop", "--concurrency", "-1"],
            "--concurrency: must be at least 1",
        ),
        (
            vec!["queue", "limit", "--kind", "nope", "--concurrency", "2"],
            "unknown job kind",
        ),
        (
            vec![
                "queue",
                "limit",
                "--queue",
                "default",
                "--partition-by",
                "payload",
            ],
            "partitions are limits of a kind",
        ),
        (
            vec![
                "enqueue",
                "noop",
                "--unique-key",
                "k",
                "--unique-for",
                "soon",
            ],
            "--unique-for",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chainsync"))
            .arg("--database-url")
            .arg(&url)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // And a good one, shown by `queue limits`.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chainsync"))
        .args([
            "--database-url",
            &url,
            "queue",
            "limit",
            "--kind",
            "noop",
            "--concurrency",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits = app.queue.kind_limits().await.unwrap();
    assert_eq!(limits.len(), 1);
    assert_eq!((limits[0].concurrency, limits[0].manual), (Some(3), true));
    // A manual limit wins over the config at the next daemon start, until reset.
    let with_cfg = common::app(&pool, "[kinds.noop]\nglobal_concurrency = 7\n").await;
    assert_eq!(
        with_cfg.queue.kind_limits().await.unwrap()[0].concurrency,
        Some(3)
    );
    with_cfg.queue.reset_kind_limit("noop").await.unwrap();
    let l = &with_cfg.queue.kind_limits().await.unwrap()[0];
    assert_eq!((l.concurrency, l.manual), (Some(7), false));
}

/// How a test fetches: straight through `chainsync.fetch_controlled`, or as a daemon does (the
/// plain statement, which shares the limits that hold nothing back, then the controlled one).
#[derive(Clone, Copy)]
enum Via {
    Controlled,
    Plain,
}

/// Fetches by `tasks` concurrent connections (1,000 at a time), each completing half of what it
/// took for `churn` rounds, then none: returns the most jobs seen running right after any fetch,
/// and the number running at the end.
async fn fetch_concurrently(
    pool: &PgPool,
    q: &chainsync::queue::Queue,
    queue: &str,
    tasks: usize,
    churn: usize,
    via: Via,
) -> (i64, i64) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        let q = q.clone();
        let queue = queue.to_string();
        handles.push(tokio::spawn(async move {
            let owner = uuid::Uuid::now_v7();
            let (mut most, mut empty) = (0i64, 0);
            let t = Instant::now();
            for round in 0.. {
                let ids: Vec<uuid::Uuid> = match via {
                    Via::Controlled => sqlx::query_scalar(
                        "SELECT id FROM chainsync.fetch_controlled($1, 1000, $2, 600000) WHERE id IS NOT NULL",
                    )
                    .bind(&queue)
                    .bind(owner)
                    .fetch_all(&pool)
                    .await
                    .unwrap(),
                    Via::Plain => q
                        .fetch(&queue, 1000, owner, Duration::from_secs(600))
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|j| j.id)
                        .collect(),
                };
                most = most.max(
                    count(&pool, "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'running'").await,
                );
                if round < churn {
                    let half: Vec<uuid::Uuid> = ids.iter().step_by(2).copied().collect();
                    sqlx::query("DELETE FROM chainsync.jobs WHERE id = ANY($1)")
                        .bind(&half)
                        .execute(&pool)
                        .await
                        .unwrap();
                } else if ids.is_empty() {
                    empty += 1;
                    if empty >= 5 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    empty = 0;
                }
                assert!(t.elapsed() < Duration::from_secs(120), "fetches never settled");
            }
            most
        }));
    }
    let mut most = 0;
    for h in handles {
        most = most.max(h.await.unwrap());
    }
    let end = count(
        pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'running'",
    )
    .await;
    (most, end)
}

/// An app with `jobs` no-op jobs waiting in their queue, and the limit `set` (SQL taking the
/// queue's name as `$1`) in force: the app and the queue.
async fn limited_backlog(
    pool: &PgPool,
    jobs: usize,
    set: &'static str,
) -> (chainsync::app::App, String) {
    let app = app(pool, "").await;
    app.queue
        .enqueue_many(noops(jobs, 0, |i| json!(i)))
        .await
        .unwrap();
    let queue: String = sqlx::query_scalar("SELECT DISTINCT queue FROM chainsync.all_jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    sqlx::query(set).bind(&queue).execute(pool).await.unwrap();
    (app, queue)
}

/// A large limit (kind or queue) is shared by concurrent fetches instead of taken in turn, is
/// never exceeded while jobs start and end, and fills up to exactly the limit: close to it the
/// fetches mark it `near` and take it in turn, and the mark goes once there is room again.
async fn large_limit_is_shared_and_holds(pool: PgPool, set: &'static str, table: &str) {
    let (app, queue) = limited_backlog(&pool, 16_000, set).await;
    let (most, end) = fetch_concurrently(&pool, &app.queue, &queue, 4, 12, Via::Controlled).await;
    assert!(most <= 6000, "{most} running under a limit of 6,000");
    assert_eq!(end, 6000, "the fetches stopped short of the limit");
    let near = format!("SELECT count(*) FROM chainsync.{table} WHERE near");
    assert_eq!(
        count(&pool, &near).await,
        1,
        "the limit was not marked near"
    );

    // Room again: the next fetch takes the limit alone, sees the room and clears the mark.
    sqlx::query("DELETE FROM chainsync.jobs WHERE state = 'running'")
        .execute(&pool)
        .await
        .unwrap();
    let taken: i64 = sqlx::query_scalar(
        "SELECT count(id) FROM chainsync.fetch_controlled($1, 1000, $2, 600000)",
    )
    .bind(&queue)
    .bind(uuid::Uuid::now_v7())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(taken, 1000);
    assert_eq!(count(&pool, &near).await, 0, "the near mark stayed");
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_large_kind_limit_is_shared_by_fetches_and_never_exceeded(pool: PgPool) {
    large_limit_is_shared_and_holds(
        pool,
        "SELECT chainsync.set_kind_limit('noop', concurrency => 6000) WHERE $1 IS NOT NULL",
        "kind_limits",
    )
    .await;
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_large_queue_limit_is_shared_by_fetches_and_never_exceeded(pool: PgPool) {
    large_limit_is_shared_and_holds(
        pool,
        "SELECT chainsync.set_queue_limit($1, concurrency => 6000)",
        "queues",
    )
    .await;
}

/// Through the plain fetch, as daemons fetch: a large limit far from reached is shared without a
/// count of the running jobs at every fetch (a stored count and the tickets drawn since bound
/// them), is never exceeded while jobs start and end, and fills to exactly the limit.
async fn large_limit_holds_through_the_plain_fetch(pool: PgPool, set: &'static str, table: &str) {
    let (app, queue) = limited_backlog(&pool, 30_000, set).await;
    let tickets = "SELECT last_value FROM chainsync.limit_tickets";
    let before = count(&pool, tickets).await;
    let (most, end) = fetch_concurrently(&pool, &app.queue, &queue, 4, 4, Via::Plain).await;
    assert!(most <= 20_000, "{most} running under a limit of 20,000");
    assert_eq!(end, 20_000, "the fetches stopped short of the limit");
    assert!(
        count(&pool, tickets).await - before >= 20,
        "the shared fetches drew no tickets"
    );
    // The limit changes: the stored count is forgotten.
    let stored = format!("SELECT count(*) FROM chainsync.{table} WHERE counted_ticket IS NOT NULL");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE chainsync.{table} SET counted_ticket = 1, counted_running = 0"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(set).bind(&queue).execute(&pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE chainsync.{table} SET concurrency = 25000"
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        count(&pool, &stored).await,
        0,
        "a stale count survived a change of the limit"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_large_kind_limit_holds_through_the_plain_fetch(pool: PgPool) {
    large_limit_holds_through_the_plain_fetch(
        pool,
        "SELECT chainsync.set_kind_limit('noop', concurrency => 20000) WHERE $1 IS NOT NULL",
        "kind_limits",
    )
    .await;
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_large_queue_limit_holds_through_the_plain_fetch(pool: PgPool) {
    large_limit_holds_through_the_plain_fetch(
        pool,
        "SELECT chainsync.set_queue_limit($1, concurrency => 20000)",
        "queues",
    )
    .await;
}

/// A shared limit whose slots are all held (by fetches of other queues, say) keeps a queue off
/// the plain fetch only if the limited kind has due jobs there: otherwise the plain fetch leaves
/// the kind out and serves the queue.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn held_slots_of_a_kind_without_jobs_here_do_not_stop_the_plain_fetch(pool: PgPool) {
    let app = app(&pool, "").await;
    app.queue
        .enqueue_many(noops(50, 0, |i| json!(i)))
        .await
        .unwrap();
    let queue: String = sqlx::query_scalar("SELECT DISTINCT queue FROM chainsync.all_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT chainsync.set_kind_limit('sync-balances', concurrency => 100000)")
        .execute(&pool)
        .await
        .unwrap();
    // Another session holds all 4 slots of the limit.
    let mut other = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(chainsync.limit_lock_key('kind', 'sync-balances', s))
         FROM generate_series(0, 3) s",
    )
    .execute(&mut *other)
    .await
    .unwrap();
    let owner = uuid::Uuid::now_v7();
    let lease = Duration::from_secs(60);
    let batch = app
        .queue
        .fetch_batch(&queue, 10, owner, lease, false)
        .await
        .unwrap();
    assert_eq!(batch.jobs.len(), 10);
    assert_eq!(batch.control, chainsync::queue::Control::None);
    // With a due job of the kind in the queue, the plain fetch hands over.
    sqlx::query("UPDATE chainsync.jobs SET kind = 'sync-balances' WHERE id = (SELECT id FROM chainsync.all_jobs WHERE state = 'available' LIMIT 1)")
        .execute(&pool)
        .await
        .unwrap();
    let batch = app
        .queue
        .fetch_batch(&queue, 10, owner, lease, false)
        .await
        .unwrap();
    assert!(batch.jobs.is_empty());
    assert_eq!(batch.control, chainsync::queue::Control::Open);
    other.rollback().await.unwrap();
}
