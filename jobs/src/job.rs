//! The [`Job`] trait: one implementation per job kind, one file per kind under `kinds/`.

use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};

use crate::{JobContext, JobError, RetryPolicy};

/// A typed unit of sync work.
///
/// `KIND` is the wire name stored in `chainsync.jobs.kind`; it never changes once jobs of that
/// kind may be queued, whatever the Rust type is called.
#[async_trait]
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable wire name, e.g. `sync-user-balance`.
    const KIND: &'static str;
    /// Queue the kind runs on unless the enqueuer picks another.
    const QUEUE: &'static str = "default";

    /// Retry policy of the kind; config (`[kinds.<kind>]`) and the job row can override it.
    fn retry_policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Checks the decoded arguments beyond their types (address format, ranges).
    /// An error here is a bad-input error at enqueue time and `Fatal` at run time.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Key under which at most one job of these arguments is active at a time.
    fn unique_key(&self) -> Option<String> {
        None
    }

    /// Does the work. Every effect must be idempotent: jobs run at least once.
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError>;
}
