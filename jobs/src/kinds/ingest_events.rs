//! `ingest-events {chain_id, to_block?}`: one ingestion pass for a chain (see `crate::ingest`).
//! Scheduled every few seconds it is the live mode; `chainsync ingest` runs it by hand.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{Enqueuer, Job, JobContext, JobError, NewJob, ingest::IngestSink};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestEvents {
    pub chain_id: u64,
    /// Stop at this block (default: head − confirmations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_block: Option<u64>,
}

#[async_trait]
impl Job for IngestEvents {
    type Services = crate::Services;
    const UNIQUE_WHILE_RUNNING: bool = true;

    const KIND: &'static str = "ingest-events";

    /// One pass per chain at a time.
    fn unique_key(&self) -> Option<String> {
        Some(format!("{}:{}", Self::KIND, self.chain_id))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // The kind's RPC class (priority or bulk) for everything this run sends.
        crate::chain::budget::for_job(ctx, async {
            let r = crate::ingest::ingest(
                &ctx.services,
                &FollowUps(ctx.enqueuer.clone()),
                self.chain_id,
                self.to_block,
            )
            .await?;
            info!(
                chain_id = self.chain_id,
                from = r.from_block,
                to = r.to_block,
                logs = r.logs,
                stored = r.stored,
                history_reads = r.history_reads,
                history_rows = r.history_rows,
                reorged = r.reorged_blocks,
                caught_up = r.caught_up,
                "events ingested"
            );
            if !r.caught_up {
                // Long backfills continue in a fresh job so that no run lasts for hours. It carries
                // no unique key: this pass holds the chain's key until it finishes.
                let next = NewJob {
                    unique_key: None,
                    ..NewJob::typed(self).map_err(JobError::fatal)?
                };
                ctx.enqueuer.enqueue(next).await.map_err(JobError::retry)?;
            }
            Ok(())
        })
        .await
    }
}

/// Turns what a pass leaves to do into jobs: `compute-points` for the chain when windows are due.
pub struct FollowUps(pub Arc<dyn Enqueuer>);

#[async_trait]
impl IngestSink for FollowUps {
    async fn points_due(&self, chain_id: u64) -> Result<(), JobError> {
        crate::kinds::compute_points::enqueue(&*self.0, chain_id).await
    }
}
