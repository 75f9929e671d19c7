//! Scratch databases of the tests (one per test, from `#[sqlx::test]`) and small queries on them.

use chainsync::{app::App, config::Config};
use sqlx::{PgPool, postgres::PgPoolOptions};

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

/// A pool of its own on the same database, as another daemon would have.
pub async fn own_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap()
}

/// The one `bigint` that `sql` returns.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    match try_count(pool, sql).await {
        Ok(n) => n,
        Err(e) => panic!("`{sql}`: {e}"),
    }
}

/// [`count`], with the error instead of a panic (e.g. while the database is down).
pub async fn try_count(pool: &PgPool, sql: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
}

/// The application over the test's database, migrated: `config` is TOML without
/// `database_url` (the test's database is put first).
pub async fn app(pool: &PgPool, config: &str) -> App {
    let text = format!("database_url = \"{}\"\n{config}", db_url(pool));
    let config = match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => panic!("test config: {e}\n{text}"),
    };
    let app = App::with_pool(config, pool.clone()).unwrap();
    app.migrate().await.unwrap();
    app
}
