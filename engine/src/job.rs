//! The [`Job`] trait: one implementation per job kind.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use crate::{JobContext, JobError, RetryPolicy};

/// A typed unit of work.
///
/// `KIND` is the wire name stored in `chainsync.jobs.kind`; it never changes once jobs of that
/// kind may be queued, whatever the Rust type is called. `Services` is what the application hands
/// every run (database handles, clients); the engine only clones it.
///
/// The arguments' JSON Schema (`#[derive(schemars::JsonSchema)]` beside `Deserialize`, with the
/// same serde attributes) is recorded in `chainsync.kinds.args_schema`, so `chainsync.enqueue()`
/// refuses arguments that would not decode, as the Rust enqueuers do. What only
/// [`Job::validate`] checks is not in the schema: such arguments are refused by the Rust
/// enqueuers and, enqueued through SQL, fail on their first run.
#[async_trait]
pub trait Job: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// Stable wire name, e.g. `sync-user-balance`.
    const KIND: &'static str;
    /// Queue the kind runs on unless the enqueuer picks another.
    const QUEUE: &'static str = "default";

    /// The application's services every run of this kind gets.
    type Services: Clone + Send + Sync + 'static;

    /// Retry policy of the kind; config (`[kinds.<kind>]`) and the job row can override it.
    fn retry_policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Checks the decoded arguments beyond their types (address format, ranges); the error
    /// names the argument (`Invalid::at("address", …)`). An error here is a bad-input error at
    /// enqueue time and `Fatal` at run time.
    fn validate(&self) -> Result<(), crate::Invalid> {
        Ok(())
    }

    /// How a [`Self::unique_key`] deduplicates. `false` (the default): only against a job of the
    /// key that has not started yet, so an enqueue while one runs always gets a job of its own
    /// (the running one may have read the world before the change that caused the enqueue): at
    /// most one queued job per key beside the running one. `true`: one active job per key,
    /// running included — an explicit choice of kinds such as a full sync.
    const UNIQUE_WHILE_RUNNING: bool = false;

    /// Key that deduplicates enqueues of these arguments (see [`Self::UNIQUE_WHILE_RUNNING`]).
    fn unique_key(&self) -> Option<String> {
        None
    }

    /// Does the work. Every effect must be idempotent: jobs run at least once.
    async fn run(&self, ctx: &JobContext<Self::Services>) -> Result<(), JobError>;
}
