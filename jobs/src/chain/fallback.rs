//! Sequential failover over several HTTP endpoints of one chain.
//!
//! alloy's `FallbackLayer` races the top transports in parallel, which multiplies the load on paid
//! RPC plans; a sync job wants the opposite: one endpoint at a time, the next one only when the
//! current one fails at the transport level (connection refused, timeout, HTTP 4xx/5xx). JSON-RPC
//! error responses are answers, not failures, and are passed through unchanged.
//!
//! After a failover the working endpoint stays preferred; the first (primary) endpoint is tried
//! again once `probe_after` has passed. Errors leave this layer without URLs: RPC URLs often carry
//! API keys and end up in job error histories.

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use alloy::{
    rpc::json_rpc::{RequestPacket, ResponsePacket},
    transports::{BoxTransport, TransportError, TransportErrorKind, TransportFut, http::reqwest},
};

use tracing::Instrument;

use super::error::{EndpointError, is_rate_limited};

/// One endpoint and the label used for it in errors and logs (`rpc_urls[i]` + host). The
/// transport is the HTTP client, behind the endpoint's RPC budget when it has one.
#[derive(Clone)]
pub struct Endpoint {
    pub label: String,
    pub transport: BoxTransport,
}

#[derive(Clone)]
pub struct FallbackTransport {
    endpoints: Arc<Vec<Endpoint>>,
    state: Arc<Mutex<Preferred>>,
    probe_after: Duration,
    /// The `chain` label of `chainsync_rpc_requests_total`.
    chain: Arc<str>,
    chain_id: u64,
}

#[derive(Debug, Clone, Copy)]
struct Preferred {
    index: usize,
    since: Instant,
}

impl FallbackTransport {
    pub fn new(endpoints: Vec<Endpoint>, probe_after: Duration) -> Self {
        Self {
            endpoints: Arc::new(endpoints),
            state: Arc::new(Mutex::new(Preferred {
                index: 0,
                since: Instant::now(),
            })),
            probe_after,
            chain: Arc::from(""),
            chain_id: 0,
        }
    }

    /// Counts requests in `chainsync_rpc_requests_total` under this `chain` label; traced RPC
    /// spans carry the name and the chain id.
    pub fn with_chain(mut self, chain: &str, chain_id: u64) -> Self {
        self.chain = Arc::from(chain);
        self.chain_id = chain_id;
        self
    }

    fn start_index(&self) -> usize {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if p.index != 0 && p.since.elapsed() >= self.probe_after {
            p.index = 0;
            p.since = Instant::now();
        }
        p.index
    }

    fn prefer(&self, index: usize) {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if p.index != index {
            p.index = index;
            p.since = Instant::now();
        }
    }

    async fn request(self, req: RequestPacket) -> Result<ResponsePacket, TransportError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(TransportErrorKind::custom_str(
                "no RPC endpoints configured",
            ));
        }
        for method in req.method_names() {
            metrics::counter!(
                "chainsync_rpc_requests_total",
                "chain" => self.chain.to_string(),
                "method" => method.to_string()
            )
            .increment(1);
        }
        let start = self.start_index();
        let mut chosen: Option<TransportError> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let endpoint = &self.endpoints[i];
            let mut transport = endpoint.transport.clone();
            match tower::Service::call(&mut transport, req.clone()).await {
                Ok(resp) => {
                    if k > 0 {
                        tracing::warn!(endpoint = %endpoint.label, "RPC failover");
                    }
                    self.prefer(i);
                    return Ok(resp);
                }
                Err(e) => {
                    let e = scrub(e, &endpoint.label);
                    tracing::debug!(endpoint = %endpoint.label, error = %e, "RPC endpoint failed");
                    // Keep a rate-limit error if there was one, so that the retry layer above
                    // backs off instead of giving up.
                    let keep_old = chosen.as_ref().is_some_and(is_rate_limited);
                    if !keep_old {
                        chosen = Some(e);
                    }
                }
            }
        }
        Err(chosen.unwrap_or_else(|| TransportErrorKind::custom_str("all RPC endpoints failed")))
    }
}

impl tower::Service<RequestPacket> for FallbackTransport {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: RequestPacket) -> Self::Future {
        // One span per request (a batch is one request), exported with traces; disabled (free)
        // otherwise, and then the method list is never built.
        let span = tracing::info_span!(
            target: chainsync_engine::trace::TARGET,
            "rpc",
            otel.name = %method_list(&req),
            otel.kind = "client",
            rpc.system = "jsonrpc",
            rpc.method = %method_list(&req),
            // Signed: OpenTelemetry has no unsigned integers (u64 would be exported as text).
            rpc.requests = i64::try_from(req.method_names().count()).unwrap_or(i64::MAX),
            chain = %self.chain,
            chain.id = i64::try_from(self.chain_id).unwrap_or(i64::MAX),
            otel.status_code = tracing::field::Empty,
        );
        let this = self.clone();
        Box::pin(
            async move {
                let out = this.request(req).await;
                if out.is_err() {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                }
                out
            }
            .instrument(span),
        )
    }
}

/// `eth_call`, or the distinct methods of a batch in order (`eth_call,eth_getBalance`).
fn method_list(req: &RequestPacket) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for m in req.method_names() {
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    seen.join(",")
}

fn scrub(e: TransportError, label: &str) -> TransportError {
    match e {
        TransportError::Transport(TransportErrorKind::Custom(inner)) => {
            let (message, timeout, connect) = match inner.downcast::<reqwest::Error>() {
                Ok(re) => {
                    let (t, c) = (re.is_timeout(), re.is_connect());
                    (error_chain(&re.without_url()), t, c)
                }
                Err(other) => (other.to_string(), false, false),
            };
            TransportErrorKind::custom(EndpointError {
                endpoint: label.to_string(),
                message,
                timeout,
                connect,
            })
        }
        other => other,
    }
}

/// `error: source: source` — reqwest's top-level message alone is rarely useful.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}
