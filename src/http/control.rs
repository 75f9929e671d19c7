//! Queue control over HTTP (admin token): list, pause and resume queues; show, set and reset
//! cluster-wide limits per queue and per kind.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    response::IntoResponse,
};
use serde_json::{Map, Value, json};

use super::{ApiError, HttpState};
use crate::queue::{LimitConfig, QueueError};

/// Bad input from the control functions, with the field its message names.
fn control_error(e: QueueError) -> ApiError {
    match e {
        QueueError::Invalid(m) => {
            let field = [
                ("unknown queue", "queue"),
                ("unknown job kind", "kind"),
                ("partition_concurrency", "partition_concurrency"),
                ("partition_by", "partition_by"),
                ("burst", "rate_burst"),
                ("rate", "rate_limit"),
                ("concurrency", "global_concurrency"),
            ]
            .iter()
            .find(|(needle, _)| m.contains(needle))
            .map_or("body", |(_, f)| f);
            ApiError::bad(field, m)
        }
        other => other.into(),
    }
}

pub async fn list_queues(State(s): State<HttpState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.app.queue.queue_overview().await?))
}

pub async fn pause(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let changed = s
        .app
        .queue
        .pause_queue(&name)
        .await
        .map_err(control_error)?;
    Ok(Json(
        json!({"queue": name, "paused": true, "changed": changed}),
    ))
}

pub async fn resume(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let changed = s
        .app
        .queue
        .resume_queue(&name)
        .await
        .map_err(control_error)?;
    Ok(Json(
        json!({"queue": name, "paused": false, "changed": changed}),
    ))
}

pub async fn list_limits(State(s): State<HttpState>) -> Result<impl IntoResponse, ApiError> {
    let queues = s.app.queue.queue_limits().await?;
    let kinds = s.app.queue.kind_limits().await?;
    Ok(Json(json!({"queues": queues, "kinds": kinds})))
}

/// The body of a PUT: every limit, absent or null = none. Errors name the field.
fn parse_limits(body: &[u8], kind: bool) -> Result<LimitConfig, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("malformed JSON: {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(ApiError::bad("body", "expected a JSON object"));
    };
    let known: &[&str] = if kind {
        &[
            "global_concurrency",
            "partition_by",
            "partition_concurrency",
            "rate_limit",
            "rate_burst",
        ]
    } else {
        &["global_concurrency", "rate_limit", "rate_burst"]
    };
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad(
            "body",
            format!("unknown field {k:?} (accepts: {})", known.join(", ")),
        ));
    }
    let count = |o: &mut Map<String, Value>, f: &'static str| match o.remove(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if i >= 1 => Ok(Some(u32::try_from(i).unwrap_or(u32::MAX))),
            _ => Err(ApiError::bad(
                f,
                format!("must be an integer of at least 1, got {n}"),
            )),
        },
        Some(_) => Err(ApiError::bad(f, "must be an integer of at least 1")),
    };
    let float = |o: &mut Map<String, Value>, f: &'static str| match o.remove(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(f, "must be a number")),
        Some(_) => Err(ApiError::bad(f, "must be a number")),
    };
    let partition_by = match o.remove("partition_by") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.into_iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s),
                    _ => Err(ApiError::bad(
                        "partition_by",
                        "must be an array of args field names",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(ApiError::bad(
                "partition_by",
                "must be an array of args field names",
            ));
        }
    };
    let l = LimitConfig {
        concurrency: count(&mut o, "global_concurrency")?,
        partition_concurrency: count(&mut o, "partition_concurrency")?,
        partition_by,
        rate: float(&mut o, "rate_limit")?,
        burst: float(&mut o, "rate_burst")?,
    };
    l.validate("limits", None).map_err(|e| {
        let m = e.to_string();
        let field = e
            .field
            .as_deref()
            .and_then(|f| f.strip_prefix("limits."))
            .map_or("body", |f| match f {
                "global_concurrency" => "global_concurrency",
                "partition_by" => "partition_by",
                "partition_concurrency" => "partition_concurrency",
                "rate_limit" => "rate_limit",
                "rate_burst" => "rate_burst",
                _ => "body",
            });
        ApiError::bad(field, m.trim_start_matches("limits.").to_string())
    })?;
    Ok(l)
}

pub async fn set_queue_limit(
    State(s): State<HttpState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let l = parse_limits(&body, false)?;
    s.app
        .queue
        .set_queue_limit(&name, &l)
        .await
        .map_err(control_error)?;
    Ok(Json(json!({"queue": name, "limits": l, "manual": true})))
}

pub async fn set_kind_limit(
    State(s): State<HttpState>,
    Path(kind): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let l = parse_limits(&body, true)?;
    s.app
        .queue
        .set_kind_limit(&kind, &l)
        .await
        .map_err(control_error)?;
    Ok(Json(json!({"kind": kind, "limits": l, "manual": true})))
}

pub async fn reset_queue_limit(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.app
        .queue
        .reset_queue_limit(&name)
        .await
        .map_err(control_error)?;
    Ok(Json(json!({"queue": name, "manual": false})))
}

pub async fn reset_kind_limit(
    State(s): State<HttpState>,
    Path(kind): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.app
        .queue
        .reset_kind_limit(&kind)
        .await
        .map_err(control_error)?;
    Ok(Json(json!({"kind": kind, "manual": false})))
}
