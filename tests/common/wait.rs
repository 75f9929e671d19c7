//! Waiting for a condition, with a deadline. A wait that runs out panics with what it waited
//! for, how long, and (for [`Wait::until_ok`] and [`wait_count`]) what it saw last.

use std::{fmt::Debug, time::Duration};

use sqlx::PgPool;

use super::db::count;

/// How often a condition is looked at unless [`Wait::every`] says otherwise.
pub const POLL: Duration = Duration::from_millis(50);

/// A wait for `what`, at most `limit`.
pub fn wait(what: impl Into<String>, limit: Duration) -> Wait {
    Wait {
        what: what.into(),
        limit,
        every: POLL,
    }
}

/// Waits until `probe` returns `Some`; panics after `limit`, naming `what`.
pub async fn wait_for<T>(
    what: impl Into<String>,
    limit: Duration,
    probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    wait(what, limit).until(probe).await
}

/// Waits until `sql` returns `want`; panics after `limit` with the last value.
pub async fn wait_count(pool: &PgPool, sql: &str, want: i64, limit: Duration) {
    wait(format!("`{sql}` = {want}"), limit)
        .until_ok(async || match count(pool, sql).await {
            n if n == want => Ok(()),
            n => Err(n),
        })
        .await
}

/// A wait with a deadline; from [`wait`].
#[derive(Debug, Clone)]
pub struct Wait {
    what: String,
    limit: Duration,
    every: Duration,
}

impl Wait {
    /// Looks at the condition every `every` (default [`POLL`]).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Until `probe` returns `Some`.
    pub async fn until<T>(self, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
        self.run(async || probe().await.ok_or(None)).await
    }

    /// Until `probe` returns `Ok`; an `Err` is what it saw instead, shown if time runs out.
    pub async fn until_ok<T, S: Debug>(self, mut probe: impl AsyncFnMut() -> Result<T, S>) -> T {
        self.run(async || probe().await.map_err(|seen| Some(format!("{seen:?}"))))
            .await
    }

    async fn run<T>(self, mut probe: impl AsyncFnMut() -> Result<T, Option<String>>) -> T {
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            let seen = match probe().await {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            if tokio::time::Instant::now() >= deadline {
                let seen = seen
                    .map(|s| format!("; last seen: {s}"))
                    .unwrap_or_default();
                panic!(
                    "timed out after {:?} waiting for {}{seen}",
                    self.limit, self.what
                );
            }
            tokio::time::sleep(self.every).await;
        }
    }
}
