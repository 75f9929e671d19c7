//! `sync-balances {chain_id, token | asset_class}`: full sync of every tracked address.
//!
//! All batches of a run read the same pinned block through Multicall3 `aggregate3` (allowFailure,
//! so one bad token or holder does not sink a batch), several batches in flight, stored with
//! multi-row upserts. The run is keyed by the job id: a retried attempt reuses its block and skips
//! the batches it already wrote. See [`crate::balance_sync::sync_full`].

use async_trait::async_trait;
use chainsync_engine::Invalid;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError,
    balance_sync::{TokenSelector, sync_full},
    settings::AssetClass,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncBalances {
    pub chain_id: u64,
    /// `native`, a token address or a configured symbol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_class: Option<AssetClass>,
}

impl SyncBalances {
    pub fn selector(&self) -> TokenSelector {
        TokenSelector {
            token: self.token.clone(),
            asset_class: self.asset_class,
        }
    }
}

/// Exactly one of `token` and `asset_class`.
pub(crate) fn check_selector(
    token: &Option<String>,
    class: &Option<AssetClass>,
) -> Result<(), Invalid> {
    match (token, class) {
        (Some(_), Some(_)) => Err(Invalid::new("give either token or asset_class, not both")),
        (None, None) => Err(Invalid::new("token or asset_class is required")),
        (Some(t), None) if t.trim().is_empty() => Err(Invalid::at("token", "must not be empty")),
        _ => Ok(()),
    }
}

#[async_trait]
impl Job for SyncBalances {
    type Services = crate::Services;
    const UNIQUE_WHILE_RUNNING: bool = true;

    const KIND: &'static str = "sync-balances";

    fn validate(&self) -> Result<(), Invalid> {
        check_selector(&self.token, &self.asset_class)
    }

    /// One full sync per (chain, scope) at a time; a scheduled tick while one runs is dropped.
    fn unique_key(&self) -> Option<String> {
        Some(format!(
            "{}:{}:{}",
            Self::KIND,
            self.chain_id,
            self.selector().describe().to_ascii_lowercase()
        ))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // The kind's RPC class (priority or bulk) for everything this run sends.
        crate::chain::budget::for_job(ctx, async {
            let r = sync_full(
                &ctx.services,
                ctx.meta.id,
                self.chain_id,
                &self.selector(),
                None,
            )
            .await?;
            if r.points_dirty > 0 {
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
    fn exactly_one_scope() {
        let ok = SyncBalances {
            chain_id: 1,
            token: Some("RAT".into()),
            asset_class: None,
        };
        ok.validate().unwrap();
        let ok = SyncBalances {
            chain_id: 1,
            token: None,
            asset_class: Some(AssetClass::Major),
        };
        ok.validate().unwrap();
        assert_eq!(
            ok.unique_key().unwrap(),
            "sync-balances:1:asset class major"
        );
        let both = SyncBalances {
            chain_id: 1,
            token: Some("RAT".into()),
            asset_class: Some(AssetClass::Major),
        };
        assert!(both.validate().is_err());
        let none = SyncBalances {
            chain_id: 1,
            token: None,
            asset_class: None,
        };
        assert!(none.validate().is_err());
        let bad = serde_json::json!({"chain_id": 1, "asset_class": "gold"});
        assert!(serde_json::from_value::<SyncBalances>(bad).is_err());
    }
}
