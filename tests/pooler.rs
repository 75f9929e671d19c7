#![allow(clippy::unwrap_used)]
//! chainsync behind a transaction-mode pooler (Debian's PgBouncer, `pool_mode = transaction`,
//! started by the test on a free port): the CLI, the daemon and the HTTP API work through it;
//! settings that cannot work are refused at start-up with the key to change.

mod common;
use common::{db_url, pgbouncer::PgBouncer, try_count, wait};

#[path = "chaos/support.rs"]
#[allow(dead_code)]
mod support;
use support::Daemon;

use std::{path::Path, process::Command, time::Duration};

use serde_json::{Value, json};
use sqlx::PgPool;

const TOKEN: &str = "pooler-admin-token-0123456789";

const FAST: &str = r#"
[worker]
concurrency = 20
fetch_batch = 20
poll_interval = "200ms"
lease = "5s"
heartbeat = "1s"
shutdown_timeout = "5s"
"#;

/// `chainsync --config FILE ARGS…`: (success, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chainsync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn wait_count(pool: &PgPool, sql: &str, want: i64) {
    wait(format!("`{sql}` = {want}"), Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until_ok(async || match try_count(pool, sql).await {
            Ok(n) if n == want => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await
}

#[sqlx::test(migrations = false)]
async fn migrate_daemon_cli_and_http_through_pgbouncer(pool: PgPool) {
    let o = pool.connect_options();
    let pgb = PgBouncer::start(o.get_port(), 3);
    let pooled = pgb.url(o.get_database().unwrap());
    let direct = db_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    let migrated = "SELECT count(*) FROM pg_tables WHERE tablename = '_sqlx_migrations'";

    // Bad settings are refused before anything is written, naming the key to change.
    let cases = [
        (format!("database_url = \"{pooled}\"\n"), "database.pooler"),
        (
            format!("database_url = \"{pooled}\"\n[database]\npooler = \"transaction\"\n"),
            "database.direct_url",
        ),
        (
            format!(
                "database_url = \"{pooled}\"\n[database]\npooler = \"transaction\"\ndirect_url = \"{pooled}\"\n"
            ),
            "database.direct_url goes through a transaction-mode pooler",
        ),
        (
            format!(
                "database_url = \"{pooled}\"\n[database]\npooler = \"transaction\"\nmigrate = true\n"
            ),
            "database.migrate",
        ),
        (
            format!("database_url = \"{direct}\"\n[database]\nreplica_url = \"{direct}\"\n"),
            "database.replica_url",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let cfg = write(dir.path(), &format!("bad{i}.toml"), text);
        let (ok, _, err) = cli(&cfg, &["migrate"]);
        assert!(!ok, "{text} was accepted");
        assert!(err.contains(needle), "{text}: {err}");
        assert_eq!(try_count(&pool, migrated).await.unwrap(), 0, "{text}");
    }

    // Migrations through the direct URL, everything else through the pooler.
    let good = format!(
        "database_url = \"{pooled}\"\n[database]\npooler = \"transaction\"\ndirect_url = \"{direct}\"\n{FAST}"
    );
    let cfg = write(dir.path(), "good.toml", &good);
    let (ok, _, err) = cli(&cfg, &["migrate"]);
    assert!(ok, "{err}");
    assert_eq!(try_count(&pool, migrated).await.unwrap(), 1);

    let mut d = Daemon::start_env(
        dir.path(),
        "d",
        &good,
        &[("CHAINSYNC_HTTP__ADMIN_TOKEN", TOKEN)],
    );
    let (ok, out, err) = cli(&cfg, &["--json", "enqueue", "noop", "--args", "{}"]);
    assert!(ok, "{err}");
    let by_cli: Value = serde_json::from_str(&out).unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", d.http_port);
    let created: Value = wait("the daemon's HTTP API", Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until_ok(async || {
            http.post(format!("{base}/v1/jobs"))
                .bearer_auth(TOKEN)
                .json(&json!({"kind": "noop", "args": {"payload": "http"}}))
                .send()
                .await
        })
        .await
        .json()
        .await
        .unwrap();
    let (ok, out, err) = cli(
        &cfg,
        &[
            "--json",
            "enqueue",
            "noop",
            "--args",
            r#"{"fail": "fatal"}"#,
        ],
    );
    assert!(ok, "{err}");
    let failing: Value = serde_json::from_str(&out).unwrap();
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        2,
    )
    .await;
    wait_count(&pool, "SELECT count(*) FROM chainsync.dead_letters", 1).await;
    for id in [&by_cli["id"], &created["id"]] {
        let job: Value = http
            .get(format!("{base}/v1/jobs/{}", id.as_str().unwrap()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(job["state"], "completed", "{job}");
    }

    // Replay through the pooler: the job runs again and, still failing, comes back with both
    // attempts' errors.
    let dead = failing["id"].as_str().unwrap();
    let (ok, _, err) = cli(&cfg, &["dlq", "replay", dead]);
    assert!(ok, "{err}");
    wait(
        "the replayed job back in the dead letters",
        Duration::from_secs(30),
    )
    .every(Duration::from_millis(100))
    .until_ok(async || {
        let (_, out, _) = cli(&cfg, &["--json", "dlq", "show", dead]);
        match serde_json::from_str::<Value>(&out) {
            Ok(v) if v["errors"].as_array().is_some_and(|e| e.len() == 2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        !d.log().contains("ERROR"),
        "daemon log has errors:\n{}",
        d.log()
    );
    assert!(!pgb.log().contains("ERROR"), "{}", pgb.log());

    d.stop();

    // A daemon behind the pooler without a direct URL: it does not migrate, has no LISTEN
    // connection and finds new jobs by polling.
    let polling =
        format!("database_url = \"{pooled}\"\n[database]\npooler = \"transaction\"\n{FAST}");
    let p = Daemon::start(dir.path(), "p", &polling);
    let cfg = write(dir.path(), "polling.toml", &polling);
    let (ok, _, err) = cli(&cfg, &["enqueue", "noop", "--args", "{}"]);
    assert!(ok, "{err}");
    wait_count(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE state = 'completed'",
        3,
    )
    .await;
    assert!(p.log().contains("no LISTEN"), "{}", p.log());
}
