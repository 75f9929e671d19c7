//! Enqueue paths of the Rust client: single, bulk (one UNNEST insert), and inside a caller's
//! transaction. Every job is checked against its kind's type first: bad input writes nothing.

use crate::{Enqueued, Enqueuer, Job, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{Queue, QueueError};

const ENQUEUE_MANY: &str = include_str!("sql/enqueue_many.sql");
const ENQUEUE_MANY_PLAIN: &str = include_str!("sql/enqueue_many_plain.sql");

/// A checked job with every column resolved.
struct Row {
    id: Uuid,
    kind: String,
    queue: String,
    args: Value,
    priority: i16,
    max_attempts: i32,
    run_at: Option<DateTime<Utc>>,
    unique_key: Option<String>,
    backoff_base_ms: Option<i64>,
    backoff_cap_ms: Option<i64>,
    unique_while_running: bool,
    unique_for_ms: Option<i64>,
    traceparent: Option<String>,
}

impl Queue {
    fn prepare(&self, mut job: NewJob) -> Result<Row, QueueError> {
        self.kinds
            .check(&mut job)
            .map_err(|e| QueueError::Invalid(e.to_string()))?;
        let unique_while_running = self
            .kinds
            .get(&job.kind)
            .is_some_and(|k| k.unique_while_running);
        let policy = self.policies.get(&job.kind);
        if job.queue.as_deref() == Some("") {
            return Err(QueueError::Invalid("queue must not be empty".into()));
        }
        if let Some(ms) = job.unique_for_ms {
            if ms <= 0 {
                return Err(QueueError::Invalid(format!(
                    "unique_for: must be positive, got {ms} ms"
                )));
            }
            if job.unique_key.is_none() {
                return Err(QueueError::Invalid("unique_for: needs a unique_key".into()));
            }
        }
        let traceparent = match job.traceparent {
            Some(tp) => {
                crate::trace::check(&tp).map_err(|e| QueueError::Invalid(e.to_string()))?;
                Some(tp)
            }
            None => crate::trace::current(),
        };
        Ok(Row {
            id: Uuid::now_v7(),
            queue: job.queue.unwrap_or(policy.queue),
            max_attempts: job
                .max_attempts
                .unwrap_or(i32::try_from(policy.retry.max_attempts).unwrap_or(i32::MAX)),
            kind: job.kind,
            args: job.args,
            priority: job.priority.unwrap_or(0),
            run_at: job.run_at,
            unique_key: job.unique_key,
            backoff_base_ms: job.backoff_base_ms,
            backoff_cap_ms: job.backoff_cap_ms,
            unique_while_running,
            unique_for_ms: job.unique_for_ms,
            traceparent,
        })
    }

    /// Enqueues one job in wire form.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let mut conn = self.pool.acquire().await?;
        self.enqueue_in(&mut conn, job).await
    }

    /// Enqueues a typed job.
    pub async fn enqueue_typed<J: Job>(&self, job: &J) -> Result<Enqueued, QueueError> {
        self.enqueue(NewJob::typed(job).map_err(|e| QueueError::Invalid(e.to_string()))?)
            .await
    }

    /// Enqueues inside the caller's connection or transaction (`&mut *tx`): rolled back with it.
    pub async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        job: NewJob,
    ) -> Result<Enqueued, QueueError> {
        let row = self.prepare(job)?;
        let mut out = insert_rows(&mut *conn, vec![row]).await?;
        out.pop()
            .ok_or_else(|| QueueError::Conflict("insert returned no id".into()))
    }

    /// Enqueues many jobs in one statement; all are checked before anything is written.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        let mut conn = self.pool.acquire().await?;
        self.enqueue_many_in(&mut conn, jobs).await
    }

    /// Bulk enqueue inside the caller's connection or transaction.
    pub async fn enqueue_many_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let rows = jobs
            .into_iter()
            .enumerate()
            .map(|(i, j)| {
                self.prepare(j).map_err(|e| match e {
                    QueueError::Invalid(m) => QueueError::Invalid(format!("job {i}: {m}")),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        insert_rows(conn, rows).await
    }
}

/// Inserts rows; those with a unique window first claim it (`chainsync.claim_unique_window`),
/// in one transaction (a savepoint inside the caller's) with the insert.
async fn insert_rows(conn: &mut PgConnection, rows: Vec<Row>) -> Result<Vec<Enqueued>, QueueError> {
    if rows.iter().all(|r| r.unique_for_ms.is_none()) {
        return insert_unwindowed(conn, rows).await;
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let n = rows.len();
    let mut out: Vec<Option<Enqueued>> = vec![None; n];
    let mut keep = Vec::with_capacity(n);
    let mut keep_idx = Vec::with_capacity(n);
    let mut opened = Vec::new();
    for (i, r) in rows.into_iter().enumerate() {
        if let (Some(ms), Some(key)) = (r.unique_for_ms, r.unique_key.as_deref()) {
            let holder: Option<Uuid> = sqlx::query_scalar(
                "SELECT chainsync.claim_unique_window($1, $2, make_interval(secs => $3::double precision / 1000))",
            )
            .bind(key)
            .bind(r.id)
            .bind(ms)
            .fetch_one(&mut *tx)
            .await?;
            match holder {
                Some(h) if h != r.id => {
                    out[i] = Some(Enqueued {
                        id: h,
                        inserted: false,
                    });
                    continue;
                }
                _ => opened.push((i, key.to_string(), r.id)),
            }
        }
        keep_idx.push(i);
        keep.push(r);
    }
    let done = insert_unwindowed(&mut tx, keep).await?;
    for (i, e) in keep_idx.into_iter().zip(done) {
        out[i] = Some(e);
    }
    // A window opened by a row that a queued job of the same key absorbed belongs to that job.
    for (i, key, id) in opened {
        if let Some(e) = out[i].filter(|e| !e.inserted) {
            sqlx::query(
                "UPDATE chainsync.unique_windows SET job_id = $3 WHERE unique_key = $1 AND job_id = $2",
            )
            .bind(&key)
            .bind(id)
            .bind(e.id)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(out.into_iter().flatten().collect())
}

async fn insert_unwindowed(
    conn: &mut PgConnection,
    rows: Vec<Row>,
) -> Result<Vec<Enqueued>, QueueError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let n = rows.len();
    let mut ids = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut prios = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut bases = Vec::with_capacity(n);
    let mut caps = Vec::with_capacity(n);
    let mut while_running = Vec::with_capacity(n);
    let mut traceparents = Vec::with_capacity(n);
    for r in rows {
        ids.push(r.id);
        kinds.push(r.kind);
        queues.push(r.queue);
        args.push(r.args);
        prios.push(r.priority);
        attempts.push(r.max_attempts);
        run_ats.push(r.run_at);
        keys.push(r.unique_key);
        bases.push(r.backoff_base_ms);
        caps.push(r.backoff_cap_ms);
        while_running.push(r.unique_while_running);
        traceparents.push(r.traceparent);
    }
    let plain = keys.iter().all(Option::is_none)
        && traceparents.iter().all(Option::is_none)
        && run_ats.iter().all(Option::is_none)
        && bases.iter().all(Option::is_none)
        && caps.iter().all(Option::is_none);
    if plain {
        let done = sqlx::query(ENQUEUE_MANY_PLAIN)
            .bind(&ids)
            .bind(&kinds)
            .bind(&queues)
            .bind(&args)
            .bind(&prios)
            .bind(&attempts)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() != n as u64 {
            return Err(QueueError::Conflict(format!(
                "bulk insert wrote {} of {n} jobs",
                done.rows_affected()
            )));
        }
        return Ok(ids
            .into_iter()
            .map(|id| Enqueued { id, inserted: true })
            .collect());
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(ENQUEUE_MANY)
        .bind(&ids)
        .bind(&kinds)
        .bind(&queues)
        .bind(&args)
        .bind(&prios)
        .bind(&attempts)
        .bind(&run_ats)
        .bind(&keys)
        .bind(&bases)
        .bind(&caps)
        .bind(&while_running)
        .bind(&traceparents)
        .fetch_all(&mut *conn)
        .await?;
    if inserted.len() == n {
        return Ok(ids
            .into_iter()
            .map(|id| Enqueued { id, inserted: true })
            .collect());
    }
    // Some rows hit a held unique key: answer with the job that holds it.
    let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    let missing: Vec<String> = ids
        .iter()
        .zip(&keys)
        .filter(|(id, _)| !inserted.contains(id))
        .filter_map(|(_, k)| k.clone())
        .collect();
    let existing: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT k, h FROM unnest($1::text[]) AS k, chainsync.unique_holder(k) AS h
         WHERE h IS NOT NULL",
    )
    .bind(&missing)
    .fetch_all(&mut *conn)
    .await?;
    let existing: std::collections::HashMap<String, Uuid> = existing.into_iter().collect();
    ids.into_iter()
        .zip(keys)
        .map(|(id, key)| {
            if inserted.contains(&id) {
                return Ok(Enqueued { id, inserted: true });
            }
            key.and_then(|k| existing.get(&k).copied())
                .map(|id| Enqueued {
                    id,
                    inserted: false,
                })
                .ok_or_else(|| {
                    QueueError::Conflict("a unique job finished while enqueueing; retry".into())
                })
        })
        .collect()
}

/// Calls the SQL API `chainsync.enqueue()` the way an application in any language would.
pub async fn enqueue_sql<'e>(
    exec: impl PgExecutor<'e>,
    kind: &str,
    args: &Value,
    unique_key: Option<&str>,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar("SELECT chainsync.enqueue($1, $2, unique_key => $3)")
        .bind(kind)
        .bind(args)
        .bind(unique_key)
        .fetch_one(exec)
        .await
}

/// [`enqueue_sql`] with a unique window: `chainsync.enqueue(kind, args, unique_key => key,
/// unique_for => window)`.
pub async fn enqueue_sql_for<'e>(
    exec: impl PgExecutor<'e>,
    kind: &str,
    args: &Value,
    unique_key: &str,
    window: std::time::Duration,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT chainsync.enqueue($1, $2, unique_key => $3,
                                 unique_for => make_interval(secs => $4::double precision / 1000))",
    )
    .bind(kind)
    .bind(args)
    .bind(unique_key)
    .bind(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
    .fetch_one(exec)
    .await
}

#[async_trait]
impl Enqueuer for Queue {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        Queue::enqueue(self, job).await
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        Queue::enqueue_many(self, jobs).await
    }
}
