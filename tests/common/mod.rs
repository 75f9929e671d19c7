//! Helpers shared by the integration tests.

use sqlx::PgPool;

/// URL of the per-test database behind `pool` (for child processes and configs).
pub fn db_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("test")
    )
}
