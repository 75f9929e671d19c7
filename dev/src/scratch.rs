//! Throwaway databases for the demo, the benchmarks and the tests.

use sqlx::postgres::PgPoolOptions;

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("scratch database name must be [A-Za-z0-9_]+, got {0:?}")]
    BadName(String),
    #[error("the database URL has no database part")]
    NoDatabasePart,
    #[error("scratch database {name}: {source}")]
    Db {
        name: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Drops and re-creates database `name` on the server of `admin_url`; returns its URL.
pub async fn recreate_database(admin_url: &str, name: &str) -> Result<String, ScratchError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ScratchError::BadName(name.to_string()));
    }
    let url = database_url(admin_url, name)?;
    let db = |source| ScratchError::Db {
        name: name.to_string(),
        source,
    };
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .map_err(db)?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .map_err(db)?;
    }
    admin.close().await;
    Ok(url)
}

/// `admin_url` with its database part replaced by `name`.
pub fn database_url(admin_url: &str, name: &str) -> Result<String, ScratchError> {
    let base = admin_url
        .rfind('/')
        .filter(|&i| i > admin_url.find("://").map_or(0, |s| s + 2))
        .map(|i| &admin_url[..i])
        .ok_or(ScratchError::NoDatabasePart)?;
    Ok(format!("{base}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_part() {
        assert_eq!(
            database_url("postgres://u@h:5432/test", "x").ok(),
            Some("postgres://u@h:5432/x".to_string())
        );
        assert!(database_url("postgres://h", "x").is_err());
    }
}
