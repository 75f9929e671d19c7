#![allow(clippy::unwrap_used)]
//! The HTTP API on a real Postgres and Redis, served on a loopback port.

mod common;
use common::{count, db_url};

use std::net::SocketAddr;

use chainsync::{
    app::App,
    config::Config,
    http::{HttpState, metrics_handle, serve},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-0123456789";

struct Server {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    pool: PgPool,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }
    async fn get(&self, p: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(p))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, p: &str, body: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(p))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
    async fn jobs(&self) -> i64 {
        count(&self.pool, "SELECT count(*) FROM chainsync.all_jobs").await
    }
}

async fn server(pool: &PgPool, redis_url: &str) -> Server {
    let cfg = Config::from_toml(&format!(
        r#"
database_url = "{}"
redis_url = "{redis_url}"
[http]
listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
body_limit = 4096
[[chains]]
chain_id = 31337
name = "anvil"
rpc_urls = ["http://127.0.0.1:1"]
"#,
        db_url(pool)
    ))
    .unwrap();
    let app = App::with_pool(cfg, pool.clone()).unwrap();
    app.migrate().await.unwrap();
    let services = app.services().await.unwrap();
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let state = HttpState {
        settings: app.config.http.clone(),
        app,
        services,
        metrics: metrics_handle(),
    };
    tokio::spawn(serve(state, stop.clone(), Some(tx)));
    let addr = rx.await.unwrap();
    Server {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        stop,
        pool: pool.clone(),
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn jobs_and_dead_letters(pool: PgPool) {
    let s = server(&pool, "redis://127.0.0.1:6379").await;
    let (st, v) = s
        .post(
            "/v1/jobs",
            r#"{"kind": "noop", "args": {}, "unique_key": "k1"}"#,
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (st, v) = s
        .post("/v1/jobs", r#"{"kind": "noop", "unique_key": "k1"}"#)
        .await;
    assert_eq!(
        (st, v["id"].as_str(), v["existing"].as_bool()),
        (StatusCode::OK, Some(id.as_str()), Some(true))
    );
    let (st, v) = s.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!((st, v["kind"].as_str()), (StatusCode::OK, Some("noop")));
    let (st, v) = s.get("/v1/jobs?state=available&kind=noop&limit=10").await;
    assert_eq!((st, v.as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let (st, _) = s.post(&format!("/v1/jobs/{id}/cancel"), "").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.post(&format!("/v1/jobs/{id}/cancel"), "").await;
    assert_eq!(st, StatusCode::CONFLICT);

    // A dead letter, made the way a worker would (fatal outcome), then replayed over HTTP.
    let q = chainsync::app::builtin_queue(pool.clone());
    let e = q
        .enqueue(chainsync_jobs::NewJob::untyped(
            "noop",
            json!({"fail": "fatal"}),
        ))
        .await
        .unwrap();
    let owner = uuid::Uuid::now_v7();
    let f = q
        .fetch("default", 10, owner, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let c = chainsync::queue::Completion::new(
        &f[0],
        chainsync::queue::Outcome::from(chainsync_jobs::JobError::fatal("boom")),
    );
    q.complete(owner, &[c], true).await.unwrap();
    let (st, v) = s.get("/v1/dlq?kind=noop").await;
    assert_eq!((st, v.as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let (st, v) = s.get(&format!("/v1/dlq/{}", e.id)).await;
    assert_eq!(
        (st, v["errors"][0]["error"].as_str()),
        (StatusCode::OK, Some("boom"))
    );
    let (st, _) = s.post(&format!("/v1/dlq/{}/replay", e.id), "").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.get(&format!("/v1/dlq/{}", e.id)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = s.post("/v1/dlq/replay", r#"{"kind": "noop"}"#).await;
    assert_eq!(
        (st, v["replayed"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let r = s
        .http
        .delete(s.url(&format!("/v1/dlq/{}", e.id)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn bad_input_gets_the_right_status_and_writes_nothing(pool: PgPool) {
    let s = server(&pool, "redis://127.0.0.1:6379").await;
    for (body, field) in [
        ("{not json", "body"),
        ("[1,2]", "body"),
        (r#"{"args": {}}"#, "kind"),
        (r#"{"kind": 5}"#, "kind"),
        (r#"{"kind": "nope"}"#, "kind"),
        (r#"{"kind": "noop", "args": [1]}"#, "args"),
        (r#"{"kind": "noop", "args": {"sleep_ms": "soon"}}"#, "args"),
        (r#"{"kind": "noop", "priority": "high"}"#, "priority"),
        (r#"{"kind": "noop", "priority": 1000}"#, "priority"),
        (r#"{"kind": "noop", "run_at": "tomorrow"}"#, "run_at"),
        (r#"{"kind": "noop", "colour": "red"}"#, "body"),
        (
            r#"{"kind": "sync-user-balance", "args": {"chain_id": 31337, "address": "0x12"}}"#,
            "args",
        ),
    ] {
        let (st, v) = s.post("/v1/jobs", body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["field"].as_str(), Some(field), "{body}: {v}");
    }
    let huge = format!(
        r#"{{"kind": "noop", "args": {{"payload": "{}"}}}}"#,
        "x".repeat(10_000)
    );
    let (st, _) = s.post("/v1/jobs", &huge).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    // Auth: missing and wrong tokens.
    let r = s
        .http
        .post(s.url("/v1/jobs"))
        .body(r#"{"kind":"noop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .http
        .get(s.url("/v1/dlq"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (st, _) = s.get("/v1/jobs/not-a-uuid").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s.get("/v1/jobs?limit=abc").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(s.jobs().await, 0, "nothing written");
    // The token never appears in responses.
    let (_, v) = s.get("/health").await;
    assert!(!v.to_string().contains(TOKEN));
}

async fn seed_balance(pool: &PgPool, address: &str, amount: &str) {
    sqlx::query(
        "INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash)
         VALUES (31337, 'native', $1, $2::numeric, 7, '0xabc')",
    )
    .bind(address)
    .bind(amount)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn balances_from_cache_then_database_and_without_redis(pool: PgPool) {
    let addr = format!("0x{:040x}", rand::random::<u64>());
    let big = "115792089237316195423570985008687907853269984665640564039457584007913129639935"; // 2^256-1
    seed_balance(&pool, &addr, big).await;
    let s = server(&pool, "redis://127.0.0.1:6379").await;
    let path = format!(
        "/v1/balances/31337/{}?token=native",
        addr.to_uppercase().replace("0X", "0x")
    );
    let (st, v) = s.get(&path).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["amount"].as_str(), v["source"].as_str()),
        (Some(big), Some("database"))
    );
    let (_, v) = s.get(&path).await;
    assert_eq!(
        v["source"].as_str(),
        Some("cache"),
        "second read served from Redis"
    );
    assert_eq!(v["amount"].as_str(), Some(big));
    let (st, v) = s.get(&format!("/v1/balances/anvil/{addr}")).await;
    assert_eq!(
        (st, v["balances"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    let (st, v) = s.get("/v1/balances/31337/0x123").await;
    assert_eq!(
        (st, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("address"))
    );
    let (st, _) = s.get(&format!("/v1/balances/999/{addr}")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    drop(s);

    // Redis unreachable: still served, from Postgres.
    let s = server(&pool, "redis://127.0.0.1:1").await;
    let (st, v) = s
        .get(&format!("/v1/balances/31337/{addr}?token=native"))
        .await;
    assert_eq!(
        (st, v["source"].as_str(), v["amount"].as_str()),
        (StatusCode::OK, Some("database"), Some(big))
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn health_metrics_admin_openapi(pool: PgPool) {
    let s = server(&pool, "redis://127.0.0.1:6379").await;
    let r = s.http.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["score"].as_u64().is_some() && v["migrated"] == true,
        "{v}"
    );
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("chainsync_dead_letters"), "{m}");
    // The console signs in with a session (tests/admin_console.rs); without one, the sign-in page.
    let r = s.http.get(s.url("/admin")).send().await.unwrap();
    assert!(r.url().path().starts_with("/admin/login"), "{}", r.url());
    assert!(r.text().await.unwrap().contains("Sign in"));
    let spec: Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/v1/jobs"]["post"].is_object());
}
