//! `chainsync daemon`: workers + maintenance until SIGINT/SIGTERM, then a graceful stop.

use std::sync::Arc;

use chainsync_jobs::domain::Domain;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{app::App, runtime::Runtime};

pub async fn run(app: App) -> anyhow::Result<()> {
    // The recorder first: metrics registered before it is installed would be lost.
    let metrics = crate::http::metrics_handle();
    chainsync_engine::metrics::describe(&app.queue.kinds().names());
    app.check_database().await?;
    app.prepare_schema().await?;
    let stop = CancellationToken::new();
    let follower_db = app.follow_primary(stop.clone());
    let listen = app.listen_source(&stop).await?;
    if matches!(listen, chainsync_engine::queue::Listen::Off) {
        tracing::warn!(
            poll_interval = ?app.config.worker.poll_interval,
            "behind a transaction-mode pooler without database.direct_url: no LISTEN; new \
             jobs wait for the next poll"
        );
    }
    let services = app.services().await?;
    let domain = Domain::new(services.clone());
    domain.describe_metrics();
    // One sample before serving, so that the first scrape has the lags (bounded: a node that
    // does not answer leaves them unknown until the sampler's next round).
    if let Ok(Err(e)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), domain.sample_metrics()).await
    {
        tracing::warn!(error = %e, "first metrics sample failed");
    }
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
    let runtime = Runtime::start(
        app.queue.clone().listening(listen),
        app.registry.clone(),
        services.clone(),
        app.config.worker.clone(),
    );
    let maintenance = {
        let (db, history) = (services.db.clone(), app.config.domain.history.clone());
        tokio::spawn(crate::runtime::maintenance::run_with(
            app.queue.clone(),
            app.config.maintenance.clone(),
            stop.clone(),
            move || {
                let (db, history) = (db.clone(), history.clone());
                async move {
                    match chainsync_jobs::history::maintain(&db, &history, chrono::Utc::now()).await
                    {
                        Ok(p) if p.created + p.dropped > 0 => info!(
                            created = p.created,
                            dropped = p.dropped,
                            "history partitions created ahead / dropped past retention"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "history partition pass failed"),
                    }
                }
            },
        ))
    };
    let follower = {
        let (domain, queue, stop) = (domain.clone(), app.queue.clone(), stop.clone());
        tokio::spawn(async move { domain.follow(Arc::new(queue), stop).await })
    };
    let sampler = tokio::spawn(sample_loop(app.clone(), domain.clone(), stop.clone()));
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
            metrics: metrics.clone(),
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
    let _ = sampler.await;
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    if let Some(f) = follower_db {
        let _ = f.await;
    }
    Ok(())
}

/// Every `metrics.sample_interval`: the lag gauges, then the alert rules.
async fn sample_loop(app: App, domain: Domain, stop: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.metrics.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // This daemon's attempts per kind, for the failure rate across the cluster.
        if let Err(e) = chainsync_engine::metrics::flush_outcomes(app.queue.pool()).await {
            tracing::warn!(error = %e, "job outcomes not written");
        }
        let sample = match domain.sample_metrics().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "metrics sample failed");
                None
            }
        };
        if app.config.domain.alerts.rules.is_empty() {
            continue;
        }
        let score = if domain.alerts_need_health_score() {
            let r = crate::health::report(&app).await;
            r.database.then_some(r.score)
        } else {
            None
        };
        match domain.evaluate_alerts(sample.as_ref(), score).await {
            Ok(ev) => {
                for (rule, subject) in &ev.opened {
                    tracing::warn!(rule = %rule, subject = %subject, "alert firing");
                }
                for (rule, subject) in &ev.resolved {
                    info!(rule = %rule, subject = %subject, "alert resolved");
                }
            }
            Err(e) => tracing::warn!(error = %e, "alert rules not evaluated"),
        }
    }
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
