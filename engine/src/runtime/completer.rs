//! The completer: gathers the outcomes of finished runs into batches and writes each batch with
//! one `Queue::complete` call, up to `writers` batches at a time.

use std::{future::Future, time::Duration};

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};
use tracing::warn;
use uuid::Uuid;

use crate::queue::{Completion, Queue};

/// Messages to the completer task.
pub(super) enum ToCompleter {
    Done(Completion),
    /// Answered once every outcome sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// Where batches of outcomes go: the queue in production, a recorder in the unit tests.
pub(super) trait WriteOutcomes: Clone + Send + Sync + 'static {
    fn write(&self, batch: Vec<Completion>) -> impl Future<Output = ()> + Send;
}

/// Outcomes of the jobs leased to `owner`, written to the queue.
#[derive(Clone)]
pub(super) struct QueueWriter {
    pub queue: Queue,
    pub owner: Uuid,
    pub retain: bool,
    /// Written (or given up): no longer held, so no longer extended by the heartbeat.
    pub held: super::Held,
    /// Told when outcomes of jobs taken under a limit are written.
    pub limited_done: Arc<Notify>,
}

impl WriteOutcomes for QueueWriter {
    async fn write(&self, batch: Vec<Completion>) {
        write_batch(&self.queue, self.owner, &batch, self.retain).await;
        self.held.remove(batch.iter().map(|c| c.id));
        if batch.iter().any(|c| c.limited) {
            self.limited_done.notify_waiters();
        }
    }
}

/// Runs until every sender is gone and every batch is written.
pub(super) async fn run(
    writer: impl WriteOutcomes,
    mut rx: mpsc::UnboundedReceiver<ToCompleter>,
    max_batch: usize,
    writers: usize,
) {
    let max_batch = max_batch.max(1);
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
            let w = writer.clone();
            inflight.spawn(async move { w.write(full).await });
        }
        if let Some(tx) = flush {
            while inflight.join_next().await.is_some() {}
            let _ = tx.send(());
        }
    }
    while inflight.join_next().await.is_some() {}
}

/// Writes outcomes, retrying while the database is away. If it stays away past the lease,
/// the rescuer requeues the jobs and fencing refuses these stale outcomes; if it gives up, the
/// jobs are no longer held, their leases run out and the rescuer requeues them.
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::sync::Semaphore;

    use super::*;
    use crate::queue::Outcome;

    fn done(n: u128) -> ToCompleter {
        ToCompleter::Done(Completion {
            id: Uuid::from_u128(n),
            kind: "k".into(),
            attempt: 1,
            max_attempts: 3,
            backoff_base_ms: None,
            backoff_cap_ms: None,
            outcome: Outcome::Done,
            limited: false,
            ran: None,
        })
    }

    /// Records every batch (as job numbers); each write waits for a permit of `gate` (when set)
    /// and counts the writes in flight.
    #[derive(Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<u128>>>>,
        gate: Option<Arc<Semaphore>>,
        inflight: Arc<AtomicUsize>,
        most_inflight: Arc<AtomicUsize>,
    }

    impl WriteOutcomes for Recorder {
        async fn write(&self, batch: Vec<Completion>) {
            let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_inflight.fetch_max(now, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            let ids = batch.iter().map(|c| c.id.as_u128()).collect();
            self.batches.lock().unwrap().push(ids);
            self.inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Recorder {
        fn gated() -> (Self, Arc<Semaphore>) {
            let gate = Arc::new(Semaphore::new(0));
            let r = Self {
                gate: Some(gate.clone()),
                ..Self::default()
            };
            (r, gate)
        }

        fn batches(&self) -> Vec<Vec<u128>> {
            self.batches.lock().unwrap().clone()
        }

        fn written(&self) -> Vec<u128> {
            let mut all: Vec<u128> = self.batches().into_iter().flatten().collect();
            all.sort_unstable();
            all
        }
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("not done within 10 s")
    }

    #[tokio::test]
    async fn waiting_outcomes_are_written_in_batches_of_at_most_max_batch() {
        let rec = Recorder::default();
        let (tx, rx) = mpsc::unbounded_channel();
        for n in 0..2500 {
            tx.send(done(n)).unwrap();
        }
        drop(tx);
        within(run(rec.clone(), rx, 1000, 2)).await;
        let sizes: Vec<usize> = rec.batches().iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 2500);
        assert!(sizes.iter().all(|&s| s <= 1000), "{sizes:?}");
        assert_eq!(
            sizes.len(),
            3,
            "gathered, not written one by one: {sizes:?}"
        );
        assert_eq!(rec.written(), (0..2500).collect::<Vec<_>>(), "each once");
        // Within a batch, outcomes keep the order they came in.
        for b in rec.batches() {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
    }

    #[tokio::test]
    async fn at_most_writers_batches_in_flight_and_later_outcomes_gather_meanwhile() {
        let (rec, gate) = Recorder::gated();
        let (tx, rx) = mpsc::unbounded_channel();
        let completer = tokio::spawn(run(rec.clone(), rx, 1000, 2));
        // Two outcomes, sent apart: two single-job batches, both writing (stuck at the gate).
        for n in 0..2 {
            tx.send(done(n)).unwrap();
            within(async {
                while rec.inflight.load(Ordering::SeqCst) < n as usize + 1 {
                    tokio::task::yield_now().await;
                }
            })
            .await;
        }
        // Both writers busy: the next 50 wait and then go out as one batch.
        for n in 2..52 {
            tx.send(done(n)).unwrap();
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            rec.inflight.load(Ordering::SeqCst),
            2,
            "a third writer started"
        );
        gate.add_permits(1000);
        drop(tx);
        within(completer).await.unwrap();
        assert_eq!(rec.most_inflight.load(Ordering::SeqCst), 2);
        let sizes: Vec<usize> = rec.batches().iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 52);
        assert!(sizes.contains(&50), "{sizes:?}");
    }

    #[tokio::test]
    async fn flush_answers_once_everything_before_it_is_written() {
        let (rec, gate) = Recorder::gated();
        let (tx, rx) = mpsc::unbounded_channel();
        let completer = tokio::spawn(run(rec.clone(), rx, 3, 4));
        for n in 0..10 {
            tx.send(done(n)).unwrap();
        }
        let (ftx, mut frx) = oneshot::channel();
        tx.send(ToCompleter::Flush(ftx)).unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(frx.try_recv().is_err(), "flushed before the writes ended");
        gate.add_permits(1000);
        within(frx).await.unwrap();
        assert_eq!(rec.written(), (0..10).collect::<Vec<_>>());
        // The completer carries on after a flush, and ends when the senders are gone.
        tx.send(done(10)).unwrap();
        drop(tx);
        within(completer).await.unwrap();
        assert_eq!(rec.written().len(), 11);
    }

    #[tokio::test]
    async fn a_flush_with_nothing_pending_answers_at_once() {
        let rec = Recorder::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let completer = tokio::spawn(run(rec.clone(), rx, 10, 1));
        let (ftx, frx) = oneshot::channel();
        tx.send(ToCompleter::Flush(ftx)).unwrap();
        within(frx).await.unwrap();
        drop(tx);
        within(completer).await.unwrap();
        assert!(rec.batches().is_empty(), "an empty batch was written");
    }
}
