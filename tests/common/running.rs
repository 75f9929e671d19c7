//! The daemon's moving parts in-process: workers and live ingestion, over an [`App`].

use chainsync::{app::App, runtime::Runtime};
use tokio_util::sync::CancellationToken;

pub struct Running {
    rt: Runtime,
    stop: CancellationToken,
    follower: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(app: &App) -> Self {
        let services = app.services().await.unwrap();
        let rt = Runtime::start(
            app.queue.clone(),
            app.registry.clone(),
            services.clone(),
            app.config.worker.clone(),
        );
        let stop = CancellationToken::new();
        let follower = {
            let domain = chainsync_jobs::domain::Domain::new(services);
            let (queue, stop) = (app.queue.clone(), stop.clone());
            tokio::spawn(async move { domain.follow(std::sync::Arc::new(queue), stop).await })
        };
        Self { rt, stop, follower }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.follower.await.unwrap();
        self.rt.stop().await;
    }
}
