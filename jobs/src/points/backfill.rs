//! Backfill of points windows: resumable (windows already in `points_history` are skipped),
//! bounded (long ranges become child jobs), one transaction per address.

use std::collections::BTreeSet;

use alloy::primitives::U256;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{Change, Rate, WINDOW_SECS, balance_at, twab, window_of};
use crate::{JobError, Services, ids::TokenKey, settings::DomainConfig};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct BackfillReport {
    pub addresses: u64,
    pub windows_computed: u64,
    pub windows_skipped: u64,
    /// The range was too long for one run: nothing was computed, these sub-ranges (each within
    /// `points.max_windows_per_job`) are to be computed instead.
    #[serde(skip)]
    pub split: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// A range of windows of one (chain, token) to compute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub chain_id: u64,
    pub token: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The configured rate of (chain, token).
pub fn rate_of(settings: &DomainConfig, chain_id: u64, token: &TokenKey) -> Result<Rate, JobError> {
    let r = settings
        .points
        .rates
        .iter()
        .find(|r| r.chain_id == chain_id && r.token.key == *token)
        .ok_or_else(|| {
            JobError::fatal(format!(
                "no points rate configured for {} on chain {chain_id}",
                token.text()
            ))
        })?;
    Ok(r.rate)
}

/// Complete windows in `[from, to)`: starts aligned to the hour, ending no later than `now`.
pub fn windows(from: DateTime<Utc>, to: DateTime<Utc>, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut w = window_of(from);
    let step = Duration::seconds(WINDOW_SECS);
    while w < to && w + step <= now {
        out.push(w);
        w += step;
    }
    out
}

fn num(s: &str) -> U256 {
    U256::from_str_radix(s, 10).unwrap_or_default()
}

/// Computes the missing windows of `[from, to)` for every address with balance history; `job`
/// is recorded with each window. A range longer than `points.max_windows_per_job` is not
/// computed but split (see [`BackfillReport::split`]).
pub async fn backfill(
    services: &Services,
    job: Option<uuid::Uuid>,
    chain_id: u64,
    token: &TokenKey,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<BackfillReport, JobError> {
    let rate = rate_of(&services.settings, chain_id, token)?;
    // Windows close by chain time (see `super::compute::closed_until`).
    let Some(closed) = super::compute::closed_until(services, chain_id, token).await? else {
        return Ok(BackfillReport::default());
    };
    let all = windows(from, to, closed);
    let mut report = BackfillReport::default();
    let max = usize::try_from(services.settings.points.max_windows_per_job)
        .unwrap_or(usize::MAX)
        .max(1);
    if all.len() > max {
        // Split so that no single job runs for hours; the children are resumable like this one.
        let step = Duration::seconds(WINDOW_SECS);
        report.split = all
            .chunks(max)
            .filter_map(|chunk| Some((*chunk.first()?, *chunk.last()? + step)))
            .collect();
        return Ok(report);
    }
    let (Some(first), Some(last)) = (all.first().copied(), all.last().copied()) else {
        return Ok(report);
    };
    let end = last + Duration::seconds(WINDOW_SECS);
    let cid = i64::try_from(chain_id).map_err(|_| JobError::fatal("chain id too large"))?;
    let tok = token.text();
    let addresses: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT address FROM chainsync.balance_changes
         WHERE chain_id = $1 AND token = $2 AND coalesce(block_time, observed_at) < $3 ORDER BY 1",
    )
    .bind(cid)
    .bind(&tok)
    .bind(end)
    .fetch_all(&services.db)
    .await?;
    for address in addresses {
        report.addresses += 1;
        let done: BTreeSet<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT window_start FROM chainsync.points_history
             WHERE chain_id = $1 AND token = $2 AND address = $3 AND window_start >= $4 AND window_start < $5",
        )
        .bind(cid)
        .bind(&tok)
        .bind(&address)
        .bind(first)
        .bind(end)
        .fetch_all(&services.db)
        .await?
        .into_iter()
        .collect();
        let rows: Vec<(Option<String>, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT old_amount::text, new_amount::text, coalesce(block_time, observed_at) AS at
             FROM chainsync.balance_changes WHERE chain_id = $1 AND token = $2 AND address = $3
             ORDER BY at, block_number",
        )
        .bind(cid)
        .bind(&tok)
        .bind(&address)
        .fetch_all(&services.db)
        .await?;
        let before_first = rows
            .first()
            .and_then(|r| r.0.as_deref())
            .map_or(U256::ZERO, num);
        let changes: Vec<Change> = rows
            .iter()
            .map(|r| Change {
                at: r.2,
                amount: num(&r.1),
            })
            .collect();
        let mut starts = Vec::new();
        let mut twabs = Vec::new();
        let mut points = Vec::new();
        for w in all.iter().filter(|w| !done.contains(w)) {
            if changes
                .first()
                .is_none_or(|c| c.at >= *w + Duration::seconds(WINDOW_SECS))
            {
                continue; // no history yet in or before this window
            }
            let opening = balance_at(before_first, &changes, *w);
            let t = twab(*w, opening, &changes);
            starts.push(*w);
            twabs.push(t.to_string());
            points.push(rate.apply(t).to_string());
        }
        report.windows_skipped += done.len() as u64;
        if starts.is_empty() {
            continue;
        }
        let n = sqlx::query(
            "INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points, job_id)
             SELECT $1, $2, $3, w, t::numeric, p::numeric, $7
             FROM unnest($4::timestamptz[], $5::text[], $6::text[]) AS x(w, t, p)
             ON CONFLICT DO NOTHING",
        )
        .bind(cid)
        .bind(&tok)
        .bind(&address)
        .bind(&starts)
        .bind(&twabs)
        .bind(&points)
        .bind(job)
        .execute(&services.db)
        .await?
        .rows_affected();
        report.windows_computed += n;
    }
    Ok(report)
}

/// One lagging (chain, token): addresses whose last window is older than `stale_factor` windows.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub chain_id: u64,
    pub token: String,
    pub lagging_addresses: i64,
    pub oldest_gap_start: Option<DateTime<Utc>>,
    pub windows_missing: i64,
}

/// Lag per configured (chain, token) rate, optionally of one chain.
pub async fn lag(
    services: &Services,
    chain: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Vec<Lag>, JobError> {
    let mut out = Vec::new();
    let stale = Duration::seconds(WINDOW_SECS * i64::from(services.settings.points.stale_factor));
    for r in services
        .settings
        .points
        .rates
        .iter()
        .filter(|r| chain.is_none_or(|c| c == r.chain_id))
    {
        let key = r.token.key;
        let cid = i64::try_from(r.chain_id).map_err(|_| JobError::fatal("chain id too large"))?;
        // Chain time when it is known (windows are by block timestamps), else `now`.
        let closed = super::compute::closed_until(services, r.chain_id, &key)
            .await
            .ok()
            .flatten()
            .unwrap_or(now);
        let current = window_of(closed);
        // Per address: the first window still to compute (after its last computed one, or its first
        // change's window), if that is older than the stale threshold.
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "WITH a AS (
                 SELECT c.address, min(coalesce(c.block_time, c.observed_at)) AS first_change
                 FROM chainsync.balance_changes c WHERE c.chain_id = $1 AND c.token = $2 GROUP BY 1
             )
             SELECT a.address,
                    coalesce((SELECT max(p.window_start) + interval '1 hour' FROM chainsync.points_history p
                              WHERE p.chain_id = $1 AND p.token = $2 AND p.address = a.address),
                             date_trunc('hour', a.first_change)) AS next_window
             FROM a",
        )
        .bind(cid)
        .bind(key.text())
        .fetch_all(&services.db)
        .await?;
        let lagging: Vec<&(String, DateTime<Utc>)> = rows
            .iter()
            .filter(|(_, next)| *next <= current - stale)
            .collect();
        out.push(Lag {
            chain_id: r.chain_id,
            token: key.text(),
            lagging_addresses: lagging.len() as i64,
            oldest_gap_start: lagging.iter().map(|l| l.1).min(),
            windows_missing: lagging
                .iter()
                .map(|l| ((current - l.1).num_seconds() / WINDOW_SECS).max(0))
                .sum(),
        });
    }
    Ok(out)
}

/// Chains with a lagging rated token (missing windows) or windows marked for a recompute: the
/// `compute-points` pass of each computes exactly what is missing.
pub async fn stale_chains(
    services: &Services,
    chain: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Vec<u64>, JobError> {
    let mut chains = BTreeSet::new();
    for l in lag(services, chain, now).await? {
        if l.oldest_gap_start.is_some() {
            chains.insert(l.chain_id);
        }
    }
    let dirty: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT chain_id FROM chainsync.points_dirty")
            .fetch_all(&services.db)
            .await?;
    for c in dirty {
        let c = u64::try_from(c).unwrap_or(0);
        if chain.is_none_or(|x| x == c)
            && services
                .settings
                .points
                .rates
                .iter()
                .any(|r| r.chain_id == c)
        {
            chains.insert(c);
        }
    }
    Ok(chains.into_iter().collect())
}

/// The range to backfill for every lagging (chain, token): from the oldest gap to the current
/// window. Windows already computed are skipped, so exactly the missing ones are computed.
pub async fn stale_ranges(
    services: &Services,
    chain: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Vec<Gap>, JobError> {
    Ok(lag(services, chain, now)
        .await?
        .into_iter()
        .filter_map(|l| {
            Some(Gap {
                chain_id: l.chain_id,
                from: l.oldest_gap_start?,
                token: l.token,
                to: window_of(now),
            })
        })
        .collect())
}
