//! Points while running: each hourly window (chain time: windows are by block timestamps) is
//! computed for every address with history once it closes, and recomputed when its inputs change.
//!
//! - **Closed.** For a token whose transfer logs are ingested, the history is complete up to the
//!   ingestion checkpoint, so a window is closed once the checkpoint block's time reaches its end.
//!   For other tokens (the native coin) it is the time of the block balances are read at
//!   (`head − balance_lag_blocks`); without a configured chain, the wall clock.
//! - **Forward pass.** `points_progress.computed_through` says every window before it was
//!   computed; a pass computes the closed windows from there for every address with history and
//!   moves the mark, in one transaction per batch that holds the progress row: several daemons
//!   never compute the same windows, and nothing is skipped.
//! - **Dirty pass.** History writers mark `(token, address, since)` in `points_dirty` when they
//!   change history that windows were computed from (late history after an outage, a reorg, a
//!   reconcile). The windows from `since` on are recomputed; a window whose value changes is
//!   updated and its old and new values kept in `points_audit`.

use std::collections::BTreeMap;

use alloy::primitives::U256;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{Change, Rate, WINDOW_SECS, backfill::rate_of, balance_at, twab, window_of};
use crate::{
    JobError, Services,
    ids::TokenKey,
    store::{db_chain_id, rated_tokens},
};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ComputeReport {
    /// Windows (hours) the forward pass moved over, summed over tokens.
    pub windows: u64,
    /// Rows the forward pass inserted.
    pub rows: u64,
    /// Dirty marks processed.
    pub dirty: u64,
    /// Windows whose value changed (each with an audit row).
    pub changed: u64,
    /// Windows the dirty pass added.
    pub added: u64,
}

fn num(s: &str) -> U256 {
    U256::from_str_radix(s, 10).unwrap_or_default()
}

fn hour() -> Duration {
    Duration::seconds(WINDOW_SECS)
}

/// The chain time up to which the history of (chain, token) is complete; `None` when nothing is
/// known yet (no ingestion checkpoint).
pub async fn closed_until(
    services: &Services,
    chain_id: u64,
    token: &TokenKey,
) -> Result<Option<DateTime<Utc>>, JobError> {
    let ingested =
        match token {
            TokenKey::Contract(a) => services.settings.ingest.iter().any(|c| {
                c.chain_id == chain_id && c.contracts.iter().any(|k| k.address.address == *a)
            }),
            TokenKey::Native => false,
        };
    if ingested {
        let t: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
            "SELECT block_time FROM chainsync.ingest_checkpoints WHERE chain_id = $1",
        )
        .bind(db_chain_id(chain_id)?)
        .fetch_optional(&services.db)
        .await?;
        return Ok(t.flatten());
    }
    if services
        .settings
        .chains
        .iter()
        .any(|c| c.chain_id == chain_id)
    {
        let chain = services.chains.get(chain_id)?;
        return Ok(chain.pin_block().await?.time());
    }
    Ok(Some(Utc::now()))
}

/// One address's history as the points need it.
#[derive(Debug, Default)]
struct History {
    /// Balance before the first change of `changes` (the last change before the range, or the
    /// `old_amount` of the first change ever, or 0).
    before: U256,
    /// Whether a change happened before the range (the address has windows from its start).
    started: bool,
    changes: Vec<Change>,
}

impl History {
    /// The window's (twab, points), or `None` before the address's first change.
    fn window(&self, w: DateTime<Utc>, rate: &Rate) -> Option<(U256, U256)> {
        let first = if self.started {
            None
        } else {
            Some(self.changes.first()?.at)
        };
        if first.is_some_and(|f| f >= w + hour()) {
            return None;
        }
        let opening = balance_at(self.before, &self.changes, w);
        let t = twab(w, opening, &self.changes);
        Some((t, rate.apply(t)))
    }
}

/// History of every address of (chain, token) for windows in `[from, to)`.
async fn load_range(
    services: &Services,
    cid: i64,
    token: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<BTreeMap<String, History>, JobError> {
    let mut out: BTreeMap<String, History> = BTreeMap::new();
    let opening: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (address) address, new_amount::text FROM chainsync.balance_changes
         WHERE chain_id = $1 AND token = $2 AND coalesce(block_time, observed_at) < $3
         ORDER BY address, coalesce(block_time, observed_at) DESC, block_number DESC",
    )
    .bind(cid)
    .bind(token)
    .bind(from)
    .fetch_all(&services.db)
    .await?;
    for (a, amount) in opening {
        out.insert(
            a,
            History {
                before: num(&amount),
                started: true,
                changes: Vec::new(),
            },
        );
    }
    let rows: Vec<(String, Option<String>, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT address, old_amount::text, new_amount::text, coalesce(block_time, observed_at) AS at
         FROM chainsync.balance_changes
         WHERE chain_id = $1 AND token = $2 AND coalesce(block_time, observed_at) >= $3
           AND coalesce(block_time, observed_at) < $4
         ORDER BY address, at, block_number",
    )
    .bind(cid)
    .bind(token)
    .bind(from)
    .bind(to)
    .fetch_all(&services.db)
    .await?;
    for (a, old, new, at) in rows {
        let h = out.entry(a).or_insert_with(|| History {
            before: old.as_deref().map_or(U256::ZERO, num),
            started: false,
            changes: Vec::new(),
        });
        h.changes.push(Change {
            at,
            amount: num(&new),
        });
    }
    Ok(out)
}

/// The whole history of one address.
async fn load_address(
    services: &Services,
    cid: i64,
    token: &str,
    address: &str,
) -> Result<History, JobError> {
    let rows: Vec<(Option<String>, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT old_amount::text, new_amount::text, coalesce(block_time, observed_at) AS at
         FROM chainsync.balance_changes WHERE chain_id = $1 AND token = $2 AND address = $3
         ORDER BY at, block_number",
    )
    .bind(cid)
    .bind(token)
    .bind(address)
    .fetch_all(&services.db)
    .await?;
    Ok(History {
        before: rows
            .first()
            .and_then(|r| r.0.as_deref())
            .map_or(U256::ZERO, num),
        started: false,
        changes: rows
            .iter()
            .map(|r| Change {
                at: r.2,
                amount: num(&r.1),
            })
            .collect(),
    })
}

/// Computes what is due for every rated token of `chain_id`: the forward pass over the closed
/// windows, then the dirty marks; repeats until neither finds work.
pub async fn compute(
    services: &Services,
    chain_id: u64,
    job_id: Option<uuid::Uuid>,
) -> Result<ComputeReport, JobError> {
    let mut report = ComputeReport::default();
    for token in rated_tokens(&services.settings, chain_id) {
        let key = TokenKey::parse(&token).map_err(JobError::fatal)?;
        let rate = rate_of(&services.settings, chain_id, &key)?;
        loop {
            let Some(closed) = closed_until(services, chain_id, &key).await? else {
                break;
            };
            let f = forward(services, chain_id, &token, &rate, closed, job_id).await?;
            let d = dirty(services, chain_id, &token, &rate, closed, job_id).await?;
            report.windows += f.windows;
            report.rows += f.rows;
            report.dirty += d.dirty;
            report.changed += d.changed;
            report.added += d.added;
            if f.windows == 0 && d.dirty == 0 {
                break;
            }
        }
    }
    Ok(report)
}

async fn ensure_progress(services: &Services, cid: i64, token: &str) -> Result<(), JobError> {
    sqlx::query(
        "INSERT INTO chainsync.points_progress (chain_id, token, computed_through)
         VALUES ($1, $2, '-infinity') ON CONFLICT (chain_id, token) DO NOTHING",
    )
    .bind(cid)
    .bind(token)
    .execute(&services.db)
    .await?;
    Ok(())
}

/// One batch of the forward pass (at most `max_windows_per_job` windows).
async fn forward(
    services: &Services,
    chain_id: u64,
    token: &str,
    rate: &Rate,
    closed: DateTime<Utc>,
    job_id: Option<uuid::Uuid>,
) -> Result<ComputeReport, JobError> {
    let cid = db_chain_id(chain_id)?;
    ensure_progress(services, cid, token).await?;
    let mut tx = services.db.begin().await?;
    let through: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT nullif(computed_through, '-infinity') FROM chainsync.points_progress
         WHERE chain_id = $1 AND token = $2 FOR UPDATE",
    )
    .bind(cid)
    .bind(token)
    .fetch_one(&mut *tx)
    .await?;
    let from = match through {
        Some(t) => t,
        None => {
            let first: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT min(coalesce(block_time, observed_at)) FROM chainsync.balance_changes
                 WHERE chain_id = $1 AND token = $2",
            )
            .bind(cid)
            .bind(token)
            .fetch_one(&mut *tx)
            .await?;
            match first {
                Some(f) => window_of(f),
                None => return Ok(ComputeReport::default()),
            }
        }
    };
    let max = i64::from(services.settings.points.max_windows_per_job.max(1));
    let to = window_of(closed).min(from + hour() * i32::try_from(max).unwrap_or(i32::MAX));
    if from >= to {
        return Ok(ComputeReport::default());
    }
    let histories = load_range(services, cid, token, from, to).await?;
    let mut addresses = Vec::new();
    let mut starts = Vec::new();
    let mut twabs = Vec::new();
    let mut points = Vec::new();
    let mut w = from;
    while w < to {
        for (a, h) in &histories {
            if let Some((t, p)) = h.window(w, rate) {
                addresses.push(a.clone());
                starts.push(w);
                twabs.push(t.to_string());
                points.push(p.to_string());
            }
        }
        w += hour();
    }
    let rows = sqlx::query(
        "INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points, job_id)
         SELECT $1, $2, a, w, t::numeric, p::numeric, $7
         FROM UNNEST($3::text[], $4::timestamptz[], $5::text[], $6::text[]) AS x(a, w, t, p)
         ON CONFLICT DO NOTHING",
    )
    .bind(cid)
    .bind(token)
    .bind(&addresses)
    .bind(&starts)
    .bind(&twabs)
    .bind(&points)
    .bind(job_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE chainsync.points_progress SET computed_through = $3, updated_at = now()
         WHERE chain_id = $1 AND token = $2",
    )
    .bind(cid)
    .bind(token)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let windows = u64::try_from((to - from).num_seconds() / WINDOW_SECS).unwrap_or(0);
    tracing::info!(chain_id, token, %from, %to, rows, "points windows computed");
    Ok(ComputeReport {
        windows,
        rows,
        ..ComputeReport::default()
    })
}

/// One batch of dirty marks of a token: their windows recomputed, changes audited.
async fn dirty(
    services: &Services,
    chain_id: u64,
    token: &str,
    rate: &Rate,
    closed: DateTime<Utc>,
    job_id: Option<uuid::Uuid>,
) -> Result<ComputeReport, JobError> {
    let cid = db_chain_id(chain_id)?;
    ensure_progress(services, cid, token).await?;
    let mut report = ComputeReport::default();
    let mut tx = services.db.begin().await?;
    let through: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT nullif(computed_through, '-infinity') FROM chainsync.points_progress
         WHERE chain_id = $1 AND token = $2 FOR UPDATE",
    )
    .bind(cid)
    .bind(token)
    .fetch_one(&mut *tx)
    .await?;
    let marks: Vec<(String, DateTime<Utc>, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT address, since, reason, marked_at FROM chainsync.points_dirty
         WHERE chain_id = $1 AND token = $2 ORDER BY address LIMIT 500",
    )
    .bind(cid)
    .bind(token)
    .fetch_all(&mut *tx)
    .await?;
    if marks.is_empty() {
        return Ok(report);
    }
    let closed_end = window_of(closed);
    for (address, since, reason, marked_at) in &marks {
        let existing: BTreeMap<DateTime<Utc>, (String, String)> =
            sqlx::query_as::<_, (DateTime<Utc>, String, String)>(
                "SELECT window_start, twab::text, points::text FROM chainsync.points_history
                 WHERE chain_id = $1 AND token = $2 AND address = $3 AND window_start >= $4
                 ORDER BY 1",
            )
            .bind(cid)
            .bind(token)
            .bind(address)
            .bind(window_of(*since))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(w, t, p)| (w, (t, p)))
            .collect();
        let last_existing = existing.keys().next_back().map(|w| *w + hour());
        let end = through
            .into_iter()
            .chain(last_existing)
            .max()
            .unwrap_or(closed_end);
        if end > closed_end {
            // Windows were computed past what the history is complete for now (a reorg rewound
            // the checkpoint): the mark waits until ingestion is back there.
            continue;
        }
        let history = load_address(services, cid, token, address).await?;
        let mut add = (Vec::new(), Vec::new(), Vec::new());
        let mut upd = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut w = window_of(*since);
        while w < end {
            let new = history.window(w, rate);
            match (existing.get(&w), new) {
                (None, Some((t, p))) => {
                    add.0.push(w);
                    add.1.push(t.to_string());
                    add.2.push(p.to_string());
                }
                (Some((ot, op)), new) => {
                    let (t, p) = new.unwrap_or((U256::ZERO, U256::ZERO));
                    if *ot != t.to_string() || *op != p.to_string() {
                        upd.0.push(w);
                        upd.1.push(t.to_string());
                        upd.2.push(p.to_string());
                        upd.3.push(ot.clone());
                        upd.4.push(op.clone());
                    }
                }
                (None, None) => {}
            }
            w += hour();
        }
        if !add.0.is_empty() {
            report.added += sqlx::query(
                "INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points, job_id)
                 SELECT $1, $2, $3, w, t::numeric, p::numeric, $7
                 FROM UNNEST($4::timestamptz[], $5::text[], $6::text[]) AS x(w, t, p)
                 ON CONFLICT DO NOTHING",
            )
            .bind(cid)
            .bind(token)
            .bind(address)
            .bind(&add.0)
            .bind(&add.1)
            .bind(&add.2)
            .bind(job_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !upd.0.is_empty() {
            report.changed += sqlx::query(
                "WITH x AS (
                     SELECT * FROM UNNEST($4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[])
                         AS x(w, t, p, ot, op)
                 ),
                 u AS (
                     UPDATE chainsync.points_history h
                        SET twab = x.t::numeric, points = x.p::numeric, computed_at = now(), job_id = $9
                       FROM x
                      WHERE h.chain_id = $1 AND h.token = $2 AND h.address = $3 AND h.window_start = x.w
                      RETURNING h.window_start
                 )
                 INSERT INTO chainsync.points_audit
                     (chain_id, token, address, window_start, old_twab, old_points, new_twab,
                      new_points, reason, job_id)
                 SELECT $1, $2, $3, x.w, x.ot::numeric, x.op::numeric, x.t::numeric, x.p::numeric,
                        $10, $9
                 FROM x JOIN u ON u.window_start = x.w",
            )
            .bind(cid)
            .bind(token)
            .bind(address)
            .bind(&upd.0)
            .bind(&upd.1)
            .bind(&upd.2)
            .bind(&upd.3)
            .bind(&upd.4)
            .bind(job_id)
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        report.dirty += 1;
        sqlx::query(
            "DELETE FROM chainsync.points_dirty
             WHERE chain_id = $1 AND token = $2 AND address = $3 AND marked_at = $4",
        )
        .bind(cid)
        .bind(token)
        .bind(address)
        .bind(marked_at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if report.changed > 0 || report.added > 0 {
        tracing::info!(
            chain_id,
            token,
            marks = report.dirty,
            changed = report.changed,
            added = report.added,
            "points windows recomputed after their history changed"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: i64, s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600 + s, 0).unwrap()
    }

    #[test]
    fn windows_start_with_the_first_change_and_carry_the_balance() {
        let rate = Rate::parse("0.5").unwrap();
        let h = History {
            before: U256::ZERO,
            started: false,
            changes: vec![
                Change {
                    at: t(1, 1800),
                    amount: U256::from(100u64),
                },
                Change {
                    at: t(3, 0),
                    amount: U256::from(40u64),
                },
            ],
        };
        assert_eq!(h.window(t(0, 0), &rate), None, "before the first change");
        assert_eq!(
            h.window(t(1, 0), &rate),
            Some((U256::from(50u64), U256::from(25u64)))
        );
        assert_eq!(
            h.window(t(2, 0), &rate),
            Some((U256::from(100u64), U256::from(50u64)))
        );
        // A change at the window's first second holds for the whole window.
        assert_eq!(
            h.window(t(3, 0), &rate),
            Some((U256::from(40u64), U256::from(20u64)))
        );
        // Loaded from the middle of the history: the balance before the range opens it.
        let mid = History {
            before: U256::from(7u64),
            started: true,
            changes: Vec::new(),
        };
        assert_eq!(
            mid.window(t(9, 0), &rate),
            Some((U256::from(7u64), U256::from(3u64)))
        );
    }
}
