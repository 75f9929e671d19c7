//! `noop`: does nothing. For benchmarks and smoke tests of the queue itself.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError};

/// Optional `fail` makes the run fail: `"retry"` or `"fatal"` (smoke tests of the retry path).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Noop {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<NoopFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_ms: Option<u64>,
    /// Free-form payload, as in the queue benchmarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NoopFailure {
    Retry,
    Fatal,
}

#[async_trait]
impl Job for Noop {
    type Services = crate::Services;

    const KIND: &'static str = "noop";

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        if let Some(ms) = self.sleep_ms {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        match self.fail {
            Some(NoopFailure::Retry) => Err(JobError::retry("noop asked to fail (retry)")),
            Some(NoopFailure::Fatal) => Err(JobError::fatal("noop asked to fail (fatal)")),
            None => Ok(()),
        }
    }
}
