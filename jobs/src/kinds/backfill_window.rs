//! `backfill-window {chain_id, token, from, to}`: points for every hourly window of `[from, to)`
//! not computed yet (see `crate::points`). Idempotent and resumable; long ranges are split into
//! child jobs.

use async_trait::async_trait;
use chainsync_engine::Invalid;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{Job, JobContext, JobError, NewJob, ids::TokenKey, points::backfill::Gap};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillWindow {
    pub chain_id: u64,
    /// Token address or "native".
    pub token: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[async_trait]
impl Job for BackfillWindow {
    type Services = crate::Services;

    const KIND: &'static str = "backfill-window";

    fn validate(&self) -> Result<(), Invalid> {
        TokenKey::parse(&self.token).map_err(|e| Invalid::at("token", e.to_string()))?;
        if self.from >= self.to {
            return Err(Invalid::new("from must be before to"));
        }
        Ok(())
    }

    fn unique_key(&self) -> Option<String> {
        Some(format!(
            "{}:{}:{}:{}:{}",
            Self::KIND,
            self.chain_id,
            self.token.to_ascii_lowercase(),
            self.from.timestamp(),
            self.to.timestamp()
        ))
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // The kind's RPC class (priority or bulk) for everything this run sends.
        crate::chain::budget::for_job(ctx, async {
            let token = TokenKey::parse(&self.token).map_err(JobError::fatal)?;
            let r = crate::points::backfill::backfill(
                &ctx.services,
                Some(ctx.meta.id),
                self.chain_id,
                &token,
                self.from,
                self.to,
            )
            .await?;
            if !r.split.is_empty() {
                // Split so that no single job runs for hours; the children are resumable like this one.
                let children = r
                    .split
                    .iter()
                    .map(|&(from, to)| {
                        NewJob::typed(&Self {
                            chain_id: self.chain_id,
                            token: self.token.clone(),
                            from,
                            to,
                        })
                        .map_err(JobError::fatal)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                ctx.enqueue_many(children).await?;
            }
            info!(
                chain_id = self.chain_id,
                token = %self.token,
                addresses = r.addresses,
                computed = r.windows_computed,
                skipped = r.windows_skipped,
                children = r.split.len(),
                "points backfilled"
            );
            Ok(())
        })
        .await
    }
}

impl BackfillWindow {
    /// One job per gap.
    pub fn jobs_for(gaps: &[Gap]) -> Result<Vec<NewJob>, chainsync_engine::Invalid> {
        gaps.iter()
            .map(|g| {
                NewJob::typed(&Self {
                    chain_id: g.chain_id,
                    token: g.token.clone(),
                    from: g.from,
                    to: g.to,
                })
            })
            .collect()
    }
}
