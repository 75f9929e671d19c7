//! The one classification of RPC errors into job results, used by every job.
//!
//! The structure of the error decides first: the JSON-RPC error code of an error response, the
//! HTTP status of a transport error, the kind of a connection failure. The message text is the
//! fallback, for providers that say what happened only in words (a generic -32000 "rate limit
//! reached", a body saying "too many requests", alloy's retry layer giving up), and it tells a
//! "range too large" answer sent with a rate-limit code from a real rate limit.
//!
//! - rate limits (HTTP 429, JSON-RPC -32005 and the providers' other rate-limit codes, messages
//!   saying "rate limit" / "too many requests") → [`JobError::Snooze`]: not the job's fault, no
//!   attempt used. alloy's `RetryBackoffLayer` already retried inside the attempt.
//! - connection errors, timeouts, HTTP 5xx, unexpected or empty responses, node-side errors
//!   (missing state, internal error) → [`JobError::Retry`].
//! - invalid input (JSON-RPC -32600/-32601/-32602, malformed requests, HTTP 400) → [`JobError::Fatal`].

use std::time::Duration;

use alloy::transports::{RpcError, TransportError, TransportErrorKind};

use crate::JobError;

/// Snooze used when the provider gives no hint.
pub const DEFAULT_SNOOZE: Duration = Duration::from_secs(10);
/// Longest snooze honoured from a provider hint.
const MAX_SNOOZE: Duration = Duration::from_secs(300);

/// What an RPC error means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcErrorClass {
    RateLimited,
    Transient,
    Invalid,
}

impl RpcErrorClass {
    pub const ALL: [RpcErrorClass; 3] = [Self::RateLimited, Self::Transient, Self::Invalid];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Transient => "transient",
            Self::Invalid => "invalid",
        }
    }
}

fn message_says_rate_limit(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("rate limit")
        || m.contains("ratelimit")
        || m.contains("rate-limit")
        || m.contains("too many requests")
        || m.contains("request limit reached")
        || m.contains("rate exceeded")
}

/// "Your range or result is too large", which some providers send with the rate-limit code
/// -32005: a signal to shrink the request, not to wait and repeat it.
pub fn says_range_too_large(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("more than")
        || m.contains("block range")
        || m.contains("response size")
        || m.contains("too many results")
}

/// alloy's rate-limit retry policy, except for range errors (retrying the same range only
/// wastes the attempt; ingestion shrinks it instead).
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryUnlessRange;

use alloy::transports::layers::{RateLimitRetryPolicy, RetryPolicy};

impl RetryPolicy for RetryUnlessRange {
    fn should_retry(&self, error: &TransportError) -> bool {
        let range = matches!(error, RpcError::ErrorResp(p) if says_range_too_large(&p.message));
        !range && RateLimitRetryPolicy::default().should_retry(error)
    }

    fn backoff_hint(&self, error: &TransportError) -> Option<std::time::Duration> {
        RateLimitRetryPolicy::default().backoff_hint(error)
    }
}

/// True when the error is a rate limit, whatever the provider calls it.
pub fn is_rate_limited(e: &TransportError) -> bool {
    classify_kind(e) == RpcErrorClass::RateLimited
}

/// JSON-RPC codes that are rate limits: 429 (Alchemy); -32005 (Infura and most nodes, "limit
/// exceeded"); -32007 and -32012 (QuickNode request and credit limits); -32055 (Cloudflare);
/// 1008 (too many concurrent requests on one connection).
const RATE_LIMIT_CODES: [i64; 6] = [429, -32005, -32007, -32012, -32055, 1008];

/// The class a JSON-RPC error code decides on its own; `None` for the generic server codes
/// (-32000, -32603, …) whose meaning is only in the message.
pub fn class_of_code(code: i64) -> Option<RpcErrorClass> {
    if RATE_LIMIT_CODES.contains(&code) {
        Some(RpcErrorClass::RateLimited)
    } else if (-32602..=-32600).contains(&code) {
        // Invalid request, method not found, invalid params.
        Some(RpcErrorClass::Invalid)
    } else {
        None
    }
}

/// The class an HTTP status decides on its own; `None` when the body has to be read.
fn class_of_status(status: u16) -> Option<RpcErrorClass> {
    match status {
        429 => Some(RpcErrorClass::RateLimited),
        _ => None,
    }
}

/// Message fallback: what the words say when the structure did not decide.
fn class_of_message(m: &str) -> RpcErrorClass {
    if message_says_rate_limit(m)
        || m.contains("credits limited")
        || m.contains("maximum number of concurrent requests")
    {
        RpcErrorClass::RateLimited
    } else {
        RpcErrorClass::Transient
    }
}

/// The class of an RPC error.
pub fn classify_kind(e: &TransportError) -> RpcErrorClass {
    match e {
        // "Your range or result is too large" has no code of its own: providers send it with
        // -32005 (their rate-limit code), -32602 or -32000. It asks for a smaller request,
        // which ingestion makes; at its smallest range the job retries.
        RpcError::ErrorResp(p) if says_range_too_large(&p.message) => RpcErrorClass::Transient,
        RpcError::ErrorResp(p) => {
            class_of_code(p.code).unwrap_or_else(|| class_of_message(&p.message))
        }
        RpcError::Transport(kind) => classify_transport(kind),
        // A body that is not JSON-RPC: some gateways answer a rate limit in plain text.
        RpcError::DeserError { text, .. } => {
            if message_says_rate_limit(text) {
                RpcErrorClass::RateLimited
            } else {
                RpcErrorClass::Transient
            }
        }
        RpcError::NullResp => RpcErrorClass::Transient,
        RpcError::SerError(_) | RpcError::UnsupportedFeature(_) | RpcError::LocalUsageError(_) => {
            RpcErrorClass::Invalid
        }
    }
}

fn classify_status(status: u16, body: &str) -> RpcErrorClass {
    if let Some(class) = class_of_status(status) {
        return class;
    }
    // Some providers answer a rate limit with 400, 403 or 503 and say so only in the body.
    if message_says_rate_limit(body) {
        return RpcErrorClass::RateLimited;
    }
    match status {
        400 | 413 | 414 | 422 => RpcErrorClass::Invalid,
        // 401/403 (a key revoked), 404 (a wrong path), 5xx: the operator or the provider can
        // fix these; retry with backoff until the job exhausts.
        _ => RpcErrorClass::Transient,
    }
}

fn classify_transport(kind: &TransportErrorKind) -> RpcErrorClass {
    if let Some(h) = kind.as_http_error() {
        return classify_status(h.status, &h.body);
    }
    match kind {
        TransportErrorKind::Custom(inner) => {
            // Structure first: the fallback transport's endpoint errors and reqwest's own.
            if let Some(ep) = inner.downcast_ref::<EndpointError>()
                && (ep.timeout || ep.connect)
            {
                return RpcErrorClass::Transient;
            }
            if let Some(r) = inner.downcast_ref::<alloy::transports::http::reqwest::Error>() {
                if let Some(status) = r.status() {
                    return classify_status(status.as_u16(), "");
                }
                if r.is_timeout() || r.is_connect() {
                    return RpcErrorClass::Transient;
                }
            }
            let m = inner.to_string();
            // alloy's retry layer gives up with "Max retries exceeded <last error>" (text only),
            // and it only retries rate limits: the provider is still limiting us (e.g. -32005
            // "limit exceeded", which names no rate in its message).
            let retries_exhausted = m.contains("Max retries exceeded") && !says_range_too_large(&m);
            if retries_exhausted || message_says_rate_limit(&m) {
                RpcErrorClass::RateLimited
            } else {
                RpcErrorClass::Transient
            }
        }
        TransportErrorKind::NonRetryable(_) => RpcErrorClass::Invalid,
        _ => RpcErrorClass::Transient,
    }
}

/// Delay requested by the provider (`Retry-After`, or `data.rate.backoff_seconds`), if any.
pub fn retry_hint(e: &TransportError) -> Option<Duration> {
    snooze_hint(e)
}

/// Delay requested by the provider, if any.
fn snooze_hint(e: &TransportError) -> Option<Duration> {
    match e {
        RpcError::Transport(kind) => kind.retry_after(),
        RpcError::ErrorResp(p) => {
            let data = p.try_data_as::<serde_json::Value>()?.ok()?;
            data["rate"]["backoff_seconds"]
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs(s.ceil() as u64))
        }
        _ => None,
    }
}

/// Converts an RPC error into the job result, counting it in `chainsync_rpc_errors_total`
/// with the chain id as its `chain` label (see [`classify_for`]).
pub fn classify(chain_id: u64, what: &str, e: &TransportError) -> JobError {
    classify_for(&chain_id.to_string(), chain_id, what, e)
}

/// Converts an RPC error into the job result, counting it in `chainsync_rpc_errors_total` by
/// `chain` (the configured name), `method` (the first word of `what`) and `class`.
///
/// `what` names the call (e.g. `eth_call aggregate3`), for the error history.
pub fn classify_for(chain: &str, chain_id: u64, what: &str, e: &TransportError) -> JobError {
    let class = classify_kind(e);
    let method = what.split_whitespace().next().unwrap_or("unknown");
    metrics::counter!(
        "chainsync_rpc_errors_total",
        "chain" => chain.to_string(),
        "method" => method.to_string(),
        "class" => class.as_str()
    )
    .increment(1);
    let context = format!("chain {chain_id}: {what}");
    match class {
        RpcErrorClass::RateLimited => {
            let d = snooze_hint(e).unwrap_or(DEFAULT_SNOOZE).min(MAX_SNOOZE);
            tracing::warn!(
                chain_id,
                call = what,
                snooze_secs = d.as_secs(),
                "RPC rate limited"
            );
            JobError::Snooze(d.max(Duration::from_secs(1)))
        }
        RpcErrorClass::Transient => JobError::retry_from(context, RpcFailure::of(e, class)),
        RpcErrorClass::Invalid => JobError::fatal_from(context, RpcFailure::of(e, class)),
    }
}

/// An RPC error as a job keeps it in its cause chain: what the node or the transport said
/// (short, without URLs), with the JSON-RPC code or HTTP status it came with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{description}")]
pub struct RpcFailure {
    pub class: RpcErrorClass,
    /// The JSON-RPC error code of an error response.
    pub code: Option<i64>,
    /// The HTTP status of a transport error.
    pub http_status: Option<u16>,
    pub description: String,
}

impl RpcFailure {
    pub fn of(e: &TransportError, class: RpcErrorClass) -> Self {
        let (code, http_status) = match e {
            RpcError::ErrorResp(p) => (Some(p.code), None),
            RpcError::Transport(kind) => (None, kind.as_http_error().map(|h| h.status)),
            _ => (None, None),
        };
        Self {
            class,
            code,
            http_status,
            description: describe(e),
        }
    }
}

/// A short description without URLs (transport errors are already scrubbed by the fallback
/// transport) and without multi-kilobyte response bodies.
fn describe(e: &TransportError) -> String {
    let s = match e {
        RpcError::Transport(TransportErrorKind::Custom(inner)) => {
            match inner.downcast_ref::<EndpointError>() {
                Some(ep) if ep.timeout => format!("{} (timeout)", ep),
                Some(ep) if ep.connect => format!("{} (connection failed)", ep),
                _ => inner.to_string(),
            }
        }
        other => other.to_string(),
    };
    truncate(&s, 500)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A transport-level error without the request URL (reqwest puts it in its messages).
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {message}")]
pub struct EndpointError {
    pub endpoint: String,
    pub message: String,
    /// The request timed out.
    pub timeout: bool,
    /// The connection could not be made.
    pub connect: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::rpc::json_rpc::ErrorPayload;

    fn resp(code: i64, message: &str) -> TransportError {
        TransportError::ErrorResp(ErrorPayload {
            code,
            message: message.to_string().into(),
            data: None,
        })
    }

    #[test]
    fn rate_limits_snooze() {
        for e in [
            resp(-32005, "limit exceeded"),
            resp(429, "Too Many Requests"),
            resp(-32000, "Rate limit reached, slow down"),
            resp(-32007, "100/second request limit reached"),
            TransportErrorKind::http_error(429, String::new()),
            TransportErrorKind::http_error(503, "rate limited".into()),
            TransportErrorKind::custom_str("429 Too Many Requests"),
            TransportErrorKind::custom_str(
                "Max retries exceeded server returned an error response: error code -32005: limit exceeded",
            ),
        ] {
            assert_eq!(classify_kind(&e), RpcErrorClass::RateLimited, "{e}");
            assert!(matches!(classify(1, "t", &e), JobError::Snooze(_)), "{e}");
        }
    }

    #[test]
    fn retry_after_hint_is_used_and_capped() {
        let e = TransportErrorKind::http_error_with_retry_after(
            429,
            String::new(),
            Some(Duration::from_secs(42)),
        );
        assert!(
            matches!(classify(1, "t", &e), JobError::Snooze(d) if d == Duration::from_secs(42))
        );
        let e = TransportErrorKind::http_error_with_retry_after(
            429,
            String::new(),
            Some(Duration::from_secs(100_000)),
        );
        assert!(matches!(classify(1, "t", &e), JobError::Snooze(d) if d == MAX_SNOOZE));
    }

    #[test]
    fn transient_errors_retry() {
        for e in [
            TransportErrorKind::http_error(500, "oops".into()),
            TransportErrorKind::http_error(502, String::new()),
            TransportErrorKind::http_error(401, "unauthorized".into()),
            TransportErrorKind::custom_str("connection refused"),
            TransportErrorKind::backend_gone(),
            resp(-32000, "header not found"),
            resp(-32603, "internal error"),
            TransportError::NullResp,
        ] {
            assert_eq!(classify_kind(&e), RpcErrorClass::Transient, "{e}");
            assert!(
                matches!(classify(1, "t", &e), JobError::Retry { .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn invalid_input_is_fatal() {
        for e in [
            resp(-32602, "invalid argument 0: hex string has length 3"),
            resp(-32601, "the method eth_foo does not exist"),
            resp(-32600, "invalid request"),
            TransportErrorKind::http_error(400, "bad request".into()),
        ] {
            assert_eq!(classify_kind(&e), RpcErrorClass::Invalid, "{e}");
            let j = classify(7, "eth_call", &e);
            assert!(
                matches!(&j, JobError::Fatal { .. })
                    && j.report().starts_with("chain 7: eth_call: "),
                "{}",
                j.report()
            );
            let failure = std::error::Error::source(&j)
                .and_then(|s| s.downcast_ref::<RpcFailure>())
                .expect("the RPC error is the cause");
            assert_eq!(failure.class, RpcErrorClass::Invalid);
        }
    }

    #[test]
    fn the_code_decides_before_the_message() {
        // A code that means "invalid params" is invalid whatever its words say.
        let e = resp(-32602, "invalid argument: too many requests in the filter");
        assert_eq!(classify_kind(&e), RpcErrorClass::Invalid);
        // A rate-limit code needs no words.
        assert_eq!(
            classify_kind(&resp(-32005, "limit exceeded")),
            RpcErrorClass::RateLimited
        );
        // The generic server code says nothing: the message decides.
        assert_eq!(
            classify_kind(&resp(-32000, "Rate limit reached")),
            RpcErrorClass::RateLimited
        );
        assert_eq!(
            classify_kind(&resp(-32000, "header not found")),
            RpcErrorClass::Transient
        );
        // "Range too large" sent with the rate-limit code (or any code) is not a rate limit.
        for code in [-32005, -32602, -32000] {
            let e = resp(code, "query returned more than 10000 results");
            assert_eq!(classify_kind(&e), RpcErrorClass::Transient, "{code}");
        }
        // The HTTP status decides; the body only for providers that say it in words.
        assert_eq!(
            classify_kind(&TransportErrorKind::http_error(429, "fine".into())),
            RpcErrorClass::RateLimited
        );
        assert_eq!(
            classify_kind(&TransportErrorKind::http_error(403, "rate limited".into())),
            RpcErrorClass::RateLimited
        );
        assert_eq!(
            classify_kind(&TransportErrorKind::http_error(403, "forbidden".into())),
            RpcErrorClass::Transient
        );
    }

    #[test]
    fn the_cause_keeps_code_and_status() {
        let j = classify(3, "eth_call", &resp(-32603, "internal error"));
        let f = std::error::Error::source(&j)
            .and_then(|s| s.downcast_ref::<RpcFailure>())
            .expect("cause");
        assert_eq!((f.code, f.http_status), (Some(-32603), None));
        assert_eq!(f.class, RpcErrorClass::Transient);
        assert_eq!(j.message(), Some("chain 3: eth_call"));
        assert!(
            j.report().starts_with("chain 3: eth_call: ") && j.report().contains("internal error"),
            "{}",
            j.report()
        );
        let j = classify(
            3,
            "eth_call",
            &TransportErrorKind::http_error(502, "bad gateway".into()),
        );
        let f = std::error::Error::source(&j)
            .and_then(|s| s.downcast_ref::<RpcFailure>())
            .expect("cause");
        assert_eq!((f.code, f.http_status), (None, Some(502)));
    }

    #[test]
    fn long_messages_are_truncated() {
        let e = TransportErrorKind::http_error(500, "x".repeat(10_000));
        let j = classify(1, "t", &e);
        assert!(matches!(j, JobError::Retry { .. }), "{j}");
        let m = j.report();
        assert!(m.len() < 600, "{}", m.len());
    }
}
