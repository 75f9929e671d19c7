//! chainsync-jobs: WHAT work exists.
//!
//! Every sync action is a [`Job`]: a serde type with a stable wire name ([`Job::KIND`]) and an
//! async `run`. The one list of kinds is [`registry::Registry::builtin`]; the engine in the
//! `chainsync` crate never names a concrete kind.

pub mod balance_sync;
pub mod cache;
pub mod chain;
pub mod context;
pub mod error;
pub mod ids;
pub mod ingest;
pub mod job;
pub mod kinds;
pub mod points;
pub mod registry;
pub mod retry;
pub mod settings;
pub mod store;
pub mod tracking;

pub use context::{Enqueued, Enqueuer, JobContext, JobMeta, NewJob, Services};
pub use error::JobError;
pub use job::Job;
pub use registry::{KindSpec, Registry};
pub use retry::RetryPolicy;
