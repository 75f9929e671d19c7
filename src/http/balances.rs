//! `GET /v1/balances/{chain}/{address}?token=&realtime=`: Redis first, then Postgres (filling the
//! cache), or the chain itself with `realtime=true` (stored in both). Redis being away is never an
//! error: the answer comes from Postgres.
//!
//! Addresses are taken in the chain's forms (on TRON chains base58check `T…` and `41…` hex too)
//! and shown in the chain's form (base58check on TRON chains).

use axum::{
    Json,
    extract::{Path, Query, State},
    response::IntoResponse,
};
use chainsync_jobs::{
    balance_sync::sync_holder,
    ids::{ChainFamily, TokenKey, address_text},
    store::cache_key,
};
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, HttpState, age_secs};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    token: Option<String>,
    #[serde(default)]
    realtime: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    amount: String,
    block_number: i64,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct BalanceOut {
    chain_id: u64,
    address: String,
    token: String,
    amount: String,
    block_number: i64,
    last_updated: DateTime<Utc>,
    sync_lag_seconds: i64,
    source: &'static str,
    /// Served from the read replica: how far it is behind the primary (already part of
    /// `sync_lag_seconds`: a row seen there is at least that old).
    #[serde(skip_serializing_if = "Option::is_none")]
    replication_lag_seconds: Option<f64>,
}

fn out(
    family: ChainFamily,
    chain_id: u64,
    address: &str,
    token: &str,
    c: Cached,
    source: &'static str,
) -> BalanceOut {
    BalanceOut {
        chain_id,
        address: family.show_stored(address),
        token: family.show_stored(token),
        sync_lag_seconds: age_secs(c.updated_at),
        amount: c.amount,
        block_number: c.block_number,
        last_updated: c.updated_at,
        source,
        replication_lag_seconds: None,
    }
}

pub async fn get_balance(
    State(s): State<HttpState>,
    Path((chain, address)): Path<(String, String)>,
    q: Result<Query<BalanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let chain_id: u64 = match chain.parse() {
        Ok(id) => id,
        Err(_) => s
            .app
            .config
            .domain
            .chains
            .iter()
            .find(|c| c.name == chain)
            .map(|c| c.chain_id)
            .ok_or_else(|| ApiError::bad("chain", format!("unknown chain {chain:?}")))?,
    };
    if !s
        .app
        .config
        .domain
        .chains
        .iter()
        .any(|c| c.chain_id == chain_id)
    {
        return Err(ApiError::bad(
            "chain",
            format!("chain {chain_id} is not configured"),
        ));
    }
    let family = s.app.config.domain.family(chain_id);
    let address = address_text(
        &family
            .parse_address(&address)
            .map_err(|e| ApiError::bad("address", e.to_string()))?,
    );
    let token = match q.token.as_deref() {
        None => None,
        Some(t) => Some(resolve_token(&s, chain_id, family, t)?),
    };
    i64::try_from(chain_id).map_err(|_| ApiError::bad("chain", "too large"))?;

    if q.realtime {
        sync_holder(&s.services, chain_id, &address, token.as_deref())
            .await
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    format!("chain read failed: {e}"),
                )
            })?;
    } else if let Some(t) = &token
        && let Some(c) = cache_get(&s, chain_id, t, &address).await
    {
        metrics::counter!("chainsync_cache_requests_total", "result" => "hit").increment(1);
        return Ok(Json(json!(out(family, chain_id, &address, t, c, "cache"))));
    }
    // A chain read just stored the balance on the primary; otherwise the replica serves reads
    // when one is configured.
    let replica = s.app.replica.as_ref().filter(|_| !q.realtime);
    let pool = replica.unwrap_or(s.app.pool());
    let rows =
        chainsync_jobs::store::holder_balances(pool, chain_id, &address, token.as_deref()).await?;
    let lag = match replica {
        Some(r) => Some(crate::db::replication_lag(r).await?),
        None => None,
    };
    let source = match (q.realtime, replica) {
        (true, _) => "chain",
        (false, Some(_)) => "replica",
        (false, None) => "database",
    };
    if !q.realtime && token.is_some() {
        metrics::counter!("chainsync_cache_requests_total", "result" => "miss").increment(1);
    }
    let mut list = Vec::with_capacity(rows.len());
    for r in rows {
        let t = r.token;
        let c = Cached {
            amount: r.amount,
            block_number: r.block_number,
            updated_at: r.updated_at,
        };
        // A lagging replica's row never goes into the cache (it could replace a newer one).
        if !q.realtime && replica.is_none() {
            cache_put(&s, chain_id, &t, &address, &c).await;
        }
        let mut o = out(family, chain_id, &address, &t, c, source);
        o.replication_lag_seconds = lag;
        list.push(o);
    }
    match (token, list.len()) {
        (Some(t), 0) => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!(
                "no stored balance of {} for {} on chain {chain_id}",
                family.show_stored(&t),
                family.show_stored(&address)
            ),
        )),
        (Some(_), _) => Ok(Json(json!(list.remove(0)))),
        (None, _) => Ok(Json(
            json!({"chain_id": chain_id, "address": family.show_stored(&address), "balances": list}),
        )),
    }
}

fn resolve_token(
    s: &HttpState,
    chain_id: u64,
    family: ChainFamily,
    t: &str,
) -> Result<String, ApiError> {
    if let Some(cfg) = s
        .app
        .config
        .domain
        .tokens
        .iter()
        .find(|c| c.chain_id == chain_id && c.symbol.eq_ignore_ascii_case(t))
    {
        return Ok(cfg.key().text());
    }
    TokenKey::parse_for(family, t)
        .map(|k| k.text())
        .map_err(|e| ApiError::bad("token", e.to_string()))
}

async fn cache_get(s: &HttpState, chain_id: u64, token: &str, address: &str) -> Option<Cached> {
    let mut conn = s.services.cache_conn()?;
    let key = cache_key(chain_id, token, address);
    let got: Result<Option<String>, _> =
        tokio::time::timeout(chainsync_jobs::CACHE_TIMEOUT, conn.get(&key))
            .await
            .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timeout"))));
    s.services.cache_outcome(got.is_ok());
    match got {
        Ok(Some(v)) => serde_json::from_str(&v).ok(),
        Ok(None) => None,
        Err(e) => {
            metrics::counter!("chainsync_cache_errors_total", "op" => "read").increment(1);
            tracing::debug!(error = %e, "cache read failed; serving from Postgres");
            None
        }
    }
}

async fn cache_put(s: &HttpState, chain_id: u64, token: &str, address: &str, c: &Cached) {
    let Ok(v) = serde_json::to_string(c) else {
        return;
    };
    // Taken last: every path after it reports the outcome to the breaker.
    let Some(mut conn) = s.services.cache_conn() else {
        return;
    };
    let ttl = s.services.settings.cache.balance_ttl.as_secs();
    let r = tokio::time::timeout(
        chainsync_jobs::CACHE_TIMEOUT,
        conn.set_ex::<_, _, ()>(cache_key(chain_id, token, address), v, ttl),
    )
    .await;
    s.services.cache_outcome(matches!(r, Ok(Ok(()))));
    if !matches!(r, Ok(Ok(()))) {
        metrics::counter!("chainsync_cache_errors_total", "op" => "write").increment(1);
    }
}
