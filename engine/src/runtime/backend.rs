//! The apalis backend over our schema. Fetching, leasing and completion are ours (SQL in
//! `queue/sql`); this backend hands the leased jobs to apalis, which drives the worker service.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    task::Task,
    worker::context::WorkerContext,
};
use tokio::sync::mpsc;
use tower::layer::util::Identity;

use crate::queue::Fetched;

/// Stream of leased jobs filled by the fetchers. Ends when every fetcher has stopped and the
/// buffer is empty, which lets the apalis worker finish on shutdown.
pub struct LeasedJobs {
    rx: mpsc::Receiver<Fetched>,
}

impl LeasedJobs {
    pub fn new(rx: mpsc::Receiver<Fetched>) -> Self {
        Self { rx }
    }
}

impl Backend for LeasedJobs {
    type Task = Task<Fetched>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(job)) => Poll::Ready(Some(Ok(Task::new(job)))),
            Poll::Ready(None) => {
                // The end of the stream alone does not end an apalis worker: it waits for a
                // stop. Stopped, it finishes as soon as its running tasks have.
                if worker.is_running() {
                    let _ = worker.stop();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for LeasedJobs {
    type Args = Fetched;
    type Id = uuid::Uuid;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use apalis_core::{error::BoxDynError, worker::builder::WorkerBuilder};
    use futures::future::BoxFuture;
    use uuid::Uuid;

    use super::*;

    fn job(n: u128) -> Fetched {
        Fetched {
            id: Uuid::from_u128(n),
            kind: "k".into(),
            queue: "default".into(),
            args: serde_json::json!({"n": n.to_string()}),
            attempt: 2,
            max_attempts: 3,
            backoff_base_ms: Some(10),
            backoff_cap_ms: None,
            limited: false,
            traceparent: None,
        }
    }

    #[test]
    fn yields_each_leased_job_once_then_ends_when_the_fetchers_are_gone() {
        let (tx, rx) = mpsc::channel(4);
        let mut jobs = LeasedJobs::new(rx);
        let worker = WorkerContext::new("t");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            jobs.poll_ready(&mut cx, &worker),
            Poll::Ready(Ok(()))
        ));
        // Nothing leased yet, fetchers still running: pending, not the end.
        assert!(jobs.poll_next(&mut cx, &worker).is_pending());
        tx.try_send(job(1)).unwrap();
        tx.try_send(job(2)).unwrap();
        drop(tx);
        for n in [1, 2] {
            match jobs.poll_next(&mut cx, &worker) {
                Poll::Ready(Some(Ok(task))) => {
                    let f = task.args;
                    assert_eq!((f.id, f.attempt), (Uuid::from_u128(n), 2));
                    assert_eq!(f.args["n"], n.to_string());
                }
                _ => panic!("job {n} not yielded"),
            }
        }
        assert!(matches!(
            jobs.poll_next(&mut cx, &worker),
            Poll::Ready(None)
        ));
    }

    /// Records the jobs it runs.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<Uuid>>>);

    impl tower::Service<Task<Fetched>> for Record {
        type Response = ();
        type Error = BoxDynError;
        type Future = BoxFuture<'static, Result<(), BoxDynError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, task: Task<Fetched>) -> Self::Future {
            let seen = self.0.clone();
            Box::pin(async move {
                seen.lock().unwrap().push(task.args.id);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn the_apalis_worker_runs_every_job_and_finishes_when_the_stream_ends() {
        let (tx, rx) = mpsc::channel(8);
        let seen = Record::default();
        let worker = WorkerBuilder::new("leased-jobs-test")
            .backend(LeasedJobs::new(rx))
            .build(seen.clone());
        let running = tokio::spawn(async move { worker.run().await });
        for n in 0..20 {
            tx.send(job(n)).await.unwrap();
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the worker did not finish after the stream ended")
            .unwrap()
            .unwrap();
        let mut ids = seen.0.lock().unwrap().clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..20).map(Uuid::from_u128).collect::<Vec<_>>());
    }
}
