//! A JSON-RPC proxy of ours on loopback in front of anvil whose behaviour is switched at run time,
//! and the scenario that drives real balance jobs through each fault.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use chainsync::runtime::Runtime;
use chainsync_jobs::NewJob;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::{TokenChain, wait};

/// What the proxy does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    Pass = 0,
    /// HTTP 429 with `Retry-After: 1`.
    TooManyRequests = 1,
    /// JSON-RPC error -32005 "limit exceeded" (HTTP 200), as providers send it.
    LimitExceeded = 2,
    /// HTTP 200 with a body that is not JSON.
    Garbage = 3,
    /// Never answers.
    Hang = 4,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicU64>,
    client: reqwest::Client,
}

/// The proxy: `url()` for the config, `set()` to switch faults.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicU64>,
}

impl FaultProxy {
    pub async fn start(upstream: String) -> Self {
        let mode = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let hits = Arc::new(AtomicU64::new(0));
        let state = ProxyState {
            upstream,
            mode: mode.clone(),
            hits: hits.clone(),
            client: reqwest::Client::new(),
        };
        let app = Router::new().route("/", post(handle)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, mode, hits }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, f: Fault) {
        self.mode.store(f as u8, Ordering::SeqCst);
        self.hits.store(0, Ordering::SeqCst);
    }

    /// Requests answered with the current fault since it was set.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn handle(State(s): State<ProxyState>, headers: HeaderMap, body: Bytes) -> Response {
    let mode = s.mode.load(Ordering::SeqCst);
    if mode != Fault::Pass as u8 {
        s.hits.fetch_add(1, Ordering::SeqCst);
    }
    match mode {
        1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "Too Many Requests",
        )
            .into_response(),
        2 => {
            let req: Value = serde_json::from_slice(&body).unwrap_or_default();
            let error = |id: &Value| {
                json!({"jsonrpc": "2.0", "id": id,
                       "error": {"code": -32005, "message": "limit exceeded"}})
            };
            let out = match &req {
                Value::Array(batch) => {
                    Value::Array(batch.iter().map(|r| error(&r["id"])).collect())
                }
                one => error(&one["id"]),
            };
            (StatusCode::OK, axum::Json(out)).into_response()
        }
        3 => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "<html><body>502 upstream hiccup</body></html>",
        )
            .into_response(),
        4 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        _ => {
            let mut req = s.client.post(&s.upstream).body(body);
            if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                req = req.header(header::CONTENT_TYPE, ct);
            }
            match req.send().await {
                Ok(r) => {
                    let status = StatusCode::from_u16(r.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    let bytes = r.bytes().await.unwrap_or_default();
                    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    }
}

async fn state_of(pool: &PgPool, id: uuid::Uuid) -> (Option<String>, i32, bool) {
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT state::text, attempt FROM chainsync.all_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap();
    let dead: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chainsync.dead_letters WHERE id = $1)")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    (
        row.as_ref().map(|r| r.0.clone()),
        row.map_or(0, |r| r.1),
        dead,
    )
}

async fn wait_for(pool: &PgPool, id: uuid::Uuid, want: &str, limit: Duration) {
    let t = Instant::now();
    loop {
        let (state, _, dead) = state_of(pool, id).await;
        if (want == "dead" && dead) || state.as_deref() == Some(want) {
            return;
        }
        if t.elapsed() >= limit {
            let errors: Option<Value> =
                sqlx::query_scalar("SELECT errors FROM chainsync.dead_letters WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .unwrap();
            let dls: Vec<(
                uuid::Uuid,
                String,
                i32,
                chrono::DateTime<chrono::Utc>,
                Value,
            )> = sqlx::query_as(
                "SELECT id, reason, attempt, failed_at, errors FROM chainsync.dead_letters",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let jobs: Vec<(uuid::Uuid, String, i32, Value)> =
                sqlx::query_as("SELECT id, state::text, attempt, args FROM chainsync.all_jobs")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            panic!(
                "job {id} not {want} after {limit:?}: {state:?}, dead {dead}: {errors:?}\nDL {dls:?}\nJOBS {jobs:?}\nnow {}",
                chrono::Utc::now()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rate limits (429, -32005) snooze without using attempts and complete once the node answers;
/// garbage and hanging answers are retried with backoff, then dead-lettered with every attempt's
/// error; with the node back, replays complete and every balance is the chain's.
pub async fn faults_retry_snooze_dead_letter_and_replay(pool: PgPool) {
    let s = TokenChain::builder("FLT")
        .name("Faults")
        .holders(4)
        .seed(17)
        .max_units(10)
        .start()
        .await
        .unwrap();
    let (chain, token, holders) = (&s.chain, s.token, &s.holders);
    let proxy = FaultProxy::start(chain.url()).await;
    let app = crate::common::app(
        &pool,
        &format!(
            r#"
[worker]
concurrency = 4
poll_interval = "100ms"
{}confirmations = 0
request_timeout = "1s"
rate_limit_retries = 1
rate_limit_backoff = "50ms"
{}"#,
            s.chain_toml_at(&proxy.url()),
            s.token_toml()
        ),
    )
    .await;
    let services = app.services().await.unwrap();
    let rt = Runtime::start(
        app.queue.clone(),
        app.registry.clone(),
        services,
        app.config.worker.clone(),
    );
    let job = |i: usize| NewJob {
        max_attempts: Some(2),
        backoff_base_ms: Some(100),
        backoff_cap_ms: Some(200),
        ..NewJob::untyped(
            "sync-user-balance",
            json!({"chain_id": 31337, "address": format!("{:#x}", holders[i].0), "token": "FLT"}),
        )
    };

    // Garbage and hangs: retried, then dead letters with both attempts' errors.
    let mut dead = Vec::new();
    for (i, fault) in [(2, Fault::Garbage), (3, Fault::Hang)] {
        proxy.set(fault);
        let id = app.queue.enqueue(job(i)).await.unwrap().id;
        wait_for(&pool, id, "dead", Duration::from_secs(30)).await;
        let dl = app.queue.get_dead(id).await.unwrap();
        assert_eq!(
            (dl.reason.as_str(), dl.attempt),
            ("exhausted", 2),
            "{fault:?}"
        );
        let errors = dl.errors.as_array().unwrap();
        assert_eq!(errors.len(), 2, "{fault:?}: {errors:?}");
        assert!(errors.iter().all(|e| e["class"] == "retry"), "{errors:?}");
        dead.push(id);
    }

    // Rate limits: snoozed, not retried into the dead letters; done once the node answers.
    let mut snoozed = Vec::new();
    for (i, fault) in [(0, Fault::TooManyRequests), (1, Fault::LimitExceeded)] {
        proxy.set(fault);
        let id = app.queue.enqueue(job(i)).await.unwrap().id;
        // Wait until the job was refused a few times and sits snoozed between two runs.
        let (state, attempt, dead) = wait(
            format!("{fault:?}: the job refused 3 times, snoozed between runs"),
            Duration::from_secs(30),
        )
        .every(Duration::from_millis(20))
        .until_ok(async || {
            let now = state_of(&pool, id).await;
            if proxy.hits() >= 3 && (now.0.as_deref() == Some("available") || now.2) {
                Ok(now)
            } else {
                Err(now)
            }
        })
        .await;
        if dead {
            let dl = app.queue.get_dead(id).await.unwrap();
            panic!(
                "{fault:?}: a rate limit must not dead-letter: {}",
                dl.errors
            );
        }
        assert_eq!(state.as_deref(), Some("available"), "{fault:?}: snoozed");
        let errors: Value =
            sqlx::query_scalar("SELECT errors FROM chainsync.all_jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            attempt, 0,
            "{fault:?}: a snooze gives the attempt back; errors {errors}"
        );
        snoozed.push(id);
    }

    // The node answers again: snoozed jobs complete, replays complete, balances exact.
    proxy.set(Fault::Pass);
    for id in &dead {
        app.queue.replay(*id).await.unwrap();
        let after = state_of(&pool, *id).await;
        assert!(!after.2 && after.0.is_some(), "replayed {id}: {after:?}");
    }
    for id in snoozed.iter().chain(&dead) {
        wait_for(&pool, *id, "completed", Duration::from_secs(30)).await;
    }
    rt.stop().await;
    for (holder, _) in holders {
        let stored: String =
            sqlx::query_scalar("SELECT amount::text FROM chainsync.balances WHERE address = $1")
                .bind(format!("{holder:#x}"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            stored,
            chain.balance_of(token, *holder).await.unwrap().to_string()
        );
    }
}
