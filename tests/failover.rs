#![allow(clippy::unwrap_used)]
//! Failover: a primary and a streaming replica made by the test (`initdb`, `pg_basebackup -R`,
//! Debian's Postgres binaries, as the `postgres` user), daemons given both hosts
//! (`postgres://…@a,b/db?target_session_attrs=read-write`). The primary crashes under load, the
//! replica is promoted, every daemon carries on against it without a restart, and no
//! acknowledged job is lost or completed twice. Then what asynchronous replication means for a
//! job committed on the old primary but not yet replicated, and what `synchronous_commit`
//! changes.

mod common;
use common::wait;

#[path = "chaos/support.rs"]
#[allow(dead_code)]
mod support;
use support::{Daemon, PrivatePg};

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chainsync::{app::App, config::Config};
use chainsync_jobs::NewJob;
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

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

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap()
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A primary with database `failover` and its streaming replica, caught up. `sync`: commits on
/// the primary then wait until the standby has flushed them (`synchronous_standby_names = '*'`,
/// with the default `synchronous_commit = on`); set once the standby streams, since a primary
/// with no standby yet would wait forever.
async fn pair(sync: bool) -> (PrivatePg, PrivatePg) {
    let primary = PrivatePg::start();
    let admin = pool(&primary.url("postgres")).await;
    sqlx::query("CREATE DATABASE failover")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let replica = PrivatePg::replica_of(&primary, &[]);
    let standby = pool(&replica.url("failover")).await;
    wait("the replica to stream", Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until_ok(async || {
            match sqlx::query_scalar::<_, String>("SELECT status FROM pg_stat_wal_receiver")
                .fetch_optional(&standby)
                .await
            {
                Ok(Some(s)) if s == "streaming" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    standby.close().await;
    if sync {
        let p = pool(&primary.url("postgres")).await;
        sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .execute(&p)
            .await
            .unwrap();
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&p)
            .await
            .unwrap();
        p.close().await;
    }
    (primary, replica)
}

fn both(primary: &PrivatePg, replica: &PrivatePg) -> String {
    format!(
        "postgres://root@127.0.0.1:{},127.0.0.1:{}/failover?target_session_attrs=read-write",
        primary.port, replica.port
    )
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

#[tokio::test]
async fn primary_crash_promoted_replica_daemons_follow_and_lose_nothing() {
    let (primary, replica) = pair(true).await;
    let url = both(&primary, &replica);
    let cfg = format!("database_url = \"{url}\"\n[database]\nfailover_check = \"200ms\"\n{FAST}");
    let app = App::connect(Config::from_toml(&cfg).unwrap())
        .await
        .unwrap();
    app.migrate().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let _follow = app.follow_primary(stop.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut daemons = [
        Daemon::start(dir.path(), "a", &cfg),
        Daemon::start(dir.path(), "b", &cfg),
    ];

    // One enqueuer through the same multi-host URL: batches of 50 no-op jobs, each batch one
    // transaction; the ids of every batch whose commit was acknowledged are kept.
    let acked: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let enqueuer = {
        let (app, acked, failed, stop) = (app.clone(), acked.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let jobs = (0..50)
                    .map(|k| NewJob::untyped("noop", json!({"payload": i * 50 + k})))
                    .collect();
                i += 1;
                match app.queue.enqueue_many(jobs).await {
                    Ok(ids) => acked.lock().unwrap().extend(ids.into_iter().map(|e| e.id)),
                    Err(_) => {
                        *failed.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let on_primary = pool(&primary.url("failover")).await;
    let done = "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'";
    wait("jobs completing on the primary", Duration::from_secs(60))
        .every(Duration::from_millis(100))
        .until_ok(async || match scalar(&on_primary, done).await {
            n if n >= 2000 => Ok(()),
            n => Err(n),
        })
        .await;
    on_primary.close().await;

    // Crash the primary mid-load, promote the replica a second later.
    let crashed = Instant::now();
    primary.crash();
    tokio::time::sleep(Duration::from_secs(1)).await;
    replica.promote();
    let promoted = crashed.elapsed();
    let new_primary = pool(&replica.url("failover")).await;
    let before = scalar(&new_primary, done).await;
    let resumed = wait(
        "the daemons to complete jobs on the promoted replica",
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(50))
    .until_ok(async || match scalar(&new_primary, done).await {
        n if n > before => Ok(crashed.elapsed()),
        n => Err(n),
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    enqueuer.await.unwrap();
    let open = "SELECT count(*) FROM chainsync.all_jobs WHERE state IN ('available', 'running')";
    wait("every job done", Duration::from_secs(120))
        .every(Duration::from_millis(200))
        .until_ok(async || {
            for d in &mut daemons {
                d.assert_running();
            }
            match scalar(&new_primary, open).await {
                0 => Ok(()),
                n => Err(n),
            }
        })
        .await;

    // Every acknowledged job is there and completed once; nothing in the dead letters.
    let acked: Vec<Uuid> = acked.lock().unwrap().iter().copied().collect();
    let found: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM chainsync.all_jobs WHERE id = ANY($1) AND state = 'completed'",
    )
    .bind(&acked)
    .fetch_one(&new_primary)
    .await
    .unwrap();
    let total = scalar(&new_primary, "SELECT count(*) FROM chainsync.all_jobs").await;
    let completed = scalar(&new_primary, done).await;
    let dead = scalar(&new_primary, "SELECT count(*) FROM chainsync.dead_letters").await;
    let (mut runs, mut completions) = (0, 0);
    for d in &daemons {
        runs += metric_sum(d.http_port, "chainsync_job_runs_total").await;
        completions += metric_sum(d.http_port, "chainsync_jobs_completed_total").await;
    }
    println!(
        "failover: primary crashed, replica promoted {:.1}s later, first job completed on it \
         {:.1}s after the crash; {} jobs acknowledged ({} enqueue batches failed during the \
         failover), {total} stored, {completed} completed; {runs} runs and {completions} \
         completions written by the daemons",
        promoted.as_secs_f64(),
        resumed.as_secs_f64(),
        acked.len(),
        failed.lock().unwrap(),
    );
    assert_eq!(found, acked.len() as i64, "an acknowledged job was lost");
    assert_eq!(completed, total, "every stored job completed");
    assert_eq!(dead, 0);
    // Every completion the daemons saw committed is a stored completed job: none was lost and
    // written again. (A completion whose commit the crash interrupted may be stored without
    // the daemon knowing, so stored ≥ acknowledged.)
    assert!(
        completions as i64 <= completed,
        "{completions} completions acknowledged to the daemons, {completed} stored"
    );
    for d in &mut daemons {
        d.assert_running();
        d.stop();
    }
}

/// Enqueues `n` jobs one by one on `app`; returns the ids acknowledged, each within `patience`
/// (stops at the first that is not).
async fn enqueue_acknowledged(app: &App, n: usize, patience: Duration) -> Vec<Uuid> {
    let mut acked = Vec::new();
    for i in 0..n {
        let job = NewJob::untyped("noop", json!({"payload": i}));
        match tokio::time::timeout(patience, app.queue.enqueue(job)).await {
            Ok(Ok(e)) => acked.push(e.id),
            Ok(Err(e)) => panic!("enqueue failed: {e}"),
            Err(_) => break,
        }
    }
    acked
}

#[tokio::test]
async fn jobs_acknowledged_but_not_replicated_are_lost_unless_commits_wait_for_the_standby() {
    for sync in [false, true] {
        let (primary, replica) = pair(sync).await;
        let cfg = format!("database_url = \"{}\"\n", primary.url("failover"));
        let app = App::connect(Config::from_toml(&cfg).unwrap())
            .await
            .unwrap();
        app.migrate().await.unwrap();
        // Replicated: enqueued while the standby streams.
        let before = enqueue_acknowledged(&app, 20, Duration::from_secs(10)).await;
        let t = Instant::now();
        let standby = pool(&replica.url("failover")).await;
        wait(
            "the standby to replay the first jobs",
            Duration::from_secs(30),
        )
        .every(Duration::from_millis(50))
        .until_ok(async || {
            match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM chainsync.all_jobs")
                .fetch_one(&standby)
                .await
            {
                Ok(n) if n == before.len() as i64 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        standby.close().await;
        let replay = t.elapsed();

        // The standby is away (as a lagging or partitioned one would be); the application keeps
        // enqueueing on the primary, which then crashes; the standby comes back with what it
        // had and is promoted.
        replica.down();
        let during = enqueue_acknowledged(&app, 20, Duration::from_secs(2)).await;
        primary.crash();
        replica.up();
        replica.promote();
        let promoted = pool(&replica.url("failover")).await;
        let kept: i64 =
            sqlx::query_scalar("SELECT count(*) FROM chainsync.all_jobs WHERE id = ANY($1)")
                .bind(&during)
                .fetch_one(&promoted)
                .await
                .unwrap();
        let kept_before: i64 =
            sqlx::query_scalar("SELECT count(*) FROM chainsync.all_jobs WHERE id = ANY($1)")
                .bind(&before)
                .fetch_one(&promoted)
                .await
                .unwrap();
        println!(
            "synchronous_standby_names {}: {} jobs acknowledged while the standby received \
             nothing, {kept} of them on the promoted replica ({} lost); the {} enqueued before \
             were replayed there within {:.0} ms",
            if sync { "'*'" } else { "unset (asynchronous)" },
            during.len(),
            during.len() as i64 - kept,
            before.len(),
            replay.as_secs_f64() * 1000.0
        );
        assert_eq!(kept_before, before.len() as i64);
        if sync {
            // No commit is acknowledged until the standby has it: nothing acknowledged to lose.
            assert!(during.is_empty(), "acknowledged without the standby");
        } else {
            // Acknowledged on the old primary, never sent: gone from the new one.
            assert_eq!(during.len(), 20, "asynchronous commits do not wait");
            assert_eq!(kept, 0, "not replicated, yet found on the replica");
        }
        drop(promoted);
        drop(app);
    }
}

#[tokio::test]
async fn balances_are_read_from_the_replica_with_its_lag() {
    let (primary, replica) = pair(false).await;
    let cfg = format!(
        "database_url = \"{}\"\n[database]\nreplica_url = \"{}\"\n[[chains]]\nchain_id = 1\nname = \"main\"\nrpc_urls = [\"http://127.0.0.1:1\"]\n",
        primary.url("failover"),
        replica.url("failover")
    );
    let app = App::connect(Config::from_toml(&cfg).unwrap())
        .await
        .unwrap();
    app.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash)
         VALUES (1, 'native', '0x00000000000000000000000000000000000000b1', 42, 7, '0x0')",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), "d", &cfg);
    let url = format!(
        "http://127.0.0.1:{}/v1/balances/1/0x00000000000000000000000000000000000000b1?token=native",
        d.http_port
    );
    let v: serde_json::Value = wait("the balance from the replica", Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until_ok(async || {
            let r = reqwest::get(&url).await.map_err(|e| e.to_string())?;
            let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            if v["amount"] == "42" {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        })
        .await;
    assert_eq!(v["source"], "replica", "{v}");
    let lag = v["replication_lag_seconds"].as_f64().unwrap();
    assert!(
        (0.0..5.0).contains(&lag),
        "a streaming replica on loopback: {v}"
    );
    assert!(
        v["sync_lag_seconds"].as_i64().unwrap() >= lag.floor() as i64,
        "{v}"
    );
}
