//! Wiring shared by the daemon, the CLI and tests: pool, queue, services.

use std::sync::Arc;

use chainsync_engine::{
    Registry,
    queue::{Listen, Policies, Queue},
};
use chainsync_jobs::Services;
use sqlx::{PgPool, postgres::PgConnectOptions};

use crate::{
    config::Config,
    db::{HostSet, Pooler},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database {0}: {1}")]
    Connect(String, #[source] sqlx::Error),
    /// A database URL, host or connection named by its config key.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Queue(#[from] chainsync_engine::queue::QueueError),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A database setting that does not fit what the server is (a pooler where a direct
    /// connection is needed, a "replica" that is not one, a schema not migrated).
    #[error("{0}")]
    Database(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error(transparent)]
    Services(#[from] chainsync_jobs::chain::ChainSetupError),
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
    /// The read replica's pool (connected when first used), when `database.replica_url` is set.
    pub replica: Option<PgPool>,
    /// The hosts of `database_url` and the one the queue pool uses.
    hosts: Option<(Arc<HostSet>, usize)>,
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
    /// Connects the queue pool to `database_url` (its writable host when it names several).
    pub async fn connect(config: Config) -> Result<Self, AppError> {
        let set = HostSet::parse("database_url", &config.database_url, config.database.pooler)
            .map_err(AppError::Db)?;
        let (pool, current) = crate::db::connect_pool(&set, config.pool_size)
            .await
            .map_err(AppError::Db)?;
        let mut app = Self::with_pool(config, pool)?;
        app.hosts = Some((Arc::new(set), current));
        Ok(app)
    }

    pub fn with_pool(config: Config, pool: PgPool) -> Result<Self, AppError> {
        let registry = Arc::new(chainsync_jobs::registry());
        let policies = Arc::new(config.policies(registry.kinds())?);
        let queue = Queue::new(pool, registry.kinds().clone(), policies)
            .retaining_completed(!config.maintenance.completed_retention.is_zero());
        let replica = match &config.database.replica_url {
            None => None,
            Some(url) => {
                let set = HostSet::parse("database.replica_url", url, Pooler::None)
                    .map_err(AppError::Db)?;
                Some(crate::db::lazy_pool(&set, config.pool_size.min(10)))
            }
        };
        Ok(Self {
            config: Arc::new(config),
            queue,
            registry,
            replica,
            hosts: None,
        })
    }

    /// Where read-only pages and `GET /v1/balances` read: the replica when one is configured.
    pub fn read_pool(&self) -> &PgPool {
        self.replica.as_ref().unwrap_or(self.queue.pool())
    }

    /// The direct URL's hosts, when `database.direct_url` is set.
    fn direct_hosts(&self) -> Result<Option<HostSet>, AppError> {
        self.config
            .database
            .direct_url
            .as_deref()
            .map(|u| HostSet::parse("database.direct_url", u, Pooler::None))
            .transpose()
            .map_err(AppError::Db)
    }

    /// Applies the engine's and the domain's migrations and records the known kinds for
    /// `chainsync.enqueue()`. Behind a transaction-mode pooler the migrations run over
    /// `database.direct_url` (the migrator holds a session advisory lock).
    pub async fn migrate(&self) -> Result<(), AppError> {
        match self.config.database.pooler {
            Pooler::None => chainsync_jobs::migrate(self.pool()).await?,
            Pooler::Transaction => {
                let Some(direct) = self.direct_hosts()? else {
                    return Err(AppError::Database(
                        "database.direct_url: migrations need a direct connection to Postgres \
                         (the migrator holds a session advisory lock, which a transaction-mode \
                         pooler does not keep); set it, or run `chainsync migrate` with \
                         database.pooler = \"none\" and --database-url of Postgres itself"
                            .into(),
                    ));
                };
                let (pool, _) = crate::db::connect_pool(&direct, 1)
                    .await
                    .map_err(AppError::Db)?;
                let r = chainsync_jobs::migrate(&pool).await;
                pool.close().await;
                r?;
            }
        }
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

    /// Start-up checks of the database settings against the servers: `database_url` is not a
    /// transaction-mode pooler unless `database.pooler` says so, `database.direct_url` is not
    /// one, `database.replica_url` is a replica.
    pub async fn check_database(&self) -> Result<(), AppError> {
        let db = &self.config.database;
        if db.pooler == Pooler::None {
            let opts = self.queue.pool().connect_options();
            if crate::db::shares_backends(&opts)
                .await
                .map_err(|e| AppError::Connect(redact_url(&self.config.database_url), e))?
            {
                return Err(AppError::Database(
                    "database_url goes through a transaction-mode pooler (two connections \
                     shared one server backend): set database.pooler = \"transaction\", and \
                     database.direct_url for migrations and LISTEN"
                        .into(),
                ));
            }
        }
        if let Some(direct) = self.direct_hosts()? {
            let (i, c) = direct.find_writable(0).await.map_err(AppError::Db)?;
            let _ = sqlx::Connection::close(c).await;
            if crate::db::shares_backends(direct.options(i))
                .await
                .map_err(|e| AppError::Database(format!("database.direct_url: {e}")))?
            {
                return Err(AppError::Database(
                    "database.direct_url goes through a transaction-mode pooler (two \
                     connections shared one server backend): it must reach Postgres itself, \
                     migrations and LISTEN need a session"
                        .into(),
                ));
            }
        }
        if let Some(url) = &db.replica_url {
            let set =
                HostSet::parse("database.replica_url", url, Pooler::None).map_err(AppError::Db)?;
            crate::db::check_replica(&set).await.map_err(AppError::Db)?;
        }
        Ok(())
    }

    /// What a daemon does about migrations at start-up: applies them
    /// (`database.migrate`, by default when it has a direct connection), or checks they were
    /// applied; then records the known kinds.
    pub async fn prepare_schema(&self) -> Result<(), AppError> {
        if self.config.database.migrates() {
            return self.migrate().await;
        }
        let (applied, expected) = chainsync_jobs::migrations_applied(self.pool())
            .await
            .map_err(|e| AppError::Connect(redact_url(&self.config.database_url), e))?;
        if applied < expected {
            return Err(AppError::Database(format!(
                "{applied} of {expected} migrations applied and this daemon does not migrate \
                 (database.migrate): run `chainsync migrate` against Postgres itself first"
            )));
        }
        self.queue.sync_kinds().await?;
        Ok(())
    }

    /// Where worker runtimes listen for new jobs: the queue pool; behind a transaction-mode
    /// pooler a direct connection of its own (`database.direct_url`), or none (polling only).
    pub async fn listen_source(
        &self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Listen, AppError> {
        match self.config.database.pooler {
            Pooler::None => Ok(Listen::Pool),
            Pooler::Transaction => match self.direct_hosts()? {
                None => Ok(Listen::Off),
                Some(direct) => {
                    let (pool, current) = crate::db::connect_pool(&direct, 1)
                        .await
                        .map_err(AppError::Db)?;
                    if direct.len() > 1 {
                        tokio::spawn(crate::db::follow_primary(
                            Arc::new(direct),
                            pool.clone(),
                            current,
                            self.config.database.failover_check,
                            stop.clone(),
                        ));
                    }
                    Ok(Listen::On(pool))
                }
            },
        }
    }

    /// With several hosts in `database_url`: a task keeping the queue pool on the writable one
    /// until `stop` (see [`crate::db::follow_primary`]).
    pub fn follow_primary(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (set, current) = self.hosts.clone()?;
        if set.len() < 2 {
            return None;
        }
        Some(tokio::spawn(crate::db::follow_primary(
            set,
            self.queue.pool().clone(),
            current,
            self.config.database.failover_check,
            stop,
        )))
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

/// The daemon's job-running parts in-process: workers and live ingestion over an [`App`], without
/// the scheduler, maintenance or HTTP (benchmarks and tests drive those themselves).
pub struct Running {
    rt: crate::runtime::Runtime,
    stop: tokio_util::sync::CancellationToken,
    follower: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(app: &App) -> Result<Self, AppError> {
        let services = app.services().await?;
        let rt = crate::runtime::Runtime::start(
            app.queue.clone(),
            app.registry.clone(),
            services.clone(),
            app.config.worker.clone(),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let follower = {
            let domain = chainsync_jobs::domain::Domain::new(services);
            let (queue, stop) = (app.queue.clone(), stop.clone());
            tokio::spawn(async move { domain.follow(Arc::new(queue), stop).await })
        };
        Ok(Self { rt, stop, follower })
    }

    /// Stops ingestion, then the workers (running jobs finish or are given back). The error is
    /// the ingestion task's panic, if it panicked (the workers are stopped all the same).
    pub async fn stop(self) -> Result<(), tokio::task::JoinError> {
        self.stop.cancel();
        let followed = self.follower.await;
        self.rt.stop().await;
        followed
    }
}
