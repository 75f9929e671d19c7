//! `compute-points {chain_id}`: every closed points window not computed yet and every window whose
//! history changed since it was computed, for every token of the chain with a rate (see
//! `crate::points::compute`). Idempotent; one pass per chain at a time.
//!
//! Ingestion enqueues it when its checkpoint crosses into a new hour of chain time, history
//! writers when they mark windows for a recompute, the daemon at start-up; a schedule entry with
//! fixed args (`args = { chain_id = 1 }`, `every = "1m"`) covers tokens without ingestion.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{Enqueuer, Job, JobContext, JobError, NewJob};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComputePoints {
    pub chain_id: u64,
}

#[async_trait]
impl Job for ComputePoints {
    type Services = crate::Services;

    const KIND: &'static str = "compute-points";

    fn unique_key(&self) -> Option<String> {
        Some(format!("{}:{}", Self::KIND, self.chain_id))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // The kind's RPC class (priority or bulk) for everything this run sends.
        crate::chain::budget::for_job(ctx, async {
            let r =
                crate::points::compute::compute(&ctx.services, self.chain_id, Some(ctx.meta.id))
                    .await?;
            info!(
                chain_id = self.chain_id,
                windows = r.windows,
                rows = r.rows,
                dirty = r.dirty,
                changed = r.changed,
                added = r.added,
                "points computed"
            );
            Ok(())
        })
        .await
    }
}

/// Enqueues the pass of `chain_id` when the chain has rated tokens. A pass already running does
/// not absorb it (the engine's unique keys deduplicate only jobs not started yet), so a change
/// made while a pass runs is always seen by the next one.
pub async fn enqueue(enqueuer: &dyn Enqueuer, chain_id: u64) -> Result<(), JobError> {
    let job = NewJob::typed(&ComputePoints { chain_id }).map_err(JobError::fatal)?;
    enqueuer.enqueue(job).await.map_err(JobError::retry)?;
    Ok(())
}
