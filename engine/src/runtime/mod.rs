//! The worker runtime of one daemon: fetchers (LISTEN/NOTIFY + poll), the apalis worker that runs
//! jobs, batched completions, lease heartbeats, graceful shutdown.

mod backend;
mod completer;
mod exec;
mod fetcher;
pub mod maintenance;

use std::{sync::Arc, time::Duration};

use apalis_core::worker::builder::WorkerBuilder;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::{
    Invalid, Registry,
    queue::{Fetched, Listen, Queue},
};
pub use backend::LeasedJobs;
use completer::{QueueWriter, ToCompleter};
use exec::{Executor, Runner};
use fetcher::{FetchLoop, QueueLease};

/// Worker settings (`[worker]` in config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Queues this daemon works; empty = every queue some kind uses.
    pub queues: Vec<String>,
    /// Jobs run at once by this daemon.
    pub concurrency: usize,
    /// Most jobs taken by one fetch.
    pub fetch_batch: usize,
    /// Fallback poll when no notification arrives (scheduled and retried jobs become due).
    #[serde(with = "crate::duration::text")]
    pub poll_interval: Duration,
    /// Lease of a fetched job; heartbeats extend it while the job runs.
    #[serde(with = "crate::duration::text")]
    pub lease: Duration,
    #[serde(with = "crate::duration::text")]
    pub heartbeat: Duration,
    /// Most outcomes written by one completion statement.
    pub complete_batch: usize,
    /// Fetch loops per queue (each runs one fetch query at a time).
    pub fetchers: usize,
    /// Completion batches written concurrently.
    pub writers: usize,
    /// How long shutdown waits for running jobs before giving them back.
    #[serde(with = "crate::duration::text")]
    pub shutdown_timeout: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            queues: Vec::new(),
            concurrency: 50,
            fetch_batch: 100,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            complete_batch: 1000,
            fetchers: 1,
            writers: 2,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl WorkerSettings {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.concurrency == 0 {
            return Err(Invalid::at("worker.concurrency", "must be at least 1"));
        }
        if self.fetch_batch == 0 {
            return Err(Invalid::at("worker.fetch_batch", "must be at least 1"));
        }
        if !(1..=16).contains(&self.fetchers) {
            return Err(Invalid::at("worker.fetchers", "must be in 1..=16"));
        }
        if !(1..=16).contains(&self.writers) {
            return Err(Invalid::at("worker.writers", "must be in 1..=16"));
        }
        if self.complete_batch == 0 {
            return Err(Invalid::at("worker.complete_batch", "must be at least 1"));
        }
        if self.poll_interval.is_zero() {
            return Err(Invalid::at("worker.poll_interval", "must be positive"));
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.lease {
            return Err(Invalid::at(
                "worker.heartbeat",
                "must be positive and shorter than worker.lease",
            ));
        }
        Ok(())
    }
}

/// The jobs a runtime holds: fetched, and their outcome not yet written. The heartbeat extends
/// exactly these leases.
#[derive(Clone, Default)]
pub(crate) struct Held(Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>);

impl Held {
    fn add(&self, ids: impl Iterator<Item = Uuid>) {
        if let Ok(mut h) = self.0.lock() {
            h.extend(ids);
        }
    }

    fn remove(&self, ids: impl Iterator<Item = Uuid>) {
        if let Ok(mut h) = self.0.lock() {
            for id in ids {
                h.remove(&id);
            }
        }
    }

    fn ids(&self) -> Vec<Uuid> {
        self.0
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// A running worker runtime. `stop()` shuts it down gracefully.
pub struct Runtime {
    owner: Uuid,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Runtime {
    /// Starts fetching and running jobs.
    pub fn start<S: Clone + Send + Sync + 'static>(
        queue: Queue,
        registry: Arc<Registry<S>>,
        services: S,
        settings: WorkerSettings,
    ) -> Self {
        let owner = Uuid::now_v7();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(run(
            queue,
            Runner { registry, services },
            settings,
            owner,
            cancel.clone(),
        ));
        Self {
            owner,
            cancel,
            handle,
        }
    }

    /// The lease owner id of this runtime.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Stops fetching, waits for running jobs (up to the shutdown timeout), writes their outcomes
    /// and gives back whatever did not finish.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.handle.await {
            warn!(error = %e, "worker runtime ended abnormally");
        }
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until the runtime ends (after its cancel token fired).
    pub async fn join(self) {
        if let Err(e) = self.handle.await {
            warn!(error = %e, "worker runtime ended abnormally");
        }
    }
}

async fn run<S: Clone + Send + Sync + 'static>(
    queue: Queue,
    runner: Runner<S>,
    settings: WorkerSettings,
    owner: Uuid,
    cancel: CancellationToken,
) {
    let queues = if settings.queues.is_empty() {
        queue.policies().queues()
    } else {
        settings.queues.clone()
    };
    info!(worker = %owner, ?queues, concurrency = settings.concurrency, "worker starting");
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let (job_tx, job_rx) = mpsc::channel::<Fetched>(settings.concurrency.max(1));
    let (done_tx, done_rx) = mpsc::unbounded_channel::<ToCompleter>();
    let aux = CancellationToken::new();
    let aux_listen = aux.clone();

    let held = Held::default();
    let limited_done = Arc::new(Notify::new());
    let writer = QueueWriter {
        queue: queue.clone(),
        owner,
        retain: queue.retain_completed(),
        held: held.clone(),
        limited_done: limited_done.clone(),
    };
    let completer = tokio::spawn(completer::run(
        writer,
        done_rx,
        settings.complete_batch,
        settings.writers,
    ));
    let heartbeat = tokio::spawn(heartbeat(
        queue.clone(),
        owner,
        held.clone(),
        settings.clone(),
        aux.clone(),
    ));
    // One wake-up per fetch loop, so a notification reaches every idle loop.
    let loops: Vec<(String, Arc<Notify>)> = queues
        .iter()
        .flat_map(|q| (0..settings.fetchers).map(move |_| (q.clone(), Arc::new(Notify::new()))))
        .collect();
    let wakeups: Vec<Arc<Notify>> = loops.iter().map(|(_, w)| w.clone()).collect();
    let listen_pool = match queue.listen() {
        Listen::Pool => Some(queue.pool().clone()),
        Listen::On(pool) => Some(pool.clone()),
        Listen::Off => {
            info!(poll_interval = ?settings.poll_interval, "no LISTEN connection: new jobs are found by polling");
            None
        }
    };
    let listener = tokio::spawn(async move {
        if let Some(pool) = listen_pool {
            listen(pool, wakeups, aux_listen).await;
        }
    });
    let fetchers: Vec<_> = loops
        .iter()
        .map(|(q, wake)| {
            let source = QueueLease {
                queue: queue.clone(),
                name: q.clone(),
                owner,
                lease: settings.lease,
                held: held.clone(),
            };
            let fetch = FetchLoop {
                name: q.clone(),
                batch: settings.fetch_batch,
                poll_interval: settings.poll_interval,
                permits: permits.clone(),
                wake: wake.clone(),
                limited_done: limited_done.clone(),
                jobs: job_tx.clone(),
                cancel: cancel.clone(),
            };
            tokio::spawn(fetch.run(source))
        })
        .collect();
    drop(job_tx);

    let executor = Executor::new(queue.clone(), runner, permits.clone(), done_tx.clone());
    let worker = WorkerBuilder::new(format!("chainsync-{owner}"))
        .backend(LeasedJobs::new(job_rx))
        .build(executor);
    let worker = tokio::spawn(async move {
        if let Err(e) = worker.run().await {
            warn!(error = %e, "apalis worker stopped with an error");
        }
    });

    cancel.cancelled().await;
    info!(worker = %owner, "shutting down: no new fetches");
    for f in fetchers {
        let _ = f.await;
    }
    // Wait for running jobs to finish.
    let all = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
    let waited = tokio::time::timeout(settings.shutdown_timeout, permits.acquire_many(all)).await;
    match waited {
        Ok(_) => debug!("all running jobs finished"),
        Err(_) => warn!(
            timeout = ?settings.shutdown_timeout,
            "running jobs did not finish in time; giving them back"
        ),
    }
    // The job stream is closed and empty: the apalis worker ends; abort it if it lingers.
    let abort = worker.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), worker)
        .await
        .is_err()
    {
        abort.abort();
    }
    let (tx, rx) = oneshot::channel();
    if done_tx.send(ToCompleter::Flush(tx)).is_ok() {
        let _ = rx.await;
    }
    drop(done_tx);
    let _ = completer.await;
    match queue.release(owner).await {
        Ok(0) => {}
        Ok(n) => info!(released = n, "gave back unfinished jobs"),
        Err(e) => warn!(error = %e, "could not give back unfinished jobs; the rescuer will"),
    }
    aux.cancel();
    let _ = heartbeat.await;
    let _ = listener.await;
    info!(worker = %owner, "worker stopped");
}

async fn listen(pool: sqlx::PgPool, wakeups: Vec<Arc<Notify>>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen("chainsync_jobs").await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut l = tokio::select! {
            _ = stop.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(error = %e, "LISTEN failed; polling meanwhile");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200u64 << failures.min(6))) => continue,
                    }
                }
            },
        };
        failures = 0;
        // A fresh connection may have missed notifications: wake everyone once.
        wakeups.iter().for_each(|w| w.notify_one());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = l.recv() => match n {
                    Ok(_) => wakeups.iter().for_each(|w| w.notify_one()),
                    Err(e) => {
                        warn!(error = %e, "LISTEN connection lost; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

async fn heartbeat(
    queue: Queue,
    owner: Uuid,
    held: Held,
    settings: WorkerSettings,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = queue.heartbeat(owner, &held.ids(), settings.lease).await {
            warn!(error = %e, "lease heartbeat failed");
        }
    }
}
