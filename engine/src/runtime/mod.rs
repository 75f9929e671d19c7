//! The worker runtime of one daemon: fetchers (LISTEN/NOTIFY + poll), the apalis worker that runs
//! jobs, batched completions, lease heartbeats, graceful shutdown.

mod backend;
mod exec;
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
    Registry,
    queue::{Completion, Fetched, Queue},
};
pub use backend::LeasedJobs;
use exec::{Executor, Runner};

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
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("worker.concurrency: must be at least 1".into());
        }
        if self.fetch_batch == 0 {
            return Err("worker.fetch_batch: must be at least 1".into());
        }
        if !(1..=16).contains(&self.fetchers) {
            return Err("worker.fetchers: must be in 1..=16".into());
        }
        if !(1..=16).contains(&self.writers) {
            return Err("worker.writers: must be in 1..=16".into());
        }
        if self.complete_batch == 0 {
            return Err("worker.complete_batch: must be at least 1".into());
        }
        if self.poll_interval.is_zero() {
            return Err("worker.poll_interval: must be positive".into());
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.lease {
            return Err("worker.heartbeat: must be positive and shorter than worker.lease".into());
        }
        Ok(())
    }
}

/// Messages to the completer task.
enum ToCompleter {
    Done(Completion),
    Flush(oneshot::Sender<()>),
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

    let completer = tokio::spawn(completer(
        queue.clone(),
        owner,
        done_rx,
        settings.complete_batch,
        settings.writers,
        queue.retain_completed(),
    ));
    let heartbeat = tokio::spawn(heartbeat(
        queue.clone(),
        owner,
        settings.clone(),
        aux.clone(),
    ));
    // One wake-up per fetch loop, so a notification reaches every idle loop.
    let loops: Vec<(String, Arc<Notify>)> = queues
        .iter()
        .flat_map(|q| (0..settings.fetchers).map(move |_| (q.clone(), Arc::new(Notify::new()))))
        .collect();
    let wakeups: Vec<Arc<Notify>> = loops.iter().map(|(_, w)| w.clone()).collect();
    let listener = tokio::spawn(listen(queue.clone(), wakeups, aux.clone()));
    let fetchers: Vec<_> = loops
        .iter()
        .map(|(q, wake)| {
            tokio::spawn(fetcher(
                queue.clone(),
                q.clone(),
                owner,
                settings.clone(),
                permits.clone(),
                wake.clone(),
                job_tx.clone(),
                cancel.clone(),
            ))
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

#[allow(clippy::too_many_arguments)]
async fn fetcher(
    queue: Queue,
    name: String,
    owner: Uuid,
    settings: WorkerSettings,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    jobs: mpsc::Sender<Fetched>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    let mut backlog = false;
    loop {
        // Take at least one free slot, then as many more as are free, up to a batch.
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            p = permits.clone().acquire_owned() => p,
        };
        let Ok(first) = first else { return };
        first.forget();
        let mut want = 1 + take_free(&permits, settings.fetch_batch - 1);
        // With a backlog, slots come back one job at a time; waiting a moment for half a batch
        // turns many tiny fetches into a few full ones.
        let half = settings.fetch_batch / 2;
        if backlog && want < half {
            let more = u32::try_from(half - want).unwrap_or(u32::MAX);
            if let Ok(Ok(p)) =
                tokio::time::timeout(Duration::from_millis(2), permits.acquire_many(more)).await
            {
                p.forget();
                want = half;
            }
            want += take_free(&permits, settings.fetch_batch - want);
        }
        let fetched = queue.fetch(&name, want, owner, settings.lease).await;
        let batch = match fetched {
            Ok(b) => {
                failures = 0;
                b
            }
            Err(e) => {
                permits.add_permits(want);
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(100u64 << failures.min(6));
                warn!(queue = %name, error = %e, ?pause, "fetch failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let got = batch.len();
        backlog = got == want;
        if got < want {
            permits.add_permits(want - got);
        }
        for job in batch {
            if let Err(lost) = jobs.send(job).await {
                // The worker is gone: give the slot back; release() returns the job at shutdown.
                permits.add_permits(1);
                debug!(job = %lost.0.id, "worker stopped before the job could run");
            }
        }
        if got < want {
            // Drained for now: wait for a notification, the poll interval, or shutdown.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(settings.poll_interval) => {}
            }
        }
    }
}

/// Takes up to `n` free slots without waiting; returns how many.
fn take_free(permits: &Semaphore, n: usize) -> usize {
    let mut taken = 0;
    while taken < n {
        match permits.try_acquire() {
            Ok(p) => {
                p.forget();
                taken += 1;
            }
            Err(_) => break,
        }
    }
    taken
}

async fn listen(queue: Queue, wakeups: Vec<Arc<Notify>>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(queue.pool()).await?;
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

async fn heartbeat(queue: Queue, owner: Uuid, settings: WorkerSettings, stop: CancellationToken) {
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = queue.heartbeat(owner, settings.lease).await {
            warn!(error = %e, "lease heartbeat failed");
        }
    }
}

async fn completer(
    queue: Queue,
    owner: Uuid,
    mut rx: mpsc::UnboundedReceiver<ToCompleter>,
    max_batch: usize,
    writers: usize,
    retain: bool,
) {
    // Up to `writers` batches are written concurrently, so completion keeps pace with fetching.
    let mut inflight = tokio::task::JoinSet::new();
    let mut batch: Vec<Completion> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        // Wait for a free writer before gathering: outcomes that arrive meanwhile join this
        // batch, so under load batches grow instead of queueing up small.
        while inflight.len() >= writers.max(1) {
            let _ = inflight.join_next().await;
        }
        let mut flush = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ToCompleter::Done(c) => batch.push(c),
                ToCompleter::Flush(tx) => {
                    flush = Some(tx);
                    break;
                }
            }
            if batch.len() >= max_batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
            let q = queue.clone();
            inflight.spawn(async move { write_batch(&q, owner, &full, retain).await });
        }
        if let Some(tx) = flush {
            while inflight.join_next().await.is_some() {}
            let _ = tx.send(());
        }
    }
    while inflight.join_next().await.is_some() {}
}

/// Writes outcomes, retrying while the database is away. If it stays away past the lease,
/// the rescuer requeues the jobs and fencing refuses these stale outcomes.
async fn write_batch(queue: &Queue, owner: Uuid, batch: &[Completion], retain: bool) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    for _ in 0..12 {
        match queue.complete(owner, batch, retain).await {
            Ok(stats) => {
                crate::metrics::record_completions(&stats);
                if stats.fenced > 0 {
                    warn!(
                        fenced = stats.fenced,
                        "outcomes refused: jobs no longer leased to this worker"
                    );
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, jobs = batch.len(), ?delay, "writing outcomes failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    warn!(
        jobs = batch.len(),
        "gave up writing outcomes; the jobs will be rescued when their leases expire"
    );
}
