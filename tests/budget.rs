#![allow(clippy::unwrap_used)]
//! One RPC budget per endpoint shared by three real `chainsync daemon` processes, in Redis mode
//! and in Postgres mode: a JSON-RPC proxy of the test's own on loopback in front of anvil counts
//! every call it receives (each entry of a batch), and can answer 429. The daemons run full
//! syncs (bulk) while a stream of `sync-user-balance` jobs (priority) arrives.
//!
//! Checked: the proxy never sees more than the budget + 5 % in any one-second window; when it
//! answers 429 the request rate drops instead of storming; the shared state is where the mode
//! says (Redis keys, or the membership rows); every user job completes. Printed: the user jobs'
//! enqueue-to-done latency (p50/p99) while the full syncs run, and the rates per phase.

mod common;
use common::{TokenChain, db_url, track_holders, wait};

#[allow(dead_code)]
#[path = "chaos/support.rs"]
mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use chainsync_jobs::chain::budget::endpoint_id;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::Daemon;

const BUDGET: usize = 200;
const REDIS: &str = "redis://127.0.0.1:6379";

/// The two scenarios start six daemons between them; one at a time keeps the timing readable.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    too_many: Arc<AtomicBool>,
    /// Arrival of every JSON-RPC call (batch entries one by one).
    calls: Arc<Mutex<Vec<Instant>>>,
}

/// Counts calls per second in front of anvil; `set_429` switches it to answering 429.
struct CountingProxy {
    addr: SocketAddr,
    too_many: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl CountingProxy {
    async fn start(upstream: String) -> Self {
        let too_many = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            upstream,
            client: reqwest::Client::new(),
            too_many: too_many.clone(),
            calls: calls.clone(),
        };
        let app = Router::new().route("/", post(handle)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            too_many,
            calls,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_429(&self, on: bool) {
        self.too_many.store(on, Ordering::SeqCst);
    }

    fn calls(&self) -> Vec<Instant> {
        let mut c = self.calls.lock().unwrap().clone();
        c.sort();
        c
    }
}

async fn handle(State(s): State<ProxyState>, body: Bytes) -> Response {
    let entries = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(batch)) => batch.len(),
        _ => 1,
    };
    {
        let now = Instant::now();
        let mut calls = s.calls.lock().unwrap();
        calls.extend(std::iter::repeat_n(now, entries));
    }
    if s.too_many.load(Ordering::SeqCst) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "Too Many Requests",
        )
            .into_response();
    }
    match s
        .client
        .post(&s.upstream)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
            let bytes = r.bytes().await.unwrap_or_default();
            (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The most calls in any one-second window starting at a call within `[from, to)`.
fn max_per_second(calls: &[Instant], from: Instant, to: Instant) -> usize {
    let mut best = 0;
    let mut hi = 0;
    for (lo, &t) in calls.iter().enumerate() {
        if t < from || t >= to {
            continue;
        }
        hi = hi.max(lo);
        while hi < calls.len() && calls[hi] < t + Duration::from_secs(1) {
            hi += 1;
        }
        best = best.max(hi - lo);
    }
    best
}

fn count_between(calls: &[Instant], from: Instant, to: Instant) -> usize {
    calls.iter().filter(|&&t| t >= from && t < to).count()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn scenario(pool: PgPool, redis: Option<&str>) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mode = if redis.is_some() { "redis" } else { "postgres" };
    let s = TokenChain::builder("BGT")
        .name("Budget")
        .holders(1200)
        .seed(23)
        .max_units(100)
        .start()
        .await
        .unwrap();
    track_holders(&pool, &s).await;
    let proxy = CountingProxy::start(s.chain.url()).await;
    let redis_line = redis
        .map(|r| format!("redis_url = \"{r}\"\n"))
        .unwrap_or_default();
    let cfg = format!(
        r#"database_url = "{db}"
{redis_line}[worker]
concurrency = 40
fetch_batch = 40
lease = "5s"
heartbeat = "1s"
poll_interval = "100ms"
shutdown_timeout = "2s"
[rpc_budget]
heartbeat = "500ms"
member_ttl = "3s"
hold = "2s"
recovery = "4s"
[scheduler]
enabled = false
{chain}confirmations = 0
multicall_batch_size = 2
batches_in_flight = 4
rate_limit_retries = 2
rate_limit_backoff = "200ms"
rpc_budget = {BUDGET}
{token}"#,
        db = db_url(&pool),
        chain = s.chain_toml_at(&proxy.url()),
        token = s.token_toml(),
    );
    // The schema is there (sqlx::test migrated it); register the kinds for chainsync.enqueue().
    let app = common::app(&pool, "").await;
    drop(app);
    let dir = tempfile::tempdir().unwrap();
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(dir.path(), &format!("{mode}-{i}"), &cfg))
        .collect();

    // Bulk: three full syncs of every holder (different scopes, so three jobs).
    let token = s.token_hex();
    for args in [
        json!({"chain_id": 31337, "token": "BGT"}),
        json!({"chain_id": 31337, "asset_class": "erc20"}),
        json!({"chain_id": 31337, "token": token}),
    ] {
        sqlx::query("SELECT chainsync.enqueue('sync-balances', $1)")
            .bind(args)
            .execute(&pool)
            .await
            .unwrap();
    }

    // Priority: a stream of user syncs, 20 a second, each of a different holder.
    let holders = s.holder_addresses();
    let t0 = Instant::now();
    let steady = Duration::from_secs(6);
    let limited = Duration::from_secs(3);
    let after = Duration::from_secs(3);
    let stream = {
        let pool = pool.clone();
        let holders = holders.clone();
        tokio::spawn(async move {
            let mut ids: Vec<(uuid::Uuid, Duration)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for h in holders
                .iter()
                .take(((steady + limited + after).as_millis() / 50) as usize)
            {
                tick.tick().await;
                let id: uuid::Uuid =
                    sqlx::query_scalar("SELECT chainsync.enqueue('sync-user-balance', $1)")
                        .bind(json!({"chain_id": 31337, "address": h, "token": "BGT"}))
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                ids.push((id, t0.elapsed()));
            }
            ids
        })
    };

    // Steady phase: the budget binds (bulk alone would take far more).
    tokio::time::sleep(steady / 2).await;
    let id = endpoint_id(&proxy.url());
    match redis {
        Some(url) => {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let tat: Option<String> = redis::cmd("GET")
                .arg(format!("chainsync:rpc-budget:{{{id}}}:tat"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(tat.is_some(), "the shared timeline is in Redis");
        }
        None => {
            let live = scalar(
                &pool,
                &format!(
                    "SELECT count(*) FROM chainsync.rpc_budget_members \
                     WHERE endpoint = '{id}' AND seen_at > now() - interval '3 seconds'"
                ),
            )
            .await;
            assert_eq!(live, 3, "every daemon is a member of the endpoint");
        }
    }
    tokio::time::sleep(steady - steady / 2).await;
    let syncs_running = scalar(
        &pool,
        "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'sync-balances' AND state <> 'completed'",
    )
    .await;
    assert!(
        syncs_running > 0,
        "the full syncs must still run while the user jobs are measured"
    );

    // The provider answers 429.
    let t429 = Instant::now();
    proxy.set_429(true);
    tokio::time::sleep(limited).await;
    proxy.set_429(false);
    let t_pass = Instant::now();
    tokio::time::sleep(after).await;
    let t_end = Instant::now();

    match redis {
        Some(url) => {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let f: Option<i64> = redis::cmd("HGET")
                .arg(format!("chainsync:rpc-budget:{{{id}}}:adapt"))
                .arg("f")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(f.is_some_and(|f| f < 1000), "the cut is in Redis: {f:?}");
        }
        None => {
            let cut = scalar(
                &pool,
                &format!(
                    "SELECT count(*) FROM chainsync.rpc_budget_state \
                     WHERE endpoint = '{id}' AND cut_at IS NOT NULL"
                ),
            )
            .await;
            assert_eq!(cut, 1, "the cut is in Postgres");
        }
    }

    let user_jobs = stream.await.unwrap();
    wait(
        "every user job to complete",
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(200))
    .until_ok(async || {
        for d in &mut daemons {
            d.assert_running();
        }
        let n = scalar(
            &pool,
            "SELECT count(*) FROM chainsync.all_jobs WHERE kind = 'sync-user-balance' AND state <> 'completed'",
        )
        .await;
        if n == 0 { Ok(()) } else { Err(n) }
    })
    .await;
    let calls = proxy.calls();
    for d in &mut daemons {
        d.stop();
    }

    // Latency of the user jobs enqueued while the full syncs ran (and done before the 429s).
    let steady_ids: Vec<uuid::Uuid> = user_jobs
        .iter()
        .filter(|(_, at)| *at < steady - Duration::from_secs(1))
        .map(|(id, _)| *id)
        .collect();
    let mut latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM finished_at - created_at)::float8 FROM chainsync.all_jobs \
         WHERE id = ANY($1)",
    )
    .bind(&steady_ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    latencies.sort_by(f64::total_cmp);
    assert_eq!(latencies.len(), steady_ids.len());

    let window = max_per_second(&calls, t0, t_end + Duration::from_secs(60));
    let steady_rate = count_between(&calls, t0 + Duration::from_secs(1), t429) as f64
        / (t429 - t0 - Duration::from_secs(1)).as_secs_f64();
    let storm = max_per_second(&calls, t429 + Duration::from_secs(1), t_pass);
    let during_429 = count_between(&calls, t429, t_pass);
    let recovered = count_between(&calls, t_pass, t_end);
    println!(
        "{mode} mode, budget {BUDGET}/s: most calls in any 1 s window {window}; steady {steady_rate:.0}/s; \
         while answering 429: {during_429} calls in {limited:?}, at most {storm} in 1 s after its first second; \
         {recovered} calls in the {after:?} after; user jobs enqueued during the full syncs: {} \
         enqueue-to-done p50 {:.3}s p99 {:.3}s max {:.3}s",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
    );
    assert!(
        window <= BUDGET + BUDGET / 20,
        "{window} calls in one second, budget {BUDGET}"
    );
    // The load presses on the budget, or the test would prove nothing. Postgres mode splits it
    // evenly, so the daemon running the full syncs gets a third of it and the others use little
    // of theirs.
    let floor = if redis.is_some() { 0.6 } else { 0.4 };
    assert!(
        steady_rate >= BUDGET as f64 * floor,
        "the load did not press on the budget ({steady_rate:.0}/s)"
    );
    assert!(
        storm <= BUDGET / 2,
        "{storm} calls in one second while the provider answered 429: a retry storm"
    );
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn redis_mode_three_daemons_share_one_budget(pool: PgPool) {
    scenario(pool, Some(REDIS)).await;
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn postgres_mode_three_daemons_split_the_budget(pool: PgPool) {
    scenario(pool, None).await;
}

/// Two budgets of one endpoint (two daemons' views), four tasks asking as fast as they can for
/// `secs` seconds; returns when each grant came.
async fn hammer(
    budgets: &[Arc<chainsync_jobs::chain::budget::EndpointBudget>],
    secs: u64,
) -> Vec<Instant> {
    use chainsync_jobs::chain::budget::Class;
    let grants = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (b, grants) = (budgets[i % budgets.len()].clone(), grants.clone());
        let class = if i % 2 == 0 {
            Class::Bulk
        } else {
            Class::Priority
        };
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                b.acquire(1, class).await;
                grants.lock().unwrap().push(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut g = grants.lock().unwrap().clone();
    g.sort();
    g
}

fn budget_of(
    url: &str,
    per_second: u64,
    backend: chainsync_jobs::chain::budget::Backend,
) -> Arc<chainsync_jobs::chain::budget::EndpointBudget> {
    use chainsync_jobs::chain::budget::{BudgetUnit, Costs, EndpointBudget};
    EndpointBudget::new(
        "t",
        url,
        "t",
        per_second,
        Costs::new(BudgetUnit::Requests, &Default::default()),
        backend,
    )
}

fn fast_settings() -> Arc<chainsync_jobs::chain::budget::BudgetSettings> {
    let config: chainsync_jobs::settings::RpcBudgetConfig = serde_json::from_value(json!({
        "heartbeat": "200ms", "member_ttl": "1s", "hold": "1s", "recovery": "2s"
    }))
    .unwrap();
    Arc::new((&config).into())
}

/// Redis mode at the level of the scripts: two daemons' budgets of one endpoint reserve from one
/// timeline (together they get the budget, not twice it), and a 429 seen by one slows both.
#[tokio::test]
async fn redis_scripts_share_one_timeline_and_one_cut() {
    let client = redis::Client::open(REDIS).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let url = format!("http://127.0.0.1:1/{}", uuid::Uuid::now_v7());
    let backend = chainsync_jobs::chain::budget::Backend {
        db: None,
        redis: Some(conn.clone()),
        settings: fast_settings(),
    };
    let (a, b) = (
        budget_of(&url, 100, backend.clone()),
        budget_of(&url, 100, backend),
    );
    let t = Instant::now();
    let grants = hammer(&[a.clone(), b.clone()], 2).await;
    let window = max_per_second(&grants, t, t + Duration::from_secs(60));
    println!(
        "redis: {} grants in 2 s, at most {window} in 1 s",
        grants.len()
    );
    assert!(
        window <= 105,
        "{window} grants in one second, budget 100 + 5 %"
    );
    assert!(grants.len() >= 180, "only {} grants in 2 s", grants.len());

    // A 429 seen by `a` halves the shared budget, for `b` too.
    a.observe(&Err(alloy::transports::TransportErrorKind::http_error(
        429,
        String::new(),
    )));
    let mut conn = conn;
    let (_, adapt) = chainsync_jobs::chain::budget::redis::keys(a.id());
    let f: Option<i64> = wait("the cut to reach Redis", Duration::from_secs(5))
        .until(async || {
            let f: Option<i64> = redis::cmd("HGET")
                .arg(&adapt)
                .arg("f")
                .query_async(&mut conn)
                .await
                .unwrap();
            f.map(Some)
        })
        .await;
    assert_eq!(f, Some(500));
    let t = Instant::now();
    let grants = hammer(std::slice::from_ref(&b), 1).await;
    let window = max_per_second(&grants, t, t + Duration::from_secs(60));
    assert!(
        window <= 52,
        "{window} grants in one second after the cut, budget 100 × 0.5"
    );
}

/// Postgres mode at the level of the membership: a second daemon joins (and waits a heartbeat),
/// both then take half; a cut is shared through the database; an idle daemon leaves.
#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn postgres_members_split_a_budget_and_share_a_cut(pool: PgPool) {
    let url = "http://127.0.0.1:1/pg";
    let backend = chainsync_jobs::chain::budget::Backend {
        db: Some(pool.clone()),
        redis: None,
        settings: fast_settings(),
    };
    let a = budget_of(url, 100, backend.clone());
    let t = Instant::now();
    a.acquire(1, chainsync_jobs::chain::budget::Class::Priority)
        .await;
    assert!(t.elapsed() < Duration::from_millis(150), "alone: no wait");
    assert_eq!(a.snapshot().members, 1);
    let b = budget_of(url, 100, backend);
    let t = Instant::now();
    b.acquire(1, chainsync_jobs::chain::budget::Class::Priority)
        .await;
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "a joining daemon waits one heartbeat: {:?}",
        t.elapsed()
    );
    assert_eq!(b.snapshot().members, 2);
    let t = Instant::now();
    let grants = hammer(&[a.clone(), b.clone()], 2).await;
    assert_eq!((a.snapshot().members, b.snapshot().members), (2, 2));
    let window = max_per_second(&grants, t, t + Duration::from_secs(60));
    println!(
        "postgres: {} grants in 2 s, at most {window} in 1 s",
        grants.len()
    );
    assert!(
        window <= 105,
        "{window} grants in one second, budget 100 + 5 %"
    );
    assert!(grants.len() >= 160, "only {} grants in 2 s", grants.len());

    // `a` sees a 429: the factor is cut in the database and `b` follows at its next heartbeat.
    a.observe(&Err(alloy::transports::TransportErrorKind::http_error(
        429,
        String::new(),
    )));
    wait("b to learn of the cut", Duration::from_secs(5))
        .until(async || {
            b.acquire(1, chainsync_jobs::chain::budget::Class::Priority)
                .await;
            (b.snapshot().factor < 1000).then_some(())
        })
        .await;
    let id = a.id().to_string();
    let row: (i32,) = sqlx::query_as(
        "SELECT factor_permille FROM chainsync.rpc_budget_state WHERE endpoint = $1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(row.0 <= 500, "{row:?}");

    // Both go idle: after member_ttl they leave.
    wait("idle members to leave", Duration::from_secs(5))
        .until(async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM chainsync.rpc_budget_members WHERE endpoint = $1",
            )
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
            (n == 0).then_some(())
        })
        .await;
}
