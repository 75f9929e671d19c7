//! The services every job run of chainsync's kinds gets (the `S` of the engine's
//! `JobContext<S>`): database, optional Redis cache, domain settings, chain providers.

use std::sync::Arc;

use sqlx::PgPool;

use crate::{chain::Chains, settings::DomainConfig};

/// Shared, cheaply clonable services every job run gets.
#[derive(Clone)]
pub struct Services {
    pub db: PgPool,
    /// Optional: without Redis everything works from Postgres.
    pub redis: Option<redis::aio::ConnectionManager>,
    pub settings: Arc<DomainConfig>,
    /// One provider per configured chain, built from `settings.chains`.
    pub chains: Arc<Chains>,
    /// Skips `redis` for a while after it failed (see [`crate::cache`]).
    pub cache: Arc<crate::cache::CacheBreaker>,
}

impl Services {
    pub fn new(
        db: PgPool,
        redis: Option<redis::aio::ConnectionManager>,
        settings: Arc<DomainConfig>,
    ) -> Result<Self, crate::chain::ChainSetupError> {
        let backend = crate::chain::budget::Backend {
            db: Some(db.clone()),
            redis: redis.clone(),
            settings: Arc::new((&settings.rpc_budget).into()),
        };
        let chains = Arc::new(Chains::from_settings_with(&settings, &backend)?);
        Ok(Self {
            db,
            redis,
            settings,
            chains,
            cache: Arc::default(),
        })
    }
}

impl Services {
    /// The Redis connection when one is configured and the cache breaker lets a call through;
    /// report the call's outcome with [`Self::cache_outcome`].
    pub fn cache_conn(&self) -> Option<redis::aio::ConnectionManager> {
        let conn = self.redis.as_ref()?;
        self.cache.allow().then(|| conn.clone())
    }

    /// Records whether a cache call worked (a failure makes callers skip Redis for a while).
    pub fn cache_outcome(&self, ok: bool) {
        if ok {
            self.cache.success();
        } else {
            self.cache.failure();
        }
    }
}

/// Longest wait for one cache call before falling back to Postgres.
pub const CACHE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);
