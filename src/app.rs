//! Wiring shared by the daemon, the CLI and tests: pool, queue, services.

use std::sync::Arc;

use chainsync_engine::{
    Registry,
    queue::{Policies, Queue},
};
use chainsync_jobs::Services;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database {0}: {1}")]
    Connect(String, sqlx::Error),
    #[error(transparent)]
    Queue(#[from] chainsync_engine::queue::QueueError),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("{0}")]
    Services(String),
}

/// Connection options for chainsync's pools: the URL plus `plan_cache_mode = force_custom_plan`.
///
/// The queue's statements stay prepared (one round trip each) but are planned at every run with
/// the parameters and the table as they are. Postgres would otherwise switch a prepared statement
/// to a generic plan after five runs, and a generic plan made while `chainsync.jobs` was nearly
/// empty stays a sequential scan when a million jobs arrive (see `crate::queue`).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, AppError> {
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e| AppError::Connect(redact_url(url), e))?;
    Ok(force_custom_plans(opts))
}

/// `opts` with `plan_cache_mode = force_custom_plan` (see [`connect_options`]).
pub fn force_custom_plans(opts: PgConnectOptions) -> PgConnectOptions {
    opts.options([("plan_cache_mode", "force_custom_plan")])
}

/// Everything a command needs, built from the config.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub queue: Queue,
    /// chainsync's kinds and how to run them.
    pub registry: Arc<Registry<Services>>,
}

/// A queue of chainsync's kinds with their default policies.
pub fn builtin_queue(pool: PgPool) -> Queue {
    let registry = chainsync_jobs::registry();
    let policies = Arc::new(Policies::from_kinds(registry.kinds()));
    Queue::new(pool, registry.kinds().clone(), policies)
}

/// Postgres URL without credentials, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl App {
    pub async fn connect(config: Config) -> Result<Self, AppError> {
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(connect_options(&config.database_url)?)
            .await
            .map_err(|e| AppError::Connect(redact_url(&config.database_url), e))?;
        Self::with_pool(config, pool)
    }

    pub fn with_pool(config: Config, pool: PgPool) -> Result<Self, AppError> {
        let registry = Arc::new(chainsync_jobs::registry());
        let policies = Arc::new(config.policies(registry.kinds())?);
        let queue = Queue::new(pool, registry.kinds().clone(), policies)
            .retaining_completed(!config.maintenance.completed_retention.is_zero());
        Ok(Self {
            config: Arc::new(config),
            queue,
            registry,
        })
    }

    /// Applies the engine's and the domain's migrations and records the known kinds for
    /// `chainsync.enqueue()`.
    pub async fn migrate(&self) -> Result<(), AppError> {
        chainsync_jobs::migrate(self.pool()).await?;
        self.queue.sync_kinds().await?;
        self.apply_limits().await
    }

    /// Writes the config's cluster-wide limits (`[queues.*]`, `[kinds.*]`) to Postgres, where
    /// every daemon's next fetch reads them; limits set at runtime stay in force.
    pub async fn apply_limits(&self) -> Result<(), AppError> {
        let queues = self.config.queue_limits(self.queue.kinds())?;
        self.queue
            .apply_config_limits(&queues, self.queue.policies().kind_limits())
            .await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        self.queue.pool()
    }

    /// Services for job runs. Redis is optional and its absence is not an error.
    pub async fn services(&self) -> Result<Services, AppError> {
        let redis = match &self.config.redis_url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| AppError::Redis(e.to_string()))?;
                match redis::aio::ConnectionManager::new(client).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis unavailable at start-up; continuing without the cache");
                        None
                    }
                }
            }
        };
        Services::new(
            self.pool().clone(),
            redis,
            Arc::new(self.config.domain.clone()),
        )
        .map_err(AppError::Services)
    }
}
