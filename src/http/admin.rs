//! `/admin`: a small server-rendered page; its script reads `/admin/data` and replays dead
//! letters through the API with the bearer token typed into the page (kept in sessionStorage).

use axum::{Json, extract::State, response::Html, response::IntoResponse};
use serde_json::json;

use super::{ApiError, HttpState};
use crate::queue::DlqFilter;

pub async fn page() -> impl IntoResponse {
    Html(include_str!("admin.html"))
}

pub async fn data(State(s): State<HttpState>) -> Result<impl IntoResponse, ApiError> {
    let counts = s.app.queue.counts().await?;
    let dead = s
        .app
        .queue
        .list_dead(&DlqFilter {
            limit: 100,
            ..Default::default()
        })
        .await?;
    let failures: Vec<(uuid::Uuid, String, i32, serde_json::Value)> = sqlx::query_as(
        "SELECT id, kind, attempt, errors -> -1 FROM chainsync.jobs
         WHERE jsonb_array_length(errors) > 0 AND state IN ('available', 'running')
         ORDER BY run_at DESC LIMIT 50",
    )
    .fetch_all(s.app.pool())
    .await?;
    Ok(Json(json!({
        "counts": counts.iter().map(|(q, k, st, n)| json!({"queue": q, "kind": k, "state": st, "count": n})).collect::<Vec<_>>(),
        "dead_letters": dead,
        "recent_failures": failures.iter().map(|(id, k, a, e)| json!({"id": id, "kind": k, "attempt": a, "last_error": e})).collect::<Vec<_>>(),
    })))
}
