//! Wiring shared by the daemon, the CLI and tests: pool, queue, services.

use std::sync::Arc;

use chainsync_jobs::{Registry, Services};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{config::Config, queue::Queue};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database {0}: {1}")]
    Connect(String, sqlx::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("{0}")]
    Services(String),
    #[error("scratch database: {0}")]
    Scratch(String),
}

/// Drops and re-creates database `name` on the server of `admin_url`; returns its URL.
/// Used by the demo and the benchmarks, which work on throwaway databases.
pub async fn recreate_database(admin_url: &str, name: &str) -> Result<String, AppError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(AppError::Scratch(format!(
            "name must be [A-Za-z0-9_]+, got {name:?}"
        )));
    }
    let base = admin_url
        .rfind('/')
        .filter(|&i| i > admin_url.find("://").map_or(0, |s| s + 2))
        .map(|i| &admin_url[..i])
        .ok_or_else(|| AppError::Scratch("the database URL has no database part".into()))?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .map_err(|e| AppError::Connect(redact_url(admin_url), e))?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .map_err(|e| AppError::Scratch(e.to_string()))?;
    }
    admin.close().await;
    Ok(format!("{base}/{name}"))
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
        let registry = Arc::new(Registry::builtin());
        let policies = Arc::new(config.policies(&registry)?);
        let queue = Queue::new(pool, registry, policies)
            .retaining_completed(!config.maintenance.completed_retention.is_zero());
        Ok(Self {
            config: Arc::new(config),
            queue,
        })
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
            Arc::new(self.queue.clone()),
        )
        .map_err(AppError::Services)
    }
}
