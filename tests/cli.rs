#![allow(clippy::unwrap_used)]
//! The queue commands of the CLI, run as the real binary against a per-test database: bad input
//! fails with one line and writes nothing; which environment variables are config.

mod common;
use common::{count, db_url};

use sqlx::PgPool;

/// The per-test database with the application's kinds recorded, as a daemon leaves it.
async fn setup(pool: &PgPool) {
    chainsync::app::builtin_queue(pool.clone())
        .sync_kinds()
        .await
        .unwrap();
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
    assert_eq!(
        count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        1
    );
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
