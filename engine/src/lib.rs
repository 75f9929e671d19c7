//! chainsync-engine: HOW work runs — a Postgres job queue for Rust applications.
//!
//! - the job protocol: [`Job`], [`JobError`], [`JobContext`], [`NewJob`], [`Enqueuer`],
//!   [`RetryPolicy`], the [`Registry`] of kinds;
//! - [`queue`]: the SQL over schema `chainsync` (enqueue, fetch with leases, fenced batched
//!   outcomes, persisted backoff, dead letters and replay, rescue, pruning) and its migrations;
//! - [`runtime`]: the worker runtime over apalis (LISTEN/NOTIFY fetchers, heartbeats, graceful
//!   shutdown) and the maintenance loop;
//! - [`scheduler`]: cron (in a time zone) and interval schedules whose ticks are claimed in
//!   `chainsync.cron_claims`, so any number of daemons enqueue each tick once;
//! - [`trace`]: the W3C `traceparent` stored with a job becomes the parent of its run's span.
//!
//! It names no concrete kind: applications bring their own.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use chainsync_engine::{
//!     Job, JobContext, JobError, NewJob, Registry,
//!     queue::{Policies, Queue},
//!     runtime::{Runtime, WorkerSettings},
//! };
//! use serde::{Deserialize, Serialize};
//!
//! /// What every run of the application's kinds gets.
//! #[derive(Clone)]
//! struct Mailer {
//!     from: String,
//! }
//!
//! #[derive(Serialize, Deserialize, schemars::JsonSchema)]
//! struct SendWelcome {
//!     user_id: i64,
//! }
//!
//! #[async_trait::async_trait]
//! impl Job for SendWelcome {
//!     const KIND: &'static str = "send-welcome";
//!     type Services = Mailer;
//!
//!     fn unique_key(&self) -> Option<String> {
//!         Some(format!("send-welcome:{}", self.user_id))
//!     }
//!
//!     async fn run(&self, ctx: &JobContext<Mailer>) -> Result<(), JobError> {
//!         // Effects must be idempotent: a job runs at least once.
//!         sqlx::query("INSERT INTO welcomed (user_id, sender) VALUES ($1, $2) ON CONFLICT DO NOTHING")
//!             .bind(self.user_id)
//!             .bind(&ctx.services.from)
//!             .execute(ctx.db())
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! let registry = Registry::new().register::<SendWelcome>();
//! let policies = Arc::new(Policies::from_kinds(registry.kinds()));
//! let queue = Queue::new(pool.clone(), registry.kinds().clone(), policies);
//! queue.migrate().await?;
//!
//! // Enqueue inside the application's own transaction: committed together or not at all.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO users (id) VALUES (7)").execute(&mut *tx).await?;
//! queue.enqueue_in(&mut tx, NewJob::typed(&SendWelcome { user_id: 7 })?).await?;
//! tx.commit().await?;
//!
//! // Run the workers until shutdown.
//! let services = Mailer { from: "hello@example.com".into() };
//! let runtime = Runtime::start(queue, Arc::new(registry), services, WorkerSettings::default());
//! tokio::signal::ctrl_c().await?;
//! runtime.stop().await;
//! # Ok(())
//! # }
//! ```

pub mod context;
pub mod duration;
pub mod error;
pub mod job;
pub mod metrics;
pub mod queue;
pub mod registry;
pub mod retry;
pub mod runtime;
pub mod scheduler;
pub mod sessions;
pub mod trace;

pub use context::{Enqueued, Enqueuer, JobContext, JobMeta, NewJob};
pub use error::{BoxError, Invalid, JobError, report};
pub use job::Job;
pub use registry::{JobCheckError, KindSpec, Kinds, Registry, args_schema};
pub use retry::RetryPolicy;
