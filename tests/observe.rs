#![allow(clippy::unwrap_used)]
//! Observability against a real `chainsync daemon` process: the metrics of the first scrape,
//! the shipped Prometheus rules and Grafana dashboard against what the daemon exports, and alerts
//! posted to a local HTTP receiver (down, then back).

mod common;
use common::db_url;

#[allow(dead_code)]
mod chaos {
    pub mod support;
}

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
use chainsync::{app::App, config::Config};
use chainsync_dev::devchain::DevChain;
use chainsync_jobs::NewJob;
use chaos::support::{Daemon, free_port};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const FAST: &str = r#"
[worker]
poll_interval = "200ms"
shutdown_timeout = "5s"
[metrics]
sample_interval = "1s"
"#;

async fn scrape(port: u16) -> String {
    let http = reqwest::Client::new();
    let t = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            && r.status().is_success()
        {
            return r.text().await.unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "daemon never served /metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Metric names in Prometheus text: `name{...} value` or `name value`, `# TYPE name kind`.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let name = if let Some(rest) = line.strip_prefix("# TYPE ") {
            rest.split_whitespace().next()
        } else if line.starts_with('#') {
            None
        } else {
            line.split(['{', ' ']).next()
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            names.insert(n.to_string());
        }
    }
    names
}

/// Every `chainsync_*` identifier in a rules or dashboard file.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("chainsync_") {
        let start = i + pos;
        let before_ok = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// A name a query may use for an exported metric: the histogram's series too.
fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| exported.contains(base))
        })
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn first_scrape_lists_lag_metrics_and_the_shipped_files_use_only_exported_names(
    pool: PgPool,
) {
    let chain = DevChain::start().await.unwrap();
    let url = db_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"database_url = "{url}"
{FAST}
[[chains]]
chain_id = {id}
name = "dev"
rpc_urls = ["{rpc}"]
[[tokens]]
chain_id = {id}
symbol = "ETH"
decimals = 18
asset_class = "native"
"#,
        id = chain.chain_id(),
        rpc = chain.http_url(),
    );
    let mut d = Daemon::start(dir.path(), "metrics", &cfg);
    let text = scrape(d.http_port).await;
    d.assert_running();
    for name in [
        "chainsync_balance_lag_seconds",
        "chainsync_balance_lag_blocks",
        "chainsync_ingest_lag_blocks",
        "chainsync_ingest_lag_seconds",
        "chainsync_events_ingested_total",
        "chainsync_queue_depth",
        "chainsync_queue_oldest_available_age_seconds",
        "chainsync_dead_letters",
        "chainsync_balance_age_seconds_bucket",
        "chainsync_balance_age_seconds_gcount",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from the first scrape:\n{text}"
        );
    }
    assert!(
        text.contains(r#"chainsync_balance_lag_seconds{chain="dev",token="ETH"}"#),
        "{text}"
    );
    // The age histogram of stored balances: bounded labels, one series per bucket, none stored.
    for le in ["60", "3600", "86400", "+Inf"] {
        let series = format!(
            r#"chainsync_balance_age_seconds_bucket{{chain="dev",token="ETH",le="{le}"}} 0"#
        );
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
    // The head was read for the first sample: RPC requests are counted by chain and method.
    assert!(
        text.contains(r#"chainsync_rpc_requests_total{chain="dev",method="eth_blockNumber"}"#),
        "{text}"
    );

    // Run a job of each outcome so that the counters that only appear once used are there too.
    let app = App::connect(Config::from_toml(&format!("database_url = \"{url}\"")).unwrap())
        .await
        .unwrap();
    app.queue
        .enqueue_many(vec![
            NewJob::untyped("noop", json!({})),
            NewJob::untyped("noop", json!({"fail": "fatal"})),
        ])
        .await
        .unwrap();
    let t = Instant::now();
    let text = loop {
        let text = scrape(d.http_port).await;
        // The run counters exist at 0 from start-up; the duration histogram only once a job ran.
        if text.contains("chainsync_job_duration_seconds_bucket{kind=\"noop\"") {
            break text;
        }
        d.assert_running();
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "jobs never ran:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exported = exported_names(&text);
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/chainsync.json",
    ] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<Value>(&body).unwrap();
        }
        let used = referenced_names(&body);
        assert!(!used.is_empty(), "{file} queries no chainsync metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !is_exported(n, &exported)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the daemon does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
    d.stop();
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

impl Received {
    fn all(&self) -> Vec<(HeaderMap, Value)> {
        self.0.lock().unwrap().clone()
    }
}

/// A webhook receiver on `port` until `stop`.
async fn receiver(port: u16, got: Received, stop: CancellationToken) {
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                // The signature covers the body as sent.
                if let Some(sig) = headers.get("x-chainsync-signature") {
                    let mut mac =
                        Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef-secret").unwrap();
                    mac.update(&body);
                    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                    assert_eq!(sig.to_str().unwrap(), want);
                }
                got.0.lock().unwrap().push((headers, v));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .unwrap();
}

async fn wait_for<F: Fn() -> bool>(what: &str, limit: Duration, d: &mut Daemon, f: F) {
    let t = Instant::now();
    while !f() {
        d.assert_running();
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_dead_letter_reaches_the_webhook_once_then_resolves_and_a_down_receiver_gets_retries(
    pool: PgPool,
) {
    let url = db_url(&pool);
    let port = free_port();
    let down = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"database_url = "{url}"
{FAST}
[kinds.deliver-alert]
backoff_base = "1s"
backoff_cap = "2s"
max_attempts = 30
[[alerts.targets]]
name = "ops"
url = "http://127.0.0.1:{port}/hook"
hmac_secret = "0123456789abcdef-secret"
[[alerts.targets]]
name = "nobody"
url = "http://127.0.0.1:{down}/hook?token=s3cret-token"
[[alerts.rules]]
kind = "dead_letters"
target = "ops"
window = "15s"
cool_down = "0s"
[[alerts.rules]]
name = "to-nobody"
kind = "dead_letters"
target = "nobody"
"#
    );
    let mut d = Daemon::start(dir.path(), "alerts", &cfg);
    scrape(d.http_port).await;
    let app = App::connect(Config::from_toml(&format!("database_url = \"{url}\"")).unwrap())
        .await
        .unwrap();

    // The receiver is down when the dead letter appears: the delivery is retried.
    app.queue
        .enqueue(NewJob::untyped("noop", json!({"fail": "fatal"})))
        .await
        .unwrap();
    let attempts = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT coalesce(max(attempt), 0) FROM chainsync.all_jobs WHERE kind = 'deliver-alert'
               AND args->>'target' = 'ops'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let t = Instant::now();
    while attempts().await < 2 {
        d.assert_running();
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no failed delivery attempts"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The receiver comes back: the alert arrives, once, as a signed JSON POST.
    let got = Received::default();
    let stop = CancellationToken::new();
    let server = tokio::spawn(receiver(port, got.clone(), stop.clone()));
    wait_for("the firing alert", Duration::from_secs(30), &mut d, || {
        !got.all().is_empty()
    })
    .await;
    let (headers, v) = got.all()[0].clone();
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-chainsync-signature"));
    assert_eq!(v["status"], "firing", "{v}");
    assert_eq!(v["kind"], "dead_letters");
    assert_eq!(v["rule"], "dead_letters");
    assert_eq!(v["subject"], "kind=noop");
    assert_eq!(v["value"], 1.0);

    // No new dead letters for the window: one "resolved" for the same incident, and nothing else.
    wait_for(
        "the resolved alert",
        Duration::from_secs(30),
        &mut d,
        || got.all().len() >= 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = got.all();
    assert_eq!(
        all.len(),
        2,
        "{:?}",
        all.iter().map(|a| &a.1).collect::<Vec<_>>()
    );
    assert_eq!(all[1].1["status"], "resolved");
    assert_eq!(all[1].1["incident"], all[0].1["incident"]);

    // A new dead letter while the receiver is up: a new incident, delivered within 30 s.
    let t = Instant::now();
    app.queue
        .enqueue(NewJob::untyped("noop", json!({"fail": "fatal"})))
        .await
        .unwrap();
    wait_for(
        "the second firing alert",
        Duration::from_secs(30),
        &mut d,
        || got.all().len() >= 3,
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(got.all()[2].1["status"], "firing");
    assert_ne!(got.all()[2].1["incident"], all[0].1["incident"]);

    // Secrets never in the jobs table, the metrics or the daemon's log.
    let args: Vec<String> = sqlx::query_scalar(
        "SELECT args::text || errors::text FROM chainsync.all_jobs WHERE kind = 'deliver-alert'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!args.is_empty());
    let metrics = scrape(d.http_port).await;
    d.stop();
    let log = std::fs::read_to_string(dir.path().join("alerts.log")).unwrap();
    for text in args.iter().chain([&metrics, &log]) {
        for secret in ["s3cret-token", "0123456789abcdef-secret", "/hook"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    assert!(metrics.contains("chainsync_alerts_total"), "{metrics}");
    stop.cancel();
    let _ = server.await;
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn deliveries_to_a_receiver_that_stays_down_end_in_the_dead_letters(pool: PgPool) {
    let url = db_url(&pool);
    let down = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"database_url = "{url}"
{FAST}
[kinds.deliver-alert]
backoff_base = "200ms"
backoff_cap = "500ms"
max_attempts = 3
[[alerts.targets]]
name = "ops"
url = "http://127.0.0.1:{down}/hook"
kind = "slack"
[[alerts.rules]]
kind = "dead_letters"
target = "ops"
"#
    );
    let mut d = Daemon::start(dir.path(), "down", &cfg);
    scrape(d.http_port).await;
    let app = App::connect(Config::from_toml(&format!("database_url = \"{url}\"")).unwrap())
        .await
        .unwrap();
    app.queue
        .enqueue(NewJob::untyped("noop", json!({"fail": "fatal"})))
        .await
        .unwrap();
    let t = Instant::now();
    let errors: Value = loop {
        let row: Option<Value> = sqlx::query_scalar(
            "SELECT errors FROM chainsync.dead_letters WHERE kind = 'deliver-alert'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(e) = row {
            break e;
        }
        d.assert_running();
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "delivery never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let errors = errors.to_string();
    assert!(errors.contains("alert target \\\"ops\\\""), "{errors}");
    assert!(!errors.contains("127.0.0.1"), "the URL leaked: {errors}");
    // The dead delivery does not raise an alert of its own: one incident only.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let incidents: i64 = sqlx::query_scalar("SELECT count(*) FROM chainsync.alert_incidents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(incidents, 1);
    d.stop();
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn one_incident_is_one_alert_and_one_resolved_and_cool_down_holds_the_next(pool: PgPool) {
    let toml = |cool: &str| {
        format!(
            r#"[[alerts.targets]]
name = "ops"
url = "http://127.0.0.1:9/hook"
[[alerts.rules]]
kind = "health_score"
target = "ops"
threshold = 70
cool_down = "{cool}"
"#
        )
    };
    let cfg = Config::from_toml(&toml("1h")).unwrap();
    let app = App::with_pool(cfg.clone(), pool.clone()).unwrap();
    app.migrate().await.unwrap();
    let eval = |score: u8, cfg: Config| {
        let pool = pool.clone();
        async move {
            let inputs = chainsync_jobs::alerts::Inputs {
                health_score: Some(score),
                ..Default::default()
            };
            chainsync_jobs::alerts::evaluate(&pool, &cfg.domain, &inputs)
                .await
                .unwrap()
        }
    };
    let deliveries = || async {
        sqlx::query_scalar::<_, Value>(
            "SELECT coalesce(jsonb_agg(args->'alert'->>'status' ORDER BY created_at, id), '[]')
             FROM chainsync.all_jobs WHERE kind = 'deliver-alert'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(eval(50, cfg.clone()).await.opened.len(), 1);
    assert!(
        eval(40, cfg.clone()).await.opened.is_empty(),
        "still the same incident"
    );
    assert_eq!(deliveries().await, json!(["firing"]));
    assert_eq!(eval(90, cfg.clone()).await.resolved.len(), 1);
    assert!(eval(95, cfg.clone()).await.resolved.is_empty());
    assert_eq!(deliveries().await, json!(["firing", "resolved"]));
    // Within the cool-down, a new drop opens nothing; without one, it does.
    assert!(eval(10, cfg.clone()).await.opened.is_empty());
    let no_cool = Config::from_toml(&toml("0s")).unwrap();
    assert_eq!(eval(10, no_cool).await.opened.len(), 1);
    assert_eq!(deliveries().await, json!(["firing", "resolved", "firing"]));
    let (rule, subject, value): (String, String, Option<f64>) = sqlx::query_as(
        "SELECT rule, subject, value FROM chainsync.alert_incidents WHERE resolved_at IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (rule.as_str(), subject.as_str(), value),
        ("health_score", "daemon", Some(10.0))
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn health_thresholds_come_from_config_and_the_report_shows_its_inputs(pool: PgPool) {
    let url = db_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("health.toml");
    std::fs::write(
        &path,
        r#"[[chains]]
chain_id = 31337
name = "dev"
rpc_urls = ["http://127.0.0.1:9"]
[health]
balance_max_age = "2h"
points_max_age = "24h"
min_score = 85
[[alerts.targets]]
name = "ops"
url = "https://hooks.example/T0KEN-s3cret"
hmac_secret = "hmac-key-0123456789"
"#,
    )
    .unwrap();
    let app = App::with_pool(Config::load(Some(&path), Some(&url)).unwrap(), pool.clone()).unwrap();
    app.migrate().await.unwrap();
    // A chain with no stored balance: −20, so 80 < min_score 85: unhealthy.
    let r = chainsync::health::report(&app).await;
    assert_eq!(r.score, 80, "{r:?}");
    assert!(!r.healthy);
    assert_eq!(r.thresholds.balance_max_age, Duration::from_secs(7200));
    assert_eq!(r.deductions.len(), 1, "{:?}", r.deductions);
    assert_eq!(r.deductions[0].points, 20);
    assert!(r.deductions[0].reason.contains("health.balance_max_age"));
    assert!(
        r.problems.iter().any(|p| p.contains("2h")),
        "{:?}",
        r.problems
    );

    // The CLI: exit code 1 below min_score, the inputs in its output, no secret anywhere.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chainsync"))
        .arg("--database-url")
        .arg(&url)
        .arg("--config")
        .arg(&path)
        .arg("health")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("min_score 85"), "{text}");
    assert!(text.contains("balance_max_age 2h"), "{text}");
    assert!(
        text.contains("-20 balances older than health.balance_max_age"),
        "{text}"
    );
    assert!(text.contains("below 85"), "{text}");
    let json = std::process::Command::new(env!("CARGO_BIN_EXE_chainsync"))
        .arg("--database-url")
        .arg(&url)
        .arg("--config")
        .arg(&path)
        .arg("--json")
        .arg("health")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["thresholds"]["points_max_age"], "1d", "{v}");
    assert_eq!(v["thresholds"]["min_score"], 85);
    assert_eq!(v["deductions"][0]["points"], 20);
    for t in [text, String::from_utf8_lossy(&json.stdout).to_string()] {
        assert!(
            !t.contains("T0KEN-s3cret") && !t.contains("hmac-key"),
            "{t}"
        );
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn the_failure_rate_rule_counts_the_attempts_of_every_daemon(pool: PgPool) {
    let url = db_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    // Another daemon runs the jobs; this process runs none and evaluates the rule.
    let mut d = Daemon::start(
        dir.path(),
        "worker",
        &format!("database_url = \"{url}\"\n{FAST}"),
    );
    let cfg = Config::from_toml(&format!(
        r#"database_url = "{url}"
[[alerts.targets]]
name = "ops"
url = "http://127.0.0.1:9/hook"
[[alerts.rules]]
kind = "failure_rate"
target = "ops"
threshold = 50
min_runs = 5
job_kind = "noop"
"#
    ))
    .unwrap();
    let app = App::with_pool(cfg.clone(), pool.clone()).unwrap();
    let mut jobs = vec![NewJob::untyped("noop", json!({}))];
    jobs.extend((0..4).map(|_| NewJob::untyped("noop", json!({"fail": "fatal"}))));
    app.queue.enqueue_many(jobs).await.unwrap();
    let sums = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT coalesce(sum(ok), 0)::bigint, coalesce(sum(failed), 0)::bigint
             FROM chainsync.job_outcomes WHERE kind = 'noop'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    common::wait(
        "the daemon's attempts in chainsync.job_outcomes",
        Duration::from_secs(30),
    )
    .until_ok(async || {
        d.assert_running();
        let seen = sums().await;
        if seen == (1, 4) { Ok(()) } else { Err(seen) }
    })
    .await;
    let writers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT process) FROM chainsync.job_outcomes")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(writers, 1);

    assert!(
        chainsync_engine::metrics::recent_outcomes(Duration::from_secs(900))
            .iter()
            .all(|(kind, _, _)| kind != "noop"),
        "this process ran no noop job"
    );
    let ev = chainsync_jobs::alerts::evaluate(
        &pool,
        &cfg.domain,
        &chainsync_jobs::alerts::Inputs::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        ev.opened,
        vec![("failure_rate".to_string(), "kind=noop".to_string())]
    );
    let value: Option<f64> = sqlx::query_scalar(
        "SELECT value FROM chainsync.alert_incidents WHERE rule = 'failure_rate'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(value, Some(80.0));
    d.stop();
}
