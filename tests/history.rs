#![allow(clippy::unwrap_used)]
//! Partitioned history: partitions made by the maintenance pass, retention that drops whole
//! partitions, the "amount before a block" lookups of history writes across partition
//! boundaries and after a drop, and the migration of a database that has rows.

mod common;
use common::{app, count};

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use chainsync_jobs::{
    chain::PinnedBlock,
    history::{HistoryConfig, Keep, maintain},
    ids::TokenKey,
    store::{Observation, Source, record_history},
};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

const DAY: i64 = 86_400;
/// Chain 1 in these tests: block 1000 + 10 d at `t0` + d days.
const CHAIN: u64 = 1;

fn block(t0: DateTime<Utc>, day: i64) -> PinnedBlock {
    let number = u64::try_from(1000 + 10 * day).unwrap();
    PinnedBlock {
        number,
        hash: B256::left_padding_from(&number.to_be_bytes()),
        timestamp: u64::try_from(t0.timestamp() + day * DAY).unwrap(),
    }
}

fn holder(n: u8) -> Address {
    Address::repeat_byte(n)
}

fn obs(t0: DateTime<Utc>, who: u8, day: i64, amount: u64) -> Observation {
    Observation {
        token: TokenKey::Native,
        address: holder(who),
        block: block(t0, day),
        amount: U256::from(amount),
    }
}

/// The history of one holder: (block, old amount, new amount, partition).
async fn history(pool: &PgPool, who: u8) -> Vec<(i64, Option<String>, String, String)> {
    sqlx::query_as(
        "SELECT block_number, old_amount::text, new_amount::text, tableoid::regclass::text
         FROM chainsync.balance_changes WHERE chain_id = 1 AND token = 'native' AND address = $1
         ORDER BY block_number",
    )
    .bind(format!("{:#x}", holder(who)))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn leaves(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_partition_tree($1::regclass) WHERE isleaf")
        .bind(format!("chainsync.{table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn keep_days(days: u64) -> Keep {
    Keep::For(Duration::from_secs(days * 86_400))
}

/// Balance history written before the chain has partitions lands in the DEFAULT partition; the
/// maintenance pass gives the chain periods by block time (moving the rows), creates the next
/// ahead of its head, and drops the periods older than the retention, keeping each holder's last
/// row: amounts before later blocks stay exact, and writes across period boundaries correct the
/// neighbouring rows as before.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn balance_history_retention_drops_periods_and_keeps_lookups_exact(pool: PgPool) {
    let app = app(&pool, "").await;
    let services = app.services().await.unwrap();
    let now = Utc::now();
    // Day 0: the first of the month 4 months back (120 to 151 days ago): days 0, 40, 80 and
    // 110 fall in 4 different months.
    let t0: DateTime<Utc> =
        sqlx::query_scalar("SELECT date_trunc('month', now() - interval '4 months')")
            .fetch_one(&pool)
            .await
            .unwrap();
    // A: changes on days 0, 40, 80, 110; Q: once, on day 5.
    let written = record_history(
        &services,
        CHAIN,
        Source::Read,
        &[
            obs(t0, 0xa, 0, 100),
            obs(t0, 0xa, 40, 140),
            obs(t0, 0xa, 80, 180),
            obs(t0, 0xa, 110, 210),
            obs(t0, 0xb, 5, 777),
        ],
    )
    .await
    .unwrap();
    assert_eq!(written.written, 5);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes_default"
        )
        .await,
        5
    );

    // Partitions only: nothing kept shorter than forever.
    let pass = maintain(&pool, &HistoryConfig::default(), now)
        .await
        .unwrap();
    assert!(pass.created >= 2, "{pass:?}");
    assert_eq!(pass.dropped, 0);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes_default"
        )
        .await,
        0
    );
    let periods = leaves(&pool, "balance_changes_c1").await;
    // _low, one period per month with rows, _high
    assert_eq!(periods, 6);
    let a = history(&pool, 0xa).await;
    assert_eq!(a.len(), 4);
    assert!(
        a.iter()
            .all(|(_, _, _, p)| p.starts_with("chainsync.balance_changes_c1_b")),
        "{a:?}"
    );
    let parts: std::collections::BTreeSet<&str> = a.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(parts.len(), 4, "one row per period: {a:?}");

    // Q's amount before day 100 is in the first period, three boundaries back: the same amount
    // is no change.
    let o = record_history(&services, CHAIN, Source::Read, &[obs(t0, 0xb, 100, 777)])
        .await
        .unwrap();
    assert_eq!(o.written, 0);
    // A at day 100, equal to the amount before it (day 80): nothing is written.
    let o = record_history(&services, CHAIN, Source::Read, &[obs(t0, 0xa, 100, 180)])
        .await
        .unwrap();
    assert_eq!(o.written, 0);
    // Different: a row with the amount before it, and the next row (day 110, in the next
    // period) now starts from it.
    record_history(&services, CHAIN, Source::Read, &[obs(t0, 0xa, 100, 190)])
        .await
        .unwrap();
    let a = history(&pool, 0xa).await;
    let blocks: Vec<(i64, Option<&str>, &str)> = a
        .iter()
        .map(|(b, o, n, _)| (*b, o.as_deref(), n.as_str()))
        .collect();
    assert_eq!(
        blocks,
        vec![
            (1000, None, "100"),
            (1400, Some("100"), "140"),
            (1800, Some("140"), "180"),
            (2000, Some("180"), "190"),
            (2100, Some("190"), "210"),
        ]
    );
    // Day 100 equal to day 110: the day-110 row is no change any more and goes.
    record_history(&services, CHAIN, Source::Read, &[obs(t0, 0xa, 100, 210)])
        .await
        .unwrap();
    let a = history(&pool, 0xa).await;
    assert_eq!(a.len(), 4, "{a:?}");
    assert_eq!(
        (a[3].0, a[3].1.as_deref(), a[3].2.as_str()),
        (2000, Some("180"), "210")
    );

    // Keep 30 days, on day 145: every period closed by day 115 goes (the first three: each
    // closes with the first block of the next, days 40, 80 and 110), the last stays.
    let config = HistoryConfig {
        balance_changes: keep_days(30),
        ..HistoryConfig::default()
    };
    let day145 = t0 + chrono::Duration::days(145);
    let pass = maintain(&pool, &config, day145).await.unwrap();
    assert_eq!(pass.dropped, 3, "{pass:?}");
    assert_eq!(
        leaves(&pool, "balance_changes_c1").await,
        periods - pass.dropped
    );
    // What is left of the dropped periods: each holder's last row (A's day 100, Q's day 5).
    let low: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT address, block_number, new_amount::text FROM chainsync.balance_changes_c1_low
         ORDER BY address",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        low,
        vec![
            (format!("{:#x}", holder(0xa)), 2000, "210".to_string()),
            (format!("{:#x}", holder(0xb)), 1050, "777".to_string()),
        ]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes WHERE block_number < 1800"
        )
        .await,
        1
    );
    // The quiet holder's amount before a later block is still known: the same amount is no
    // change, another one records the old amount.
    let o = record_history(&services, CHAIN, Source::Read, &[obs(t0, 0xb, 115, 777)])
        .await
        .unwrap();
    assert_eq!(o.written, 0);
    record_history(&services, CHAIN, Source::Read, &[obs(t0, 0xb, 116, 778)])
        .await
        .unwrap();
    let q = history(&pool, 0xb).await;
    assert_eq!(q.len(), 2);
    assert_eq!(
        (q[1].0, q[1].1.as_deref(), q[1].2.as_str()),
        (2160, Some("777"), "778")
    );

    // A second pass drops nothing more, and moves nothing.
    let pass = maintain(&pool, &config, day145).await.unwrap();
    assert_eq!(pass.dropped, 0);
    assert_eq!(history(&pool, 0xb).await.len(), 2);
}

/// The next period is created ahead of the head; rows beyond every period (the pass was late)
/// are moved into the periods made for them.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn periods_are_created_ahead_of_the_head(pool: PgPool) {
    let app = app(&pool, "").await;
    let services = app.services().await.unwrap();
    let now = Utc::now();
    let t0 = now - chrono::Duration::days(60);
    record_history(
        &services,
        CHAIN,
        Source::Read,
        &[obs(t0, 0xa, 0, 1), obs(t0, 0xa, 45, 2)],
    )
    .await
    .unwrap();
    maintain(&pool, &HistoryConfig::default(), now)
        .await
        .unwrap();
    let (last_from, last_to): (i64, i64) = sqlx::query_as(
        "SELECT from_block, to_block FROM chainsync.history_periods
         WHERE parent = 'balance_changes' AND chain_id = 1 ORDER BY from_block DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // A head (the ingestion checkpoint) inside the last period: one more period after it.
    sqlx::query(
        "INSERT INTO chainsync.ingest_checkpoints (chain_id, block_number, block_hash)
         VALUES (1, $1, 'h')",
    )
    .bind(last_from + 1)
    .execute(&pool)
    .await
    .unwrap();
    let pass = maintain(&pool, &HistoryConfig::default(), now)
        .await
        .unwrap();
    assert_eq!(pass.created, 2, "balance_changes and events");
    let next: i64 = sqlx::query_scalar(
        "SELECT max(from_block) FROM chainsync.history_periods
         WHERE parent = 'balance_changes' AND chain_id = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(next, last_to);
    // Rows far beyond the periods (in `_high`) get periods of their own at the next pass.
    let far = u64::try_from(last_to + 10 * (last_to - last_from)).unwrap();
    let mut o = obs(t0, 0xa, 59, 3);
    o.block.number = far;
    record_history(&services, CHAIN, Source::Read, &[o])
        .await
        .unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes_c1_high"
        )
        .await,
        1
    );
    maintain(&pool, &HistoryConfig::default(), now)
        .await
        .unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes_c1_high"
        )
        .await,
        0
    );
    let a = history(&pool, 0xa).await;
    assert_eq!(a.len(), 3);
    assert_eq!(a[2].1.as_deref(), Some("2"));
}

/// Points windows by month and events by the chain's periods: retention drops their partitions.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn points_and_events_retention_drop_partitions(pool: PgPool) {
    let app = app(&pool, "").await;
    let services = app.services().await.unwrap();
    let now = Utc::now();
    let t0 = now - chrono::Duration::days(120);
    record_history(
        &services,
        CHAIN,
        Source::Read,
        &[obs(t0, 0xa, 0, 1), obs(t0, 0xa, 110, 2)],
    )
    .await
    .unwrap();
    // Events on days 0..120, one a day.
    sqlx::query(
        "INSERT INTO chainsync.events (chain_id, tx_hash, log_index, block_number, block_hash,
                                       contract, event, args)
         SELECT 1, '0x' || lpad(to_hex(d), 64, '0'), 0, 1000 + 10 * d, 'h', 'c', 'Transfer', '{}'
         FROM generate_series(0, 119) d",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Points windows this month and next (the migration made those months).
    let month: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('month', $1::timestamptz)")
        .bind(now)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points)
         SELECT 1, 'native', '0x' || lpad('a', 40, '0'), $1 + h * interval '1 hour', 5, 1
         FROM generate_series(0, 24 * 40) h",
    )
    .bind(month)
    .execute(&pool)
    .await
    .unwrap();
    let config = HistoryConfig {
        events: keep_days(30),
        points_history: keep_days(30),
        ..HistoryConfig::default()
    };
    // The pass 70 days from now: months up to the next one are made, and this month's windows
    // are older than 30 days.
    let later = now + chrono::Duration::days(75);
    let pass = maintain(&pool, &config, later).await.unwrap();
    assert!(pass.dropped >= 2, "{pass:?}");
    let this_month = format!("points_history_p{}", month.format("%Y%m"));
    assert!(
        sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
            .bind(format!("chainsync.{this_month}"))
            .fetch_one(&pool)
            .await
            .unwrap()
            .is_none(),
        "{this_month} dropped"
    );
    let cutoff = later - chrono::Duration::days(30);
    let old: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chainsync.points_history WHERE window_start < $1")
            .bind(cutoff)
            .fetch_one(&pool)
            .await
            .unwrap();
    // Only windows of the month the cutoff falls in may stay (a month goes once it is all old).
    let stays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM chainsync.points_history WHERE window_start < date_trunc('month', $1::timestamptz)",
    )
    .bind(cutoff)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stays, 0, "{old} windows before the cutoff");
    // Events: the chain's periods closed before the cutoff are gone, the newest kept.
    let events: Vec<(i64, i64)> =
        sqlx::query_as("SELECT min(block_number), count(*) FROM chainsync.events")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(events[0].1 < 120 && events[0].1 > 0, "{events:?}");
    assert!(events[0].0 > 1000, "{events:?}");
}

/// A database with rows from before partitioning keeps them all: every row moved to its chain's
/// periods, ids, amounts and keys unchanged; lookups answer the same.
#[sqlx::test(migrations = false)]
async fn migration_moves_existing_rows(pool: PgPool) {
    let before = sqlx::migrate::Migrator::with_migrations(
        chainsync_jobs::MIGRATOR
            .iter()
            .filter(|m| m.version < 20_261_130_000_000)
            .cloned()
            .collect(),
    );
    before.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO chainsync.balance_changes
             (chain_id, token, address, old_amount, new_amount, block_number, block_hash, block_time, source)
         SELECT c, 'native', '0x' || lpad(to_hex(g % 50), 40, '0'), CASE WHEN g >= 50 THEN g - 50 END, g,
                1000 + g * 100, 'h', now() - interval '300 days' + g * interval '20 minutes', 'log'
         FROM generate_series(0, 19999) g, (VALUES (1), (56)) c(c)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO chainsync.balance_changes (chain_id, token, address, new_amount, block_number, block_hash)
         VALUES (7, 'native', '0x' || lpad('7', 40, '0'), 7, 70, 'h')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points)
         SELECT 1, 'native', '0x' || lpad(to_hex(g % 50), 40, '0'),
                date_trunc('hour', now() - interval '200 days') + (g / 50) * interval '1 hour', g, g
         FROM generate_series(0, 9999) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO chainsync.events (chain_id, tx_hash, log_index, block_number, block_hash, contract, event, args)
         SELECT 1, '0x' || lpad(to_hex(g), 64, '0'), 0, 1000 + g * 100, 'h', 'c', 'Transfer', '{}'
         FROM generate_series(0, 999) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let digest = "SELECT md5(string_agg(concat_ws(',', id, chain_id, token, address, old_amount,
                      new_amount, block_number, block_time, source), ';' ORDER BY id))
                  FROM chainsync.balance_changes";
    let lookup = "SELECT string_agg(x, ',') FROM (
                    SELECT (SELECT new_amount::text FROM chainsync.balance_changes c
                             WHERE c.chain_id = 1 AND c.token = 'native'
                               AND c.address = '0x' || lpad(to_hex(h), 40, '0')
                               AND c.block_number < 1000 + h * 40000
                             ORDER BY block_number DESC LIMIT 1) AS x
                    FROM generate_series(1, 49) h) s";
    let (d0, l0): (String, String) = (
        sqlx::query_scalar(digest).fetch_one(&pool).await.unwrap(),
        sqlx::query_scalar(lookup).fetch_one(&pool).await.unwrap(),
    );
    chainsync_jobs::MIGRATOR.run(&pool).await.unwrap();
    let (d1, l1): (String, String) = (
        sqlx::query_scalar(digest).fetch_one(&pool).await.unwrap(),
        sqlx::query_scalar(lookup).fetch_one(&pool).await.unwrap(),
    );
    assert_eq!(d0, d1);
    assert_eq!(l0, l1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes_default"
        )
        .await,
        0
    );
    // Chains 1 and 56 by month (300 days: at least 10 periods each); 7, without block times, one.
    for (chain, least) in [(1, 9), (56, 9), (7, 1)] {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chainsync.history_periods WHERE parent = 'balance_changes' AND chain_id = $1",
        )
        .bind(chain)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(n >= least, "chain {chain}: {n} periods");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.points_history").await,
        10_000
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.points_history_low").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.events").await,
        1000
    );
    // New rows continue the ids.
    sqlx::query(
        "INSERT INTO chainsync.balance_changes (chain_id, token, address, new_amount, block_number, block_hash)
         VALUES (1, 'native', '0x' || lpad('1', 40, '0'), 1, 99999999, 'h')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let ids: (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM chainsync.balance_changes")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ids.0, ids.1);
}

/// Maintenance passes running while history is written (the chain's head moving through many
/// periods): every write lands, none fails, and each holder's history stays one chain of changes.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn passes_beside_writes_lose_nothing(pool: PgPool) {
    let app = app(&pool, "").await;
    let services = app.services().await.unwrap();
    let now = Utc::now();
    // Periods of 300 blocks (one timed row tells no rate): 200 writes 20 blocks apart cross 13.
    let t0 = now - chrono::Duration::days(400);
    let config = HistoryConfig {
        period_blocks: 300,
        ..HistoryConfig::default()
    };
    record_history(&services, CHAIN, Source::Read, &[obs(t0, 1, 0, 1_000)])
        .await
        .unwrap();
    maintain(&pool, &config, now).await.unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let passes = {
        let (pool, done, config) = (pool.clone(), done.clone(), config.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                maintain(&pool, &config, Utc::now()).await.unwrap();
                n += 1;
            }
            n
        })
    };
    for i in 1..=200u64 {
        let day = i64::try_from(i * 2).unwrap();
        let who = u8::try_from(i % 5).unwrap() + 1;
        record_history(
            &services,
            CHAIN,
            Source::Read,
            &[obs(t0, who, day, 1_000 + i)],
        )
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO chainsync.ingest_checkpoints (chain_id, block_number, block_hash)
             VALUES (1, $1, 'h') ON CONFLICT (chain_id) DO UPDATE SET block_number = $1",
        )
        .bind(1000 + 10 * day)
        .execute(&pool)
        .await
        .unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = passes.await.unwrap();
    assert!(n > 1, "{n} passes");
    maintain(&pool, &config, now).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.balance_changes").await,
        201
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.balance_changes_default"
        )
        .await,
        0
    );
    assert!(leaves(&pool, "balance_changes_c1").await >= 13);
    for who in 1..=5u8 {
        let h = history(&pool, who).await;
        for w in h.windows(2) {
            assert_eq!(w[1].1.as_deref(), Some(w[0].2.as_str()), "{h:?}");
        }
    }
}

/// The console's newest points of an address read the last days' months first; windows older
/// than that are still found (fewer than the limit in the last days).
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn console_points_are_the_newest_whatever_their_age(pool: PgPool) {
    let _app = app(&pool, "").await;
    let address = format!("{:#x}", holder(0xa));
    sqlx::query(
        "INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash)
         VALUES (1, 'native', $1, 1, 1, 'h')",
    )
    .bind(&address)
    .execute(&pool)
    .await
    .unwrap();
    // 30 windows 60 days back, then 10 in the last hours.
    sqlx::query(
        "INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points)
         SELECT 1, 'native', $1, date_trunc('hour', now() - interval '60 days') + h * interval '1 hour', h, h
         FROM generate_series(0, 29) h
         UNION ALL
         SELECT 1, 'native', $1, date_trunc('hour', now()) - h * interval '1 hour', 100 + h, 100 + h
         FROM generate_series(1, 10) h",
    )
    .bind(&address)
    .execute(&pool)
    .await
    .unwrap();
    for (limit, want) in [(5, 5), (25, 25), (100, 40)] {
        let r = chainsync_jobs::console::address_report(&pool, &[1], &address, limit)
            .await
            .unwrap();
        assert_eq!(r.points.len(), want, "limit {limit}");
        assert!(
            r.points
                .windows(2)
                .all(|w| w[0].window_start > w[1].window_start)
        );
        let newest: DateTime<Utc> = sqlx::query_scalar(
            "SELECT max(window_start) FROM chainsync.points_history WHERE address = $1",
        )
        .bind(&address)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(r.points[0].window_start, newest);
    }
}

/// A chain's rows move out of the DEFAULT partition into the chain's own table while queries
/// read them: every query sees all of them (a query planned before the move never runs after it
/// and misses them).
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn readers_see_every_row_while_a_chain_gets_its_table(pool: PgPool) {
    let _app = app(&pool, "").await;
    let now = Utc::now();
    for chain in 100..112i64 {
        sqlx::query(
            "INSERT INTO chainsync.balance_changes
                 (chain_id, token, address, new_amount, block_number, block_hash, block_time)
             SELECT $1, 'native', '0x' || lpad(to_hex(g % 20), 40, '0'), g, 1000 + g, 'h',
                    now() - interval '90 days' + g * interval '1 hour'
             FROM generate_series(0, 1999) g",
        )
        .bind(chain)
        .execute(&pool)
        .await
        .unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (pool, done) = (pool.clone(), done.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        let n: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM chainsync.balance_changes
                             WHERE chain_id = $1 AND token = 'native'",
                        )
                        .bind(chain)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                        seen.push(n);
                    }
                    seen
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        maintain(&pool, &HistoryConfig::default(), now)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        for r in readers {
            let seen = r.await.unwrap();
            assert!(seen.iter().all(|n| *n == 2000), "chain {chain}: {seen:?}");
        }
        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM chainsync.balance_changes_default"
            )
            .await,
            0
        );
    }
}
