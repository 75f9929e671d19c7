#![allow(clippy::unwrap_used)]
//! The admin page in a real headless Chromium (Debian's `chromium`, driven by Playwright from
//! `tests/browser/admin.mjs`): it shows the queue depth and a dead letter with its error, and its
//! Replay button moves the job back to the queue. `scripts/install-deps.sh` installs both.

mod common;
use common::{count, wait_count};

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chainsync::{
    http::{HttpState, metrics_handle, serve},
    runtime::Runtime,
};
use chainsync_jobs::NewJob;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "browser-test-token-0123456789";

fn tools() -> PathBuf {
    std::env::var_os("CHAINSYNC_TOOLS").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".local/chainsync-tools"),
        PathBuf::from,
    )
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn replay_button_moves_a_dead_letter_back_to_the_queue(pool: PgPool) {
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = tools().join("node_modules/playwright-core");
    assert!(
        std::path::Path::new(&chromium).exists() && playwright.join("package.json").exists(),
        "need {chromium} and {}: run scripts/install-deps.sh",
        playwright.display()
    );
    let app = common::app(
        &pool,
        &format!(
            r#"
[worker]
poll_interval = "50ms"
[http]
listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
"#
        ),
    )
    .await;
    let services = app.services().await.unwrap();

    // One job dies (fatal), one stays queued so the depth table has something to show.
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
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.dead_letters",
        1,
        Duration::from_secs(20),
    )
    .await;
    runtime.stop().await;
    app.queue
        .enqueue(NewJob::untyped("noop", json!({})))
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

    let shot = std::env::temp_dir().join(format!("chainsync-admin-{}.png", dead.id));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/admin.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg(TOKEN)
        .arg(dead.id.to_string())
        .arg(&shot)
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM_BIN", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
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
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = report["dead_letter_row"].as_str().unwrap();
    assert!(
        row.contains("noop") && row.contains("fatal") && row.contains("noop asked to fail"),
        "{report}"
    );
    assert!(report["counts_rows"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        report["counts_text"]
            .as_str()
            .unwrap()
            .contains("available"),
        "{report}"
    );
    assert_eq!(report["dead_rows_after"], 0, "{report}");
    assert!(
        report["status"].as_str().unwrap().starts_with("replayed")
            || report["status"].as_str().unwrap().starts_with("loaded"),
        "{report}"
    );
    assert_eq!(report["page_errors"], json!([]), "{report}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    let _ = std::fs::remove_file(&shot);

    // The database agrees: out of the dead letters, back in the queue with its history.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.dead_letters").await,
        0
    );
    let job = app.queue.get_job(dead.id).await.unwrap();
    assert_eq!(job.state, "available");
}
