//! Logs (tracing; JSON in the daemon) and metrics (the `metrics` facade, exported as Prometheus
//! text by the HTTP server).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `json` for the daemon, human-readable otherwise.
/// The level comes from `RUST_LOG` (default `info`, or `warn` for one-shot CLI commands).
pub fn init(json: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_target(false),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}
