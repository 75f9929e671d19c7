//! Logs (tracing; JSON in the daemon), metrics (the `metrics` facade, exported as Prometheus
//! text by the HTTP server) and, when configured, traces exported over OTLP/HTTP (protobuf).
//!
//! Traces are off unless `[telemetry] otlp_endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Off, the
//! subscriber is the log subscriber alone: no exporter, no OpenTelemetry layer, and the spans
//! that exist only for traces (target [`TRACE_TARGET`]: RPC calls, SQL batches) are disabled
//! at their call sites.

use std::sync::Mutex;

use chainsync_engine::Invalid;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};
use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, fmt, layer::SubscriberExt, registry::LookupSpan,
};

/// Target of the spans that exist for traces only (`rpc`, `sql`); never logged.
pub const TRACE_TARGET: &str = chainsync_engine::trace::TARGET;

/// The spans and events a trace carries: the job spans and the logs inside them
/// (`chainsync*` targets at `info`), and every span of [`TRACE_TARGET`].
fn trace_targets() -> Targets {
    Targets::new()
        .with_target(TRACE_TARGET, tracing::Level::TRACE)
        .with_target("chainsync", tracing::Level::INFO)
        .with_target("chainsync_engine", tracing::Level::INFO)
        .with_target("chainsync_jobs", tracing::Level::INFO)
}

/// `[telemetry]` in config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`): traces go to
    /// `<base>/v1/traces`, or to the URL as given when it already ends in `/v1/traces`. Unset:
    /// the `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` environment
    /// variables, and no traces without them.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default: `OTEL_SERVICE_NAME`, else `chainsync`).
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0.0–1.0 (default 1.0). A job whose enqueue carried a
    /// traceparent follows its parent's sampling decision.
    pub sample_ratio: Option<f64>,
}

impl TelemetrySettings {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.otlp_endpoint {
            let uri: axum::http::Uri = url
                .parse()
                .map_err(|e| Invalid::at("telemetry.otlp_endpoint", format!("not a URL: {e}")))?;
            match uri.scheme_str() {
                Some("http" | "https") => {}
                _ => {
                    return Err(Invalid::at(
                        "telemetry.otlp_endpoint",
                        "use an http:// or https:// URL (OTLP/HTTP)",
                    ));
                }
            }
            if uri.host().is_none() {
                return Err(Invalid::at(
                    "telemetry.otlp_endpoint",
                    "the URL has no host",
                ));
            }
        }
        if let Some(r) = self.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Invalid::at(
                "telemetry.sample_ratio",
                format!("must be in 0.0..=1.0, got {r}"),
            ));
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(Invalid::at("telemetry.service_name", "must not be empty"));
        }
        Ok(())
    }

    /// The traces URL from config, or `None` when the environment (or nothing) decides.
    fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        })
    }

    /// Whether traces are exported: an endpoint in config or in the standard environment.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
            || [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ]
            .iter()
            .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
    }
}

/// Tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from `[telemetry]`.
    #[error("telemetry: OTLP exporter: {source}")]
    Exporter {
        #[source]
        source: chainsync_engine::BoxError,
    },
}

/// Builds the tracer provider: OTLP/HTTP protobuf, batched on the SDK's own thread.
fn provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(url) = settings.traces_url() {
        exporter = exporter.with_endpoint(url);
    }
    let exporter = exporter
        .build()
        .map_err(|e| TelemetryError::Exporter { source: e.into() })?;
    let service = settings
        .service_name
        .clone()
        .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "chainsync".into());
    let ratio = settings.sample_ratio.unwrap_or(1.0);
    let root = if ratio >= 1.0 {
        Sampler::AlwaysOn
    } else {
        Sampler::TraceIdRatioBased(ratio)
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(root)))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// The log layer: JSON lines on stdout (daemon) or text on stderr.
fn log_layer<S>(json: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if json {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_target(false)
            .boxed()
    } else {
        fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed()
    }
}

fn log_filter(default_level: &str) -> EnvFilter {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    match format!("{TRACE_TARGET}=off").parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
}

/// A subscriber: logs, plus the OpenTelemetry layer when `traces` is given and enabled. The
/// provider is returned for [`shutdown`] (it flushes what is still batched).
pub fn subscriber(
    json: bool,
    default_level: &str,
    traces: Option<&TelemetrySettings>,
) -> Result<(Box<dyn Subscriber + Send + Sync>, Option<SdkTracerProvider>), TelemetryError> {
    let Some(settings) = traces.filter(|t| t.enabled()) else {
        // Exactly the log subscriber: one global filter, no per-layer filtering.
        let s = tracing_subscriber::registry()
            .with(log_filter(default_level))
            .with(log_layer(json));
        return Ok((Box::new(s), None));
    };
    let provider = provider(settings)?;
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("chainsync"))
        .with_filter(trace_targets());
    let s = tracing_subscriber::registry()
        .with(log_layer(json).with_filter(log_filter(default_level)))
        .with(otel);
    Ok((Box::new(s), Some(provider)))
}

static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Installs the global subscriber. `json` for the daemon, human-readable otherwise.
/// The level comes from `RUST_LOG` (default `info`, or `warn` for one-shot CLI commands).
/// `traces`: the daemon's `[telemetry]`; with an endpoint, job spans are exported and job
/// trace propagation is turned on (`chainsync_engine::trace::enable`).
pub fn init(
    json: bool,
    default_level: &str,
    traces: Option<&TelemetrySettings>,
) -> Result<(), TelemetryError> {
    let (subscriber, provider) = subscriber(json, default_level, traces)?;
    // A second init (tests) keeps the first subscriber.
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        if let Some(p) = provider {
            drop(p.shutdown());
        }
        return Ok(());
    }
    if let Some(p) = provider {
        chainsync_engine::trace::enable();
        tracing::info!("traces exported over OTLP/HTTP");
        *PROVIDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }
    Ok(())
}

/// Flushes the spans still batched and stops the exporter (at the end of the daemon).
pub async fn shutdown() {
    let provider = PROVIDER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = provider {
        // The SDK's shutdown waits for its export thread: keep it off the async workers.
        let done = tokio::task::spawn_blocking(move || p.shutdown()).await;
        if let Ok(Err(e)) = done {
            eprintln!("telemetry: shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_name_the_key() {
        let ok = TelemetrySettings {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            ..Default::default()
        };
        ok.validate().unwrap();
        assert_eq!(
            ok.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let full = TelemetrySettings {
            otlp_endpoint: Some("https://c.example/v1/traces/".into()),
            ..Default::default()
        };
        assert_eq!(
            full.traces_url().as_deref(),
            Some("https://c.example/v1/traces")
        );
        for (toml, key) in [
            (
                "otlp_endpoint = 'grpc://127.0.0.1:4317'",
                "telemetry.otlp_endpoint",
            ),
            ("otlp_endpoint = 'not a url'", "telemetry.otlp_endpoint"),
            ("sample_ratio = 1.5", "telemetry.sample_ratio"),
            ("service_name = ' '", "telemetry.service_name"),
            ("endpoint = 'http://127.0.0.1:4318'", "endpoint"),
        ] {
            let e = crate::config::Config::from_toml(&format!("[telemetry]\n{toml}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
