//! Trace context of jobs: the W3C `traceparent` a job was enqueued with becomes the parent of its
//! run's span, so a trace that starts in the application (the request that enqueued the job)
//! continues into the job and the calls it makes.
//!
//! Spans are `tracing` spans; they reach an OpenTelemetry exporter only when the application
//! installs a `tracing-opentelemetry` layer and calls [`enable`]. Until then nothing here does
//! any work beyond one atomic load: no context is looked up and no traceparent is parsed.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Target of the spans that exist for traces only (RPC calls, SQL batches): subscribers that do
/// not export traces disable it, which makes those spans free at their call sites.
pub const TARGET: &str = "chainsync_trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns trace propagation on: job spans get the parent stored with their job, and jobs enqueued
/// inside a traced span without a traceparent of their own carry the current one. Call it once
/// the subscriber has an OpenTelemetry layer.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Length of a version-00 traceparent: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// What is wrong with a traceparent, without the field name (the caller names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error(
        "must be 55 characters (expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>), got {0}"
    )]
    Length(usize),
    #[error("malformed: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>")]
    Malformed,
    #[error(
        "unsupported version {0:?}: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
    )]
    Version(String),
    #[error("not lowercase hex: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>")]
    NotHex,
    #[error("the trace id must not be all zeros")]
    ZeroTraceId,
    #[error("the parent id must not be all zeros")]
    ZeroParentId,
}

/// The parts of a valid traceparent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a W3C `traceparent` (version 00): `00-<trace id: 32 hex>-<parent id: 16 hex>-<flags:
    /// 2 hex>`, lowercase, neither id all zeros. The error says what is wrong, without the field
    /// name (the caller names the field).
    pub fn parse(s: &str) -> Result<Self, TraceParentError> {
        if s.len() != TRACEPARENT_LEN {
            return Err(TraceParentError::Length(s.len()));
        }
        let parts: Vec<&str> = s.split('-').collect();
        let [version, trace, parent, flags] = parts.as_slice() else {
            return Err(TraceParentError::Malformed);
        };
        let lower_hex = |p: &str| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if *version != "00" {
            return Err(TraceParentError::Version(version.to_string()));
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return Err(TraceParentError::Malformed);
        }
        if ![trace, parent, flags].iter().all(|p| lower_hex(p)) {
            return Err(TraceParentError::NotHex);
        }
        // Lowercase hex of the right lengths: these cannot fail.
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| TraceParentError::NotHex)?;
        let parent_id = u64::from_str_radix(parent, 16).map_err(|_| TraceParentError::NotHex)?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| TraceParentError::NotHex)?;
        if trace_id == 0 {
            return Err(TraceParentError::ZeroTraceId);
        }
        if parent_id == 0 {
            return Err(TraceParentError::ZeroParentId);
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The W3C text form.
    pub fn format(trace_id: u128, parent_id: u64, flags: u8) -> String {
        format!("00-{trace_id:032x}-{parent_id:016x}-{flags:02x}")
    }

    /// As the remote parent of a span.
    pub fn context(&self) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.parent_id.to_be_bytes()),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        ))
    }
}

/// Checks a traceparent given at enqueue: `Err` names the field.
pub fn check(s: &str) -> Result<(), crate::Invalid> {
    TraceParent::parse(s)
        .map(drop)
        .map_err(|e| crate::Invalid::at("traceparent", e.to_string()))
}

/// The traceparent of `span` as an OpenTelemetry span, if it is one (an OpenTelemetry layer is
/// installed and the span is recorded).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        TraceParent::format(
            u128::from_be_bytes(sc.trace_id().to_bytes()),
            u64::from_be_bytes(sc.span_id().to_bytes()),
            sc.trace_flags().to_u8(),
        )
    })
}

/// The traceparent of the current span when propagation is [`enable`]d, else `None` at once.
pub fn current() -> Option<String> {
    if !enabled() {
        return None;
    }
    traceparent_of(&tracing::Span::current())
}

/// Makes the run span `span` a child of the stored `traceparent` (when propagation is on and the
/// value is valid; rows are checked at insert, so an invalid one only comes from a hand edit and
/// is ignored).
pub(crate) fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() {
        return;
    }
    match TraceParent::parse(traceparent) {
        Ok(tp) => {
            if let Err(e) = span.set_parent(tp.context()) {
                tracing::debug!(error = %e, "job span: parent not set");
            }
        }
        Err(e) => tracing::debug!(error = %e, "job span: stored traceparent ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_and_checked() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(ok).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(TraceParent::format(tp.trace_id, tp.parent_id, tp.flags), ok);
        for (bad, says) in [
            ("", "55 characters"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "55 characters",
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "lowercase hex",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                "lowercase hex",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01",
                "malformed",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "malformed",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "parent id",
            ),
        ] {
            let e = TraceParent::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let e = check("nope").unwrap_err().to_string();
        assert!(e.contains("traceparent"), "{e}");
    }

    #[test]
    fn nothing_is_looked_up_while_disabled() {
        // No subscriber with an OpenTelemetry layer: even when enabled there is no context.
        assert_eq!(traceparent_of(&tracing::Span::current()), None);
    }
}
