//! How chainsync reaches Postgres (`database_url` and `[database]` in config): directly or
//! through a transaction-mode pooler such as PgBouncer, over one host or several with failover
//! to the writable one, a direct connection for migrations and LISTEN, and a read replica.
//!
//! - **Transaction-mode pooler** (`database.pooler = "transaction"`): the pool keeps no
//!   statement cache, so every query is one unnamed statement parsed and executed in one
//!   protocol sequence (see `vendor/sqlx-postgres/PATCHED.md`), and sends no startup options.
//!   Nothing chainsync runs keeps session state across transactions (its advisory locks are
//!   transaction-scoped, its `SET`s are `SET LOCAL`); what needs a session, the migrator's
//!   advisory lock and `LISTEN`, goes through `database.direct_url`.
//! - **Several hosts** (`postgres://u@a:5432,b:5432/db?target_session_attrs=read-write`): the
//!   pool connects to the first host that is not in recovery; a daemon then checks its host
//!   every `database.failover_check` and, when it is gone or read-only, finds the new primary and
//!   points the pool (and new connections) there, without a restart. Every new connection is
//!   checked to be writable, so none lands on a standby.

use std::{sync::Arc, time::Duration};

use chainsync_engine::Invalid;
use serde::{Deserialize, Serialize};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What sits between chainsync and Postgres.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// Postgres itself, or a pooler in session mode.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`, managed poolers).
    Transaction,
}

/// `[database]` in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// What `database_url` reaches: `"none"` (Postgres, or a session-mode pooler) or
    /// `"transaction"` (a transaction-mode pooler).
    pub pooler: Pooler,
    /// A URL that reaches Postgres without a transaction-mode pooler: migrations and LISTEN
    /// when `database_url` goes through one.
    pub direct_url: Option<String>,
    /// Whether the daemon applies migrations at start-up. Unset: when it has a direct
    /// connection (no pooler, or `direct_url`); otherwise it checks that they were applied.
    pub migrate: Option<bool>,
    /// A read replica for `GET /v1/balances` and the console's chain page.
    pub replica_url: Option<String>,
    /// With several hosts in `database_url`: how often a daemon checks that its host is
    /// still the writable primary.
    #[serde(with = "chainsync_engine::duration::text")]
    pub failover_check: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            pooler: Pooler::None,
            direct_url: None,
            migrate: None,
            replica_url: None,
            failover_check: Duration::from_secs(1),
        }
    }
}

/// A database URL, host or connection that cannot be used; every variant names its config key.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A URL in config that cannot be used.
    #[error("{key}: {problem}")]
    Url {
        key: &'static str,
        #[source]
        problem: UrlProblem,
    },
    /// No host of the list accepted a connection and was writable: each host and why.
    #[error("{key}: no writable host ({})", hosts_text(.hosts))]
    NoWritable {
        key: &'static str,
        hosts: Vec<(String, HostError)>,
    },
    /// The pool could not connect to the host.
    #[error("{key} ({url}): {source}{}", pooler_hint(.source))]
    Connect {
        key: &'static str,
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// The replica cannot be used as one.
    #[error("{key} ({hosts}): {reason}")]
    Replica {
        key: &'static str,
        hosts: String,
        #[source]
        reason: HostError,
    },
}

/// Why a database URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlProblem {
    #[error("must start with postgres://")]
    Scheme,
    #[error(
        "target_session_attrs={0} is not supported (read-write: chainsync always connects to the writable host of several)"
    )]
    SessionAttrs(String),
    #[error("empty host in the host list")]
    EmptyHost,
    /// sqlx refused the URL of one host (shown without credentials).
    #[error("{source} (in {url})")]
    Options {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Why one host was not usable.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("connect timed out after 5s")]
    Timeout,
    #[error("{0}")]
    Connect(#[source] sqlx::Error),
    #[error("read-only (in recovery)")]
    ReadOnly,
    #[error("not a replica (pg_is_in_recovery() is false)")]
    NotReplica,
}

fn hosts_text(hosts: &[(String, HostError)]) -> String {
    hosts
        .iter()
        .map(|(url, e)| format!("{url}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A hint when the server looks like a pooler that refused a startup parameter.
fn pooler_hint(e: &sqlx::Error) -> &'static str {
    if e.to_string().contains("unsupported startup parameter") {
        ": this is a pooler (PgBouncer); in transaction mode set database.pooler = \
         \"transaction\" (its connections send no startup parameters)"
    } else {
        ""
    }
}

impl DatabaseSettings {
    pub fn validate(&self, database_url: &str) -> Result<(), Invalid> {
        let check = |key: &'static str, url: &str, pooler: Pooler| {
            HostSet::parse(key, url, pooler).map_err(|e| match e {
                DbError::Url { key, problem } => Invalid::at(key, problem.to_string()),
                other => Invalid::new(other.to_string()),
            })
        };
        check("database_url", database_url, self.pooler)?;
        if let Some(u) = &self.direct_url {
            check("database.direct_url", u, Pooler::None)?;
        }
        if let Some(u) = &self.replica_url {
            let set = check("database.replica_url", u, Pooler::None)?;
            if set.len() > 1 {
                return Err(Invalid::at("database.replica_url", "give one host"));
            }
        }
        if self.migrate == Some(true)
            && self.pooler == Pooler::Transaction
            && self.direct_url.is_none()
        {
            return Err(Invalid::at(
                "database.migrate",
                "migrations need a session (the migrator holds an \
                 advisory lock), which a transaction-mode pooler does not keep: set \
                 database.direct_url, or migrate = false and run `chainsync migrate` against \
                 Postgres itself",
            ));
        }
        if self.failover_check < Duration::from_millis(100)
            || self.failover_check > Duration::from_secs(600)
        {
            return Err(Invalid::at(
                "database.failover_check",
                "must be in 100ms..=10m",
            ));
        }
        Ok(())
    }

    /// Whether a daemon applies migrations at start-up.
    pub fn migrates(&self) -> bool {
        self.migrate
            .unwrap_or(self.pooler == Pooler::None || self.direct_url.is_some())
    }
}

/// The hosts of one configured URL, each as its own connect options.
#[derive(Clone)]
pub struct HostSet {
    /// Config key, for messages.
    pub key: &'static str,
    urls: Vec<String>,
    options: Vec<PgConnectOptions>,
}

impl std::fmt::Debug for HostSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSet")
            .field("key", &self.key)
            .field("hosts", &self.shown())
            .finish()
    }
}

impl HostSet {
    /// Splits `postgres://user@a:1,b:2/db?…` into one URL per host. `target_session_attrs`
    /// may be `read-write` or `primary` (what chainsync always wants of several hosts).
    pub fn parse(key: &'static str, url: &str, pooler: Pooler) -> Result<Self, DbError> {
        let invalid = |problem: UrlProblem| DbError::Url { key, problem };
        let Some(scheme_end) = url.find("://") else {
            return Err(invalid(UrlProblem::Scheme));
        };
        let scheme = &url[..scheme_end];
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(invalid(UrlProblem::Scheme));
        }
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let (path, query) = match tail.find('?') {
            Some(q) => (&tail[..q], &tail[q + 1..]),
            None => (tail, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("target_session_attrs", v)) => {
                    if !matches!(v, "read-write" | "primary" | "any") {
                        return Err(invalid(UrlProblem::SessionAttrs(v.to_string())));
                    }
                }
                _ => kept.push(pair),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let mut urls = Vec::new();
        let mut options = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() && hosts.contains(',') {
                return Err(invalid(UrlProblem::EmptyHost));
            }
            let one = format!("{scheme}://{userinfo}{host}{path}{query}");
            let opts: PgConnectOptions = one.parse().map_err(|source| {
                invalid(UrlProblem::Options {
                    url: crate::app::redact_url(&one),
                    source,
                })
            })?;
            options.push(pool_options(opts, pooler));
            urls.push(crate::app::redact_url(&one));
        }
        Ok(Self { key, urls, options })
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The hosts without credentials, for messages.
    pub fn shown(&self) -> String {
        self.urls.join(", ")
    }

    pub fn options(&self, i: usize) -> &PgConnectOptions {
        &self.options[i % self.options.len()]
    }

    /// The first host (from `start`, in order) that accepts a connection and is not in
    /// recovery, with that connection.
    pub async fn find_writable(&self, start: usize) -> Result<(usize, PgConnection), DbError> {
        let mut hosts = Vec::new();
        for k in 0..self.len() {
            let i = (start + k) % self.len();
            match connect_checked(self.options(i), Role::Primary).await {
                Ok(c) => return Ok((i, c)),
                Err(e) => hosts.push((self.urls[i].clone(), e)),
            }
        }
        Err(DbError::NoWritable {
            key: self.key,
            hosts,
        })
    }
}

/// Connect options for one of chainsync's pools.
pub fn pool_options(opts: PgConnectOptions, pooler: Pooler) -> PgConnectOptions {
    match pooler {
        Pooler::None => crate::app::force_custom_plans(opts),
        // No statement cache: unnamed statements, one protocol sequence per query (each is
        // planned with its parameters, so no plan_cache_mode is needed); no startup options a
        // pooler might refuse.
        Pooler::Transaction => opts.statement_cache_capacity(0).extra_float_digits(None),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Replica,
}

/// A connection that is known to be (or not to be) in recovery.
async fn connect_checked(opts: &PgConnectOptions, role: Role) -> Result<PgConnection, HostError> {
    let mut c = tokio::time::timeout(Duration::from_secs(5), opts.connect())
        .await
        .map_err(|_| HostError::Timeout)?
        .map_err(HostError::Connect)?;
    let standby = in_recovery(&mut c).await.map_err(HostError::Connect)?;
    match (role, standby) {
        (Role::Primary, true) => Err(HostError::ReadOnly),
        (Role::Replica, false) => Err(HostError::NotReplica),
        _ => Ok(c),
    }
}

async fn in_recovery(c: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let row = sqlx::raw_sql("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *c)
        .await?;
    row.try_get(0)
}

/// A pool over `set`, on its writable host when it has several (and then every new connection
/// is checked to be writable). Returns the index of the host used.
pub async fn connect_pool(set: &HostSet, max_connections: u32) -> Result<(PgPool, usize), DbError> {
    let mut opts = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10));
    let start = if set.len() > 1 {
        let (i, c) = set.find_writable(0).await?;
        let _ = c.close().await;
        opts = opts.after_connect(|conn, _| {
            Box::pin(async move {
                if in_recovery(conn).await? {
                    return Err(sqlx::Error::Protocol(
                        "host is read-only (in recovery); waiting for the primary".into(),
                    ));
                }
                Ok(())
            })
        });
        i
    } else {
        0
    };
    let pool = opts
        .connect_with(set.options(start).clone())
        .await
        .map_err(|source| DbError::Connect {
            key: set.key,
            url: set.urls[start].clone(),
            source,
        })?;
    Ok((pool, start))
}

/// A lazily connected pool (no connection until first used).
pub fn lazy_pool(set: &HostSet, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(set.options(0).clone())
}

/// Whether connections to `opts` share server backends between transactions (a
/// transaction-mode pooler): two connections open at once, their backend pids compared, and
/// the first one's pid again.
pub async fn shares_backends(opts: &PgConnectOptions) -> Result<bool, sqlx::Error> {
    async fn pid(c: &mut PgConnection) -> Result<i32, sqlx::Error> {
        sqlx::raw_sql("SELECT pg_backend_pid()")
            .fetch_one(&mut *c)
            .await?
            .try_get(0)
    }
    let mut a = opts.connect().await?;
    let mut b = opts.connect().await?;
    let a1 = pid(&mut a).await?;
    let b1 = pid(&mut b).await?;
    let a2 = pid(&mut a).await?;
    let b2 = pid(&mut b).await?;
    let _ = a.close().await;
    let _ = b.close().await;
    Ok(a1 == b1 || a1 != a2 || b1 != b2)
}

/// Checks the replica: reachable and in recovery.
pub async fn check_replica(set: &HostSet) -> Result<(), DbError> {
    let c = connect_checked(set.options(0), Role::Replica)
        .await
        .map_err(|reason| DbError::Replica {
            key: set.key,
            hosts: set.shown(),
            reason,
        })?;
    let _ = c.close().await;
    Ok(())
}

/// Seconds the replica behind `pool` is behind its primary: 0 when it has replayed everything
/// it received (an idle primary sends nothing), else the age of the last transaction replayed.
/// 0 on a primary.
pub async fn replication_lag(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CASE
                  WHEN NOT pg_is_in_recovery() THEN 0
                  WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
                  ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))
                END::float8",
    )
    .fetch_one(pool)
    .await
}

/// Keeps `pool` on the writable host of `set`: checks its host every `every` on a connection
/// of its own; when that host is gone or read-only, finds the writable one (retrying until one
/// is) and points the pool's new connections there. Connections to the old host fail and are
/// replaced as they are used.
pub async fn follow_primary(
    set: Arc<HostSet>,
    pool: PgPool,
    mut current: usize,
    every: Duration,
    stop: CancellationToken,
) {
    let mut probe: Option<PgConnection> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let healthy = match probe.as_mut() {
            None => false,
            Some(c) => matches!(
                tokio::time::timeout(Duration::from_secs(5), in_recovery(c)).await,
                Ok(Ok(false))
            ),
        };
        if healthy {
            continue;
        }
        if let Some(c) = probe.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
        }
        // Look for the writable host; the current one first (a probe connection may simply
        // have been closed by the server).
        match set.find_writable(current).await {
            Ok((i, c)) => {
                if i != current {
                    warn!(
                        key = set.key,
                        from = %set.urls[current],
                        to = %set.urls[i],
                        "database primary changed; new connections go to the new primary"
                    );
                    pool.set_connect_options(set.options(i).clone());
                    current = i;
                }
                probe = Some(c);
            }
            Err(e) => warn!(error = %e, "no writable database host yet; retrying"),
        }
    }
}
