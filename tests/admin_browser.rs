#![allow(clippy::unwrap_used)]
//! The admin console in a real headless Chromium (Debian's `chromium`, driven by Playwright from
//! `tests/browser/admin.mjs`): sign-in keeping the filter asked for, every page, a filter, a bulk
//! cancel after its confirmation, a dead letter replayed, a schedule run now, a queue paused and
//! resumed, bad input, keyboard order, a phone-width layout, the read-only role (no buttons, its
//! posts refused), sign-out. Screenshots of each page are kept in
//! `$CHAINSYNC_SCREENSHOTS` (default: `chainsync-admin-screenshots` in the temp dir).
//! `scripts/install-deps.sh` installs Chromium and playwright-core.

mod common;
use common::{count, db_url};

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chainsync::{
    app::App,
    config::Config,
    http::{HttpState, metrics_handle, serve},
    runtime::Runtime,
};
use chainsync_jobs::NewJob;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "browser-test-token-0123456789";
const READONLY: &str = "browser-readonly-token-0123456789";
const ADDRESS: &str = "0x1111111111111111111111111111111111111111";
const TOKEN_ADDRESS: &str = "0x00000000000000000000000000000000000000aa";

fn tools() -> PathBuf {
    std::env::var_os("CHAINSYNC_TOOLS").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".local/chainsync-tools"),
        PathBuf::from,
    )
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn console_in_a_real_browser(pool: PgPool) {
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = tools().join("node_modules/playwright-core");
    assert!(
        std::path::Path::new(&chromium).exists() && playwright.join("package.json").exists(),
        "need {chromium} and {}: run scripts/install-deps.sh",
        playwright.display()
    );
    let cfg = Config::from_toml(&format!(
        r#"
database_url = "{}"
[worker]
poll_interval = "50ms"
[http]
listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
readonly_token = "{READONLY}"
[[chains]]
chain_id = 31337
name = "anvil"
rpc_urls = ["http://127.0.0.1:1"]
[[tokens]]
chain_id = 31337
symbol = "RAT"
address = "{TOKEN_ADDRESS}"
decimals = 18
asset_class = "major"
[[schedule]]
name = "nightly-noop"
kind = "noop"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
"#,
        db_url(&pool)
    ))
    .unwrap();
    let app = App::with_pool(cfg, pool.clone()).unwrap();
    app.migrate().await.unwrap();
    let services = app.services().await.unwrap();

    // One job dies (fatal); then three queued jobs to bulk-cancel and one that stays.
    let dead = app
        .queue
        .enqueue(NewJob::untyped("noop", json!({"fail": "fatal"})))
        .await
        .unwrap();
    let runtime = Runtime::start(
        app.queue.clone(),
        app.registry.clone(),
        services.clone(),
        app.config.worker.clone(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await < 1 {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime.stop().await;
    for i in 0..3 {
        app.queue
            .enqueue(NewJob::untyped(
                "noop",
                json!({"payload": format!("batch {i}")}),
            ))
            .await
            .unwrap();
    }
    app.queue
        .enqueue(NewJob::untyped("noop", json!({"payload": "keep"})))
        .await
        .unwrap();
    // Chain data of one address: a balance of 1.5 RAT, its history, a points window, a
    // reconcile mismatch with its repair, a tracked transaction.
    sqlx::query(
        "WITH b AS (INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash)
                    VALUES (31337, $1, $2, 1500000000000000000, 120, '0xb1') RETURNING 1),
              c AS (INSERT INTO chainsync.balance_changes (chain_id, token, address, old_amount, new_amount,
                                                           block_number, block_hash, block_time)
                    VALUES (31337, $1, $2, 1000000000000000000, 1500000000000000000, 120, '0xb1',
                            now() - interval '2 hours') RETURNING 1),
              p AS (INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points)
                    VALUES (31337, $1, $2, date_trunc('hour', now()) - interval '1 hour',
                            1250000000000000000, 1250) RETURNING 1),
              m AS (INSERT INTO chainsync.balance_mismatches (chain_id, token, address, stored_amount, stored_block,
                                                              chain_amount, difference, above_threshold,
                                                              block_number, block_hash)
                    VALUES (31337, $1, $2, 1000000000000000000, 100, 1500000000000000000,
                            500000000000000000, true, 110, '0xa1') RETURNING id)
         INSERT INTO chainsync.balance_repairs (mismatch_id, chain_id, token, address, old_amount, new_amount,
                                                block_number, block_hash, reason)
         SELECT id, 31337, $1, $2, 1000000000000000000, 1500000000000000000, 110, '0xa1', 'auto_repair'
         FROM m, b, c, p",
    )
    .bind(TOKEN_ADDRESS)
    .bind(ADDRESS)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO chainsync.tracked_txs (chain_id, hash, state, addresses, block_number, confirmations)
         VALUES (31337, '0x' || repeat('ab', 32), 'confirmed', ARRAY[$1], 120, 12)",
    )
    .bind(ADDRESS)
    .execute(&pool)
    .await
    .unwrap();

    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let state = HttpState {
        settings: app.config.http.clone(),
        app: app.clone(),
        services,
        metrics: metrics_handle(),
    };
    tokio::spawn(serve(state, stop.clone(), Some(tx)));
    let addr = rx.await.unwrap();

    let out_dir = std::env::var_os("CHAINSYNC_SCREENSHOTS").map_or_else(
        || std::env::temp_dir().join("chainsync-admin-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&out_dir).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/admin.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg(TOKEN)
        .arg(READONLY)
        .arg(dead.id.to_string())
        .arg(ADDRESS)
        .arg(&out_dir)
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM_BIN", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the browser run timed out")
        .unwrap();
    stop.cancel();
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    let page = |k: &str| r["pages"][k].as_str().unwrap_or_default().to_string();

    // Sign-in: the filter asked for survives it; the cookie is out of the page's reach.
    assert_eq!(
        s("login_url"),
        "/admin/login?next=%2Fadmin%2Fjobs%3Fkind%3Dnoop%26q%3Dbatch",
        "{r}"
    );
    assert_eq!(s("after_login"), "/admin/jobs?kind=noop&q=batch", "{r}");
    assert_eq!(r["cookie"]["httpOnly"], true, "{r}");
    assert_eq!(r["cookie"]["sameSite"], "Strict", "{r}");
    assert!(
        r["cookie"]["expires"].as_f64().unwrap() > 0.0,
        "a session cookie with an expiry: {r}"
    );
    assert_eq!(s("document_cookie"), "", "{r}");
    assert_eq!(r["storage"], 0, "{r}");

    // Pages.
    let overview = page("overview");
    assert!(
        overview.contains("Jobs by state") && overview.contains("Score"),
        "{r}"
    );
    assert!(overview.contains("UTC"), "times carry their zone: {r}");
    assert_eq!(
        r["tab_order"],
        json!(["Skip to content", "chainsync", "Overview", "Jobs"]),
        "{r}"
    );
    assert_eq!(s("after_skip"), "main", "{r}");
    assert!(r["pages"]["jobs_rows"].as_u64().unwrap() >= 4, "{r}");
    assert_eq!(
        s("filtered_url"),
        "?state=available&kind=noop&queue=&q=batch&from=&to=&limit=",
        "{r}"
    );
    assert_eq!(r["filtered_rows"], 3, "{r}");
    assert!(s("confirm_text").starts_with("Cancel 3 job(s)"), "{r}");
    assert_eq!(s("bulk_message"), "Cancelled 3 job(s).", "{r}");
    assert_eq!(r["rows_after_bulk"], 0, "{r}");
    assert!(
        page("job").contains("cancelled") && page("job").contains("batch"),
        "{r}"
    );
    let row = s("dead_letter_row");
    assert!(
        row.contains("noop") && row.contains("fatal") && row.contains("noop asked to fail"),
        "{r}"
    );
    assert_eq!(
        s("replay_message"),
        "Replayed 1 dead letter(s) into the queue.",
        "{r}"
    );
    assert_eq!(r["dead_rows_after"], 0, "{r}");
    assert_eq!(
        s("replayed_redirect"),
        format!("/admin/jobs/{}", dead.id),
        "{r}"
    );
    let schedules = page("schedules");
    assert!(
        schedules.contains("nightly-noop")
            && schedules.contains("02:00:00 CE")
            && schedules.contains("Europe/Berlin"),
        "next runs in the schedule's zone: {r}"
    );
    // Run now: queued, and shown as the schedule's last run.
    assert!(
        s("schedule_run_message")
            .starts_with("Schedule nightly-noop: its job is queued to run now"),
        "{r}"
    );
    assert!(
        s("schedule_after_run").contains("(run now)")
            && s("schedule_after_run").contains("available"),
        "{r}"
    );
    // Pause and resume from the console.
    assert_eq!(s("queue_before"), "running", "{r}");
    assert!(
        s("pause_message").starts_with("Queue default is paused"),
        "{r}"
    );
    assert!(s("queue_paused").starts_with("paused since"), "{r}");
    assert_eq!(
        s("resume_message"),
        "Queue default is running again.",
        "{r}"
    );
    assert_eq!(s("queue_resumed"), "running", "{r}");
    // Amounts with the token's decimals beside the raw integer.
    let balances = page("balances");
    assert!(
        balances.contains("1.5 RAT")
            && balances.contains("1500000000000000000")
            && balances.contains("120"),
        "{r}"
    );
    assert!(
        page("changes").contains("1 RAT") && page("changes").contains("1.5 RAT"),
        "{r}"
    );
    assert!(
        page("points").contains("1.25 RAT") && page("points").contains("1,250"),
        "{r}"
    );
    assert!(
        page("mismatches").contains("0.5 RAT") && page("mismatches").contains("auto_repair"),
        "{r}"
    );
    assert!(page("txs").contains("confirmed"), "{r}");

    // Bad input: messages on the page, no 500.
    assert_eq!(r["bad_status"], 400, "{r}");
    assert_eq!(r["bad_messages"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["bad_chain_status"], 400, "{r}");

    // A lost session keeps the filter through sign-in; sign-out ends it.
    assert_eq!(
        s("lost_session_url"),
        "/admin/login?next=%2Fadmin%2Fdead%3Fkind%3Dnoop",
        "{r}"
    );
    assert_eq!(s("after_relogin"), "/admin/dead?kind=noop", "{r}");
    assert_eq!(s("after_logout"), "/admin/login", "{r}");
    assert_eq!(s("after_logout_visit"), "/admin/login", "{r}");

    // Phone width: the page itself does not scroll sideways (wide tables scroll in their box).
    assert!(r["phone_overflow"].as_i64().unwrap() <= 0, "{r}");
    assert!(r["phone_overview_overflow"].as_i64().unwrap() <= 0, "{r}");

    // Read-only: no buttons, and a POST anyway is refused.
    assert_eq!(s("readonly_role"), "read-only", "{r}");
    assert_eq!(r["readonly_replay_buttons"], 0, "{r}");
    assert_eq!(r["readonly_bulk_forms"], 0, "{r}");
    assert_eq!(r["readonly_jobs_bulk_forms"], 0, "{r}");
    assert_eq!(r["readonly_post_status"], 403, "{r}");
    assert_eq!(s("readonly_queue_state"), "running", "{r}");
    assert_eq!(r["readonly_queue_forms"], 0, "{r}");
    assert_eq!(r["readonly_schedule_forms"], 0, "{r}");
    assert_eq!(r["readonly_pause_status"], 403, "{r}");
    assert_eq!(r["page_errors"], json!([]), "{r}");
    for f in r["screenshots"].as_array().unwrap() {
        assert!(
            std::fs::metadata(f.as_str().unwrap()).unwrap().len() > 1000,
            "{f}"
        );
    }
    eprintln!("screenshots in {}", out_dir.display());

    // The database agrees.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        1 - 1
    );
    assert_eq!(app.queue.get_job(dead.id).await.unwrap().state, "available");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE unique_key = 'schedule:nightly-noop:now'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.queues WHERE paused").await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'cancelled' AND args->>'payload' LIKE 'batch%'"
        )
        .await,
        3
    );
}
