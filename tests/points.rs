#![allow(clippy::unwrap_used)]
//! Points backfill after a three-day outage, against an independent reference.

mod common;
use common::db_url;

use std::time::Duration;

use chainsync::{
    app::App,
    config::Config,
    runtime::{Runtime, WorkerSettings},
};
use chainsync_jobs::{NewJob, kinds::backfill_window::BackfillWindow, points::window_of};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

const ADDRS: [&str; 3] = [
    "0x00000000000000000000000000000000000000a1",
    "0x00000000000000000000000000000000000000a2",
    "0x00000000000000000000000000000000000000a3",
];

async fn setup(pool: &PgPool) -> (App, DateTime<Utc>, Vec<(usize, DateTime<Utc>, u128)>) {
    let cfg = Config::from_toml(&format!(
        r#"
database_url = "{}"
[worker]
concurrency = 4
poll_interval = "100ms"
[points]
max_windows_per_job = 24
rates = [{{ chain_id = 31337, token = "native", rate = "0.25" }}]
"#,
        db_url(pool)
    ))
    .unwrap();
    let app = App::with_pool(cfg, pool.clone()).unwrap();
    app.migrate().await.unwrap();
    // Three days of history, ending well before now, with nothing computed (the outage).
    let base = window_of(Utc::now()) - chrono::Duration::hours(80);
    let mut changes = Vec::new();
    let mut seed = 7u64;
    for (i, _) in ADDRS.iter().enumerate() {
        let mut t = base - chrono::Duration::minutes(30);
        for _ in 0..25 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += chrono::Duration::seconds(600 + (seed >> 33) as i64 % 9000);
            let amount = (u128::from(seed >> 20) % 1_000_000_000) * 1_000_000_000_007;
            changes.push((i, t, amount));
        }
    }
    for (i, t, amount) in &changes {
        sqlx::query(
            "INSERT INTO chainsync.balance_changes (chain_id, token, address, old_amount, new_amount, block_number, block_hash, block_time)
             VALUES (31337, 'native', $1, NULL, $2::numeric, 1, '0x0', $3)",
        )
        .bind(ADDRS[*i])
        .bind(amount.to_string())
        .bind(t)
        .execute(pool)
        .await
        .unwrap();
    }
    (app, base, changes)
}

/// Independent reference: the balance at each second of the window, summed; then the rate.
fn reference(
    changes: &[(usize, DateTime<Utc>, u128)],
    who: usize,
    w: DateTime<Utc>,
) -> Option<(u128, u128)> {
    let mine: Vec<&(usize, DateTime<Utc>, u128)> = changes.iter().filter(|c| c.0 == who).collect();
    if mine
        .first()
        .is_none_or(|c| c.1 >= w + chrono::Duration::hours(1))
    {
        return None;
    }
    let mut sum: u128 = 0;
    for s in 0..3600 {
        let t = w + chrono::Duration::seconds(s);
        sum += mine.iter().rev().find(|c| c.1 <= t).map_or(0, |c| c.2);
    }
    let twab = sum / 3600;
    Some((twab, twab / 4))
}

async fn run_backfill(app: &App, from: DateTime<Utc>, to: DateTime<Utc>) {
    app.queue
        .enqueue(
            NewJob::typed(&BackfillWindow {
                chain_id: 31337,
                token: "native".into(),
                from,
                to,
            })
            .unwrap(),
        )
        .await
        .unwrap();
    let rt = Runtime::start(
        app.queue.clone(),
        app.registry.clone(),
        app.services().await.unwrap(),
        WorkerSettings {
            poll_interval: Duration::from_millis(100),
            ..app.config.worker.clone()
        },
    );
    let t = std::time::Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chainsync.jobs WHERE state IN ('available', 'running')",
        )
        .fetch_one(app.pool())
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "backfill did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rt.stop().await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM chainsync.dead_letters")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

async fn stored(pool: &PgPool) -> Vec<(String, DateTime<Utc>, String, String)> {
    sqlx::query_as("SELECT address, window_start, twab::text, points::text FROM chainsync.points_history ORDER BY 1, 2")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn three_day_outage_backfill_is_exact_idempotent_and_resumable(pool: PgPool) {
    let (app, base, changes) = setup(&pool).await;
    let to = base + chrono::Duration::hours(72);
    run_backfill(&app, base, to).await;
    let got = stored(&pool).await;
    let mut want = Vec::new();
    for (i, a) in ADDRS.iter().enumerate() {
        for h in 0..72 {
            let w = base + chrono::Duration::hours(h);
            if let Some((twab, points)) = reference(&changes, i, w) {
                want.push((a.to_string(), w, twab.to_string(), points.to_string()));
            }
        }
    }
    assert!(want.len() > 150, "the scenario covers most windows");
    assert_eq!(got, want);
    // 72 windows with at most 24 per job: the range was split into child jobs.
    let children: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT job_id) FROM chainsync.points_history")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(children, 3);

    // Running it again changes nothing.
    let before: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT computed_at FROM chainsync.points_history ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    run_backfill(&app, base, to).await;
    assert_eq!(stored(&pool).await, want);
    let after: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT computed_at FROM chainsync.points_history ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(before, after);

    // A run that died midway (some windows written, the rest not): resuming gives the same result.
    sqlx::query("DELETE FROM chainsync.points_history WHERE window_start >= $1 OR address = $2")
        .bind(base + chrono::Duration::hours(40))
        .bind(ADDRS[1])
        .execute(&pool)
        .await
        .unwrap();
    run_backfill(&app, base, to).await;
    assert_eq!(stored(&pool).await, want);

    // Start-up detection: the last computed window is far older than 2 × the interval, so a job
    // for exactly the missing windows (up to the current one) is produced.
    let services = app.services().await.unwrap();
    let jobs = chainsync_jobs::domain::Domain::new(services.clone())
        .startup_jobs(None, Utc::now())
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].args["from"], serde_json::json!(to));
    let lag = chainsync_jobs::points::backfill::lag(&services, Some(31337), Utc::now())
        .await
        .unwrap();
    assert_eq!(lag[0].lagging_addresses, 3);
}
