//! Jobs, dead letters, health and metrics handlers.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use chainsync_jobs::NewJob;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiError, HttpState};
use crate::queue::{DlqFilter, JobFilter};

fn uuid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::bad("id", format!("{s:?} is not a UUID")))
}

/// Reads the enqueue body field by field so every error names its field.
fn parse_enqueue(body: &[u8]) -> Result<NewJob, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("malformed JSON: {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(ApiError::bad("body", "expected a JSON object"));
    };
    const KNOWN: [&str; 8] = [
        "kind",
        "args",
        "unique_key",
        "unique_for",
        "run_at",
        "priority",
        "queue",
        "max_attempts",
    ];
    if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        let k = k.clone();
        return Err(ApiError::bad("body", format!("unknown field {k:?}")));
    }
    let kind = match o.remove("kind") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err(ApiError::bad("kind", "must be a non-empty string")),
        None => return Err(ApiError::bad("kind", "is required")),
    };
    let args = match o.remove("args") {
        None => json!({}),
        Some(a @ Value::Object(_)) => a,
        Some(_) => return Err(ApiError::bad("args", "must be a JSON object")),
    };
    let string = |o: &mut serde_json::Map<String, Value>, f: &'static str| match o.remove(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(f, "must be a string")),
    };
    let int = |o: &mut serde_json::Map<String, Value>, f: &'static str| match o.remove(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(f, "must be an integer")),
        Some(_) => Err(ApiError::bad(f, "must be an integer")),
    };
    let unique_key = string(&mut o, "unique_key")?;
    let unique_for_ms = string(&mut o, "unique_for")?
        .map(|s| {
            crate::duration::parse_duration(&s)
                .map_err(|e| ApiError::bad("unique_for", format!("{e} (e.g. \"10m\")")))
                .and_then(|d| {
                    if d.is_zero() {
                        return Err(ApiError::bad("unique_for", "must be positive"));
                    }
                    if unique_key.is_none() {
                        return Err(ApiError::bad("unique_for", "needs a unique_key"));
                    }
                    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                })
        })
        .transpose()?;
    let queue = string(&mut o, "queue")?;
    let run_at = string(&mut o, "run_at")?
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::bad("run_at", format!("not an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let priority = int(&mut o, "priority")?
        .map(|p| i16::try_from(p).map_err(|_| ApiError::bad("priority", "out of range")))
        .transpose()?;
    let max_attempts = int(&mut o, "max_attempts")?
        .map(|p| i32::try_from(p).map_err(|_| ApiError::bad("max_attempts", "out of range")))
        .transpose()?;
    Ok(NewJob {
        kind,
        args,
        unique_key,
        queue,
        run_at,
        priority,
        max_attempts,
        unique_for_ms,
        ..NewJob::default()
    })
}

/// The W3C `traceparent` header of an enqueue, checked: the job's run continues that trace.
fn traceparent(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("traceparent").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad("traceparent", "give the header once"));
    }
    let v = v
        .to_str()
        .map_err(|_| ApiError::bad("traceparent", "not ASCII text"))?;
    chainsync_engine::trace::TraceParent::parse(v)
        .map_err(|e| ApiError::bad("traceparent", e.to_string()))?;
    Ok(Some(v.to_string()))
}

pub async fn enqueue(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let mut job = parse_enqueue(&body)?;
    job.traceparent = traceparent(&headers)?;
    let e = s.app.queue.enqueue(job).await?;
    Ok(if e.inserted {
        (StatusCode::CREATED, Json(json!({"id": e.id})))
    } else {
        (StatusCode::OK, Json(json!({"id": e.id, "existing": true})))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

pub async fn list_jobs(
    State(s): State<HttpState>,
    q: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let f = JobFilter {
        state: q.state,
        kind: q.kind,
        queue: q.queue,
        limit: q.limit.unwrap_or(50),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(s.app.queue.list_jobs(&f).await?))
}

pub async fn get_job(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.app.queue.get_job(uuid(&id)?).await?))
}

pub async fn cancel_job(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = uuid(&id)?;
    s.app.queue.cancel_job(id).await?;
    Ok(Json(json!({"cancelled": id})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    kind: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<i64>,
    offset: Option<i64>,
}

pub async fn list_dead(
    State(s): State<HttpState>,
    q: Result<Query<DlqQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let f = DlqFilter {
        kind: q.kind,
        since: q.since,
        until: q.until,
        limit: q.limit.unwrap_or(50),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(s.app.queue.list_dead(&f).await?))
}

pub async fn get_dead(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.app.queue.get_dead(uuid(&id)?).await?))
}

pub async fn replay_one(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = s.app.queue.replay(uuid(&id)?).await?;
    Ok(Json(json!({"replayed": [id]})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    kind: Option<String>,
    since: Option<DateTime<Utc>>,
}

pub async fn replay_filter(
    State(s): State<HttpState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let f: ReplayFilter =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let ids = s
        .app
        .queue
        .replay_filter(f.kind.as_deref(), f.since)
        .await?;
    Ok(Json(json!({"replayed": ids})))
}

pub async fn purge_dead(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = uuid(&id)?;
    s.app.queue.purge(Some(id), None, None, false).await?;
    Ok(Json(json!({"purged": id})))
}

pub async fn health(State(s): State<HttpState>) -> impl IntoResponse {
    let r = crate::health::report(&s.app).await;
    let status = if !r.database || !r.migrated {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(r))
}

pub async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    // Gauges refreshed on scrape from the database; a database outage keeps the last values.
    if let Ok(counts) = s.app.queue.counts().await {
        let queues = s.app.queue.policies().queues();
        for kind in s.app.queue.kinds().names() {
            for state in crate::queue::admin::STATES {
                for q in &queues {
                    metrics::gauge!("chainsync_jobs", "queue" => q.clone(), "kind" => kind, "state" => state).set(0.0);
                }
            }
        }
        for (queue, kind, state, n) in counts {
            metrics::gauge!("chainsync_jobs", "queue" => queue, "kind" => kind, "state" => state)
                .set(n as f64);
        }
    }
    let kinds = s.app.queue.kinds().names();
    if let Ok(counts) = s.app.queue.dead_letters_by_kind(chrono::Utc::now()).await {
        chainsync_engine::metrics::record_dead_letters(&kinds, &counts);
    }
    if let Ok(backlog) = s.app.queue.backlog().await {
        chainsync_engine::metrics::record_backlog(&s.app.queue.policies().queues(), &backlog);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
