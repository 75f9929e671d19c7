#![allow(clippy::unwrap_used)]
//! The scheduler against a real Postgres: ticks claimed once across instances, overlap, catch-up.

mod common;
use common::{count, own_pool};

use chainsync::{
    config::Config,
    scheduler::{Scheduler, TickOutcome},
};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config(extra: &str) -> Config {
    Config::from_toml(&format!(
        r#"
[[schedule]]
name = "every-10s"
kind = "noop"
every = "10s"
overlap = "queue"
{extra}
"#
    ))
    .unwrap()
}

async fn scheduler(pool: &PgPool, cfg: &Config) -> Scheduler {
    // Each instance has its own pool, as separate daemons would.
    let own = own_pool(pool, 3).await;
    let q = chainsync::app::builtin_queue(own);
    q.sync_kinds().await.unwrap();
    Scheduler::new(
        q.clone(),
        cfg.schedules(q.kinds()).unwrap(),
        cfg.scheduler.clone(),
    )
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn three_instances_enqueue_each_tick_exactly_once(pool: PgPool) {
    let cfg = config("");
    let mut instances = [
        scheduler(&pool, &cfg).await,
        scheduler(&pool, &cfg).await,
        scheduler(&pool, &cfg).await,
    ];
    // 60 simulated seconds, each instance polling every second concurrently.
    let start = at("2026-06-01T12:00:00.500Z");
    let mut enqueued = 0;
    for s in 0..60 {
        let now = start + chrono::Duration::seconds(s);
        let passes = instances.iter_mut().map(|i| i.tick_once(now));
        for r in futures::future::join_all(passes).await {
            enqueued += r
                .unwrap()
                .iter()
                .filter(|o| matches!(o, TickOutcome::Enqueued { .. }))
                .count();
        }
    }
    // Ticks at :00, :10, … :50 → 6 ticks, one job each.
    assert_eq!(enqueued, 6);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'noop'"
        )
        .await,
        6
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.cron_claims").await,
        6
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT unique_key) FROM chainsync.all_jobs"
        )
        .await,
        6
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn overlap_skip_records_the_tick_without_a_job(pool: PgPool) {
    let cfg = Config::from_toml(
        r#"
[[schedule]]
name = "slow"
kind = "noop"
every = "10s"
"#,
    )
    .unwrap();
    let mut s = scheduler(&pool, &cfg).await;
    let out = s.tick_once(at("2026-06-01T12:00:01Z")).await.unwrap();
    assert!(matches!(out[..], [TickOutcome::Enqueued { .. }]));
    // The first job is still queued (no worker): the next tick is skipped.
    let out = s.tick_once(at("2026-06-01T12:00:11Z")).await.unwrap();
    assert!(matches!(out[..], [TickOutcome::Skipped { .. }]), "{out:?}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.cron_claims WHERE job_id IS NULL"
        )
        .await,
        1
    );
    // Once it finished, ticks enqueue again.
    sqlx::query("SELECT chainsync.finish_jobs(ARRAY(SELECT id FROM chainsync.jobs), 'completed')")
        .execute(&pool)
        .await
        .unwrap();
    let out = s.tick_once(at("2026-06-01T12:00:21Z")).await.unwrap();
    assert!(matches!(out[..], [TickOutcome::Enqueued { .. }]));
    let list = chainsync::scheduler::status(
        &chainsync::app::builtin_queue(pool.clone()),
        &cfg.schedules(chainsync_jobs::registry().kinds()).unwrap(),
        at("2026-06-01T12:00:25Z"),
    )
    .await
    .unwrap();
    assert_eq!(list[0].last_tick, Some(at("2026-06-01T12:00:20Z")));
    assert_eq!(list[0].last_outcome.as_deref(), Some("available"));
    assert_eq!(list[0].next_runs[0], at("2026-06-01T12:00:30Z"));
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn missed_ticks_none_skips_one_catches_up_once(pool: PgPool) {
    let none = Config::from_toml(
        r#"
[[schedule]]
name = "daily-none"
kind = "noop"
cron = "0 2 * * *"
timezone = "Asia/Shanghai"
"#,
    )
    .unwrap();
    let one = Config::from_toml(
        r#"
[[schedule]]
name = "daily-one"
kind = "noop"
cron = "0 2 * * *"
timezone = "Asia/Shanghai"
catch_up = "one"
"#,
    )
    .unwrap();
    // Daemons start at 10:00 UTC, hours after 02:00 Shanghai (18:00 UTC the day before), after
    // three days down.
    let now = at("2026-06-04T10:00:00Z");
    let mut a = scheduler(&pool, &none).await;
    assert!(
        a.tick_once(now).await.unwrap().is_empty(),
        "catch_up none skips missed ticks"
    );
    let mut b = scheduler(&pool, &one).await;
    let mut c = scheduler(&pool, &one).await;
    let ob = b.tick_once(now).await.unwrap();
    let oc = c.tick_once(now).await.unwrap();
    assert_eq!(
        ob.len() + oc.len(),
        1,
        "one catch-up job, whatever the number of daemons"
    );
    let tick = match (ob.first(), oc.first()) {
        (Some(TickOutcome::Enqueued { tick, .. }), _)
        | (_, Some(TickOutcome::Enqueued { tick, .. })) => *tick,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        tick,
        at("2026-06-03T18:00:00Z"),
        "02:00 in Shanghai is 18:00 UTC the day before"
    );
    // Later passes do not enqueue it again, and the next on-time tick runs normally.
    assert!(
        b.tick_once(now + chrono::Duration::seconds(5))
            .await
            .unwrap()
            .is_empty()
    );
    let next = b.tick_once(at("2026-06-04T18:00:10Z")).await.unwrap();
    assert_eq!(next.len(), 1);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_switched_off_schedule_claims_nothing_and_resumes_at_its_next_tick(pool: PgPool) {
    let cfg = config("catch_up = \"one\"");
    let q = chainsync::app::builtin_queue(pool.clone());
    let mut a = scheduler(&pool, &cfg).await;
    let claims = "SELECT count(*) FROM chainsync.cron_claims";
    assert_eq!(
        a.tick_once(at("2026-06-01T12:00:00.500Z"))
            .await
            .unwrap()
            .len(),
        1
    );

    // Off for every instance: no claim, no job, whatever the passes.
    assert!(
        chainsync::scheduler::set_enabled(
            &q,
            "every-10s",
            false,
            "test",
            at("2026-06-01T12:00:05Z")
        )
        .await
        .unwrap()
    );
    let mut b = scheduler(&pool, &cfg).await; // a fresh instance would catch up
    for s in ["12:00:10.5", "12:00:20.5"] {
        let now = at(&format!("2026-06-01T{s}Z"));
        assert!(a.tick_once(now).await.unwrap().is_empty(), "{s}");
        assert!(b.tick_once(now).await.unwrap().is_empty(), "{s}");
    }
    assert_eq!(count(&pool, claims).await, 1);
    let status = chainsync::scheduler::status(
        &q,
        &cfg.schedules(q.kinds()).unwrap(),
        at("2026-06-01T12:00:21Z"),
    )
    .await
    .unwrap();
    assert!(!status[0].enabled && status[0].next_runs.is_empty());
    assert_eq!(
        status[0].switch.as_ref().unwrap().changed_by.as_deref(),
        Some("test")
    );

    // On again at :25: the tick of :20 (still within the tolerance) fell while it was off and is
    // not run; the next one is, once.
    assert!(
        chainsync::scheduler::set_enabled(
            &q,
            "every-10s",
            true,
            "test",
            at("2026-06-01T12:00:25Z")
        )
        .await
        .unwrap()
    );
    assert!(
        !chainsync::scheduler::set_enabled(
            &q,
            "every-10s",
            true,
            "test",
            at("2026-06-01T12:00:26Z")
        )
        .await
        .unwrap(),
        "already on"
    );
    let now = at("2026-06-01T12:00:25.5Z");
    assert!(a.tick_once(now).await.unwrap().is_empty());
    assert!(b.tick_once(now).await.unwrap().is_empty());
    assert_eq!(count(&pool, claims).await, 1);
    let now = at("2026-06-01T12:00:30.5Z");
    let mut enqueued = a.tick_once(now).await.unwrap();
    enqueued.extend(b.tick_once(now).await.unwrap());
    assert_eq!(enqueued.len(), 1, "{enqueued:?}");
    assert_eq!(count(&pool, claims).await, 2);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'noop'"
        )
        .await,
        2
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn run_now_enqueues_once_while_its_job_waits(pool: PgPool) {
    let cfg = config("");
    let q = chainsync::app::builtin_queue(pool.clone());
    q.sync_kinds().await.unwrap();
    let s = &cfg.schedules(q.kinds()).unwrap()[0];
    let first = chainsync::scheduler::run_now(&q, s, "test").await.unwrap();
    let again = chainsync::scheduler::run_now(&q, s, "test").await.unwrap();
    assert!(first.inserted && !again.inserted);
    assert_eq!(first.id, again.id);
    let status = chainsync::scheduler::status(&q, std::slice::from_ref(s), Utc::now())
        .await
        .unwrap();
    assert!(status[0].last_manual);
    assert_eq!(status[0].last_job, Some(first.id));
    assert_eq!(status[0].last_outcome.as_deref(), Some("available"));
    // Once it started, a new run is queued.
    sqlx::query("UPDATE chainsync.jobs SET started_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT chainsync.finish_jobs(ARRAY(SELECT id FROM chainsync.jobs), 'completed')")
        .execute(&pool)
        .await
        .unwrap();
    let third = chainsync::scheduler::run_now(&q, s, "test").await.unwrap();
    assert!(third.inserted && third.id != first.id);
}
