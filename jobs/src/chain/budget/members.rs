//! Postgres mode: the daemons using an endpoint find each other in
//! `chainsync.rpc_budget_members` and share the adaptive factor through
//! `chainsync.rpc_budget_state` (see the migration `rpc_budget`). All times are the database's.

use sqlx::PgPool;
use uuid::Uuid;

use super::model::{Adapt, AdaptParams, FULL, Micros};

/// What one heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Live members of the endpoint, this one included.
    pub members: u64,
    /// The endpoint's adaptive state, with times as ages (µs before the database's `now()`).
    pub adapt: Option<SeenAdapt>,
    /// How long every daemon still holds back after a provider's Retry-After (µs).
    pub paused_for: Micros,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenAdapt {
    pub factor: u32,
    pub since_age: Micros,
    pub cut_age: Option<Micros>,
}

impl SeenAdapt {
    /// The state on a clock where the heartbeat's answer arrived at `now`.
    pub fn at(&self, now: Micros) -> Adapt {
        Adapt {
            factor: self.factor.clamp(1, FULL),
            since: now - self.since_age,
            cut_at: self.cut_age.map(|a| now - a),
        }
    }
}

/// Says "still here" for `member` on `endpoint`; counts the members seen within `ttl_ms` and
/// reads the endpoint's adaptive state. Rows of members gone for ten times `ttl_ms` are deleted.
pub async fn heartbeat(
    db: &PgPool,
    endpoint: &str,
    member: Uuid,
    ttl_ms: i64,
) -> Result<Seen, sqlx::Error> {
    let row: (i64, Option<i32>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "WITH me AS ( \
           INSERT INTO chainsync.rpc_budget_members (endpoint, member) VALUES ($1, $2) \
           ON CONFLICT (endpoint, member) DO UPDATE SET seen_at = now() \
         ), gone AS ( \
           DELETE FROM chainsync.rpc_budget_members \
           WHERE endpoint = $1 AND member <> $2 AND seen_at < now() - $3::float8 * 10 * interval '1 millisecond' \
         ) \
         SELECT 1 + (SELECT count(*) FROM chainsync.rpc_budget_members \
                     WHERE endpoint = $1 AND member <> $2 \
                       AND seen_at > now() - $3::float8 * interval '1 millisecond'), \
                s.factor_permille, \
                (extract(epoch FROM now() - s.since) * 1000000)::bigint, \
                (extract(epoch FROM now() - s.cut_at) * 1000000)::bigint, \
                CASE WHEN s.paused_until > now() \
                     THEN (extract(epoch FROM s.paused_until - now()) * 1000000)::bigint END \
         FROM (SELECT 1) AS one \
         LEFT JOIN chainsync.rpc_budget_state s ON s.endpoint = $1",
    )
    .bind(endpoint)
    .bind(member)
    .bind(ttl_ms)
    .fetch_one(db)
    .await?;
    let (members, factor, since_age, cut_age, paused_for) = row;
    Ok(Seen {
        members: u64::try_from(members).unwrap_or(1).max(1),
        adapt: match (factor, since_age) {
            (Some(f), Some(age)) => Some(SeenAdapt {
                factor: u32::try_from(f).unwrap_or(FULL),
                since_age: age,
                cut_age,
            }),
            _ => None,
        },
        paused_for: paused_for.unwrap_or(0).max(0),
    })
}

/// The member stops using the endpoint.
pub async fn leave(db: &PgPool, endpoint: &str, member: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM chainsync.rpc_budget_members WHERE endpoint = $1 AND member = $2")
        .bind(endpoint)
        .bind(member)
        .execute(db)
        .await?;
    Ok(())
}

/// A rate-limit answer: cuts the endpoint's shared factor (the same rule as Redis mode, on the
/// database's clock) and holds everyone back for `pause_us`; returns the new factor.
pub async fn cut(
    db: &PgPool,
    endpoint: &str,
    p: &AdaptParams,
    pause_us: Micros,
) -> Result<u32, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO chainsync.rpc_budget_state (endpoint) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    let (factor, since, cut_at, now): (i32, i64, Option<i64>, i64) = sqlx::query_as(
        "SELECT factor_permille, (extract(epoch FROM since) * 1000000)::bigint, \
                (extract(epoch FROM cut_at) * 1000000)::bigint, \
                (extract(epoch FROM now()) * 1000000)::bigint \
         FROM chainsync.rpc_budget_state WHERE endpoint = $1 FOR UPDATE",
    )
    .bind(endpoint)
    .fetch_one(&mut *tx)
    .await?;
    let mut adapt = Adapt {
        factor: u32::try_from(factor).unwrap_or(FULL),
        since,
        cut_at,
    };
    let f = adapt.cut(now, p);
    sqlx::query(
        "UPDATE chainsync.rpc_budget_state SET factor_permille = $2, since = now(), \
           cut_at = to_timestamp($3::float8 / 1000000), \
           paused_until = CASE WHEN $4::bigint > 0 \
             THEN greatest(paused_until, now() + $4::float8 * interval '1 microsecond') \
             ELSE paused_until END \
         WHERE endpoint = $1",
    )
    .bind(endpoint)
    .bind(i32::try_from(f).unwrap_or(1000))
    .bind(adapt.cut_at.unwrap_or(now))
    .bind(pause_us)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(f)
}
