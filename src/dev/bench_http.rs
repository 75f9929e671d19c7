//! `chainsync bench http`: `GET /v1/balances/{chain}/{address}?token=` on loopback.
//!
//! A scratch database with N stored balances, a private `redis-server` on a free port, the HTTP
//! API served in this process, and a load generator of C keep-alive connections asking for random
//! seeded holders for a fixed time. Two phases: a warm cache, then the Redis process killed (every
//! answer from Postgres). Reports requests/s, latency percentiles from every recorded request, and
//! non-200 answers (counted as errors). The generator shares the machine's cores with the server.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use alloy::transports::http::reqwest;
use anyhow::{Context, bail};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "0x00000000000000000000000000000000000000ee";

/// Options of one run.
pub struct HttpBenchOptions {
    pub admin_url: String,
    pub holders: usize,
    pub connections: usize,
    pub seconds: u64,
}

struct Phase {
    requests: usize,
    errors: usize,
    secs: f64,
    latencies_us: Vec<u64>,
    sources: std::collections::BTreeMap<String, usize>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

impl Phase {
    fn json(mut self) -> serde_json::Value {
        self.latencies_us.sort_unstable();
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": self.requests as f64 / self.secs,
            "latency_ms_p50": percentile(&self.latencies_us, 50.0),
            "latency_ms_p99": percentile(&self.latencies_us, 99.0),
            "latency_ms_max": percentile(&self.latencies_us, 100.0),
            "sources": self.sources,
        })
    }
}

fn address(i: usize) -> String {
    format!("0x{:040x}", 0x1000_0000u64 + i as u64)
}

async fn load(base: &str, opts: &HttpBenchOptions) -> anyhow::Result<Phase> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.connections)
        .build()?;
    let until = Instant::now() + Duration::from_secs(opts.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let client = client.clone();
        let base = base.to_string();
        let holders = opts.holders;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut sources = std::collections::BTreeMap::new();
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ (c as u64 + 1);
            while Instant::now() < until {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let url = format!(
                    "{base}/v1/balances/31337/{}?token={TOKEN}",
                    address((x % holders as u64) as usize)
                );
                let t = Instant::now();
                let r = client.get(&url).send().await;
                match r {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        let body = r.bytes().await.unwrap_or_default();
                        lat.push(t.elapsed().as_micros() as u64);
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let src = v["source"].as_str().unwrap_or("?").to_string();
                        *sources.entry(src).or_insert(0usize) += 1;
                    }
                    _ => {
                        lat.push(t.elapsed().as_micros() as u64);
                        errors += 1;
                    }
                }
            }
            (lat, errors, sources)
        }));
    }
    let mut phase = Phase {
        requests: 0,
        errors: 0,
        secs: 0.0,
        latencies_us: Vec::new(),
        sources: Default::default(),
    };
    for t in tasks {
        let (lat, errors, sources) = t.await?;
        phase.requests += lat.len();
        phase.errors += errors;
        phase.latencies_us.extend(lat);
        for (k, v) in sources {
            *phase.sources.entry(k).or_insert(0) += v;
        }
    }
    phase.secs = started.elapsed().as_secs_f64();
    Ok(phase)
}

/// A `redis-server` of our own on a free port, killed on drop.
struct PrivateRedis {
    child: tokio::process::Child,
    port: u16,
}

impl PrivateRedis {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (install redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, port })
    }
}

pub async fn run(opts: &HttpBenchOptions) -> anyhow::Result<serde_json::Value> {
    if opts.holders == 0 || opts.connections == 0 || opts.seconds == 0 {
        bail!("--holders, --connections and --seconds must be positive");
    }
    let mut redis = PrivateRedis::start().await?;
    let app = super::scratch_app(
        &opts.admin_url,
        "bench_http",
        &format!(
            r#"
redis_url = "redis://127.0.0.1:{}"
pool_size = 16
[http]
listen = "127.0.0.1:0"
[[chains]]
chain_id = 31337
name = "bench"
rpc_urls = ["http://127.0.0.1:1"]
"#,
            redis.port
        ),
    )
    .await?;
    let addresses: Vec<String> = (0..opts.holders).map(address).collect();
    sqlx::query(
        "INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash)
         SELECT 31337, $1, a, (1000000000000000000::numeric * (row_number() OVER ())), 1, '0x01'
         FROM unnest($2::text[]) AS a",
    )
    .bind(TOKEN)
    .bind(&addresses)
    .execute(app.pool())
    .await?;
    let services = app.services().await?;
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let state = crate::http::HttpState {
        settings: app.config.http.clone(),
        app: app.clone(),
        services,
        metrics: crate::http::metrics_handle(),
    };
    let server = tokio::spawn(crate::http::serve(state, stop.clone(), Some(tx)));
    let addr = rx.await.context("HTTP server did not start")?;
    let base = format!("http://{addr}");

    // Warm: every holder read once (filling the cache), then the measured run.
    let client = reqwest::Client::new();
    for a in &addresses {
        let r = client
            .get(format!("{base}/v1/balances/31337/{a}?token={TOKEN}"))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("warm-up request for {a} answered {}", r.status());
        }
    }
    let warm = load(&base, opts).await?;
    redis.child.kill().await?;
    let _ = redis.child.wait().await;
    let without = load(&base, opts).await?;
    stop.cancel();
    let _ = server.await;
    Ok(json!({
        "holders": opts.holders,
        "connections": opts.connections,
        "seconds": opts.seconds,
        "warm_cache": warm.json(),
        "redis_stopped": without.json(),
    }))
}
