//! `ingest-events {chain_id, to_block?}`: one ingestion pass for a chain (see `crate::ingest`).
//! Scheduled every few seconds it is the live mode; `chainsync ingest` runs it by hand.

use std::{collections::BTreeMap, sync::Arc};

use alloy::primitives::Address;
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{
    Enqueuer, Job, JobContext, JobError, NewJob,
    ids::{TokenKey, address_text},
    ingest::IngestSink,
    kinds::sync_user_balance::SyncUserBalance,
};

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
    }
}

/// Turns the holders a pass touched into `sync-user-balance` jobs, one per (token, holder) keyed
/// by the block that touched it (see [`SyncUserBalance::for_change_at`]).
pub struct FollowUps(pub Arc<dyn Enqueuer>);

#[async_trait]
impl IngestSink for FollowUps {
    async fn touched(
        &self,
        chain_id: u64,
        touched: &BTreeMap<(Address, Address), u64>,
    ) -> Result<(), JobError> {
        let jobs = balance_syncs(chain_id, touched)?;
        for chunk in jobs.chunks(1000) {
            self.0
                .enqueue_many(chunk.to_vec())
                .await
                .map_err(JobError::retry)?;
        }
        Ok(())
    }
}

/// The `sync-user-balance` jobs for touched (token, holder) pairs.
pub fn balance_syncs(
    chain_id: u64,
    touched: &BTreeMap<(Address, Address), u64>,
) -> Result<Vec<NewJob>, JobError> {
    touched
        .iter()
        .map(|((token, holder), block)| {
            SyncUserBalance::new(
                chain_id,
                address_text(holder),
                Some(TokenKey::Contract(*token)),
            )
            .for_change_at(*block)
            .map_err(JobError::fatal)
        })
        .collect()
}
