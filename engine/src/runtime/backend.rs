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
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|job| Ok(Task::new(job))))
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
