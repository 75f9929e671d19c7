#![allow(clippy::unwrap_used)]
//! Reliability suite: real `chainsync daemon` processes killed, their database restarted, their
//! cache killed, under load; nothing lost or doubled. `CHAINSYNC_STRESS=1` runs the 1,000,000-job
//! load instead of the default 50,000.

mod common;
use common::{TokenChain, db_url, pgbouncer::PgBouncer, track_holders, try_count, wait};

mod chaos {
    pub mod rpc_faults;
    #[allow(dead_code)]
    pub mod support;
}

use std::time::{Duration, Instant};

use chainsync::{app::App, config::Config};
use chainsync_jobs::NewJob;
use chaos::support::{Daemon, PrivatePg, PrivateRedis, free_port};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};

const FAST: &str = r#"
[worker]
concurrency = 50
fetch_batch = 50
lease = "3s"
heartbeat = "500ms"
poll_interval = "200ms"
shutdown_timeout = "5s"
[maintenance]
rescue_interval = "1s"
"#;

/// `sql`'s count, waiting (up to a minute) while the database is away.
async fn count(pool: &PgPool, sql: &str) -> i64 {
    wait(
        format!("the database to answer `{sql}`"),
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(200))
    .until_ok(async || try_count(pool, sql).await)
    .await
}

/// Waits until `sql` returns at least `want`; panics after `limit` with the last value.
async fn wait_until(pool: &PgPool, sql: &str, want: i64, limit: Duration) {
    wait(format!("`{sql}` >= {want}"), limit)
        .every(Duration::from_millis(100))
        .until_ok(async || match count(pool, sql).await {
            n if n >= want => Ok(()),
            n => Err(n),
        })
        .await
}

async fn enqueue_noops(url: &str, n: usize) {
    let cfg = Config::from_toml(&format!("database_url = \"{url}\"")).unwrap();
    let app = App::connect(cfg).await.unwrap();
    app.migrate().await.unwrap();
    for start in (0..n).step_by(5000) {
        let jobs = (start..(start + 5000).min(n))
            .map(|i| NewJob::untyped("noop", json!({"payload": i})))
            .collect();
        app.queue.enqueue_many(jobs).await.unwrap();
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn rpc_faults_snooze_retry_dead_letter_then_replay(pool: PgPool) {
    chaos::rpc_faults::faults_retry_snooze_dead_letter_and_replay(pool).await;
}

#[tokio::test]
async fn postgres_restart_and_a_killed_daemon_lose_nothing() {
    restart_and_kill(20_000, false).await;
}

/// The same through PgBouncer in transaction mode: the daemons' pools go through the pooler,
/// their migrations and LISTEN connections straight to Postgres.
#[tokio::test]
async fn through_pgbouncer_postgres_restart_and_a_killed_daemon_lose_nothing() {
    restart_and_kill(10_000, true).await;
}

async fn restart_and_kill(n: usize, pooler: bool) {
    let pg = PrivatePg::start();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE chaos")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = pg.url("chaos");
    enqueue_noops(&url, n).await;
    let dir = tempfile::tempdir().unwrap();
    let pgb = pooler.then(|| PgBouncer::start(pg.port, 6));
    let cfg = match &pgb {
        None => format!("database_url = \"{url}\"\n{FAST}"),
        Some(b) => format!(
            "database_url = \"{}\"\n[database]\npooler = \"transaction\"\ndirect_url = \"{url}\"\n{FAST}",
            b.url("chaos")
        ),
    };
    let mut a = Daemon::start(dir.path(), "a", &cfg);
    let mut b = Daemon::start(dir.path(), "b", &cfg);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let done = "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'";
    wait_until(&pool, done, n as i64 * 3 / 20, Duration::from_secs(60)).await;

    // The database goes away for a few seconds; the API says 503 meanwhile, not a crash.
    pg.down();
    let health = format!("http://127.0.0.1:{}/health", a.http_port);
    let status = wait(
        "an answer of the HTTP API while the database is down",
        Duration::from_secs(10),
    )
    .every(Duration::from_millis(100))
    .until_ok(async || reqwest::get(&health).await.map(|r| r.status().as_u16()))
    .await;
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.up();

    // One daemon is killed outright mid-drain; its leased jobs are rescued by the other.
    wait_until(&pool, done, n as i64 / 2, Duration::from_secs(120)).await;
    b.kill9();
    wait_until(&pool, done, n as i64, Duration::from_secs(180)).await;
    a.stop();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        n as i64
    );
    assert_eq!(
        count(&pool, done).await,
        n as i64,
        "every job completed once"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );
    assert!(
        reqwest::get(&health).await.is_err(),
        "daemon a exited on SIGTERM"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn sigkill_mid_full_sync_then_every_balance_is_exact(pool: PgPool) {
    let s = TokenChain::builder("TST")
        .name("T")
        .holders(3000)
        .seed(11)
        .max_units(500)
        .start()
        .await
        .unwrap();
    let (chain, token, holders) = (&s.chain, s.token, &s.holders);
    let cfg = format!(
        r#"database_url = "{}"
{FAST}
{}multicall_batch_size = 50
batches_in_flight = 1
{}"#,
        db_url(&pool),
        s.chain_toml(),
        s.token_toml()
    );
    let app = App::with_pool(Config::from_toml(&cfg).unwrap(), pool.clone()).unwrap();
    app.migrate().await.unwrap();
    track_holders(&pool, &s).await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = Daemon::start(dir.path(), "first", &cfg);
    let job = app
        .queue
        .enqueue(NewJob::untyped(
            "sync-balances",
            json!({"chain_id": 31337, "token": "TST"}),
        ))
        .await
        .unwrap();
    wait_until(
        &pool,
        "SELECT count(*) FROM chainsync.balances",
        1,
        Duration::from_secs(60),
    )
    .await;
    first.kill9();
    let partial = count(&pool, "SELECT count(*) FROM chainsync.balances").await;
    let _second = Daemon::start(dir.path(), "second", &cfg);
    wait_until(
        &pool,
        &format!(
            "SELECT count(*) FROM chainsync.all_jobs WHERE id = '{}' AND state = 'completed'",
            job.id
        ),
        1,
        Duration::from_secs(120),
    )
    .await;
    for (h, _) in holders {
        let stored: String =
            sqlx::query_scalar("SELECT amount::text FROM chainsync.balances WHERE address = $1")
                .bind(format!("{h:#x}"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            stored,
            chain.balance_of(token, *h).await.unwrap().to_string()
        );
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.balance_changes").await,
        3000,
        "no change recorded twice"
    );
    println!("killed after {partial} of 3000 balances; resumed and exact");
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn redis_killed_balances_served_from_postgres_then_cached_again(pool: PgPool) {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    sqlx::query("INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash) VALUES (1, 'native', '0x00000000000000000000000000000000000000b1', 42, 1, '0x0')")
        .execute(&pool)
        .await
        .unwrap();
    let cfg = format!(
        "database_url = \"{}\"\nredis_url = \"redis://127.0.0.1:{port}\"\n{FAST}\n[[chains]]\nchain_id = 1\nname = \"main\"\nrpc_urls = [\"http://127.0.0.1:1\"]\n",
        db_url(&pool)
    );
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), "d", &cfg);
    let url = format!(
        "http://127.0.0.1:{}/v1/balances/1/0x00000000000000000000000000000000000000b1?token=native",
        d.http_port
    );
    let get = || async {
        let r = wait("the daemon's HTTP API", Duration::from_secs(30))
            .every(Duration::from_millis(100))
            .until_ok(async || reqwest::get(&url).await)
            .await;
        let v: serde_json::Value = r.json().await.unwrap();
        if v.get("error").is_some() {
            eprintln!("balance error: {v}");
        }
        (
            v["source"].as_str().unwrap_or("").to_string(),
            v["amount"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(get().await, ("database".into(), "42".into()));
    assert_eq!(get().await, ("cache".into(), "42".into()));
    redis.kill();
    assert_eq!(
        get().await,
        ("database".into(), "42".into()),
        "Redis down: served from Postgres"
    );
    let _redis = PrivateRedis::start(port);
    wait(
        "the cache to be used again after Redis returned",
        Duration::from_secs(30),
    )
    .every(Duration::from_millis(500))
    .until_ok(async || {
        let _ = get().await;
        match get().await {
            (source, _) if source == "cache" => Ok(()),
            seen => Err(seen),
        }
    })
    .await;
}

/// Sum of one counter over every label set in a daemon's /metrics.
async fn metric_sum(port: u16, name: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn load_three_daemons_drain_and_pruning_bounds_the_table(pool: PgPool) {
    let n: usize = if std::env::var("CHAINSYNC_STRESS").is_ok() {
        1_000_000
    } else {
        50_000
    };
    let url = db_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "database_url = \"{url}\"\n[worker]\nconcurrency = 200\nfetch_batch = 200\n[maintenance]\ncompleted_retention = \"2s\"\nprune_interval = \"1s\"\nprune_batch = 20000\n"
    );
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(dir.path(), &format!("d{i}"), &cfg))
        .collect();
    let size_sql = "SELECT pg_total_relation_size('chainsync.jobs')";
    // Finished jobs, in their ranges (dropped by the pruner a minute or two after finishing).
    let finished_size_sql = "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint
                             FROM pg_partition_tree('chainsync.finished_jobs')";
    // Three rounds on the same daemons. The first leaves empty index pages that VACUUM can only
    // recycle later; from then on each round reuses the space the one before freed.
    const ROUNDS: u64 = 3;
    let mut after = Vec::new();
    for round in 1..=ROUNDS {
        let t0 = Instant::now();
        enqueue_noops(&url, n).await;
        let enqueued = t0.elapsed();
        let mut peak = 0i64;
        let mut finished_peak = 0i64;
        wait(
            format!("round {round}: every job done"),
            Duration::from_secs(1800),
        )
        .every(Duration::from_millis(200))
        .until_ok(async || {
            let open = count(
                &pool,
                "SELECT count(*) FROM chainsync.all_jobs WHERE state IN ('available', 'running')",
            )
            .await;
            peak = peak.max(count(&pool, size_sql).await);
            finished_peak = finished_peak.max(count(&pool, finished_size_sql).await);
            if open == 0 {
                return Ok(());
            }
            for d in &mut daemons {
                d.assert_running();
            }
            Err(format!("{open} jobs still open"))
        })
        .await;
        let total = t0.elapsed();
        // The pruner drops the ranges of finished jobs past the retention: nothing is left.
        wait_until(
            &pool,
            "SELECT (CASE WHEN count(*) = 0 THEN 1 ELSE 0 END)::bigint FROM chainsync.all_jobs",
            1,
            Duration::from_secs(300),
        )
        .await;
        sqlx::query("VACUUM chainsync.jobs")
            .execute(&pool)
            .await
            .unwrap();
        let size = count(&pool, size_sql).await;
        let heap = count(&pool, "SELECT pg_relation_size('chainsync.jobs')").await;
        println!(
            "load round {round}: {n} jobs enqueued in {:.1}s ({:.0}/s) while 3 daemons drained them; \
             all done {:.1}s after the first insert ({:.0} jobs/s end to end); \
             jobs table peak {} MB, after prune + VACUUM {} MB (heap {} kB, the rest indexes); \
             finished jobs peak {} MB",
            enqueued.as_secs_f64(),
            n as f64 / enqueued.as_secs_f64(),
            total.as_secs_f64(),
            n as f64 / total.as_secs_f64(),
            peak / (1 << 20),
            size / (1 << 20),
            heap / 1024,
            finished_peak / (1 << 20),
        );
        after.push((peak, size));
    }
    // Every job ran once and was completed once over the three daemons: none lost, none doubled.
    let (mut runs, mut completed, mut fenced) = (0, 0, 0);
    for d in &daemons {
        runs += metric_sum(d.http_port, "chainsync_job_runs_total").await;
        completed += metric_sum(d.http_port, "chainsync_jobs_completed_total").await;
        fenced += metric_sum(d.http_port, "chainsync_outcomes_fenced_total").await;
    }
    let all = ROUNDS * n as u64;
    assert_eq!((runs, completed, fenced), (all, all, 0));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );
    // Bounded: the last round needs no more room than the one before it.
    let ((peak2, size2), (peak3, size3)) = (after[1], after[2]);
    let slack = |x: i64| x + x / 5 + (2 << 20);
    assert!(
        peak3 <= slack(peak2) && size3 <= slack(size2),
        "table keeps growing: (peak, after prune) per round {after:?}"
    );
    for d in &mut daemons {
        d.stop();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics(text in "[a-z_\\[\\]=\" .0-9\n{},]{0,200}") {
        let _ = Config::from_toml(&text);
    }

    #[test]
    fn mutated_default_config_never_panics(cut in 0usize..8000, insert in "[a-z=\"\\[\\] 0-9\n]{0,12}") {
        let base = include_str!("../config/default.toml");
        let at = base.char_indices().map(|(i, _)| i).nth(cut % base.chars().count()).unwrap_or(0);
        let text = format!("{}{}{}", &base[..at], insert, &base[at..]);
        match Config::from_toml(&text) {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn enqueue_args_decoder_never_panics(kind in "[a-z-]{0,20}", v in arb_json()) {
        let registry = chainsync_jobs::registry();
        let reg = registry.kinds();
        for k in reg.names().into_iter().map(str::to_string).chain([kind]) {
            let mut job = NewJob::untyped(k, v.clone());
            if let Err(e) = reg.check(&mut job) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z0-9x]{0,42}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("chain_id".to_string()),
                    Just("address".to_string()),
                    Just("token".to_string()),
                    Just("from".to_string()),
                    "[a-z_]{1,8}".prop_map(|s| s)
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Exact points of one hourly window by integrating the step function of the changes (amount ×
/// seconds held), floored; `None` before the address's first change. Independent of
/// `chainsync_jobs::points`.
/// (time, new amount) of one address, in time order.
type Changes = Vec<(DateTime<Utc>, u128)>;

fn window_points(changes: &[(DateTime<Utc>, u128)], w: DateTime<Utc>) -> Option<(u128, u128)> {
    let end = w + chrono::Duration::hours(1);
    if changes.first().is_none_or(|c| c.0 >= end) {
        return None;
    }
    let mut sum: u128 = 0;
    let mut at = w;
    let mut amount = changes.iter().rev().find(|c| c.0 <= w).map_or(0, |c| c.1);
    for (t, a) in changes.iter().filter(|c| c.0 > w && c.0 < end) {
        sum += amount * u128::try_from((*t - at).num_seconds()).unwrap();
        at = *t;
        amount = *a;
    }
    sum += amount * u128::try_from((end - at).num_seconds()).unwrap();
    let twab = sum / 3600;
    Some((twab, twab / 4))
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn sigkill_mid_backfill_then_every_window_is_exact(pool: PgPool) {
    use chainsync_jobs::points::window_of;
    let base = window_of(Utc::now()) - chrono::Duration::hours(80);
    let to = base + chrono::Duration::hours(72);
    let mut seed = 11u64;
    let mut history: Vec<(String, Changes)> = Vec::new();
    for i in 0..30 {
        let address = format!("0x{:040x}", 0xb000 + i);
        let mut t = base - chrono::Duration::minutes(30);
        let mut changes = Vec::new();
        for _ in 0..20 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += chrono::Duration::seconds(600 + (seed >> 33) as i64 % 20000);
            changes.push((
                t,
                u128::from(seed >> 20) % 1_000_000_000 * 1_000_000_000_007,
            ));
        }
        history.push((address, changes));
    }
    for (address, changes) in &history {
        for (block, (t, amount)) in changes.iter().enumerate() {
            sqlx::query(
                "INSERT INTO chainsync.balance_changes (chain_id, token, address, old_amount, new_amount, block_number, block_hash, block_time)
                 VALUES (31337, 'native', $1, NULL, $2::numeric, $4, '0x0', $3)",
            )
            .bind(address)
            .bind(amount.to_string())
            .bind(t)
            .bind(block as i64 + 1)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    let cfg = format!(
        r#"database_url = "{}"
{FAST}
[points]
max_windows_per_job = 6
rates = [{{ chain_id = 31337, token = "native", rate = "0.25" }}]
"#,
        db_url(&pool)
    );
    let app = App::with_pool(Config::from_toml(&cfg).unwrap(), pool.clone()).unwrap();
    app.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Daemon::start(dir.path(), "first", &cfg);
    app.queue
        .enqueue(
            NewJob::typed(&chainsync_jobs::kinds::backfill_window::BackfillWindow {
                chain_id: 31337,
                token: "native".into(),
                from: base,
                to,
            })
            .unwrap(),
        )
        .await
        .unwrap();
    wait_until(
        &pool,
        "SELECT least(count(*), 100) FROM chainsync.points_history",
        100,
        Duration::from_secs(60),
    )
    .await;
    first.kill9();
    let partial = count(&pool, "SELECT count(*) FROM chainsync.points_history").await;
    let _second = Daemon::start(dir.path(), "second", &cfg);
    wait_until(
        &pool,
        "SELECT (count(*) = 0)::int::int8 FROM chainsync.all_jobs WHERE state IN ('available', 'running')",
        1,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );
    let stored: Vec<(String, DateTime<Utc>, String, String)> = sqlx::query_as(
        "SELECT address, window_start, twab::text, points::text FROM chainsync.points_history
         WHERE window_start >= $1 AND window_start < $2 ORDER BY 1, 2",
    )
    .bind(base)
    .bind(to)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut want = Vec::new();
    for (address, changes) in &history {
        let mut w = base;
        while w < to {
            if let Some((twab, points)) = window_points(changes, w) {
                want.push((address.clone(), w, twab.to_string(), points.to_string()));
            }
            w += chrono::Duration::hours(1);
        }
    }
    want.sort();
    assert!(partial < want.len() as i64, "killed before the end");
    assert_eq!(stored.len(), want.len(), "every window once");
    assert_eq!(stored, want);
    println!(
        "killed after {partial} of {} windows; resumed and exact",
        want.len()
    );
}
