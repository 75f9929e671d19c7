//! chainsync-jobs: WHAT work exists.
//!
//! Every sync action is a job kind (one file in [`kinds`]) implementing the engine's
//! [`chainsync_engine::Job`] with a stable wire name; [`registry`] is the one list of kinds.
//! Kinds are thin: they decode their arguments, call the domain ([`balance_sync`], [`ingest`],
//! [`points`], [`tracking`] over [`chain`] and the domain tables) and turn what the domain
//! returns into follow-up jobs. [`domain::Domain`] is what the daemon, the CLI and the HTTP API
//! need from the domain, so that they never name a kind.

pub mod alerts;
pub mod balance_sync;
pub mod cache;
pub mod chain;
pub mod console;
pub mod domain;
pub mod follow;
pub mod health;
pub mod history;
pub mod ids;
pub mod ingest;
pub mod kinds;
pub mod observe;
pub mod points;
pub mod services;
pub mod settings;
pub mod store;
pub mod tracking;

pub use chainsync_engine::{Enqueued, Enqueuer, Job, JobError, JobMeta, NewJob, RetryPolicy};
pub use services::{CACHE_TIMEOUT, Services};

/// The context every run of chainsync's kinds gets.
pub type JobContext = chainsync_engine::JobContext<Services>;

/// Every kind chainsync ships.
pub fn registry() -> chainsync_engine::Registry<Services> {
    chainsync_engine::Registry::new()
        .register::<kinds::noop::Noop>()
        .register::<kinds::sync_user_balance::SyncUserBalance>()
        .register::<kinds::sync_balances::SyncBalances>()
        .register::<kinds::reconcile_chain::ReconcileChain>()
        .register::<kinds::check_pending_tx::CheckPendingTx>()
        .register::<kinds::ingest_events::IngestEvents>()
        .register::<kinds::backfill_window::BackfillWindow>()
        .register::<kinds::compute_points::ComputePoints>()
        .register::<kinds::deliver_alert::DeliverAlert>()
}

/// Every migration chainsync needs, the engine's (`migrations/engine`) and the domain's
/// (`migrations/jobs`), in version order. Tests use it as
/// `#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]`.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        let engine = sqlx::migrate!("../migrations/engine");
        let domain = sqlx::migrate!("../migrations/jobs");
        sqlx::migrate::Migrator::with_migrations(
            engine.iter().chain(domain.iter()).cloned().collect(),
        )
    });

/// Migrations applied to the database behind `pool`, and how many [`MIGRATOR`] has.
pub async fn migrations_applied(pool: &sqlx::PgPool) -> Result<(i64, i64), sqlx::Error> {
    let expected = i64::try_from(MIGRATOR.iter().count()).unwrap_or(i64::MAX);
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok((0, expected));
    }
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM _sqlx_migrations WHERE success AND version = ANY($1)",
    )
    .bind(MIGRATOR.iter().map(|m| m.version).collect::<Vec<_>>())
    .fetch_one(pool)
    .await?;
    Ok((applied, expected))
}

/// Applies the engine's and the domain's migrations.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
