#![allow(clippy::unwrap_used)]
//! Traces against a real OTLP/HTTP receiver in this process: a `chainsync daemon` process
//! exports its spans as protobuf to `POST /v1/traces`, the receiver decodes them, and the tests
//! check the parent/child links and attributes — from the `traceparent` given at enqueue
//! (HTTP header, SQL argument) through the job span to its RPC calls (anvil) and SQL batches,
//! across dead letters and replay. Without an endpoint, no layer exists and the trace-only
//! spans are disabled.

mod common;
use common::{TokenChain, db_url, wait};

#[allow(dead_code)]
mod chaos {
    pub mod support;
}

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use chainsync::telemetry::TelemetrySettings;
use chainsync_jobs::NewJob;
use chaos::support::Daemon;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, any_value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "traces-admin-token-0123456789";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const DEAD_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const DEAD_PARENT_ID: &str = "b7ad6b7169203331";

/// Spans received, with the `service.name` of their resource.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    bad_requests: Arc<Mutex<Vec<String>>>,
}

impl Received {
    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

/// The OTLP/HTTP traces endpoint: protobuf in, an empty protobuf answer out.
async fn export(State(got): State<Received>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if ct != "application/x-protobuf" {
        got.bad_requests
            .lock()
            .unwrap()
            .push(format!("content-type {ct:?}"));
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
    }
    let req = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            got.bad_requests.lock().unwrap().push(e.to_string());
            return (StatusCode::BAD_REQUEST, Vec::new());
        }
    };
    let mut spans = got.spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .and_then(text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                spans.push((service.clone(), s));
            }
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// A receiver on a free port; stops with `stop`.
async fn receiver(stop: CancellationToken) -> (u16, Received) {
    let got = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
    (port, got)
}

fn text(v: &AnyValue) -> Option<String> {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_text(s: &Span, key: &str) -> Option<String> {
    match attr(s, key) {
        Some(any_value::Value::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

fn attr_int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key) {
        Some(any_value::Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A job's run spans (name `job`) with this job id.
fn job_spans(got: &Received, id: &str) -> Vec<Span> {
    got.spans()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "job" && attr_text(s, "job.id").as_deref() == Some(id))
        .collect()
}

fn children(got: &Received, parent: &Span) -> Vec<Span> {
    got.spans()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
        .collect()
}

/// POST /v1/jobs with an optional traceparent header, retried until the daemon listens.
async fn post_job(port: u16, body: &Value, traceparent: Option<&str>) -> (StatusCode, Value) {
    let http = reqwest::Client::new();
    wait(
        "the daemon to accept POST /v1/jobs",
        Duration::from_secs(60),
    )
    .until(async || {
        let mut req = http
            .post(format!("http://127.0.0.1:{port}/v1/jobs"))
            .bearer_auth(TOKEN)
            .json(body);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let r = req.send().await.ok()?;
        let status = r.status();
        Some((status, r.json::<Value>().await.unwrap_or(Value::Null)))
    })
    .await
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_traceparent_given_at_enqueue_parents_the_job_span_and_its_rpc_and_sql_children(
    pool: PgPool,
) {
    let chain = TokenChain::builder("TRC").holders(2).start().await.unwrap();
    let stop = CancellationToken::new();
    let (otlp_port, got) = receiver(stop.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"database_url = "{url}"
[worker]
poll_interval = "200ms"
shutdown_timeout = "5s"
[telemetry]
otlp_endpoint = "http://127.0.0.1:{otlp_port}"
service_name = "chainsync-traces-test"
{chain_cfg}"#,
        url = db_url(&pool),
        chain_cfg = chain.config_toml(),
    );
    let mut d = Daemon::start_env(
        dir.path(),
        "traces",
        &cfg,
        &[
            ("CHAINSYNC_HTTP__ADMIN_TOKEN", TOKEN),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );

    // A bad traceparent is refused, naming the header, and nothing is written.
    let holder = chain.holder_addresses()[0].clone();
    let body = json!({
        "kind": "sync-user-balance",
        "args": {"chain_id": chain.chain_id(), "address": holder, "token": chain.token_hex()},
    });
    let (status, err) = post_job(
        d.http_port,
        &body,
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err.to_string().contains("traceparent"), "{err}");
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM chainsync.all_jobs").await,
        0
    );

    // The HTTP header.
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let (status, created) = post_job(d.http_port, &body, Some(&traceparent)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let job = wait("the job span and its children", Duration::from_secs(60))
        .until(async || {
            d.assert_running();
            let job = job_spans(&got, &id).into_iter().next()?;
            let kids = children(&got, &job);
            let rpc = kids.iter().any(|s| attr_text(s, "rpc.system").is_some());
            let sql = kids.iter().any(|s| attr_text(s, "db.system").is_some());
            (rpc && sql).then_some(job)
        })
        .await;
    assert!(got.bad_requests.lock().unwrap().is_empty());
    assert_eq!(hex(&job.trace_id), TRACE_ID);
    assert_eq!(hex(&job.parent_span_id), PARENT_ID);
    assert_eq!(
        attr_text(&job, "job.kind").as_deref(),
        Some("sync-user-balance")
    );
    assert_eq!(attr_text(&job, "job.queue").as_deref(), Some("default"));
    assert_eq!(attr_int(&job, "job.attempt"), Some(1));
    let service = got
        .spans()
        .into_iter()
        .find(|(_, s)| s.span_id == job.span_id)
        .map(|(svc, _)| svc);
    assert_eq!(service.as_deref(), Some("chainsync-traces-test"));

    let kids = children(&got, &job);
    let rpc: Vec<&Span> = kids
        .iter()
        .filter(|s| attr_text(s, "rpc.system").as_deref() == Some("jsonrpc"))
        .collect();
    assert!(!rpc.is_empty());
    for s in &rpc {
        assert_eq!(s.kind, SpanKind::Client as i32);
        assert_eq!(
            attr_int(s, "chain.id"),
            Some(i64::try_from(chain.chain_id()).unwrap())
        );
        assert_eq!(attr_text(s, "chain").as_deref(), Some("anvil"));
        assert_eq!(attr_int(s, "rpc.requests"), Some(1));
        let method = attr_text(s, "rpc.method").unwrap();
        assert!(method.starts_with("eth_"), "{method}");
        assert_eq!(s.name, method);
    }
    assert!(
        rpc.iter()
            .any(|s| attr_text(s, "rpc.method").as_deref() == Some("eth_call")),
        "the balance read is an eth_call"
    );
    let sql: Vec<String> = kids
        .iter()
        .filter(|s| attr_text(s, "db.system").as_deref() == Some("postgresql"))
        .filter_map(|s| attr_text(s, "db.operation"))
        .collect();
    assert!(
        sql.iter().any(|op| op == "upsert chainsync.balances"),
        "{sql:?}"
    );

    // The SQL function's argument: kept through the dead letters and a replay.
    let dead_tp = format!("00-{DEAD_TRACE_ID}-{DEAD_PARENT_ID}-01");
    let e = sqlx::query_scalar::<_, uuid::Uuid>(
        "SELECT chainsync.enqueue('noop', '{}', traceparent => '00-abc')",
    )
    .fetch_one(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("traceparent") && e.contains("55"), "{e}");
    let dead: uuid::Uuid = sqlx::query_scalar(
        "SELECT chainsync.enqueue('noop', '{\"fail\": \"fatal\"}', traceparent => $1)",
    )
    .bind(&dead_tp)
    .fetch_one(&pool)
    .await
    .unwrap();
    let stored: Option<String> = wait("the dead letter", Duration::from_secs(30))
        .until(async || {
            d.assert_running();
            sqlx::query_scalar("SELECT traceparent FROM chainsync.dead_letters WHERE id = $1")
                .bind(dead)
                .fetch_optional(&pool)
                .await
                .unwrap()
        })
        .await;
    assert_eq!(stored.as_deref(), Some(dead_tp.as_str()));
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/v1/dlq/{dead}/replay",
            d.http_port
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let runs = wait("two exported runs of the dead job", Duration::from_secs(30))
        .until(async || {
            d.assert_running();
            let runs = job_spans(&got, &dead.to_string());
            (runs.len() >= 2).then_some(runs)
        })
        .await;
    for run in &runs {
        assert_eq!(hex(&run.trace_id), DEAD_TRACE_ID);
        assert_eq!(hex(&run.parent_span_id), DEAD_PARENT_ID);
        assert_eq!(
            run.status.as_ref().map(|s| s.code),
            Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
        );
    }

    // The Rust API: checked before anything is written, stored as given.
    let app = common::app(&pool, "").await;
    let e = app
        .queue
        .enqueue(NewJob::untyped("noop", json!({})).traceparent("00-xyz"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("traceparent"), "{e}");
    let later = app
        .queue
        .enqueue(NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..NewJob::untyped("noop", json!({})).traceparent(traceparent.clone())
        })
        .await
        .unwrap();
    let stored: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM chainsync.all_jobs WHERE id = $1")
            .bind(later.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, Some(traceparent));
    d.stop();
    stop.cancel();
}

/// The spans a job run makes, in the shape the daemon makes them.
fn job_and_children() -> (tracing::Span, tracing::Span, tracing::Span) {
    let job = tracing::info_span!(target: "chainsync_engine::runtime::exec", "job");
    let _in = job.enter();
    let rpc = tracing::info_span!(target: chainsync_engine::trace::TARGET, "rpc");
    let sql = chainsync_jobs::observe::sql_span("upsert chainsync.balances", 1);
    drop(_in);
    (job, rpc, sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_there_is_no_layer_and_trace_spans_are_disabled() {
    let off = TelemetrySettings::default();
    assert!(
        !off.enabled(),
        "no OTEL_EXPORTER_OTLP_* in the test environment"
    );
    let (subscriber, provider) =
        chainsync::telemetry::subscriber(false, "info", Some(&off)).unwrap();
    assert!(provider.is_none(), "no exporter without an endpoint");
    tracing::subscriber::with_default(subscriber, || {
        let (job, rpc, sql) = job_and_children();
        assert!(!job.is_disabled(), "job spans are still logged");
        assert!(rpc.is_disabled() && sql.is_disabled());
        // No OpenTelemetry layer: no trace context to carry into an enqueue.
        let _in = job.enter();
        assert_eq!(
            NewJob::untyped("noop", json!({}))
                .with_current_trace()
                .traceparent,
            None
        );
    });

    // The same spans with an endpoint: recorded, exported, and the current span's context is
    // what a job enqueued inside it carries.
    let stop = CancellationToken::new();
    let (port, got) = receiver(stop.clone()).await;
    let on = TelemetrySettings {
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..TelemetrySettings::default()
    };
    let (subscriber, provider) =
        chainsync::telemetry::subscriber(false, "info", Some(&on)).unwrap();
    let provider = provider.expect("an exporter with an endpoint");
    let carried = tracing::subscriber::with_default(subscriber, || {
        let (job, rpc, sql) = job_and_children();
        assert!(!rpc.is_disabled() && !sql.is_disabled());
        let carried = {
            let _in = job.enter();
            NewJob::untyped("noop", json!({}))
                .with_current_trace()
                .traceparent
        };
        drop((rpc, sql, job));
        carried
    });
    let carried = carried.expect("the job span's traceparent");
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();
    let spans = got.spans();
    let job = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "job")
        .expect("the job span was exported");
    assert_eq!(
        carried,
        format!("00-{}-{}-01", hex(&job.trace_id), hex(&job.span_id))
    );
    assert_eq!(children(&got, job).len(), 2, "rpc and sql under the job");
    stop.cancel();
}
