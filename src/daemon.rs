//! `chainsync daemon`: workers + maintenance until SIGINT/SIGTERM, then a graceful stop.

use std::sync::Arc;

use chainsync_jobs::domain::Domain;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{app::App, runtime::Runtime};

pub async fn run(app: App) -> anyhow::Result<()> {
    app.migrate().await?;
    let services = app.services().await?;
    let domain = Domain::new(services.clone());
    // Work left stale by downtime (points windows): jobs for exactly what is missing.
    match domain.startup_jobs(None, chrono::Utc::now()).await {
        Ok(jobs) if !jobs.is_empty() => {
            let n = jobs.len();
            app.queue.enqueue_many(jobs).await?;
            info!(jobs = n, "stale work detected at start-up; jobs enqueued");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "start-up check failed"),
    }
    let stop = CancellationToken::new();
    let runtime = Runtime::start(
        app.queue.clone(),
        app.registry.clone(),
        services.clone(),
        app.config.worker.clone(),
    );
    let maintenance = tokio::spawn(crate::runtime::maintenance::run(
        app.queue.clone(),
        app.config.maintenance.clone(),
        stop.clone(),
    ));
    let follower = {
        let (domain, queue, stop) = (domain.clone(), app.queue.clone(), stop.clone());
        tokio::spawn(async move { domain.follow(Arc::new(queue), stop).await })
    };
    let schedules = app.config.schedules(app.queue.kinds())?;
    let scheduler = if app.config.scheduler.enabled && !schedules.is_empty() {
        let s = crate::scheduler::Scheduler::new(
            app.queue.clone(),
            schedules,
            app.config.scheduler.clone(),
        );
        Some(tokio::spawn(s.run(
            std::sync::Arc::new(crate::scheduler::SystemClock),
            stop.clone(),
        )))
    } else {
        None
    };
    let http = if app.config.http.enabled {
        let state = crate::http::HttpState {
            app: app.clone(),
            services: services.clone(),
            settings: app.config.http.clone(),
            metrics: crate::http::metrics_handle(),
        };
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = crate::http::serve(state, stop, None).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        }))
    } else {
        None
    };
    info!(worker = %runtime.owner(), "daemon running");
    shutdown_signal().await;
    info!("signal received, stopping");
    stop.cancel();
    runtime.stop().await;
    let _ = maintenance.await;
    let _ = follower.await;
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
