//! Background maintenance of a daemon: the rescuer requeues jobs whose lease expired (their
//! worker died), the pruner drops the ranges of finished jobs past the retention. Several daemons may run
//! them at once: the rescuer uses SKIP LOCKED, prunes take turns; both are idempotent.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::queue::Queue;

/// `[maintenance]` in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSettings {
    #[serde(with = "crate::duration::text")]
    pub rescue_interval: Duration,
    #[serde(with = "crate::duration::text")]
    pub prune_interval: Duration,
    /// Completed and cancelled jobs are kept this long, then dropped with their range of
    /// `chainsync.finished_jobs` (ranges of about a 12th of this, so a job stays up to that much
    /// longer). "0s" deletes completed jobs on completion.
    #[serde(with = "crate::duration::text")]
    pub completed_retention: Duration,
    /// Rows per prune statement (finished jobs outside every range, closed unique windows).
    pub prune_batch: i64,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            rescue_interval: Duration::from_secs(15),
            prune_interval: Duration::from_secs(60),
            completed_retention: Duration::from_secs(24 * 3600),
            prune_batch: 5000,
        }
    }
}

impl MaintenanceSettings {
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        if self.rescue_interval.is_zero() {
            return Err(crate::Invalid::at(
                "maintenance.rescue_interval",
                "must be positive",
            ));
        }
        if self.prune_interval.is_zero() {
            return Err(crate::Invalid::at(
                "maintenance.prune_interval",
                "must be positive",
            ));
        }
        if !(1..=100_000).contains(&self.prune_batch) {
            return Err(crate::Invalid::at(
                "maintenance.prune_batch",
                "must be in 1..=100000",
            ));
        }
        Ok(())
    }
}

/// Runs the rescuer and the pruner until `stop`.
pub async fn run(queue: Queue, settings: MaintenanceSettings, stop: CancellationToken) {
    run_with(queue, settings, stop, || async {}).await;
}

/// [`run`], with `extra` run after each prune of finished jobs (the application's own history:
/// partitions ahead of time, retention).
pub async fn run_with<F, Fut>(
    queue: Queue,
    settings: MaintenanceSettings,
    stop: CancellationToken,
    mut extra: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut rescue = tokio::time::interval(settings.rescue_interval);
    let mut prune = tokio::time::interval(settings.prune_interval);
    rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = rescue.tick() => match queue.rescue(1000).await {
                Ok(r) if r.requeued + r.dead > 0 => {
                    info!(requeued = r.requeued, dead = r.dead, "rescued jobs with expired leases");
                    crate::metrics::record_rescued(r.requeued, r.dead);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "rescue pass failed"),
            },
            _ = prune.tick() => {
                match queue.prune(settings.completed_retention, settings.prune_batch, 100).await {
                    Ok(p) if p.busy => info!("finished jobs' table busy; prune left to the next pass"),
                    Ok(p) if p.jobs == 0 && p.ranges_created == 0 && p.ranges_dropped == 0 => {}
                    Ok(p) => info!(
                        deleted = p.jobs,
                        ranges_dropped = p.ranges_dropped,
                        ranges_created = p.ranges_created,
                        "pruned finished jobs"
                    ),
                    Err(e) => warn!(error = %e, "prune pass failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = extra() => {}
                }
            }
        }
    }
}
