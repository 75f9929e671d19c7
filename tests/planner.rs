#![allow(clippy::unwrap_used)]
//! Plans of the queue's hot statements: every access to `chainsync.jobs` has an index condition
//! whatever the table's statistics say, and the daemon's pools plan each run afresh.

use std::time::Duration;

use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

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
    let tokens: Vec<String> = ids
        .iter()
        .map(|id| chainsync::queue::complete::lease_token(*id, 1, owner))
        .collect();
    let check_all = async |conn: &mut sqlx::PgConnection, state: &str| {
        let stmts: [(&str, &str); 8] = [
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
                "rescue" => q.bind(1000i64),
                "heartbeat" => q.bind(owner).bind(60_000i64).bind(&ids),
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
        // Half available, half running (leased). Finished jobs live in their own table.
        sqlx::query(
            "INSERT INTO chainsync.jobs (id, kind, args, state, attempt, lease_owner, lease_expires_at)
             SELECT gen_random_uuid(), 'noop', '{}',
                    CASE WHEN i % 2 = 0 THEN 'available' ELSE 'running' END::chainsync.job_state,
                    1,
                    CASE WHEN i % 2 = 1 THEN gen_random_uuid() END,
                    CASE WHEN i % 2 = 1 THEN now() + interval '1 minute' END
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
        let q = chainsync::app::builtin_queue(one.clone());
        for _ in 0..8 {
            let got = q
                .fetch("default", 500, Uuid::now_v7(), Duration::from_secs(60))
                .await
                .unwrap();
            assert!(got.is_empty());
            q.heartbeat(Uuid::now_v7(), &[Uuid::now_v7()], Duration::from_secs(60))
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

/// Rows read from `chainsync.jobs` so far (table scans plus entries of its indexes), as the
/// statistics collector has them.
async fn jobs_rows_read(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables
                 WHERE relid = 'chainsync.jobs'::regclass)
              + (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
                 WHERE relid = 'chainsync.jobs'::regclass)::bigint",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The fetch under limits (`chainsync.fetch_controlled`) with the statistics of a backlog of one
/// kind: the "any due job of this kind?" probe of a limited kind with no jobs, and the scans of
/// the other kinds beside a binding limit, each read a few index entries, never the backlog;
/// whether the statements are planned with their arguments (the daemon's pools) or generically
/// (a pooler that drops the start-up options, after five runs). Counted in rows read from the
/// table, from the statistics collector.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_limited_fetch_never_walks_the_backlog_of_another_kind(pool: PgPool) {
    let q = chainsync::app::builtin_queue(pool.clone());
    q.sync_kinds().await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO chainsync.jobs (id, kind, args)
         SELECT gen_random_uuid(), 'noop', '{}' FROM generate_series(1, 30000);
         ANALYZE chainsync.jobs;
         SELECT chainsync.set_kind_limit('sync-balances', concurrency => 1);
         SELECT chainsync.set_kind_limit('noop', concurrency => 5);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let opts = (*pool.connect_options()).clone();
    for custom in [false, true] {
        let opts = if custom {
            chainsync::app::force_custom_plans(opts.clone())
        } else {
            opts.clone()
        };
        let one = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        let q = chainsync::app::builtin_queue(one.clone());
        // Warm up past the switch to generic plans, then count the rows 10 fetches read.
        let mut taken = 0;
        let mut before = 0;
        for i in 0..16 {
            if i == 6 {
                sqlx::query("SELECT pg_stat_force_next_flush()")
                    .execute(&one)
                    .await
                    .unwrap();
                before = jobs_rows_read(&pool).await;
            }
            let got = q
                .fetch("default", 50, Uuid::now_v7(), Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(got.len(), 5, "the binding limit of 5 running noop jobs");
            taken += got.len();
            sqlx::query("DELETE FROM chainsync.jobs WHERE state = 'running'")
                .execute(&one)
                .await
                .unwrap();
        }
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&one)
            .await
            .unwrap();
        // The flush happens when the connection goes idle: give it a moment, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut read = jobs_rows_read(&pool).await - before;
        while read == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            read = jobs_rows_read(&pool).await - before;
        }
        assert_eq!(taken, 80);
        // Each fetch reads the entries of the jobs taken so far (dead until vacuum) and the few
        // it takes: hundreds; one walk of the backlog alone would be 30,000.
        assert!(
            read > 0 && read < 30_000,
            "custom plans {custom}: {read} rows of chainsync.jobs read by 10 fetches"
        );
        one.close().await;
    }
}

/// Relations a plan scans.
fn scanned(node: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(r) = node["Relation Name"].as_str() {
        out.push(r.to_string());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        scanned(child, out);
    }
}

/// A listing's state, written into the statement as a literal (as the job browser does), reads
/// only the table that can hold it: a finished state never scans `chainsync.jobs`, a live one
/// never a range of `chainsync.finished_jobs` (their CHECK constraints leave the other table out
/// of the plan of `chainsync.all_jobs`).
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_state_in_a_listing_reads_only_its_table(pool: PgPool) {
    sqlx::query("SELECT chainsync.finished_jobs_prepare(now(), interval '1 day')")
        .execute(&pool)
        .await
        .unwrap();
    for (state, finished) in [
        ("completed", true),
        ("cancelled", true),
        ("available", false),
        ("running", false),
    ] {
        let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) SELECT id FROM chainsync.all_jobs
             WHERE state = '{state}' AND kind = 'noop' ORDER BY id DESC LIMIT 51"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        let mut rels = Vec::new();
        scanned(&plan[0]["Plan"], &mut rels);
        let ranges = rels
            .iter()
            .filter(|r| r.starts_with("finished_jobs"))
            .count();
        let live = rels.iter().filter(|r| *r == "jobs").count();
        if finished {
            assert!(ranges > 0 && live == 0, "{state}: {rels:?}");
        } else {
            assert!(ranges == 0 && live == 1, "{state}: {rels:?}");
        }
    }
}
