//! Sign-in sessions of an operator console (`chainsync.console_sessions`). The caller keeps the
//! random secret in a cookie; the table holds its SHA-256 only. A session remembers a hash of the
//! token it was opened with, and is valid only while that token is still the role's token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::PgPool;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::ReadOnly => "readonly",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "readonly" => Some(Self::ReadOnly),
            _ => None,
        }
    }
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// A new session: the secret for the cookie and the session itself.
#[derive(Debug, Clone)]
pub struct Opened {
    pub secret: String,
    pub session: Session,
}

/// 32 random bytes as hex.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a session of `role`, signed in with `token`, valid for `ttl`. Expired sessions are
/// deleted on the way.
pub async fn open(
    pool: &PgPool,
    role: Role,
    token: &str,
    ttl: Duration,
) -> Result<Opened, sqlx::Error> {
    let secret = random_secret();
    let csrf = random_secret();
    sqlx::query("DELETE FROM chainsync.console_sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO chainsync.console_sessions (id_hash, role, token_hash, csrf_token, expires_at)
         VALUES (sha256(convert_to($1, 'UTF8')), $2, sha256(convert_to($3, 'UTF8')), $4,
                 now() + make_interval(secs => $5))
         RETURNING expires_at",
    )
    .bind(&secret)
    .bind(role.as_str())
    .bind(token)
    .bind(&csrf)
    .bind(ttl.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(Opened {
        secret,
        session: Session {
            role,
            csrf,
            expires_at,
        },
    })
}

/// The live session of `secret`, if any: not expired, and opened with the role's current token
/// (`admin_token` / `readonly_token`; a role without a token has no sessions).
pub async fn find(
    pool: &PgPool,
    secret: &str,
    admin_token: Option<&str>,
    readonly_token: Option<&str>,
) -> Result<Option<Session>, sqlx::Error> {
    let row: Option<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT role, csrf_token, expires_at FROM chainsync.console_sessions
         WHERE id_hash = sha256(convert_to($1, 'UTF8')) AND expires_at > now()
           AND token_hash = CASE role WHEN 'admin' THEN sha256(convert_to($2, 'UTF8'))
                                      ELSE sha256(convert_to($3, 'UTF8')) END",
    )
    .bind(secret)
    .bind(admin_token)
    .bind(readonly_token)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(role, csrf, expires_at)| {
        Role::parse(&role).map(|role| Session {
            role,
            csrf,
            expires_at,
        })
    }))
}

/// Ends the session of `secret` (sign out).
pub async fn close(pool: &PgPool, secret: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM chainsync.console_sessions WHERE id_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(secret)
    .execute(pool)
    .await?;
    Ok(())
}
