//! The domain's metrics: how far stored data is behind the chain. [`describe`] registers every
//! series of the configured chains and tokens at start-up (so the first scrape lists them), and
//! [`sample`] measures them from the database and each chain's head; the daemon calls it
//! periodically and hands the result to [`record`] and to the alert rules.
//!
//! Labels are bounded: `chain` (the configured name), `token` (the configured symbol), `method`
//! and `class` of RPC calls. No holder address ever becomes a label.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use serde::Serialize;

use crate::{Services, settings::DomainConfig};

/// The JSON-RPC methods chainsync calls (their series are registered at start-up).
pub const RPC_METHODS: &[&str] = &[
    "eth_blockNumber",
    "eth_getBlockByNumber",
    "eth_call",
    "eth_getLogs",
    "eth_getTransactionReceipt",
    "eth_getTransactionByHash",
];

/// Upper bounds (seconds) of the buckets of `chainsync_balance_age_seconds`: 1 min to 1 day.
pub const BALANCE_AGE_BUCKETS: &[f64] = &[60.0, 300.0, 900.0, 3600.0, 7200.0, 21600.0, 86400.0];

/// Time allowed for one chain's head and block reads in a sample.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// One token's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TokenSample {
    pub symbol: String,
    /// `native` or the token address (the key in `chainsync.balances`).
    pub token: String,
    /// Age of the newest stored balance; `None` when none is stored.
    pub balance_lag_seconds: Option<f64>,
    /// Head minus the block of the newest stored balance.
    pub balance_lag_blocks: Option<u64>,
    /// Closed hourly points windows not yet computed for the address that lags most (tokens
    /// with a points rate and computed windows only).
    pub points_windows_behind: Option<i64>,
    /// How old the stored balances are: per bound of [`BALANCE_AGE_BUCKETS`], the rows at most
    /// that old (cumulative), then every row (`+Inf`).
    pub balance_age_buckets: Vec<u64>,
}

/// One chain's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ChainSample {
    pub chain_id: u64,
    pub name: String,
    /// `None` when the node could not be read.
    pub head: Option<u64>,
    /// Whether `[[ingest]]` is configured for the chain.
    pub ingests: bool,
    pub ingest_checkpoint: Option<u64>,
    pub ingest_lag_blocks: Option<u64>,
    /// Block time of the head minus block time of the checkpoint.
    pub ingest_lag_seconds: Option<f64>,
    pub tokens: Vec<TokenSample>,
}

/// Everything one sample measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub at: Option<DateTime<Utc>>,
    pub chains: Vec<ChainSample>,
}

/// The span of one SQL batch of a job's store writes (`statement`: what it writes, e.g.
/// `upsert chainsync.balances`), exported with traces; disabled (free) otherwise.
pub fn sql_span(statement: &'static str, rows: usize) -> tracing::Span {
    tracing::info_span!(
        target: chainsync_engine::trace::TARGET,
        "sql",
        otel.name = statement,
        otel.kind = "client",
        db.system = "postgresql",
        db.operation = statement,
        db.rows = i64::try_from(rows).unwrap_or(i64::MAX),
        otel.status_code = tracing::field::Empty,
    )
}

fn ns(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

/// Describes the domain's metrics and registers every series of the configured chains and
/// tokens (gauges as NaN until the first sample, counters at 0).
pub fn describe(settings: &DomainConfig) {
    describe_gauge!(
        "chainsync_balance_lag_seconds",
        metrics::Unit::Seconds,
        "Age of the newest stored balance, per chain and token (NaN: none stored)"
    );
    describe_gauge!(
        "chainsync_balance_age_seconds_bucket",
        "Stored balances at most `le` seconds old, per chain and token: a gauge histogram of the \
         age of every stored balance, measured each sample (histogram_quantile works on it)"
    );
    describe_gauge!(
        "chainsync_balance_age_seconds_gcount",
        "Stored balances, per chain and token (the +Inf bucket of chainsync_balance_age_seconds)"
    );
    describe_gauge!(
        "chainsync_balance_lag_blocks",
        "Chain head minus the block of the newest stored balance, per chain and token"
    );
    describe_gauge!(
        "chainsync_ingest_lag_blocks",
        "Chain head minus the event ingestion checkpoint, per chain"
    );
    describe_gauge!(
        "chainsync_ingest_lag_seconds",
        metrics::Unit::Seconds,
        "Block time of the head minus block time of the ingestion checkpoint, per chain"
    );
    describe_counter!(
        "chainsync_events_ingested_total",
        "Decoded events stored by ingestion (re-ingested duplicates not counted), per chain"
    );
    describe_gauge!(
        "chainsync_points_windows_behind",
        "Closed hourly points windows not yet computed for the most lagging address, per chain and token"
    );
    describe_gauge!(
        "chainsync_chain_head_block",
        "Latest block number read from the chain's node"
    );
    describe_counter!(
        "chainsync_rpc_requests_total",
        "JSON-RPC requests sent to the nodes, per chain and method"
    );
    describe_counter!(
        "chainsync_rpc_errors_total",
        "Failed RPC calls as seen by jobs, per chain, method and class (rate_limited, transient, invalid)"
    );
    describe_gauge!(
        "chainsync_rpc_budget_factor",
        "Share of an endpoint's RPC budget in force after rate-limit answers (1 = the full budget)"
    );
    describe_gauge!(
        "chainsync_rpc_budget_members",
        "Daemons using an endpoint at this daemon's last heartbeat (Postgres mode splits the budget by it)"
    );
    describe_counter!(
        "chainsync_rpc_budget_rate_limited_total",
        "Rate-limit answers (HTTP 429, -32005, ...) that shrank an endpoint's RPC budget"
    );
    metrics::describe_histogram!(
        "chainsync_rpc_budget_wait_seconds",
        "Time an RPC waited for its endpoint's budget, per chain and class (priority, bulk)"
    );
    describe_counter!(
        "chainsync_reconcile_mismatches_total",
        "Stored balances found different from the chain by reconcile"
    );
    describe_counter!(
        "chainsync_reconcile_alerts_total",
        "Reconcile mismatches above the token's threshold"
    );
    describe_counter!(
        "chainsync_cache_requests_total",
        "Balance cache lookups by result (hit, miss)"
    );
    describe_counter!(
        "chainsync_cache_errors_total",
        "Balance cache errors by operation (read, write)"
    );
    describe_counter!(
        "chainsync_alerts_total",
        "Alert notifications enqueued, per rule kind and status (firing, resolved)"
    );
    // Counters start at 0 for every bounded label set, so rates and alerts see them at once.
    for result in ["hit", "miss"] {
        counter!("chainsync_cache_requests_total", "result" => result).absolute(0);
    }
    for op in ["read", "write"] {
        counter!("chainsync_cache_errors_total", "op" => op).absolute(0);
    }
    for rule in crate::alerts::RuleKind::ALL {
        for status in ["firing", "resolved"] {
            counter!("chainsync_alerts_total", "rule" => rule.as_str(), "status" => status)
                .absolute(0);
        }
    }
    for c in &settings.chains {
        let chain = c.name.clone();
        for method in RPC_METHODS {
            counter!("chainsync_rpc_requests_total", "chain" => chain.clone(), "method" => *method)
                .absolute(0);
            for class in crate::chain::error::RpcErrorClass::ALL {
                counter!(
                    "chainsync_rpc_errors_total",
                    "chain" => chain.clone(),
                    "method" => *method,
                    "class" => class.as_str()
                )
                .absolute(0);
            }
        }
        counter!("chainsync_events_ingested_total", "chain" => chain.clone()).absolute(0);
        gauge!("chainsync_ingest_lag_blocks", "chain" => chain.clone()).set(f64::NAN);
        gauge!("chainsync_ingest_lag_seconds", "chain" => chain.clone()).set(f64::NAN);
        for t in settings.tokens.iter().filter(|t| t.chain_id == c.chain_id) {
            let labels = [("chain", chain.clone()), ("token", t.symbol.clone())];
            gauge!("chainsync_balance_lag_seconds", &labels).set(f64::NAN);
            gauge!("chainsync_balance_lag_blocks", &labels).set(f64::NAN);
            record_age_buckets(&labels, &[]);
            gauge!("chainsync_points_windows_behind", &labels).set(f64::NAN);
            counter!("chainsync_reconcile_mismatches_total", &labels).absolute(0);
            counter!("chainsync_reconcile_alerts_total", &labels).absolute(0);
        }
    }
}

/// The `chain` label of a chain id: its configured name (the id for an unknown chain).
pub fn chain_label(settings: &DomainConfig, chain_id: u64) -> String {
    settings
        .chain(chain_id)
        .map_or_else(|| chain_id.to_string(), |c| c.name.clone())
}

/// Counts events stored by an ingestion range.
pub fn record_events_ingested(settings: &DomainConfig, chain_id: u64, stored: u64) {
    counter!("chainsync_events_ingested_total", "chain" => chain_label(settings, chain_id))
        .increment(stored);
}

/// Measures every configured chain and token. Database errors fail the sample; a node that
/// cannot be read leaves the head-relative figures unknown.
pub async fn sample(services: &Services) -> Result<Sample, sqlx::Error> {
    let settings = &services.settings;
    let now = Utc::now();
    let mut out = Sample {
        at: Some(now),
        chains: Vec::new(),
    };
    for c in &settings.chains {
        let cid = i64::try_from(c.chain_id).unwrap_or(i64::MAX);
        let client = services.chains.get(c.chain_id).ok();
        let head = match &client {
            Some(client) => match tokio::time::timeout(HEAD_TIMEOUT, client.head()).await {
                Ok(Ok(h)) => Some(h),
                Ok(Err(e)) => {
                    tracing::debug!(chain = %c.name, error = %e, "sample: head not read");
                    None
                }
                Err(_) => None,
            },
            None => None,
        };
        let balances: Vec<(String, Option<DateTime<Utc>>, Option<i64>)> = sqlx::query_as(
            "SELECT token, max(updated_at), max(block_number) FROM chainsync.balances
             WHERE chain_id = $1 GROUP BY 1",
        )
        .bind(cid)
        .fetch_all(&services.db)
        .await?;
        // Rows per token and age bucket (0: within the first bound, n: beyond the last).
        let ages: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT token,
                    width_bucket(extract(epoch FROM now() - updated_at)::float8, $2::float8[]),
                    count(*)
             FROM chainsync.balances WHERE chain_id = $1 GROUP BY 1, 2",
        )
        .bind(cid)
        .bind(BALANCE_AGE_BUCKETS)
        .fetch_all(&services.db)
        .await?;
        let points: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT token, min(last) FROM (SELECT token, address, max(window_start) AS last
               FROM chainsync.points_history WHERE chain_id = $1 GROUP BY 1, 2) p GROUP BY 1",
        )
        .bind(cid)
        .fetch_all(&services.db)
        .await?;
        let ingests = settings.ingest.iter().any(|g| g.chain_id == c.chain_id);
        let checkpoint: Option<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT block_number, block_time FROM chainsync.ingest_checkpoints WHERE chain_id = $1",
        )
        .bind(cid)
        .fetch_optional(&services.db)
        .await?;
        let checkpoint_time = checkpoint.and_then(|c| c.1);
        let checkpoint = checkpoint.and_then(|c| u64::try_from(c.0).ok());
        // Points windows close by chain time: the ingestion checkpoint's block time when the
        // chain is ingested, the clock otherwise.
        let chain_now = if ingests {
            checkpoint_time.unwrap_or(now)
        } else {
            now
        };
        let current_hour = chain_now.timestamp().div_euclid(3600);
        let mut tokens = Vec::new();
        for t in settings.tokens.iter().filter(|t| t.chain_id == c.chain_id) {
            let key = t.key();
            let key = key.text();
            let stored = balances.iter().find(|b| b.0 == key);
            let updated = stored.and_then(|b| b.1);
            let block = stored.and_then(|b| b.2).and_then(|b| u64::try_from(b).ok());
            let last_window = points.iter().find(|p| p.0 == key).and_then(|p| p.1);
            tokens.push(TokenSample {
                symbol: t.symbol.clone(),
                token: key.clone(),
                balance_lag_seconds: updated
                    .map(|u| ((now - u).num_milliseconds().max(0) as f64) / 1000.0),
                balance_lag_blocks: match (head, block) {
                    (Some(h), Some(b)) => Some(h.saturating_sub(b)),
                    _ => None,
                },
                // Windows [last+1h, current hour) are closed and not computed.
                points_windows_behind: last_window
                    .map(|w| (current_hour - w.timestamp().div_euclid(3600) - 1).max(0)),
                balance_age_buckets: cumulative_ages(
                    ages.iter().filter(|a| a.0 == key).map(|a| (a.1, a.2)),
                ),
            });
        }
        let ingest_lag_blocks = match (head, checkpoint) {
            (Some(h), Some(cp)) => Some(h.saturating_sub(cp)),
            _ => None,
        };
        let ingest_lag_seconds = match (&client, head, checkpoint, ingest_lag_blocks) {
            (_, _, _, Some(0)) => Some(0.0),
            (Some(client), Some(h), Some(cp), Some(_)) => {
                let times = tokio::time::timeout(HEAD_TIMEOUT, async {
                    let a = client.block_at(h).await.ok().flatten()?;
                    let b = match checkpoint_time {
                        Some(t) => u64::try_from(t.timestamp()).ok()?,
                        None => client.block_at(cp).await.ok().flatten()?.timestamp,
                    };
                    Some(a.timestamp.saturating_sub(b))
                })
                .await
                .ok()
                .flatten();
                times.map(|s| s as f64)
            }
            _ => None,
        };
        out.chains.push(ChainSample {
            chain_id: c.chain_id,
            name: c.name.clone(),
            head,
            ingests,
            ingest_checkpoint: checkpoint,
            ingest_lag_blocks,
            ingest_lag_seconds,
            tokens,
        });
    }
    Ok(out)
}

/// Cumulative counts per bound of [`BALANCE_AGE_BUCKETS`] and `+Inf`, from (bucket index as
/// `width_bucket` numbers it, rows) pairs.
fn cumulative_ages(rows: impl Iterator<Item = (i32, i64)>) -> Vec<u64> {
    let n = BALANCE_AGE_BUCKETS.len();
    let mut per = vec![0u64; n + 1];
    for (bucket, count) in rows {
        let i = usize::try_from(bucket).unwrap_or(0).min(n);
        per[i] += u64::try_from(count).unwrap_or(0);
    }
    let mut acc = 0;
    per.iter()
        .map(|c| {
            acc += c;
            acc
        })
        .collect()
}

/// Sets `chainsync_balance_age_seconds_bucket` (and `_gcount`) of one token; `counts` empty:
/// none measured yet (every bucket 0).
fn record_age_buckets(labels: &[(&'static str, String); 2], counts: &[u64]) {
    let at = |i: usize| counts.get(i).copied().unwrap_or(0) as f64;
    for (i, le) in BALANCE_AGE_BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(std::iter::once("+Inf".to_string()))
        .enumerate()
    {
        let mut l = labels.to_vec();
        l.push(("le", le));
        gauge!("chainsync_balance_age_seconds_bucket", &l).set(at(i));
    }
    gauge!("chainsync_balance_age_seconds_gcount", labels).set(at(BALANCE_AGE_BUCKETS.len()));
}

/// Sets the gauges of a sample.
pub fn record(sample: &Sample) {
    for c in &sample.chains {
        let chain = c.name.clone();
        if let Some(h) = c.head {
            gauge!("chainsync_chain_head_block", "chain" => chain.clone()).set(h as f64);
        }
        gauge!("chainsync_ingest_lag_blocks", "chain" => chain.clone())
            .set(ns(c.ingest_lag_blocks.map(|b| b as f64)));
        gauge!("chainsync_ingest_lag_seconds", "chain" => chain.clone())
            .set(ns(c.ingest_lag_seconds));
        for t in &c.tokens {
            let labels = [("chain", chain.clone()), ("token", t.symbol.clone())];
            gauge!("chainsync_balance_lag_seconds", &labels).set(ns(t.balance_lag_seconds));
            gauge!("chainsync_balance_lag_blocks", &labels)
                .set(ns(t.balance_lag_blocks.map(|b| b as f64)));
            record_age_buckets(&labels, &t.balance_age_buckets);
            if let Some(w) = t.points_windows_behind {
                gauge!("chainsync_points_windows_behind", &labels).set(w as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_buckets_are_cumulative_with_an_infinite_last_one() {
        // width_bucket numbering: 0 below the first bound, len beyond the last.
        let got = cumulative_ages([(0, 2), (3, 1), (7, 4)].into_iter());
        assert_eq!(got, vec![2, 2, 2, 3, 3, 3, 3, 7]);
        assert_eq!(cumulative_ages(std::iter::empty()), vec![0; 8]);
    }
}
