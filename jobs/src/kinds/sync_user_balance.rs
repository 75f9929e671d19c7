//! `sync-user-balance {chain_id, address, token?}`: the event-driven sync of one holder.
//!
//! Reads the holder's balance of one token (or of every configured token of the chain when
//! `token` is absent) at a pinned block, in one Multicall3 call, and stores it: the upsert never
//! lets an older block overwrite a newer one, a `balance_changes` row is appended only when the
//! amount changed, and Redis is written through when configured.

use async_trait::async_trait;
use chainsync_engine::Invalid;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError,
    balance_sync::sync_holder,
    ids::{TokenKey, normalize_address_any, parse_address_any},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncUserBalance {
    pub chain_id: u64,
    /// The holder: `0x` + 40 hex digits; on TRON chains also base58check `T…` or `41…` hex.
    pub address: String,
    /// `native`, a token address or a configured symbol; absent = every token of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl SyncUserBalance {
    pub fn new(chain_id: u64, address: impl Into<String>, token: Option<TokenKey>) -> Self {
        Self {
            chain_id,
            address: address.into(),
            token: token.map(|t| t.text()),
        }
    }

    /// The job for a change seen at `block`, keyed by that block too. The plain key would
    /// collapse it into a job that is already running and may have read an older block; with the
    /// block in the key a later change always gets its own read, while the same change seen
    /// twice (a replayed range) is still enqueued once.
    pub fn for_change_at(&self, block: u64) -> Result<crate::NewJob, chainsync_engine::Invalid> {
        let mut job = crate::NewJob::typed(self)?;
        job.unique_key = job.unique_key.map(|k| format!("{k}@{block}"));
        Ok(job)
    }
}

#[async_trait]
impl Job for SyncUserBalance {
    type Services = crate::Services;

    const KIND: &'static str = "sync-user-balance";

    fn validate(&self) -> Result<(), Invalid> {
        parse_address_any(&self.address).map_err(|e| Invalid::at("address", e.to_string()))?;
        if let Some(t) = &self.token
            && t.trim().is_empty()
        {
            return Err(Invalid::at("token", "must not be empty when given"));
        }
        Ok(())
    }

    /// One queued job per (chain, holder, token): a burst of events collapses into one read,
    /// while an enqueue during a run gets a job of its own that reads a newer block.
    fn unique_key(&self) -> Option<String> {
        let address = normalize_address_any(&self.address).ok()?;
        let token = match &self.token {
            None => "*".to_string(),
            Some(t) => TokenKey::parse(t).map_or_else(|_| t.to_ascii_lowercase(), |k| k.text()),
        };
        Some(format!(
            "{}:{}:{address}:{token}",
            Self::KIND,
            self.chain_id
        ))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // The kind's RPC class (priority or bulk) for everything this run sends.
        crate::chain::budget::for_job(ctx, async {
            let o = sync_holder(
                &ctx.services,
                self.chain_id,
                &self.address,
                self.token.as_deref(),
            )
            .await?;
            tracing::debug!(
                chain_id = self.chain_id,
                written = o.written,
                changed = o.changed,
                stale = o.stale,
                "holder synced"
            );
            if o.points_dirty > 0 {
                crate::kinds::compute_points::enqueue(&*ctx.enqueuer, self.chain_id).await?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_unique_keys() {
        let j = SyncUserBalance::new(1, "0xABCDEF0123456789abcdef0123456789abcdef01", None);
        j.validate().unwrap();
        assert_eq!(
            j.unique_key().unwrap(),
            "sync-user-balance:1:0xabcdef0123456789abcdef0123456789abcdef01:*"
        );
        let mut k = j.clone();
        k.token = Some("0x00000000000000000000000000000000000000AA".into());
        assert!(
            k.unique_key()
                .unwrap()
                .ends_with(":0x00000000000000000000000000000000000000aa")
        );
        let bad = SyncUserBalance::new(1, "0x1234", None);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("address:")
        );
        let at = j.for_change_at(42).unwrap();
        assert_eq!(
            at.unique_key.unwrap(),
            "sync-user-balance:1:0xabcdef0123456789abcdef0123456789abcdef01:*@42"
        );
        assert_eq!(at.args, serde_json::to_value(&j).unwrap());
        let args = serde_json::json!({"chain_id": 1, "address": "0xabcdef0123456789abcdef0123456789abcdef01", "tokn": "x"});
        assert!(serde_json::from_value::<SyncUserBalance>(args).is_err());
    }
}
