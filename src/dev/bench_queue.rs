//! `chainsync bench queue`: the workload of the peers' harness (../shared/bench/peers) on our
//! engine, printing one `RESULT {json}` line in the same format so the results aggregate together.
//!
//! - bulk enqueue: 100 calls of 1,000 jobs (one UNNEST insert each), no worker running;
//! - drain: 100,000 queued no-op jobs, timer started before the worker starts, stopped when the
//!   handler has seen every job and SQL shows none unfinished;
//! - single enqueue: 5,000 awaited calls, each its own transaction;
//! - latency: an idle worker, 200 enqueues 20 ms apart, handler start minus enqueue start.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chainsync_engine::Registry;
use chainsync_jobs::{Job, JobContext, JobError, NewJob, Services, settings::DomainConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{
    queue::{Listen, Policies, Queue},
    runtime::{Runtime, WorkerSettings},
};

static HANDLED: AtomicUsize = AtomicUsize::new(0);

fn starts() -> &'static Mutex<HashMap<u64, Instant>> {
    static S: OnceLock<Mutex<HashMap<u64, Instant>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(HashMap::new()))
}

fn latencies() -> &'static Mutex<Vec<f64>> {
    static L: OnceLock<Mutex<Vec<f64>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(Vec::new()))
}

/// The peers' payload; the handler only counts it (and timestamps latency probes).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct BenchNoop {
    user: String,
    chain_id: u64,
    seq: u64,
}

const PROBE: u64 = 1_000_000_000;

#[async_trait]
impl Job for BenchNoop {
    const KIND: &'static str = "bench-noop";
    type Services = Services;

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        if self.seq >= PROBE {
            let t0 = starts().lock().ok().and_then(|mut m| m.remove(&self.seq));
            if let (Some(t0), Ok(mut l)) = (t0, latencies().lock()) {
                l.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        HANDLED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn payload(i: u64) -> NewJob {
    NewJob::untyped(
        BenchNoop::KIND,
        json!({"user": format!("0x{i:040x}"), "chain_id": 1, "seq": i}),
    )
}

/// Options of one bench unit.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub admin_url: String,
    pub database: String,
    pub mode: String,
    pub config: String,
    pub jobs: usize,
    /// `postgres://user@host:port` of a transaction-mode pooler in front of the same server.
    pub pooler_url: Option<String>,
    /// Behind the pooler: LISTEN on a direct connection (else polling only).
    pub listen_direct: bool,
}

/// A drain config: `c<concurrency>-b<fetch batch>[-f<fetch loops>][-w<writers>][-keep][-l<limits>]`;
/// `-keep` retains completed rows (the daemon's default) instead of deleting them. Limits
/// (cluster-wide, stored in Postgres before the drain starts):
/// - `-lother`: a concurrency limit of 1 on another kind of the queue (`sync-balances`), so the
///   queue is fetched under control while the drained kind has no limit;
/// - `-lkind`: a concurrency limit on the drained kind that never binds (100,000);
/// - `-lqueue`: a concurrency limit on the queue that never binds (100,000);
/// - `-lrate`: a rate limit on the drained kind that never binds (1,000,000 jobs/s);
/// - `-bind<N>`: a concurrency limit of N on the drained kind (binding when N < concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DrainConfig {
    concurrency: usize,
    batch: usize,
    fetchers: usize,
    writers: usize,
    keep: bool,
    limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limits {
    None,
    Other,
    Kind,
    Queue,
    Rate,
    Bind(u32),
}

fn parse_config(name: &str) -> Result<DrainConfig, String> {
    let bad = || {
        format!("bad bench config {name:?}: expected c<concurrency>-b<batch>[-f<n>][-w<n>][-keep]")
    };
    let mut parts = name.split('-');
    let num = |p: Option<&str>, prefix: char| -> Result<usize, String> {
        p.and_then(|p| p.strip_prefix(prefix))
            .and_then(|p| p.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(bad)
    };
    let mut c = DrainConfig {
        concurrency: num(parts.next(), 'c')?,
        batch: num(parts.next(), 'b')?,
        fetchers: 1,
        writers: 2,
        keep: false,
        limits: Limits::None,
    };
    for p in parts {
        match p {
            "keep" => c.keep = true,
            "lother" => c.limits = Limits::Other,
            "lkind" => c.limits = Limits::Kind,
            "lqueue" => c.limits = Limits::Queue,
            "lrate" => c.limits = Limits::Rate,
            _ if p.starts_with("bind") => {
                c.limits = Limits::Bind(p[4..].parse().ok().filter(|n| *n > 0).ok_or_else(bad)?)
            }
            _ => match p.chars().next() {
                Some('f') => c.fetchers = num(Some(p), 'f')?,
                Some('w') => c.writers = num(Some(p), 'w')?,
                _ => return Err(bad()),
            },
        }
    }
    Ok(c)
}

/// Stores the limits of a drain config.
async fn set_limits(q: &Queue, limits: Limits) -> anyhow::Result<()> {
    use crate::queue::LimitConfig;
    let conc = |n: u32| LimitConfig {
        concurrency: Some(n),
        ..LimitConfig::default()
    };
    match limits {
        Limits::None => {}
        Limits::Other => q.set_kind_limit("sync-balances", &conc(1)).await?,
        Limits::Kind => q.set_kind_limit(BenchNoop::KIND, &conc(100_000)).await?,
        Limits::Queue => q.set_queue_limit("default", &conc(100_000)).await?,
        Limits::Rate => {
            q.set_kind_limit(
                BenchNoop::KIND,
                &LimitConfig {
                    rate: Some(1_000_000.0),
                    burst: Some(1_000_000.0),
                    ..LimitConfig::default()
                },
            )
            .await?
        }
        Limits::Bind(n) => q.set_kind_limit(BenchNoop::KIND, &conc(n)).await?,
    }
    Ok(())
}

async fn fresh_db(opts: &BenchOptions) -> anyhow::Result<PgPool> {
    let url = chainsync_dev::scratch::recreate_database(&opts.admin_url, &opts.database).await?;
    Ok(PgPoolOptions::new()
        .max_connections(20)
        .connect_with(crate::app::connect_options(&url)?)
        .await?)
}

/// chainsync's kinds plus the benchmark's own.
fn registry() -> Arc<Registry<Services>> {
    Arc::new(chainsync_jobs::registry().register::<BenchNoop>())
}

/// The queue: on `pool`, or through the pooler (with LISTEN on `pool` or none).
async fn queue(pool: &PgPool, keep: bool, opts: &BenchOptions) -> anyhow::Result<Queue> {
    let registry = registry();
    let policies = Arc::new(Policies::from_kinds(registry.kinds()));
    let Some(base) = &opts.pooler_url else {
        return Ok(
            Queue::new(pool.clone(), registry.kinds().clone(), policies).retaining_completed(keep)
        );
    };
    let url = format!("{}/{}", base.trim_end_matches('/'), opts.database);
    let pooled = PgPoolOptions::new()
        .max_connections(20)
        .connect_with(crate::db::pool_options(
            url.parse()?,
            crate::db::Pooler::Transaction,
        ))
        .await?;
    let listen = if opts.listen_direct {
        Listen::On(pool.clone())
    } else {
        Listen::Off
    };
    Ok(Queue::new(pooled, registry.kinds().clone(), policies)
        .retaining_completed(keep)
        .listening(listen))
}

fn services(q: &Queue) -> anyhow::Result<Services> {
    Services::new(q.pool().clone(), None, Arc::new(DomainConfig::default()))
        .map_err(anyhow::Error::from)
}

async fn unfinished(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM chainsync.jobs WHERE state IN ('available', 'running')",
    )
    .fetch_one(pool)
    .await?)
}

fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(idx.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// Runs one unit and returns its result object.
pub async fn run_unit(opts: &BenchOptions) -> anyhow::Result<Value> {
    let pool = fresh_db(opts).await?;
    chainsync_jobs::migrate(&pool).await?;
    let mut out = json!({
        "peer": "chainsync",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": opts.mode,
        "batch_size": 1000,
        "via": match (&opts.pooler_url, opts.listen_direct) {
            (None, _) => "direct",
            (Some(_), true) => "pooler",
            (Some(_), false) => "pooler-poll",
        },
    });
    if opts.mode == "drain" {
        let cfg = parse_config(&opts.config).map_err(anyhow::Error::msg)?;
        let q = queue(&pool, cfg.keep, opts).await?;
        q.sync_kinds().await?;
        set_limits(&q, cfg.limits).await?;
        let t0 = Instant::now();
        let mut i = 0u64;
        while (i as usize) < opts.jobs {
            let end = (i + 1000).min(opts.jobs as u64);
            q.enqueue_many((i..end).map(payload).collect()).await?;
            i = end;
        }
        out["bulk_jobs_s"] = (opts.jobs as f64 / t0.elapsed().as_secs_f64()).into();
        HANDLED.store(0, Ordering::SeqCst);
        let settings = WorkerSettings {
            concurrency: cfg.concurrency,
            fetch_batch: cfg.batch,
            fetchers: cfg.fetchers,
            writers: cfg.writers,
            complete_batch: 2000,
            ..WorkerSettings::default()
        };
        let t0 = Instant::now();
        let rt = Runtime::start(q.clone(), registry(), services(&q)?, settings);
        while HANDLED.load(Ordering::Relaxed) < opts.jobs {
            if t0.elapsed() > Duration::from_secs(170) {
                anyhow::bail!(
                    "drain timed out at {} jobs",
                    HANDLED.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let handled = t0.elapsed();
        while unfinished(&pool).await? > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let total = t0.elapsed();
        rt.stop().await;
        out["drain_jobs_s"] = (opts.jobs as f64 / total.as_secs_f64()).into();
        out["drain_total_s"] = total.as_secs_f64().into();
        out["handled_all_s"] = handled.as_secs_f64().into();
        out["config"] = opts.config.clone().into();
    } else {
        let q = queue(&pool, false, opts).await?;
        q.sync_kinds().await?;
        let single_n = 5000u64;
        let t0 = Instant::now();
        for i in 0..single_n {
            q.enqueue(payload(i)).await?;
        }
        out["single_jobs_s"] = (single_n as f64 / t0.elapsed().as_secs_f64()).into();
        HANDLED.store(0, Ordering::SeqCst);
        let settings = WorkerSettings {
            concurrency: 10,
            fetch_batch: 10,
            ..WorkerSettings::default()
        };
        let rt = Runtime::start(q.clone(), registry(), services(&q)?, settings);
        while HANDLED.load(Ordering::Relaxed) < single_n as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(mut l) = latencies().lock() {
            l.clear();
        }
        let start = Instant::now();
        for i in 0..200u64 {
            tokio::time::sleep_until((start + Duration::from_millis(i * 20)).into()).await;
            let seq = PROBE + i;
            if let Ok(mut s) = starts().lock() {
                s.insert(seq, Instant::now());
            }
            q.enqueue(payload(seq)).await?;
        }
        let t = Instant::now();
        while latencies().lock().map(|l| l.len()).unwrap_or(0) < 200
            && t.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rt.stop().await;
        let mut lat = latencies().lock().map(|l| l.clone()).unwrap_or_default();
        lat.sort_by(f64::total_cmp);
        out["latency"] = json!({
            "n": lat.len(),
            "p50_ms": pct(&lat, 50.0),
            "p90_ms": pct(&lat, 90.0),
            "p99_ms": pct(&lat, 99.0),
            "max_ms": lat.last(),
        });
    }
    pool.close().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_configs() {
        let c = parse_config("c500-b500").unwrap();
        assert_eq!(
            (c.concurrency, c.batch, c.fetchers, c.writers, c.keep),
            (500, 500, 1, 2, false)
        );
        let c = parse_config("c50-b100-f2-w3-keep").unwrap();
        assert_eq!(
            (c.concurrency, c.batch, c.fetchers, c.writers, c.keep),
            (50, 100, 2, 3, true)
        );
        assert!(parse_config("c0-b10").is_err());
        assert!(parse_config("c50").is_err());
        assert!(parse_config("c50-b10-x").is_err());
        assert_eq!(
            parse_config("c500-b500-lkind").unwrap().limits,
            Limits::Kind
        );
        assert_eq!(
            parse_config("c500-b500-bind50").unwrap().limits,
            Limits::Bind(50)
        );
        assert!(parse_config("c500-b500-bind0").is_err());
    }
}
