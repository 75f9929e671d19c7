//! The `balances` table and its history: multi-row upserts pinned to a block, change rows only
//! when a value changed, and the Redis write-through.

use alloy::primitives::{Address, U256};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::Instrument;

use crate::{
    JobError, Services,
    chain::PinnedBlock,
    ids::{TokenKey, address_text, hash_text, parse_amount},
};

/// One balance to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceRow {
    pub token: TokenKey,
    pub address: Address,
    pub amount: U256,
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Rows inserted or updated (at this block or newer than what was stored).
    pub written: usize,
    /// Of those, rows whose amount changed (a `balance_changes` row each).
    pub changed: usize,
    /// Rows skipped because a newer block was already stored.
    pub stale: usize,
    /// Holders whose points windows were marked for a recompute by the history this write
    /// recorded (the kind then enqueues `compute-points`).
    pub points_dirty: usize,
}

impl WriteOutcome {
    pub fn add(&mut self, o: WriteOutcome) {
        self.written += o.written;
        self.changed += o.changed;
        self.stale += o.stale;
        self.points_dirty += o.points_dirty;
    }
}

/// A row as written, for the cache.
#[derive(Debug, Clone)]
pub struct WrittenRow {
    pub token: String,
    pub address: String,
    pub amount: String,
    pub block_number: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<(String, String, String, i64, DateTime<Utc>)> for WrittenRow {
    /// From a `RETURNING token, address, amount::text, block_number, updated_at` row.
    fn from(
        (token, address, amount, block_number, updated_at): (
            String,
            String,
            String,
            i64,
            DateTime<Utc>,
        ),
    ) -> Self {
        Self {
            token,
            address,
            amount,
            block_number,
            updated_at,
        }
    }
}

/// Upsert of many balances read at `block`, in one statement.
///
/// - A stored row of a newer block is never overwritten (the stale result is dropped).
/// - `changed` counts the rows whose amount differs from the stored one; the history itself is
///   written by [`record_history`], which compares with the history at the block, not with this
///   table.
/// - Duplicated (token, address) pairs in `rows` are collapsed (the last wins).
const UPSERT: &str = r#"
WITH input AS (
    SELECT DISTINCT ON (token, address) token, address, amount::numeric AS amount
    FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(token, address, amount, n)
    ORDER BY token, address, n DESC
),
old AS (
    -- Locked in key order so that concurrent writers of overlapping keys queue instead of
    -- deadlocking; read committed returns the latest committed amount after the wait.
    SELECT b.token, b.address, b.amount
    FROM chainsync.balances b
    JOIN input i ON b.chain_id = $4 AND b.token = i.token AND b.address = i.address
    ORDER BY b.token, b.address
    FOR UPDATE OF b
),
up AS (
    INSERT INTO chainsync.balances AS b
        (chain_id, token, address, amount, block_number, block_hash, updated_at)
    -- Joining `old` here makes Postgres read (and lock) the old rows before the upsert.
    SELECT $4, i.token, i.address, i.amount, $5, $6, now()
    FROM input i LEFT JOIN old o ON o.token = i.token AND o.address = i.address
    ON CONFLICT (chain_id, token, address) DO UPDATE
        SET amount = EXCLUDED.amount,
            block_number = EXCLUDED.block_number,
            block_hash = EXCLUDED.block_hash,
            updated_at = EXCLUDED.updated_at
        WHERE b.block_number <= EXCLUDED.block_number
    RETURNING b.token, b.address, b.amount, b.block_number, b.updated_at
)
SELECT up.token, up.address, up.amount::text, up.block_number, up.updated_at,
       (SELECT count(*) FROM up LEFT JOIN old ON old.token = up.token AND old.address = up.address
        WHERE old.amount IS DISTINCT FROM up.amount) AS changed
FROM up
"#;

/// Stores balances read at `block`; writes through to Redis when configured.
pub async fn store_balances(
    services: &Services,
    chain_id: u64,
    block: &PinnedBlock,
    rows: &[BalanceRow],
) -> Result<WriteOutcome, JobError> {
    if rows.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let rows_in = rows;
    let mut tokens = Vec::with_capacity(rows.len());
    let mut addresses = Vec::with_capacity(rows.len());
    let mut amounts = Vec::with_capacity(rows.len());
    for r in rows {
        tokens.push(r.token.text());
        addresses.push(address_text(&r.address));
        amounts.push(r.amount.to_string());
    }
    let distinct = {
        let mut keys: Vec<(&String, &String)> = tokens.iter().zip(addresses.iter()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    let written: Vec<(String, String, String, i64, DateTime<Utc>, i64)> = sqlx::query_as(UPSERT)
        .bind(&tokens)
        .bind(&addresses)
        .bind(&amounts)
        .bind(db_chain_id(chain_id)?)
        .bind(db_block(block.number)?)
        .bind(hash_text(&block.hash))
        .fetch_all(&services.db)
        .instrument(crate::observe::sql_span(
            "upsert chainsync.balances",
            tokens.len(),
        ))
        .await?;
    let changed = written.first().map_or(0, |r| r.5);
    let mut outcome = WriteOutcome {
        written: written.len(),
        changed: usize::try_from(changed).unwrap_or(0),
        stale: distinct.saturating_sub(written.len()),
        points_dirty: 0,
    };
    let rows: Vec<WrittenRow> = written
        .into_iter()
        .map(|(token, address, amount, block_number, updated_at, _)| {
            WrittenRow::from((token, address, amount, block_number, updated_at))
        })
        .collect();
    cache_write_through(services, chain_id, &rows).await;
    let observed: Vec<Observation> = rows_in
        .iter()
        .map(|r| Observation {
            token: r.token,
            address: r.address,
            block: *block,
            amount: r.amount,
        })
        .collect();
    outcome.points_dirty = record_history(services, chain_id, Source::Read, &observed)
        .await?
        .dirty;
    Ok(outcome)
}

/// Redis key of one cached balance.
pub fn cache_key(chain_id: u64, token: &str, address: &str) -> String {
    format!("chainsync:balance:{chain_id}:{token}:{address}")
}

#[derive(Serialize)]
struct CachedBalance<'a> {
    amount: &'a str,
    block_number: i64,
    updated_at: DateTime<Utc>,
}

/// Writes rows to the Redis cache (when configured). Failures are logged and ignored: Postgres is
/// the source of truth and readers fall back to it.
pub async fn cache_write_through(services: &Services, chain_id: u64, rows: &[WrittenRow]) {
    if rows.is_empty() {
        return;
    }
    if services.redis.is_none() {
        return;
    }
    let ttl = services.settings.cache.balance_ttl.as_secs();
    let mut pipe = redis::pipe();
    for r in rows {
        let value = match serde_json::to_string(&CachedBalance {
            amount: &r.amount,
            block_number: r.block_number,
            updated_at: r.updated_at,
        }) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "balance cache: encoding failed");
                return;
            }
        };
        pipe.set_ex(cache_key(chain_id, &r.token, &r.address), value, ttl)
            .ignore();
    }
    // Taken last: every path after it reports the outcome to the breaker.
    let Some(mut conn) = services.cache_conn() else {
        return;
    };
    let r = tokio::time::timeout(crate::CACHE_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
    services.cache_outcome(matches!(r, Ok(Ok(()))));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            metrics::counter!("chainsync_cache_errors_total", "op" => "write").increment(1);
            tracing::debug!(chain_id, rows = rows.len(), error = %e, "balance cache write failed; continuing without it");
        }
        Err(_) => {
            metrics::counter!("chainsync_cache_errors_total", "op" => "write").increment(1);
            tracing::debug!(
                chain_id,
                rows = rows.len(),
                "balance cache write timed out; continuing without it"
            );
        }
    }
}

/// A stored balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBalance {
    pub token: TokenKey,
    pub address: Address,
    pub amount: U256,
    pub block_number: u64,
}

/// Stored balances of `tokens` on a chain.
pub async fn load_balances(
    db: &sqlx::PgPool,
    chain_id: u64,
    tokens: &[TokenKey],
) -> Result<Vec<StoredBalance>, JobError> {
    let token_texts: Vec<String> = tokens.iter().map(TokenKey::text).collect();
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT token, address, amount::text, block_number FROM chainsync.balances \
         WHERE chain_id = $1 AND token = ANY($2) ORDER BY token, address",
    )
    .bind(db_chain_id(chain_id)?)
    .bind(&token_texts)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(t, a, amount, b)| {
            Ok(StoredBalance {
                token: TokenKey::parse(&t).map_err(JobError::retry)?,
                address: crate::ids::parse_address(&a).map_err(JobError::retry)?,
                amount: parse_amount(&amount).map_err(JobError::retry)?,
                block_number: u64::try_from(b).unwrap_or(0),
            })
        })
        .collect()
}

/// One holder's stored balance as the API shows it (amount as a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HolderBalance {
    pub token: String,
    pub amount: String,
    pub block_number: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Stored balances of one holder (`address` in canonical lower-case form), of one token or all.
pub async fn holder_balances(
    db: &sqlx::PgPool,
    chain_id: u64,
    address: &str,
    token: Option<&str>,
) -> Result<Vec<HolderBalance>, sqlx::Error> {
    sqlx::query_as(
        "SELECT token, amount::text AS amount, block_number, updated_at FROM chainsync.balances
         WHERE chain_id = $1 AND address = $2 AND ($3::text IS NULL OR token = $3) ORDER BY token",
    )
    .bind(i64::try_from(chain_id).unwrap_or(i64::MAX))
    .bind(address)
    .bind(token)
    .fetch_all(db)
    .await
}

/// Chain ids are `bigint` in the database.
pub fn db_chain_id(chain_id: u64) -> Result<i64, JobError> {
    i64::try_from(chain_id)
        .map_err(|_| JobError::fatal(format!("chain id {chain_id} is too large")))
}

/// Block numbers are `bigint` in the database.
pub fn db_block(n: u64) -> Result<i64, JobError> {
    i64::try_from(n).map_err(|_| JobError::retry(format!("block number {n} out of range")))
}

/// How a history row was found (the `source` column of `balance_changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A read pinned to a block where a transfer log of the token touched the holder.
    Log,
    /// A read at a pinned block by a sync.
    Read,
    /// A read by reconcile-chain at the block it compared.
    Reconcile,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Read => "read",
            Self::Reconcile => "reconcile",
        }
    }
}

/// A balance seen on chain at a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub token: TokenKey,
    pub address: Address,
    pub block: PinnedBlock,
    pub amount: U256,
}

/// What [`record_history`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryOutcome {
    /// History rows inserted or corrected.
    pub written: usize,
    /// Rows removed because they no longer record a change (a later row of the same amount).
    pub removed: usize,
    /// (token, address) keys whose points windows were marked for a recompute.
    pub dirty: usize,
}

/// Inserts an observation as a history row when it differs from the history just before its
/// block, or corrects the row already at that block. `log` rows are never downgraded to another
/// source.
const HISTORY_INSERT: &str = r#"
WITH o AS (
    SELECT DISTINCT ON (token, address, block_number)
           token, address, block_number, block_hash, block_time, amount::numeric AS amount
    FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[], $6::timestamptz[], $7::text[])
         WITH ORDINALITY AS t(token, address, block_number, block_hash, block_time, amount, n)
    ORDER BY token, address, block_number, n DESC
),
p AS (
    -- The history just before each observation: the row before it, or an earlier observation
    -- of the same batch when that is later.
    SELECT o.*, d.block_number AS db, d.new_amount AS da,
           lag(o.block_number) OVER w AS ob, lag(o.amount) OVER w AS oa,
           EXISTS (SELECT 1 FROM chainsync.balance_changes c
                    WHERE c.chain_id = $1 AND c.token = o.token AND c.address = o.address
                      AND c.block_number = o.block_number) AS present
    FROM o
    LEFT JOIN LATERAL (
        SELECT c.block_number, c.new_amount FROM chainsync.balance_changes c
         WHERE c.chain_id = $1 AND c.token = o.token AND c.address = o.address
           AND c.block_number < o.block_number
         ORDER BY c.block_number DESC LIMIT 1
    ) d ON true
    WINDOW w AS (PARTITION BY o.token, o.address ORDER BY o.block_number)
),
q AS (
    SELECT p.*, CASE WHEN ob IS NOT NULL AND (db IS NULL OR ob > db) THEN oa ELSE da END AS before
    FROM p
)
INSERT INTO chainsync.balance_changes AS c
    (chain_id, token, address, old_amount, new_amount, block_number, block_hash, block_time, source)
SELECT $1, token, address, before, amount, block_number, block_hash, block_time, $8 FROM q
WHERE present OR before IS DISTINCT FROM amount
ORDER BY token, address, block_number
ON CONFLICT (chain_id, token, address, block_number) DO UPDATE
    SET new_amount = EXCLUDED.new_amount,
        block_hash = EXCLUDED.block_hash,
        block_time = EXCLUDED.block_time,
        source = CASE WHEN c.source = 'log' THEN 'log' ELSE EXCLUDED.source END,
        observed_at = now()
    WHERE (c.new_amount, c.block_hash, c.block_time)
              IS DISTINCT FROM (EXCLUDED.new_amount, EXCLUDED.block_hash, EXCLUDED.block_time)
       OR (EXCLUDED.source = 'log' AND c.source <> 'log')
RETURNING c.token, c.address, c.block_time
"#;

/// After inserts into the middle of a history: rows that repeat the amount before them are no
/// change and go; `old_amount` is set to the amount before each row. Only rows from the last row
/// before the first touched block on are looked at.
const HISTORY_NORMALIZE: &str = r#"
WITH k AS (
    SELECT token, address, min(block_number) AS from_block
    FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS t(token, address, block_number)
    GROUP BY 1, 2
),
s AS (
    SELECT k.token, k.address,
           coalesce((SELECT max(c.block_number) FROM chainsync.balance_changes c
                      WHERE c.chain_id = $1 AND c.token = k.token AND c.address = k.address
                        AND c.block_number < k.from_block), -1) AS start
    FROM k
),
h AS (
    SELECT c.token, c.address, c.block_number, s.start, c.new_amount, c.old_amount,
           lag(c.new_amount) OVER (PARTITION BY c.token, c.address ORDER BY c.block_number) AS prev
    FROM chainsync.balance_changes c
    JOIN s ON c.chain_id = $1 AND c.token = s.token AND c.address = s.address
    WHERE c.block_number >= s.start
),
del AS (
    DELETE FROM chainsync.balance_changes c USING h
    WHERE c.chain_id = $1 AND c.token = h.token AND c.address = h.address
      AND c.block_number = h.block_number AND h.block_number > h.start AND h.prev = h.new_amount
    RETURNING c.token, c.address, c.block_time
),
fix AS (
    UPDATE chainsync.balance_changes c SET old_amount = h.prev
    FROM h
    WHERE c.chain_id = $1 AND c.token = h.token AND c.address = h.address
      AND c.block_number = h.block_number AND h.block_number > h.start AND h.prev IS NOT NULL
      AND h.prev <> h.new_amount AND c.old_amount IS DISTINCT FROM h.prev
    RETURNING 1
)
SELECT token, address, block_time, (SELECT count(*) FROM fix) FROM del
"#;

/// Marks points windows of (token, address) from `since` on for a recompute, for tokens with a
/// rate, when something was computed from that history already (a window at or after `since`, or
/// the token's forward pass is past it).
const MARK_DIRTY: &str = r#"
INSERT INTO chainsync.points_dirty AS d (chain_id, token, address, since, reason)
SELECT $1, t.token, t.address, t.since, $5
FROM UNNEST($2::text[], $3::text[], $4::timestamptz[]) AS t(token, address, since)
WHERE EXISTS (SELECT 1 FROM chainsync.points_history p
               WHERE p.chain_id = $1 AND p.token = t.token AND p.address = t.address
                 AND p.window_start > t.since - interval '1 hour')
   OR t.since < (SELECT pp.computed_through FROM chainsync.points_progress pp
                  WHERE pp.chain_id = $1 AND pp.token = t.token)
ORDER BY t.token, t.address
ON CONFLICT (chain_id, token, address) DO UPDATE
    SET since = least(d.since, EXCLUDED.since),
        reason = CASE WHEN EXCLUDED.since < d.since THEN EXCLUDED.reason ELSE d.reason END,
        marked_at = clock_timestamp()
RETURNING 1
"#;

/// Tokens of `chain_id` that earn points.
pub fn rated_tokens(settings: &crate::settings::DomainConfig, chain_id: u64) -> Vec<String> {
    let mut v: Vec<String> = settings
        .points
        .rates
        .iter()
        .filter(|r| r.chain_id == chain_id)
        .map(|r| r.token.key.text())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Marks windows of changed history for a recompute (see [`MARK_DIRTY`]), inside `tx`, after
/// taking a share lock on the tokens' progress rows: a points pass computing from the old history
/// at the same time commits first, and its windows are then seen here.
pub async fn mark_dirty(
    tx: &mut sqlx::PgConnection,
    settings: &crate::settings::DomainConfig,
    chain_id: u64,
    changed: &std::collections::BTreeMap<(String, String), DateTime<Utc>>,
    reason: &str,
) -> Result<usize, JobError> {
    let rated = rated_tokens(settings, chain_id);
    let keys: Vec<(&(String, String), &DateTime<Utc>)> = changed
        .iter()
        .filter(|((t, _), _)| rated.contains(t))
        .collect();
    if keys.is_empty() {
        return Ok(0);
    }
    let cid = db_chain_id(chain_id)?;
    let mut tokens: Vec<String> = keys.iter().map(|((t, _), _)| t.clone()).collect();
    tokens.sort();
    tokens.dedup();
    sqlx::query(
        "INSERT INTO chainsync.points_progress (chain_id, token, computed_through)
         SELECT $1, t, '-infinity' FROM UNNEST($2::text[]) AS t ORDER BY t
         ON CONFLICT (chain_id, token) DO NOTHING",
    )
    .bind(cid)
    .bind(&tokens)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "SELECT 1 FROM chainsync.points_progress WHERE chain_id = $1 AND token = ANY($2)
         ORDER BY token FOR SHARE",
    )
    .bind(cid)
    .bind(&tokens)
    .execute(&mut *tx)
    .await?;
    let marked = sqlx::query(MARK_DIRTY)
        .bind(cid)
        .bind(keys.iter().map(|((t, _), _)| t.clone()).collect::<Vec<_>>())
        .bind(keys.iter().map(|((_, a), _)| a.clone()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, s)| **s).collect::<Vec<_>>())
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(usize::try_from(marked).unwrap_or(usize::MAX))
}

/// Takes transaction-scoped advisory locks on (chain, token, address) keys, in key order, so that
/// two writers of the same history (ingestion and a sync) never interleave their inserts and
/// normalization.
pub async fn lock_keys(
    tx: &mut sqlx::PgConnection,
    chain_id: u64,
    keys: &[String],
) -> Result<(), JobError> {
    let mut keys: Vec<String> = keys.iter().map(|k| format!("{chain_id}:{k}")).collect();
    keys.sort();
    keys.dedup();
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 7)))
         FROM (SELECT k FROM UNNEST($1::text[]) AS k ORDER BY k) s",
    )
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A history write at least this large checks that the table has planner statistics.
const ANALYZE_AFTER_ROWS: usize = 500;

/// A history table that has never been analyzed (new, or truncated) makes the planner guess its
/// size, and it then probes each holder's history through the time index (a scan of the token's
/// whole history per holder: seconds per range). When a large write lands in such a table, its
/// statistics are gathered at once (in the writing transaction, so its own rows count) instead of
/// after autovacuum's next round.
/// The table is partitioned: the partitions that were never analyzed are.
async fn analyze_if_never_analyzed(tx: &mut sqlx::PgConnection) -> Result<(), JobError> {
    sqlx::query("SELECT chainsync.history_analyze_new('balance_changes')")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Records balances seen on chain in `balance_changes` on the chain's timeline: a row at an
/// observation's block when its amount differs from the history just before that block (one row
/// per (chain, token, address, block): replaying writes nothing twice), later rows that no longer
/// record a change removed, and the points windows of changed history marked for a recompute
/// (then a `compute-points` job is enqueued).
pub async fn record_history(
    services: &Services,
    chain_id: u64,
    source: Source,
    obs: &[Observation],
) -> Result<HistoryOutcome, JobError> {
    if obs.is_empty() {
        return Ok(HistoryOutcome::default());
    }
    let cid = db_chain_id(chain_id)?;
    let mut tokens = Vec::with_capacity(obs.len());
    let mut addresses = Vec::with_capacity(obs.len());
    let mut numbers = Vec::with_capacity(obs.len());
    let mut hashes = Vec::with_capacity(obs.len());
    let mut times = Vec::with_capacity(obs.len());
    let mut amounts = Vec::with_capacity(obs.len());
    for o in obs {
        tokens.push(o.token.text());
        addresses.push(address_text(&o.address));
        numbers.push(db_block(o.block.number)?);
        hashes.push(hash_text(&o.block.hash));
        times.push(o.block.time());
        amounts.push(o.amount.to_string());
    }
    let keys: Vec<String> = tokens
        .iter()
        .zip(&addresses)
        .map(|(t, a)| format!("{t}:{a}"))
        .collect();
    let span = crate::observe::sql_span("insert chainsync.balance_changes", obs.len());
    let (written, removed, dirty) = async {
        let mut tx = services.db.begin().await?;
        lock_keys(&mut tx, chain_id, &keys).await?;
        let written: Vec<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(HISTORY_INSERT)
            .bind(cid)
            .bind(&tokens)
            .bind(&addresses)
            .bind(&numbers)
            .bind(&hashes)
            .bind(&times)
            .bind(&amounts)
            .bind(source.as_str())
            .fetch_all(&mut *tx)
            .await?;
        if written.len() >= ANALYZE_AFTER_ROWS {
            analyze_if_never_analyzed(&mut tx).await?;
        }
        let mut removed = Vec::new();
        if !written.is_empty() {
            removed = sqlx::query_as::<_, (String, String, Option<DateTime<Utc>>, i64)>(
                HISTORY_NORMALIZE,
            )
            .bind(cid)
            .bind(&tokens)
            .bind(&addresses)
            .bind(&numbers)
            .fetch_all(&mut *tx)
            .await?;
        }
        let mut changed: std::collections::BTreeMap<(String, String), DateTime<Utc>> =
            std::collections::BTreeMap::new();
        for (t, a, at) in written
            .iter()
            .cloned()
            .chain(removed.iter().map(|r| (r.0.clone(), r.1.clone(), r.2)))
        {
            let at = at.unwrap_or_else(Utc::now);
            let e = changed.entry((t, a)).or_insert(at);
            *e = (*e).min(at);
        }
        let dirty = mark_dirty(
            &mut tx,
            &services.settings,
            chain_id,
            &changed,
            &format!("balance history changed ({})", source.as_str()),
        )
        .await?;
        tx.commit().await?;
        Ok::<_, JobError>((written, removed, dirty))
    }
    .instrument(span)
    .await?;
    Ok(HistoryOutcome {
        written: written.len(),
        removed: removed.len(),
        dirty,
    })
}

/// Upsert of balances each read at its own block (ingestion: the newest touched block of each
/// holder). A stored row of a newer block is never overwritten. History is written separately.
const UPSERT_AT: &str = r#"
WITH input AS (
    SELECT DISTINCT ON (token, address) token, address, amount::numeric AS amount,
           block_number, block_hash
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
         AS t(token, address, amount, block_number, block_hash)
    ORDER BY token, address, block_number DESC
)
INSERT INTO chainsync.balances AS b
    (chain_id, token, address, amount, block_number, block_hash, updated_at)
SELECT $6, token, address, amount, block_number, block_hash, now() FROM input
ORDER BY token, address
ON CONFLICT (chain_id, token, address) DO UPDATE
    SET amount = EXCLUDED.amount,
        block_number = EXCLUDED.block_number,
        block_hash = EXCLUDED.block_hash,
        updated_at = EXCLUDED.updated_at
    WHERE b.block_number <= EXCLUDED.block_number
RETURNING b.token, b.address, b.amount::text, b.block_number, b.updated_at
"#;

/// Stores the newest of `obs` per (token, address) in `balances` (never over a newer block) and
/// writes the cache through. Returns the rows written.
pub async fn store_observed(
    services: &Services,
    chain_id: u64,
    obs: &[Observation],
) -> Result<usize, JobError> {
    if obs.is_empty() {
        return Ok(0);
    }
    let mut tokens = Vec::with_capacity(obs.len());
    let mut addresses = Vec::with_capacity(obs.len());
    let mut amounts = Vec::with_capacity(obs.len());
    let mut numbers = Vec::with_capacity(obs.len());
    let mut hashes = Vec::with_capacity(obs.len());
    for o in obs {
        tokens.push(o.token.text());
        addresses.push(address_text(&o.address));
        amounts.push(o.amount.to_string());
        numbers.push(db_block(o.block.number)?);
        hashes.push(hash_text(&o.block.hash));
    }
    let written: Vec<(String, String, String, i64, DateTime<Utc>)> = sqlx::query_as(UPSERT_AT)
        .bind(&tokens)
        .bind(&addresses)
        .bind(&amounts)
        .bind(&numbers)
        .bind(&hashes)
        .bind(db_chain_id(chain_id)?)
        .fetch_all(&services.db)
        .instrument(crate::observe::sql_span(
            "upsert chainsync.balances",
            tokens.len(),
        ))
        .await?;
    let rows: Vec<WrittenRow> = written.into_iter().map(WrittenRow::from).collect();
    cache_write_through(services, chain_id, &rows).await;
    Ok(rows.len())
}
