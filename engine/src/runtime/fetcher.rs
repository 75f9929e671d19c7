//! The fetcher: one loop per queue (or several) that leases as many jobs as there are free
//! slots and hands them to the worker. Slots are the permits of the runtime's semaphore: a
//! fetcher takes one per job it asks for, gives back the ones the fetch did not fill, and the
//! executor gives one back per job that ends.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::queue::{Control, FetchBatch, Fetched, Queue, QueueError};

/// Where a fetcher leases jobs from: the queue in production, a fake in the unit tests.
pub(super) trait Lease: Send + Sync + 'static {
    /// Leases up to `limit` runnable jobs, with the plain statement or (`controlled`) the one
    /// that applies pause and limits.
    fn lease(
        &self,
        limit: usize,
        controlled: bool,
    ) -> impl Future<Output = Result<FetchBatch, QueueError>> + Send;
}

/// Jobs of one named queue, leased to `owner` for `lease`.
pub(super) struct QueueLease {
    pub queue: Queue,
    pub name: String,
    pub owner: Uuid,
    pub lease: Duration,
    /// The jobs this runtime holds (their leases are extended by the heartbeat).
    pub held: super::Held,
}

impl Lease for QueueLease {
    async fn lease(&self, limit: usize, controlled: bool) -> Result<FetchBatch, QueueError> {
        let batch = self
            .queue
            .fetch_batch(&self.name, limit, self.owner, self.lease, controlled)
            .await?;
        self.held.add(batch.jobs.iter().map(|j| j.id));
        Ok(batch)
    }
}

/// What a fetch loop needs besides its source.
pub(super) struct FetchLoop {
    /// The queue's name, for the logs.
    pub name: String,
    /// Most jobs taken by one fetch.
    pub batch: usize,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// The runtime's free slots.
    pub permits: Arc<Semaphore>,
    /// Notified when jobs may have become available.
    pub wake: Arc<Notify>,
    /// Notified (to every waiter) when outcomes of jobs taken under a limit were written: a
    /// fetch that limits held back may take more now.
    pub limited_done: Arc<Notify>,
    /// To the worker.
    pub jobs: mpsc::Sender<Fetched>,
    pub cancel: CancellationToken,
}

/// Pause after `failures` fetches in a row failed: 200 ms doubling up to 6.4 s.
pub(super) fn failure_pause(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(6))
}

impl FetchLoop {
    /// Fetches until cancelled. Every slot taken ends up either given back or held by a job
    /// handed to the worker (whose end gives it back).
    pub async fn run(self, source: impl Lease) {
        let mut failures = 0u32;
        let mut backlog = false;
        // Whether limits narrow the queue's fetches (or it is paused): then fetches go through
        // chainsync.fetch_controlled, until it says the plain statement can serve the queue.
        let mut controlled = false;
        let mut switched = false;
        loop {
            // Take at least one free slot, then as many more as are free, up to a batch.
            let first = tokio::select! {
                _ = self.cancel.cancelled() => return,
                p = self.permits.clone().acquire_owned() => p,
            };
            let Ok(first) = first else { return };
            first.forget();
            let want = 1 + fill(&self.permits, self.batch - 1, self.batch / 2, backlog).await;
            // Armed before the fetch, so that a limited job ending meanwhile is not missed.
            let ended = self.limited_done.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let batch = match source.lease(want, controlled).await {
                Ok(b) => {
                    failures = 0;
                    b
                }
                Err(e) => {
                    self.permits.add_permits(want);
                    failures = failures.saturating_add(1);
                    let pause = failure_pause(failures);
                    warn!(queue = %self.name, error = %e, ?pause, "fetch failed");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            let got = batch.jobs.len();
            if got < want {
                self.permits.add_permits(want - got);
            }
            for job in batch.jobs {
                if let Err(lost) = self.jobs.send(job).await {
                    // The worker is gone: give the slot back; release() returns the job at
                    // shutdown.
                    self.permits.add_permits(1);
                    debug!(job = %lost.0.id, "worker stopped before the job could run");
                }
            }
            let now_controlled = batch.control != Control::None;
            if now_controlled != controlled {
                debug!(queue = %self.name, controlled = now_controlled, "fetch mode changed");
                controlled = now_controlled;
                // Fetch again at once in the other mode (once: a control that comes and goes
                // between the two statements waits for the next round).
                if got == 0 && !switched {
                    switched = true;
                    continue;
                }
            }
            switched = false;
            backlog = got == want;
            if got < want {
                // Drained for now, paused or held by limits: wait for a notification, the
                // poll interval, or shutdown; when limits held jobs back, also for a limited
                // job's end or the next token of a rate.
                let (retry, held) = match batch.control {
                    Control::Held { retry } => (
                        retry.map_or(self.poll_interval, |r| r.min(self.poll_interval)),
                        true,
                    ),
                    _ => (self.poll_interval, false),
                };
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = &mut ended, if held => {}
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

/// Having one slot, takes up to `more` further slots; returns how many it took. With a backlog,
/// slots come back one job at a time: if fewer than `half` are free (counting the one held), it
/// waits a moment for them, which turns many tiny fetches into a few full ones.
pub(super) async fn fill(permits: &Semaphore, more: usize, half: usize, backlog: bool) -> usize {
    let mut taken = take_free(permits, more);
    let want = 1 + taken;
    if backlog && want < half {
        let wait = u32::try_from(half - want).unwrap_or(u32::MAX);
        if let Ok(Ok(p)) =
            tokio::time::timeout(Duration::from_millis(2), permits.acquire_many(wait)).await
        {
            p.forget();
            taken = half - 1;
        }
        taken += take_free(permits, more - taken);
    }
    taken
}

/// Takes up to `n` free slots without waiting; returns how many.
pub(super) fn take_free(permits: &Semaphore, n: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn job(n: u128) -> Fetched {
        Fetched {
            id: Uuid::from_u128(n),
            kind: "k".into(),
            queue: "default".into(),
            args: serde_json::json!({}),
            attempt: 1,
            max_attempts: 3,
            backoff_base_ms: None,
            backoff_cap_ms: None,
            limited: false,
            traceparent: None,
        }
    }

    #[test]
    fn take_free_takes_what_is_free_and_no_more() {
        let s = Semaphore::new(5);
        assert_eq!(take_free(&s, 3), 3);
        assert_eq!(s.available_permits(), 2);
        assert_eq!(take_free(&s, 10), 2);
        assert_eq!(s.available_permits(), 0);
        assert_eq!(take_free(&s, 10), 0);
    }

    #[tokio::test]
    async fn fill_takes_free_slots_up_to_the_batch() {
        // 9 more free, a batch of 5 (4 more than the one held).
        let s = Semaphore::new(9);
        assert_eq!(fill(&s, 4, 2, false).await, 4);
        assert_eq!(s.available_permits(), 5);
        // Without a backlog, it never waits: 2 free, half a batch would be 50.
        let s = Semaphore::new(2);
        assert_eq!(fill(&s, 99, 50, false).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_backlog_fill_waits_a_moment_for_half_a_batch() {
        let s = Arc::new(Semaphore::new(1));
        // Jobs end meanwhile and give their slots back.
        let back = s.clone();
        let ends = tokio::spawn(async move {
            for _ in 0..60 {
                back.add_permits(1);
                tokio::task::yield_now().await;
            }
        });
        let taken = fill(&s, 99, 50, true).await;
        ends.await.unwrap();
        assert!((49..=99).contains(&taken), "took {taken}");
        assert_eq!(s.available_permits() + taken, 61, "no slot lost or made up");

        // Nothing comes back within the moment: it fetches what it has.
        let s = Semaphore::new(3);
        assert_eq!(fill(&s, 99, 50, true).await, 3);
        assert_eq!(s.available_permits(), 0);
    }

    /// A source with `backlog` jobs that records every limit asked for, failing the fetches
    /// whose number (0-based) is in `fail`.
    struct Fake {
        backlog: Mutex<u128>,
        asked: Mutex<Vec<usize>>,
        fail: Vec<usize>,
    }

    impl Fake {
        fn new(backlog: u128, fail: Vec<usize>) -> Arc<Self> {
            Arc::new(Self {
                backlog: Mutex::new(backlog),
                asked: Mutex::new(Vec::new()),
                fail,
            })
        }
    }

    impl Lease for Arc<Fake> {
        async fn lease(&self, limit: usize, _: bool) -> Result<FetchBatch, QueueError> {
            let n = {
                let mut asked = self.asked.lock().unwrap();
                asked.push(limit);
                asked.len() - 1
            };
            if self.fail.contains(&n) {
                return Err(QueueError::Invalid("database away".into()));
            }
            let mut left = self.backlog.lock().unwrap();
            let take = (limit as u128).min(*left);
            *left -= take;
            Ok(FetchBatch {
                jobs: (0..take).map(|i| job(*left + i)).collect(),
                control: Control::None,
            })
        }
    }

    struct Harness {
        permits: Arc<Semaphore>,
        cancel: CancellationToken,
        rx: mpsc::Receiver<Fetched>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(source: Arc<Fake>, concurrency: usize, batch: usize) -> Harness {
        let permits = Arc::new(Semaphore::new(concurrency));
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(concurrency);
        let fetch = FetchLoop {
            name: "default".into(),
            batch,
            poll_interval: Duration::from_secs(3600),
            permits: permits.clone(),
            wake: Arc::new(Notify::new()),
            limited_done: Arc::new(Notify::new()),
            jobs: tx,
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(fetch.run(source));
        Harness {
            permits,
            cancel,
            rx,
            task,
        }
    }

    async fn recv(rx: &mut mpsc::Receiver<Fetched>) -> Fetched {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no job within 10 s")
            .expect("the fetcher stopped")
    }

    /// Waits until `f` holds, at most 10 s (of paused time in the paused tests).
    async fn settle(f: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition still false after 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn never_asks_for_more_than_the_free_slots_and_gives_back_the_unfilled() {
        let fake = Fake::new(25, vec![]);
        let mut h = start(fake.clone(), 10, 4);
        // 25 jobs, 10 slots, batches of 4: run them one after another, ending each.
        for _ in 0..25 {
            let _job = recv(&mut h.rx).await;
            h.permits.add_permits(1); // the job ended
        }
        // Drained: the last fetch found nothing and every slot is free again.
        settle(|| h.permits.available_permits() == 10).await;
        h.cancel.cancel();
        h.task.await.unwrap();
        let asked = fake.asked.lock().unwrap().clone();
        assert!(asked.iter().all(|&n| (1..=4).contains(&n)), "{asked:?}");
        assert!(
            asked.len() >= 7,
            "25 jobs in batches of at most 4: {asked:?}"
        );
        assert_eq!(h.permits.available_permits(), 10, "no slot lost");
    }

    #[tokio::test(start_paused = true)]
    async fn holds_one_slot_per_job_handed_over() {
        let fake = Fake::new(100, vec![]);
        let mut h = start(fake.clone(), 8, 8);
        // Nothing ends: the fetcher fills the 8 slots and then waits for one to come back.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(recv(&mut h.rx).await);
        }
        settle(|| h.permits.available_permits() == 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(h.rx.try_recv().is_err(), "a ninth job without a free slot");
        assert_eq!(fake.asked.lock().unwrap().iter().sum::<usize>(), 8);
        // Two end: two more come.
        h.permits.add_permits(2);
        held.push(recv(&mut h.rx).await);
        held.push(recv(&mut h.rx).await);
        let ids: std::collections::HashSet<Uuid> = held.iter().map(|j| j.id).collect();
        assert_eq!(ids.len(), 10, "every job handed over once");
        h.cancel.cancel();
        h.task.await.unwrap();
        assert_eq!(h.permits.available_permits(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_gives_its_slots_back_and_pauses() {
        let fake = Fake::new(3, vec![0, 1]);
        let mut h = start(fake.clone(), 6, 6);
        let t = tokio::time::Instant::now();
        for _ in 0..3 {
            let _ = recv(&mut h.rx).await;
        }
        // Two failures: paused 200 ms, then 400 ms, before the third fetch.
        assert!(t.elapsed() >= failure_pause(1) + failure_pause(2));
        settle(|| h.permits.available_permits() == 3).await;
        h.cancel.cancel();
        h.task.await.unwrap();
        let asked = fake.asked.lock().unwrap().clone();
        assert_eq!(
            &asked[..3],
            &[6, 6, 6],
            "all slots free each time: {asked:?}"
        );
        assert_eq!(h.permits.available_permits(), 3, "3 jobs still hold theirs");
    }

    #[tokio::test(start_paused = true)]
    async fn a_notification_ends_the_idle_wait() {
        let fake = Fake::new(0, vec![]);
        let permits = Arc::new(Semaphore::new(4));
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(4);
        let fetch = FetchLoop {
            name: "default".into(),
            batch: 4,
            poll_interval: Duration::from_secs(3600),
            permits: permits.clone(),
            wake: wake.clone(),
            limited_done: Arc::new(Notify::new()),
            jobs: tx,
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(fetch.run(fake.clone()));
        settle(|| fake.asked.lock().unwrap().len() == 1).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            fake.asked.lock().unwrap().len(),
            1,
            "polled before the interval"
        );
        *fake.backlog.lock().unwrap() = 2;
        wake.notify_one();
        let _ = recv(&mut rx).await;
        let _ = recv(&mut rx).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(permits.available_permits(), 2);
    }

    #[tokio::test]
    async fn stops_on_cancel_while_waiting_for_a_slot() {
        let fake = Fake::new(1, vec![]);
        let mut h = start(fake, 1, 1);
        let _held = recv(&mut h.rx).await;
        // The only slot is taken: the fetcher waits for it, and leaves on cancel.
        h.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), h.task)
            .await
            .expect("fetcher did not stop")
            .unwrap();
    }

    #[tokio::test]
    async fn a_gone_worker_gets_no_slot() {
        let fake = Fake::new(3, vec![]);
        let h = start(fake, 3, 3);
        drop(h.rx);
        settle(|| h.permits.available_permits() == 3).await;
        h.cancel.cancel();
        h.task.await.unwrap();
        assert_eq!(h.permits.available_permits(), 3);
    }
}
