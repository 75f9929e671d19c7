//! HTTP API (axum): jobs, dead letters, balances, health, metrics, the admin console, OpenAPI.
//! Enqueue and admin endpoints need `Authorization: Bearer <http.admin_token>`; the read-only
//! token (`http.readonly_token`) is accepted for GET and answered 403 elsewhere. The console
//! (`/admin`, [`console`]) signs in once and keeps a session cookie.

mod api;
mod balances;
pub mod console;
mod control;

use std::{net::SocketAddr, sync::OnceLock};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use chainsync_jobs::Services;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{app::App, queue::QueueError};

pub use crate::config::HttpSettings;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct HttpState {
    pub app: App,
    pub services: Services,
    pub settings: HttpSettings,
    pub metrics: PrometheusHandle,
}

/// An API error: status + `{"error": ..., "field": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<&'static str>,
}

impl ApiError {
    pub fn bad(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field),
        }
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({"error": self.message, "field": f}),
            None => json!({"error": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Invalid(m) => {
                let field = if m.contains("unknown job kind") {
                    "kind"
                } else if m.contains("priority") {
                    "priority"
                } else if m.contains("max_attempts") {
                    "max_attempts"
                } else if m.contains("queue") {
                    "queue"
                } else if m.contains("limit") || m.contains("offset") || m.contains("state") {
                    "query"
                } else {
                    "args"
                };
                Self::bad(field, m)
            }
            QueueError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, format!("{m} not found")),
            QueueError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            QueueError::Db(e) => db_error(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        db_error(e)
    }
}

/// The database is away or failing: 503, details in the log only.
fn db_error(e: sqlx::Error) -> ApiError {
    warn!(error = %e, "database error in an HTTP handler");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
}

/// Buckets of the `_seconds` histograms (job run time): 5 ms to 10 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The exporter: histograms with buckets (aggregatable across daemons), not summaries.
fn builder() -> PrometheusBuilder {
    let b = PrometheusBuilder::new();
    match b.set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
        SECONDS_BUCKETS,
    ) {
        Ok(b) => b,
        // Only an empty bucket list is refused.
        Err(_) => PrometheusBuilder::new(),
    }
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match builder().install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (tests): render from a private one.
            Err(_) => builder().build_recorder().handle(),
        })
        .clone()
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

async fn require_admin(State(s): State<HttpState>, req: Request, next: Next) -> Response {
    let admin = s.settings.admin_token.as_deref();
    let readonly = s.settings.readonly_token.as_deref();
    if admin.is_none() && readonly.is_none() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: set http.admin_token",
        )
        .into_response();
    }
    if admin.is_some_and(|t| bearer_ok(req.headers(), t)) {
        return next.run(req).await;
    }
    if readonly.is_some_and(|t| bearer_ok(req.headers(), t)) {
        let reads =
            req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD;
        if reads {
            return next.run(req).await;
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the read-only token cannot change anything",
        )
        .into_response();
    }
    ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response()
}

async fn require_token_unless_public(
    State(s): State<HttpState>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let public = (path.starts_with("/v1/balances") && s.settings.public_balances)
        || (path == "/health" && s.settings.public_health);
    if public {
        return next.run(req).await;
    }
    require_admin(State(s), req, next).await
}

/// The router with every route.
pub fn router(state: HttpState) -> Router {
    let admin = Router::new()
        .route("/v1/jobs", post(api::enqueue).get(api::list_jobs))
        .route("/v1/jobs/{id}", get(api::get_job))
        .route("/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/v1/dlq", get(api::list_dead))
        .route("/v1/dlq/replay", post(api::replay_filter))
        .route("/v1/dlq/{id}", get(api::get_dead).delete(api::purge_dead))
        .route("/v1/dlq/{id}/replay", post(api::replay_one))
        .route("/v1/queues", get(control::list_queues))
        .route("/v1/queues/{name}/pause", post(control::pause))
        .route("/v1/queues/{name}/resume", post(control::resume))
        .route("/v1/limits", get(control::list_limits))
        .route(
            "/v1/limits/queues/{name}",
            put(control::set_queue_limit).delete(control::reset_queue_limit),
        )
        .route(
            "/v1/limits/kinds/{kind}",
            put(control::set_kind_limit).delete(control::reset_kind_limit),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let maybe_public = Router::new()
        .route("/v1/balances/{chain}/{address}", get(balances::get_balance))
        .route("/health", get(api::health))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_token_unless_public,
        ));
    Router::new()
        .merge(admin)
        .merge(maybe_public)
        .merge(console::router(state.clone()))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// Serves until `stop`; returns the bound address through `bound` first.
pub async fn serve(
    state: HttpState,
    stop: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&state.settings.listen).await?;
    let addr = listener.local_addr()?;
    info!(%addr, "HTTP API listening");
    if let Some(b) = bound {
        let _ = b.send(addr);
    }
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
}

/// Seconds since `t`, never negative.
pub use chainsync_jobs::health::age_secs;
