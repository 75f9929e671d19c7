//! `ingest-events {chain_id, to_block?}`: one ingestion pass for a chain (see `crate::ingest`).
//! Scheduled every few seconds it is the live mode; `chainsync ingest` runs it by hand.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{Job, JobContext, JobError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestEvents {
    pub chain_id: u64,
    /// Stop at this block (default: head − confirmations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_block: Option<u64>,
}

#[async_trait]
impl Job for IngestEvents {
    const KIND: &'static str = "ingest-events";

    /// One pass per chain at a time.
    fn unique_key(&self) -> Option<String> {
        Some(format!("{}:{}", Self::KIND, self.chain_id))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let r = crate::ingest::ingest(ctx, self.chain_id, self.to_block).await?;
        info!(
            chain_id = self.chain_id,
            from = r.from_block,
            to = r.to_block,
            logs = r.logs,
            stored = r.stored,
            reorged = r.reorged_blocks,
            caught_up = r.caught_up,
            "events ingested"
        );
        Ok(())
    }
}
