//! Live mode of event ingestion: one small task per `[[ingest]]` entry with `live = true` polls
//! the chain head and, when a block is past the chain's confirmations, enqueues `ingest-events`
//! for it. The ingestion itself is the job, the same code path as scheduled and manual runs; the
//! job's unique key keeps at most one pass per chain queued or running.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Enqueuer, NewJob, Services, ingest::IngestConfig, kinds::ingest_events::IngestEvents};

/// Runs until `stop`; returns at once when no entry is live.
pub async fn run(queue: Arc<dyn Enqueuer>, services: Services, stop: CancellationToken) {
    let mut tasks = JoinSet::new();
    for cfg in services.settings.ingest.iter().filter(|c| c.live) {
        tasks.spawn(follow(
            queue.clone(),
            services.clone(),
            cfg.clone(),
            stop.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn follow(
    queue: Arc<dyn Enqueuer>,
    services: Services,
    cfg: IngestConfig,
    stop: CancellationToken,
) {
    let chain_id = cfg.chain_id;
    let chain = match services.chains.get(chain_id) {
        Ok(c) => c,
        Err(e) => {
            warn!(chain_id, error = %e, "live ingestion not started");
            return;
        }
    };
    let interval = cfg.poll_interval;
    info!(chain_id, poll = ?interval, "following new blocks");
    // The newest confirmed block a pass was enqueued for; a pass already running when a block
    // arrives may have read the head before it, so only a newly inserted job counts.
    let mut enqueued_for: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let pause = if failures == 0 {
            interval
        } else {
            (interval * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(30))
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let target = match chain.head().await {
            Ok(h) => h.saturating_sub(chain.confirmations()),
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    warn!(chain_id, error = %e, failures, "live ingestion cannot read the head");
                }
                continue;
            }
        };
        failures = 0;
        if enqueued_for.is_some_and(|b| b >= target) {
            continue;
        }
        let job = match NewJob::typed(&IngestEvents {
            chain_id,
            to_block: None,
        }) {
            Ok(j) => j,
            Err(e) => {
                warn!(chain_id, error = %e, "live ingestion stopped");
                return;
            }
        };
        match queue.enqueue(job).await {
            Ok(e) if e.inserted => {
                debug!(chain_id, block = target, job = %e.id, "new block: ingestion enqueued");
                enqueued_for = Some(target);
            }
            Ok(_) => {}
            Err(e) => warn!(chain_id, error = %e, "live ingestion cannot enqueue"),
        }
    }
}
