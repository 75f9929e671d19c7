//! Queries of an operator console: filtered, keyset-paginated listings of jobs and dead letters,
//! bulk actions on a filter, per-minute activity and per-queue depth.
//!
//! Pages are read newest first along an index (`jobs` by primary key: ids are UUID v7, so their
//! order is creation order; `dead_letters` by `(failed_at, id)`), continuing after the last row
//! shown (`before`), never with OFFSET. A time range on jobs also bounds the id, so the index
//! scan starts and stops near the range.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{DeadLetter, JobRow, Queue, QueueError, admin::STATES};

/// A filter of jobs. Every field is optional; `text` matches args or errors, case-insensitively.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobQuery {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub text: Option<String>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
}

/// A filter of dead letters; the time range is on `failed_at`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadQuery {
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub text: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Where a page of dead letters continues: after this `(failed_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadCursor {
    pub failed_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A bulk action on the jobs a filter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkJobAction {
    /// Available and running jobs become cancelled.
    Cancel,
    /// Available jobs run now; cancelled jobs are queued again (unless their unique key is held).
    Retry,
    /// Jobs that are not running are deleted.
    Delete,
}

impl BulkJobAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cancel" => Some(Self::Cancel),
            "retry" => Some(Self::Retry),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::Delete => "delete",
        }
    }

    /// The states the action applies to.
    fn states(self) -> &'static [&'static str] {
        match self {
            Self::Cancel => &["available", "running"],
            Self::Retry => &["available", "cancelled"],
            Self::Delete => &["available", "completed", "cancelled"],
        }
    }
}

/// Jobs finished and dead letters per minute.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MinuteActivity {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub cancelled: i64,
    pub dead: i64,
}

/// Depth of one queue.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueDepth {
    pub queue: String,
    /// Available and due.
    pub ready: i64,
    /// Available, scheduled for later (future runs and retries waiting for their backoff).
    pub scheduled: i64,
    pub running: i64,
    /// Seconds the oldest ready job has waited past its run_at.
    pub oldest_ready_secs: Option<f64>,
}

/// Jobs of one (queue, kind, state), with how many of them are ready to run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GroupCount {
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub jobs: i64,
    /// Available and due.
    pub ready: i64,
    /// Seconds the oldest ready job has waited past its run_at.
    pub oldest_ready_secs: Option<f64>,
}

/// Time from run_at to start of the jobs started in a window.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
pub struct Latency {
    pub started: i64,
    pub p50_secs: Option<f64>,
    pub p95_secs: Option<f64>,
    pub max_secs: Option<f64>,
}

/// Checks and normalises a job filter.
fn check_jobs(q: &JobQuery) -> Result<(), QueueError> {
    if let Some(s) = &q.state
        && !STATES.contains(&s.as_str())
    {
        return Err(QueueError::Invalid(format!(
            "unknown state {s:?} (one of: {})",
            STATES.join(", ")
        )));
    }
    check_range(q.from, q.to)
}

fn check_range(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<(), QueueError> {
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(QueueError::Invalid(
            "the time range is empty: from must be before to".into(),
        ));
    }
    Ok(())
}

fn check_limit(limit: i64) -> Result<(), QueueError> {
    if !(1..=1000).contains(&limit) {
        return Err(QueueError::Invalid(format!(
            "limit must be in 1..=1000, got {limit}"
        )));
    }
    Ok(())
}

/// The smallest UUID v7 of millisecond `t` (v7 ids sort by creation time).
pub fn uuid_v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(t.timestamp_millis().max(0)).unwrap_or(0);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70;
    b[8] = 0x80;
    Uuid::from_bytes(b)
}

/// Id bounds of a creation-time range, one hour wider on each side: an id's time comes from the
/// clock of whoever made it (the app's or the database's), `created_at` from the database's.
fn id_bounds(q: &JobQuery) -> (Option<Uuid>, Option<Uuid>) {
    let slack = ChronoDuration::hours(1);
    (
        q.from.map(|f| uuid_v7_floor(f - slack)),
        q.to.map(|t| uuid_v7_floor(t + slack)),
    )
}

/// Listings and counts of the console give up after this long, with a message asking for a
/// narrower filter, instead of holding a connection for a scan of the whole table (a text search
/// without any other filter reads every row's args and errors).
const LISTING_TIMEOUT: &str = "SET LOCAL statement_timeout = '5s'";

fn timed_out(e: sqlx::Error) -> QueueError {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("57014") => QueueError::Invalid(
            "this filter took longer than 5 s to answer; narrow it with a state, kind, queue or \
             time range"
                .into(),
        ),
        _ => e.into(),
    }
}

/// The conditions of a job filter, over the parameters every job statement here binds in this
/// order: $1 state, $2 kind, $3 queue, $4 text, $5 from, $6 to, $7 lowest id, $8 id bound above.
/// Only the conditions of the filter's fields are written, so that each run is planned with the
/// indexes they allow (a `$n IS NULL OR …` condition would hide them from a generic plan).
/// `matching` is on what a row holds; `range` bounds the id (the creation-time range).
struct JobConditions {
    matching: Vec<String>,
    range: Vec<&'static str>,
}

impl JobConditions {
    fn of(q: &JobQuery) -> Self {
        let mut matching = Vec::new();
        // The state as a literal (one of STATES, checked before): the partial indexes of the
        // states (available, running jobs) and the checks that keep finished jobs out of
        // chainsync.jobs and live ones out of chainsync.finished_jobs (which leave the other
        // table out of a plan of chainsync.all_jobs) apply only to a condition the planner can
        // match to them, which a parameter cast to the enum is not.
        if let Some(st) = STATES.iter().find(|s| Some(**s) == q.state.as_deref()) {
            matching.push(format!("state = '{st}'"));
        }
        if q.kind.is_some() {
            matching.push("kind = $2".into());
        }
        if q.queue.is_some() {
            matching.push("queue = $3".into());
        }
        if q.text.is_some() {
            matching.push(
                "(strpos(lower(args::text), lower($4)) > 0 OR strpos(lower(errors::text), lower($4)) > 0)"
                    .into(),
            );
        }
        if q.from.is_some() {
            matching.push("created_at >= $5".into());
        }
        if q.to.is_some() {
            matching.push("created_at < $6".into());
        }
        let mut range = Vec::new();
        if q.from.is_some() {
            range.push("id >= $7");
        }
        if q.to.is_some() {
            range.push("id < $8");
        }
        Self { matching, range }
    }

    fn join<S: AsRef<str>>(parts: &[S]) -> String {
        if parts.is_empty() {
            "true".into()
        } else {
            parts
                .iter()
                .map(AsRef::as_ref)
                .collect::<Vec<_>>()
                .join(" AND ")
        }
    }

    /// Every condition, for a WHERE clause.
    fn all(&self) -> String {
        let mut v: Vec<&str> = self.range.clone();
        v.extend(self.matching.iter().map(String::as_str));
        Self::join(&v)
    }
}

/// A statement of `action` over the jobs `q` selects that answers a count: the filter's
/// parameters bound as [`JobConditions`] numbers them, `$9` the states the action applies to.
fn count_of<'q>(
    sql: String,
    q: &'q JobQuery,
    (lo, hi): (Option<Uuid>, Option<Uuid>),
    action: BulkJobAction,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&q.state)
        .bind(&q.kind)
        .bind(&q.queue)
        .bind(&q.text)
        .bind(q.from)
        .bind(q.to)
        .bind(lo)
        .bind(hi)
        .bind(action.states())
}

/// Jobs a listing examines at most, newest first, when its filter has no index to follow: a
/// filter matching rarely (or never) answers in bounded time, saying how far it looked, with a
/// link to look further.
pub const SCAN_JOBS: i64 = 30_000;
/// The same for a text search (each row's args and errors are read as text).
pub const SCAN_JOBS_TEXT: i64 = 10_000;

/// One page of a job listing.
#[derive(Debug, Clone, Default)]
pub struct JobsPage {
    /// Matching jobs, newest first, at most the limit asked for.
    pub rows: Vec<JobRow>,
    /// More jobs match after the last row (the next page starts `before` its id).
    pub more: bool,
    /// The listing stopped after examining this many jobs without filling the page.
    pub searched: Option<Searched>,
}

/// Where a bounded listing stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Searched {
    /// Jobs examined (newest first).
    pub examined: i64,
    /// The last job examined: the search goes on `before` it.
    pub last_id: Uuid,
    pub last_created_at: DateTime<Utc>,
}

/// A row of a bounded listing: a job, whether it matches, its position in the scan.
#[derive(sqlx::FromRow)]
struct ScannedRow {
    #[sqlx(flatten)]
    job: JobRow,
    matched: bool,
    rn: i64,
}

const DEAD_FILTER: &str = "($1::text IS NULL OR kind = $1)
      AND ($2::text IS NULL OR queue = $2)
      AND ($3::text IS NULL OR strpos(lower(args::text), lower($3)) > 0
                            OR strpos(lower(errors::text), lower($3)) > 0)
      AND ($4::timestamptz IS NULL OR failed_at >= $4)
      AND ($5::timestamptz IS NULL OR failed_at < $5)";

const DEAD_COLUMNS: &str = "id, kind, queue, args, priority, attempt, max_attempts, unique_key,
    errors, reason, created_at, failed_at, traceparent";

impl Queue {
    /// One page of jobs matching `q`, newest first, after `before` (an id of the previous page),
    /// at most `limit` of them. A filter that an index answers (none, a time range, running
    /// jobs) is followed to the end; otherwise at most [`SCAN_JOBS`] jobs ([`SCAN_JOBS_TEXT`]
    /// with a text search) are examined, and the page says where it stopped
    /// ([`JobsPage::searched`]). Available jobs of a kind or queue are first looked up in the
    /// queue's own index, so a kind or queue with none answers at once.
    pub async fn browse_jobs(
        &self,
        q: &JobQuery,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<JobsPage, QueueError> {
        check_jobs(q)?;
        check_limit(limit)?;
        let (lo, hi) = id_bounds(q);
        let c = JobConditions::of(q);
        let mut range = c.range.clone();
        if before.is_some() {
            range.push("id < $9");
        }
        let cols = super::admin::JOB_COLUMNS;
        let state = q.state.as_deref();
        // Without a condition on what rows hold (beyond the creation time, which the id
        // bounds), every row examined matches; running jobs are few and have their own index.
        let bounded = state != Some("running")
            && (state.is_some() || q.kind.is_some() || q.queue.is_some() || q.text.is_some());
        let mut tx = self.pool.begin().await?;
        sqlx::query(LISTING_TIMEOUT).execute(&mut *tx).await?;
        if state == Some("available") && q.text.is_none() {
            // The fetch indexes hold every available job by queue and by kind.
            let mut cond = vec!["state = 'available'"];
            if q.kind.is_some() {
                cond.push("kind = $2");
            }
            if q.queue.is_some() {
                cond.push("queue = $3");
            }
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM chainsync.jobs WHERE {})",
                JobConditions::join(&cond)
            );
            let any: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(&q.state)
                .bind(&q.kind)
                .bind(&q.queue)
                .fetch_one(&mut *tx)
                .await
                .map_err(timed_out)?;
            if !any {
                tx.commit().await?;
                return Ok(JobsPage::default());
            }
        }
        let bind = |sql: String| {
            sqlx::query_as::<_, ScannedRow>(sqlx::AssertSqlSafe(sql))
                .bind(q.state.clone())
                .bind(q.kind.clone())
                .bind(q.queue.clone())
                .bind(q.text.clone())
                .bind(q.from)
                .bind(q.to)
                .bind(lo)
                .bind(hi)
                .bind(before)
                .bind(limit + 1)
        };
        let cap = bounded.then_some(if q.text.is_some() {
            SCAN_JOBS_TEXT
        } else {
            SCAN_JOBS
        });
        let rows: Vec<ScannedRow> = if let Some(cap) = cap {
            // Newest first along the primary key, at most `cap` rows, each marked matching or
            // not; the matching ones come out as they are found (and the scan stops at a full
            // page), the last row examined comes out too, to say where the scan ended.
            let sql = format!(
                "SELECT * FROM (
                    SELECT {cols}, ({}) AS matched, row_number() OVER (ORDER BY id DESC) AS rn
                    FROM chainsync.all_jobs WHERE {}
                    ORDER BY id DESC LIMIT $11) s
                 WHERE s.matched OR s.rn = $11
                 LIMIT $10 + 1",
                JobConditions::join(&c.matching),
                JobConditions::join(&range),
            );
            bind(sql)
                .bind(cap)
                .fetch_all(&mut *tx)
                .await
                .map_err(timed_out)?
        } else {
            let mut all = range.clone();
            all.extend(c.matching.iter().map(String::as_str));
            let sql = format!(
                "SELECT {cols}, true AS matched, 0::bigint AS rn FROM chainsync.all_jobs WHERE {}
                 ORDER BY id DESC LIMIT $10",
                JobConditions::join(&all)
            );
            bind(sql).fetch_all(&mut *tx).await.map_err(timed_out)?
        };
        tx.commit().await?;
        Ok(page_of(rows, limit, cap))
    }

    /// How many jobs `q` selects that `action` would change.
    pub async fn count_jobs_for(
        &self,
        q: &JobQuery,
        action: BulkJobAction,
    ) -> Result<i64, QueueError> {
        check_jobs(q)?;
        let (lo, hi) = id_bounds(q);
        let sql = format!(
            "SELECT count(*) FROM chainsync.all_jobs WHERE {}
               AND state::text = ANY($9)",
            JobConditions::of(q).all()
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(LISTING_TIMEOUT).execute(&mut *tx).await?;
        let n = count_of(sql, q, (lo, hi), action)
            .fetch_one(&mut *tx)
            .await
            .map_err(timed_out)?;
        tx.commit().await?;
        Ok(n)
    }

    /// Applies `action` to every job `q` selects (in the states the action applies to); returns
    /// how many changed.
    pub async fn bulk_jobs(&self, q: &JobQuery, action: BulkJobAction) -> Result<u64, QueueError> {
        check_jobs(q)?;
        let (lo, hi) = id_bounds(q);
        let filter = JobConditions::of(q).all();
        // Live jobs are in chainsync.jobs, finished ones in chainsync.finished_jobs: an action
        // on both is a statement on each, in one transaction.
        let sqls = match action {
            BulkJobAction::Cancel => vec![format!(
                "SELECT count(*) FROM chainsync.finish_jobs(ARRAY(
                     SELECT id FROM chainsync.jobs WHERE {filter} AND state::text = ANY($9)),
                     'cancelled')"
            )],
            BulkJobAction::Retry => vec![
                format!(
                    "WITH u AS (UPDATE chainsync.jobs SET run_at = now()
                                WHERE {filter} AND state::text = ANY($9) AND state = 'available'
                                RETURNING 1)
                     SELECT count(*) FROM u"
                ),
                format!(
                    "SELECT count(*) FROM chainsync.requeue_finished(ARRAY(
                         SELECT id FROM chainsync.finished_jobs
                         WHERE {filter} AND state::text = ANY($9)), true)"
                ),
            ],
            BulkJobAction::Delete => vec![
                format!(
                    "WITH d AS (DELETE FROM chainsync.jobs WHERE {filter} AND state::text = ANY($9)
                                RETURNING 1)
                     SELECT count(*) FROM d"
                ),
                format!(
                    "WITH d AS (DELETE FROM chainsync.finished_jobs
                                WHERE {filter} AND state::text = ANY($9) RETURNING 1)
                     SELECT count(*) FROM d"
                ),
            ],
        };
        let run = async {
            let mut tx = self.pool.begin().await?;
            let mut changed = 0;
            for sql in sqls {
                let n = count_of(sql, q, (lo, hi), action)
                    .fetch_one(&mut *tx)
                    .await?;
                changed += u64::try_from(n).unwrap_or(0);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(changed)
        };
        match run.await {
            Ok(n) => Ok(n),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(QueueError::Conflict(
                "some of the selected jobs share a unique key with another queued job; \
                 narrow the selection"
                    .into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs an available job now, or queues a cancelled or completed one again (attempts kept).
    pub async fn retry_job(&self, id: Uuid) -> Result<(), QueueError> {
        let res = async {
            let now = sqlx::query(
                "UPDATE chainsync.jobs SET run_at = now() WHERE id = $1 AND state = 'available'",
            )
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if now == 1 {
                return Ok(1);
            }
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM chainsync.requeue_finished(ARRAY[$1::uuid], false)",
            )
            .bind(id)
            .fetch_one(&self.pool)
            .await
        }
        .await;
        match res {
            Ok(1) => Ok(()),
            Ok(_) => {
                let job = self.get_job(id).await?;
                Err(QueueError::Conflict(format!(
                    "job {id} is {} and cannot be retried now",
                    job.state
                )))
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(QueueError::Conflict(
                format!("job {id} not retried: another queued job holds its unique key"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// One page of dead letters matching `q`, newest failure first, after `before`.
    pub async fn browse_dead(
        &self,
        q: &DeadQuery,
        before: Option<DeadCursor>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        check_range(q.from, q.to)?;
        check_limit(limit)?;
        let sql = format!(
            "SELECT {DEAD_COLUMNS} FROM chainsync.dead_letters WHERE {DEAD_FILTER}
               AND ($6::timestamptz IS NULL OR (failed_at, id) < ($6, $7))
             ORDER BY failed_at DESC, id DESC LIMIT $8"
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(LISTING_TIMEOUT).execute(&mut *tx).await?;
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&q.kind)
            .bind(&q.queue)
            .bind(&q.text)
            .bind(q.from)
            .bind(q.to)
            .bind(before.map(|c| c.failed_at))
            .bind(before.map(|c| c.id))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(timed_out)?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn count_dead_matching(&self, q: &DeadQuery) -> Result<i64, QueueError> {
        check_range(q.from, q.to)?;
        let sql = format!("SELECT count(*) FROM chainsync.dead_letters WHERE {DEAD_FILTER}");
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&q.kind)
            .bind(&q.queue)
            .bind(&q.text)
            .bind(q.from)
            .bind(q.to)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Replays the dead letters `q` selects, at most `cap` of them (oldest failure first);
    /// returns the ids moved back to the queue.
    pub async fn replay_matching(&self, q: &DeadQuery, cap: i64) -> Result<Vec<Uuid>, QueueError> {
        check_range(q.from, q.to)?;
        let sql = format!(
            "SELECT id FROM chainsync.dead_letters WHERE {DEAD_FILTER}
             ORDER BY failed_at, id LIMIT $6"
        );
        let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&q.kind)
            .bind(&q.queue)
            .bind(&q.text)
            .bind(q.from)
            .bind(q.to)
            .bind(cap)
            .fetch_all(&self.pool)
            .await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        self.replay_ids(&ids).await
    }

    /// Deletes the dead letters `q` selects; returns how many.
    pub async fn purge_matching(&self, q: &DeadQuery) -> Result<u64, QueueError> {
        check_range(q.from, q.to)?;
        let sql = format!("DELETE FROM chainsync.dead_letters WHERE {DEAD_FILTER}");
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&q.kind)
            .bind(&q.queue)
            .bind(&q.text)
            .bind(q.from)
            .bind(q.to)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Jobs finished (completed, cancelled; as retained) and dead-lettered per minute since
    /// `since`, minutes without any left out.
    pub async fn activity(&self, since: DateTime<Utc>) -> Result<Vec<MinuteActivity>, QueueError> {
        Ok(sqlx::query_as(
            "WITH f AS (
                SELECT date_trunc('minute', finished_at) AS minute,
                       count(*) FILTER (WHERE state = 'completed') AS completed,
                       count(*) FILTER (WHERE state = 'cancelled') AS cancelled
                FROM chainsync.finished_jobs
                WHERE finished_at >= $1
                GROUP BY 1),
             d AS (
                SELECT date_trunc('minute', failed_at) AS minute, count(*) AS dead
                FROM chainsync.dead_letters WHERE failed_at >= $1 GROUP BY 1)
             SELECT coalesce(f.minute, d.minute) AS minute, coalesce(f.completed, 0) AS completed,
                    coalesce(f.cancelled, 0) AS cancelled, coalesce(d.dead, 0) AS dead
             FROM f FULL JOIN d ON d.minute = f.minute ORDER BY 1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Jobs per (queue, kind, state) with the ready ones, in one pass over the table: the
    /// overview's counts and per-queue depths both come from it.
    pub async fn group_counts(&self) -> Result<Vec<GroupCount>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT queue, kind, state::text AS state, count(*) AS jobs,
                    count(*) FILTER (WHERE state = 'available' AND run_at <= now()) AS ready,
                    extract(epoch FROM now() - min(run_at) FILTER (
                        WHERE state = 'available' AND run_at <= now()))::float8 AS oldest_ready_secs
             FROM chainsync.all_jobs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Ready, scheduled and running jobs per queue.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT queue,
                    count(*) FILTER (WHERE state = 'available' AND run_at <= now()) AS ready,
                    count(*) FILTER (WHERE state = 'available' AND run_at > now()) AS scheduled,
                    count(*) FILTER (WHERE state = 'running') AS running,
                    extract(epoch FROM now() - min(run_at) FILTER (
                        WHERE state = 'available' AND run_at <= now()))::float8 AS oldest_ready_secs
             FROM chainsync.jobs WHERE state IN ('available', 'running')
             GROUP BY queue ORDER BY queue",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Enqueue-to-start latency (`started_at − run_at`) of the retained jobs finished since
    /// `since`.
    pub async fn start_latency(&self, since: DateTime<Utc>) -> Result<Latency, QueueError> {
        Ok(sqlx::query_as(
            "SELECT count(*) AS started,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY w) AS p50_secs,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY w) AS p95_secs,
                    max(w) AS max_secs
             FROM (SELECT greatest(extract(epoch FROM started_at - run_at)::float8, 0) AS w
                   FROM chainsync.finished_jobs
                   WHERE finished_at >= $1 AND started_at IS NOT NULL) s",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Jobs per state (one statement; the console's header counts).
    pub async fn state_counts(&self) -> Result<Vec<(String, i64)>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT state::text, count(*) FROM chainsync.all_jobs GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Sorts a listing's rows into the page, whether more match, and where a scan bounded at `cap`
/// rows stopped (the row numbered `cap` comes out, matching or not, when the scan got that far).
fn page_of(rows: Vec<ScannedRow>, limit: i64, cap: Option<i64>) -> JobsPage {
    let lim = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut page = JobsPage::default();
    let mut boundary = None;
    for r in rows {
        if Some(r.rn) == cap {
            boundary = Some((r.job.id, r.job.created_at));
        }
        if !r.matched {
            continue;
        }
        if page.rows.len() == lim {
            page.more = true;
            break;
        }
        page.rows.push(r.job);
    }
    if !page.more
        && let (Some((last_id, last_created_at)), Some(examined)) = (boundary, cap)
    {
        page.searched = Some(Searched {
            examined,
            last_id,
            last_created_at,
        });
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_floor_sorts_with_real_ids() {
        let t = Utc::now();
        let floor = uuid_v7_floor(t - ChronoDuration::milliseconds(1));
        let id = Uuid::now_v7();
        assert!(floor < id);
        assert!(uuid_v7_floor(t + ChronoDuration::seconds(1)) > id);
        assert_eq!(floor.get_version_num(), 7);
    }
}
