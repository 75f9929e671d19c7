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
    let failures = s.app.queue.recent_failures(50).await?;
    Ok(Json(json!({
        "counts": counts.iter().map(|(q, k, st, n)| json!({"queue": q, "kind": k, "state": st, "count": n})).collect::<Vec<_>>(),
        "dead_letters": dead,
        "recent_failures": failures,
    })))
}
