//! One RPC budget per chain endpoint, shared by every daemon.
//!
//! Every HTTP request a [`super::ChainClient`] sends to an endpoint passes through a
//! [`BudgetService`] (a tower layer under the fallback transport, so retries, fallbacks, batch
//! entries, `eth_call` and `eth_getLogs` all count). It costs units: one per JSON-RPC call with
//! `rpc_budget_unit = "requests"`, or the method's compute units (a built-in table that
//! `rpc_method_costs` overrides). Before sending, the request reserves its units:
//!
//! - **Redis mode** (`redis_url` set and reachable): one reservation timeline per endpoint in Redis
//!   (a GCRA in a Lua script on Redis' clock), so the budget is shared exactly by every daemon.
//! - **Postgres mode** (no Redis, or Redis unreachable): the daemons using an endpoint register in
//!   `chainsync.rpc_budget_members` every `rpc_budget.heartbeat` and each keeps its own timeline at
//!   budget / (live members). A daemon that joins waits one heartbeat before its first request,
//!   so that the others have shrunk their share by then.
//!
//! **Priority classes.** The job's kind sets a [`Class`] for everything it sends (a task-local,
//! see [`for_job`]; [`in_class`] for other callers): `rpc_budget.priority_kinds`
//! (`sync-user-balance`, `check-pending-tx`) and calls outside any scope (realtime balance reads,
//! the live head poll) are [`Class::Priority`] and may reserve far
//! ahead; every other kind is [`Class::Bulk`] and only takes a slot that is due within
//! [`BULK_HORIZON`], one request per daemon at a time. Priority requests therefore queue ahead of
//! all bulk work (in Redis mode across daemons, in Postgres mode within each daemon).
//!
//! **Adaptive.** An HTTP 429 or a rate-limit JSON-RPC error (-32005 and the others
//! [`super::error`] knows) cuts the endpoint's factor by `rpc_budget.backoff` (at most once a
//! second, down to `rpc_budget.min_factor`), in Redis or in `chainsync.rpc_budget_state`, so every
//! daemon slows down together; a provider's `Retry-After` holds every daemon back that long (at
//! most [`MAX_PAUSE`]). After `rpc_budget.hold` without rate-limit answers the factor recovers
//! linearly over `rpc_budget.recovery`. alloy's retry layer above retries within the shrunken
//! budget, so no daemon retries on its own.

pub mod members;
pub mod model;
pub mod redis;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, LazyLock, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use alloy::{
    rpc::json_rpc::{RequestPacket, ResponsePacket},
    transports::{TransportError, TransportFut},
};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{cache::CacheBreaker, settings::RpcBudgetConfig};
use model::{Adapt, AdaptParams, Micros, Pace, Reservation, Timeline};

pub use model::Class;

/// How far ahead a priority request may reserve.
pub const PRIORITY_HORIZON: Duration = Duration::from_secs(2);
/// How far ahead a bulk request may reserve: priority requests never wait longer than this
/// behind bulk ones.
pub const BULK_HORIZON: Duration = Duration::from_millis(20);
/// Longest `Retry-After` honoured for every daemon.
pub const MAX_PAUSE: Duration = Duration::from_secs(10);
/// Rate-limit answers within this long cut the factor once.
pub const CUT_INTERVAL: Duration = Duration::from_secs(1);
/// A daemon reports a rate-limit answer to the others at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(100);

tokio::task_local! {
    static CLASS: Class;
}

/// The class of the RPCs sent from the current task: [`Class::Priority`] outside any scope.
pub fn current_class() -> Class {
    CLASS.try_with(|c| *c).unwrap_or(Class::Priority)
}

/// Runs `f` with its RPCs in `class`.
pub async fn in_class<F: Future>(class: Class, f: F) -> F::Output {
    CLASS.scope(class, f).await
}

/// Runs a job's work with the class of its kind (`rpc_budget.priority_kinds`).
pub async fn for_job<F: Future>(ctx: &crate::JobContext, f: F) -> F::Output {
    let class = ctx.services.settings.rpc_budget.class_of(&ctx.meta.kind);
    in_class(class, f).await
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn duration(us: Micros) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// µs on this process' monotonic clock.
fn clock() -> Micros {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    micros(EPOCH.elapsed())
}

/// The identity of an endpoint in Redis keys and in Postgres: a hash of its URL (which may hold
/// an API key) as parsed (so `http://node:8545` and `http://node:8545/` are one endpoint), the
/// same in every daemon configured with that URL.
pub fn endpoint_id(url: &str) -> String {
    let normal =
        super::parse_rpc_url(url).map_or_else(|_| url.trim().to_string(), |u| u.to_string());
    let digest = Sha256::digest(normal.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetUnit {
    /// One unit per JSON-RPC call (each entry of a batch counts).
    #[default]
    Requests,
    /// The method's compute units.
    ComputeUnits,
}

/// Compute units per method when `rpc_method_costs` does not say: modelled on the tables
/// providers publish (e.g. `eth_call` 26, `eth_getLogs` 75); methods not listed cost
/// [`DEFAULT_METHOD_COST`].
pub const METHOD_COSTS: &[(&str, u32)] = &[
    ("eth_chainId", 0),
    ("net_version", 0),
    ("eth_blockNumber", 10),
    ("eth_feeHistory", 10),
    ("eth_getTransactionReceipt", 15),
    ("eth_getBlockByNumber", 16),
    ("eth_getBlockByHash", 16),
    ("eth_getTransactionByHash", 17),
    ("eth_getBalance", 19),
    ("eth_getCode", 19),
    ("eth_gasPrice", 19),
    ("eth_call", 26),
    ("eth_getTransactionCount", 26),
    ("eth_getLogs", 75),
    ("eth_estimateGas", 87),
    ("eth_sendRawTransaction", 250),
];
pub const DEFAULT_METHOD_COST: u32 = 20;

/// Units per request of one chain.
#[derive(Debug, Clone)]
pub struct Costs {
    unit: BudgetUnit,
    table: HashMap<String, u32>,
    default: u32,
}

impl Costs {
    /// `overrides` may set `default` for methods in neither table.
    pub fn new(unit: BudgetUnit, overrides: &std::collections::BTreeMap<String, u32>) -> Self {
        let mut table: HashMap<String, u32> = METHOD_COSTS
            .iter()
            .map(|(m, c)| ((*m).to_string(), *c))
            .collect();
        let mut default = DEFAULT_METHOD_COST;
        for (m, c) in overrides {
            if m == "default" {
                default = *c;
            } else {
                table.insert(m.clone(), *c);
            }
        }
        Self {
            unit,
            table,
            default,
        }
    }

    pub fn of_method(&self, method: &str) -> u64 {
        match self.unit {
            BudgetUnit::Requests => 1,
            BudgetUnit::ComputeUnits => {
                u64::from(self.table.get(method).copied().unwrap_or(self.default))
            }
        }
    }

    /// The units of a request packet: every entry of a batch counts.
    pub fn of(&self, req: &RequestPacket) -> u64 {
        req.method_names().map(|m| self.of_method(m)).sum()
    }
}

/// The `[rpc_budget]` settings in the form the budget uses.
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    pub adapt: AdaptParams,
    pub heartbeat: Duration,
    pub member_ttl: Duration,
}

impl From<&RpcBudgetConfig> for BudgetSettings {
    fn from(c: &RpcBudgetConfig) -> Self {
        let permille = |x: f64| (x * 1000.0).round().clamp(1.0, 1000.0) as u32;
        Self {
            adapt: AdaptParams {
                backoff: permille(c.backoff),
                cut_interval: micros(CUT_INTERVAL),
                min_factor: permille(c.min_factor),
                hold: micros(c.hold),
                recovery: micros(c.recovery),
            },
            heartbeat: c.heartbeat,
            member_ttl: c.member_ttl,
        }
    }
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self::from(&RpcBudgetConfig::default())
    }
}

/// Where budgets are shared: the database (membership, Postgres mode) and optionally Redis.
#[derive(Clone, Default)]
pub struct Backend {
    pub db: Option<PgPool>,
    pub redis: Option<::redis::aio::ConnectionManager>,
    pub settings: Arc<BudgetSettings>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("db", &self.db.is_some())
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

/// This daemon's view of one endpoint in Postgres mode (and the fallback of Redis mode).
#[derive(Debug)]
struct Local {
    timeline: Timeline,
    adapt: Adapt,
    members: u64,
    /// When this daemon may use its share; `None` until its first heartbeat was answered.
    ready_at: Option<Micros>,
    last_used: Micros,
    /// The membership task runs (as `session`).
    session: Option<Uuid>,
    last_report: Option<Micros>,
}

/// The budget of one endpoint in this daemon.
pub struct EndpointBudget {
    id: String,
    chain: String,
    label: String,
    per_second: u64,
    costs: Costs,
    backend: Backend,
    breaker: CacheBreaker,
    local: Mutex<Local>,
    bulk_gate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for EndpointBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointBudget")
            .field("id", &self.id)
            .field("chain", &self.chain)
            .field("endpoint", &self.label)
            .field("per_second", &self.per_second)
            .finish()
    }
}

/// What [`EndpointBudget::snapshot`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub per_second: u64,
    /// Per-mille of the budget in force (this daemon's view).
    pub factor: u32,
    /// Live members seen at the last heartbeat (0 before the first).
    pub members: u64,
}

impl EndpointBudget {
    /// `url` identifies the endpoint (hashed); `label` names it in logs and metrics.
    pub fn new(
        chain: &str,
        url: &str,
        label: &str,
        per_second: u64,
        costs: Costs,
        backend: Backend,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: endpoint_id(url),
            chain: chain.to_string(),
            label: label.to_string(),
            per_second: per_second.max(1),
            costs,
            backend,
            breaker: CacheBreaker::default(),
            local: Mutex::new(Local {
                timeline: Timeline::default(),
                adapt: Adapt::default(),
                members: 1,
                ready_at: None,
                last_used: 0,
                session: None,
                last_report: None,
            }),
            bulk_gate: tokio::sync::Mutex::new(()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn costs(&self) -> &Costs {
        &self.costs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let l = self.lock();
        Snapshot {
            per_second: self.per_second,
            factor: l.adapt.effective(clock(), &self.backend.settings.adapt),
            members: if l.ready_at.is_some() { l.members } else { 0 },
        }
    }

    /// Waits until `cost` units of this endpoint may be sent by a request of `class`.
    pub async fn acquire(self: &Arc<Self>, cost: u64, class: Class) {
        if cost == 0 {
            return;
        }
        let started = Instant::now();
        self.touch();
        let horizon = micros(match class {
            Class::Priority => PRIORITY_HORIZON,
            Class::Bulk => BULK_HORIZON,
        });
        // One bulk request per daemon asks at a time: the others queue here, in order, instead
        // of polling Redis.
        let gate = match class {
            Class::Bulk => Some(self.bulk_gate.lock().await),
            Class::Priority => None,
        };
        loop {
            match self.reserve(cost, horizon).await {
                Reservation::Go(wait) => {
                    drop(gate);
                    if wait > 0 {
                        tokio::time::sleep(duration(wait)).await;
                    }
                    break;
                }
                Reservation::Later(retry) => {
                    tokio::time::sleep(duration(retry.clamp(200, 1_000_000))).await;
                }
            }
        }
        metrics::histogram!(
            "chainsync_rpc_budget_wait_seconds",
            "chain" => self.chain.clone(),
            "class" => class.as_str()
        )
        .record(started.elapsed().as_secs_f64());
    }

    async fn reserve(self: &Arc<Self>, cost: u64, horizon: Micros) -> Reservation {
        if let Some(mut conn) = self.redis() {
            match redis::reserve(
                &mut conn,
                &self.id,
                self.per_second,
                cost,
                horizon,
                &self.backend.settings.adapt,
            )
            .await
            {
                Ok((r, factor)) => {
                    self.breaker.success();
                    self.factor_gauge(factor);
                    return r;
                }
                Err(e) => {
                    if !self.breaker.is_open() {
                        tracing::warn!(chain = %self.chain, endpoint = %self.label, error = %e,
                            "RPC budget: Redis unavailable; this daemon uses its Postgres share");
                    }
                    self.breaker.failure();
                }
            }
        }
        self.reserve_local(cost, horizon)
    }

    fn reserve_local(&self, cost: u64, horizon: Micros) -> Reservation {
        let now = clock();
        let mut l = self.lock();
        match l.ready_at {
            None => return Reservation::Later(5_000),
            Some(t) if t > now => return Reservation::Later(t - now),
            Some(_) => {}
        }
        let factor = l.adapt.effective(now, &self.backend.settings.adapt);
        let pace = Pace::new(self.per_second, factor, l.members);
        l.timeline.reserve(now, pace, cost, horizon)
    }

    fn redis(&self) -> Option<::redis::aio::ConnectionManager> {
        let conn = self.backend.redis.as_ref()?;
        self.breaker.allow().then(|| conn.clone())
    }

    fn factor_gauge(&self, factor: u32) {
        metrics::gauge!(
            "chainsync_rpc_budget_factor",
            "chain" => self.chain.clone(),
            "endpoint" => self.label.clone()
        )
        .set(f64::from(factor) / 1000.0);
    }

    /// Marks the endpoint in use and starts this daemon's membership when it is not running.
    fn touch(self: &Arc<Self>) {
        let now = clock();
        let session = {
            let mut l = self.lock();
            l.last_used = now;
            if l.session.is_some() {
                return;
            }
            if self.backend.db.is_none() {
                // Alone by definition: nothing to find the others in.
                l.ready_at.get_or_insert(now);
                return;
            }
            let s = Uuid::now_v7();
            l.session = Some(s);
            s
        };
        tokio::spawn(membership(Arc::downgrade(self), session));
    }

    /// Looks at a response: rate-limit answers shrink the budget for every daemon.
    pub fn observe(self: &Arc<Self>, r: &Result<ResponsePacket, TransportError>) {
        let hint = match r {
            Err(e) if super::error::is_rate_limited(e) => Some(super::error::retry_hint(e)),
            Ok(resp) => resp
                .iter_errors()
                .map(|p| TransportError::ErrorResp(p.clone()))
                .find(super::error::is_rate_limited)
                .map(|e| super::error::retry_hint(&e)),
            Err(_) => None,
        };
        if let Some(hint) = hint {
            self.rate_limited(hint.map(|h| h.min(MAX_PAUSE)).unwrap_or_default());
        }
    }

    fn rate_limited(self: &Arc<Self>, pause: Duration) {
        let now = clock();
        let report = {
            let mut l = self.lock();
            l.adapt.cut(now, &self.backend.settings.adapt);
            if !pause.is_zero() {
                l.timeline.pause_until(now + micros(pause));
            }
            let report = l
                .last_report
                .is_none_or(|t| now - t >= micros(REPORT_EVERY));
            if report {
                l.last_report = Some(now);
            }
            report
        };
        metrics::counter!(
            "chainsync_rpc_budget_rate_limited_total",
            "chain" => self.chain.clone()
        )
        .increment(1);
        if !report {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let p = this.backend.settings.adapt;
            let shared = if let Some(mut conn) = this.redis() {
                redis::cut(&mut conn, &this.id, &p, pause)
                    .await
                    .inspect(|_| this.breaker.success())
                    .inspect_err(|_| this.breaker.failure())
                    .ok()
            } else {
                None
            };
            let shared = match (shared, &this.backend.db) {
                (Some(f), _) => Some(f),
                (None, Some(db)) => members::cut(db, &this.id, &p, micros(pause))
                    .await
                    .inspect_err(|e| {
                        tracing::warn!(chain = %this.chain, error = %e,
                            "RPC budget: could not share a rate-limit answer");
                    })
                    .ok(),
                (None, None) => None,
            };
            let factor = shared.unwrap_or_else(|| this.snapshot().factor);
            this.factor_gauge(factor);
            tracing::warn!(
                chain = %this.chain,
                endpoint = %this.label,
                factor = f64::from(factor) / 1000.0,
                pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                "RPC rate limited: budget shrunk for every daemon"
            );
        });
    }
}

/// This daemon's membership of one endpoint: a heartbeat every `rpc_budget.heartbeat` while the
/// endpoint is used, then (after `member_ttl` unused) a goodbye.
async fn membership(budget: Weak<EndpointBudget>, session: Uuid) {
    let mut failures = 0u32;
    loop {
        let Some(b) = budget.upgrade() else { return };
        let Some(db) = b.backend.db.clone() else {
            return;
        };
        let settings = b.backend.settings.clone();
        let ttl = micros(settings.member_ttl);
        let idle = {
            let mut l = b.lock();
            let idle = clock() - l.last_used > ttl;
            if idle {
                l.session = None;
                l.ready_at = None;
            }
            idle
        };
        if idle {
            let _ = members::leave(&db, &b.id, session).await;
            return;
        }
        let ttl_ms = i64::try_from(settings.member_ttl.as_millis()).unwrap_or(i64::MAX);
        match members::heartbeat(&db, &b.id, session, ttl_ms).await {
            Ok(seen) => {
                failures = 0;
                let now = clock();
                let mut l = b.lock();
                if l.ready_at.is_none() {
                    // Joining: the others learn of this member at their next heartbeat; until
                    // then they still use the larger share, so this one waits that long.
                    let wait = if seen.members > 1 {
                        micros(settings.heartbeat) + 100_000
                    } else {
                        0
                    };
                    l.ready_at = Some(now + wait);
                }
                l.members = seen.members;
                if let Some(a) = seen.adapt {
                    // The stricter of this daemon's own view and the shared one.
                    let shared = a.at(now);
                    let p = &settings.adapt;
                    if shared.effective(now, p) <= l.adapt.effective(now, p) {
                        l.adapt = shared;
                    }
                }
                if seen.paused_for > 0 {
                    l.timeline.pause_until(now + seen.paused_for);
                }
                let factor = l.adapt.effective(now, &settings.adapt);
                drop(l);
                metrics::gauge!(
                    "chainsync_rpc_budget_members",
                    "chain" => b.chain.clone(),
                    "endpoint" => b.label.clone()
                )
                .set(seen.members as f64);
                if b.backend.redis.is_none() {
                    b.factor_gauge(factor);
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(chain = %b.chain, error = %e,
                        "RPC budget: membership heartbeat failed; keeping the last share");
                }
                let mut l = b.lock();
                if l.ready_at.is_none() {
                    l.ready_at = Some(clock());
                }
            }
        }
        let every = settings.heartbeat;
        drop(b);
        tokio::time::sleep(every).await;
    }
}

/// The tower layer that puts an endpoint's budget in front of its transport.
#[derive(Clone, Debug)]
pub struct BudgetLayer {
    budget: Arc<EndpointBudget>,
}

impl BudgetLayer {
    pub fn new(budget: Arc<EndpointBudget>) -> Self {
        Self { budget }
    }
}

impl<S> tower::Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BudgetService {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// A transport whose requests wait for the endpoint's budget.
#[derive(Clone, Debug)]
pub struct BudgetService<S> {
    inner: S,
    budget: Arc<EndpointBudget>,
}

impl<S> tower::Service<RequestPacket> for BudgetService<S>
where
    S: tower::Service<
            RequestPacket,
            Response = ResponsePacket,
            Error = TransportError,
            Future = TransportFut<'static>,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: RequestPacket) -> Self::Future {
        // The class is the calling task's: read it here, where the job's task polls.
        let class = current_class();
        let cost = self.budget.costs.of(&req);
        let budget = self.budget.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            budget.acquire(cost, class).await;
            let r = inner.call(req).await;
            budget.observe(&r);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::rpc::json_rpc::{Id, Request, SerializedRequest};

    fn packet(methods: &[&'static str]) -> RequestPacket {
        let reqs: Vec<SerializedRequest> = methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Request::new(*m, Id::Number(i as u64), ())
                    .serialize()
                    .unwrap()
            })
            .collect();
        if reqs.len() == 1 {
            RequestPacket::Single(reqs.into_iter().next().unwrap())
        } else {
            RequestPacket::Batch(reqs)
        }
    }

    #[test]
    fn costs_count_every_batch_entry() {
        let none = std::collections::BTreeMap::new();
        let requests = Costs::new(BudgetUnit::Requests, &none);
        assert_eq!(requests.of(&packet(&["eth_call"])), 1);
        assert_eq!(
            requests.of(&packet(&["eth_call", "eth_getLogs", "eth_chainId"])),
            3
        );
        let cu = Costs::new(BudgetUnit::ComputeUnits, &none);
        assert_eq!(
            cu.of(&packet(&["eth_call", "eth_getLogs", "eth_chainId"])),
            101
        );
        assert_eq!(cu.of(&packet(&["debug_traceCall"])), 20);
        let custom: std::collections::BTreeMap<String, u32> =
            [("eth_call".to_string(), 5), ("default".to_string(), 1)].into();
        let cu = Costs::new(BudgetUnit::ComputeUnits, &custom);
        assert_eq!(cu.of(&packet(&["eth_call", "debug_traceCall"])), 6);
    }

    #[test]
    fn endpoint_ids_hide_the_url_and_are_stable() {
        let a = endpoint_id("https://eth.example/v2/SECRET");
        assert_eq!(a, endpoint_id(" https://eth.example/v2/SECRET "));
        assert_eq!(
            endpoint_id("http://node:8545"),
            endpoint_id("http://node:8545/")
        );
        assert_ne!(a, endpoint_id("https://eth.example/v2/OTHER"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("SECRET"));
    }

    #[tokio::test]
    async fn the_class_is_the_tasks() {
        assert_eq!(current_class(), Class::Priority);
        let inner = in_class(Class::Bulk, async { current_class() }).await;
        assert_eq!(inner, Class::Bulk);
        assert_eq!(current_class(), Class::Priority);
    }

    /// A budget alone (no database, no Redis) paces this daemon: 50 units per second.
    #[tokio::test]
    async fn a_lone_budget_paces_requests_and_serves_priority_first() {
        let b = EndpointBudget::new(
            "t",
            "http://127.0.0.1:1",
            "t",
            50,
            Costs::new(BudgetUnit::Requests, &Default::default()),
            Backend::default(),
        );
        let t = Instant::now();
        for _ in 0..11 {
            b.acquire(1, Class::Priority).await;
        }
        // One unit of burst, then one every 20 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(195),
            "{:?}",
            t.elapsed()
        );

        // Bulk work queued first; priority requests arriving later still go before most of it.
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (b, done) = (b.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                b.acquire(1, Class::Bulk).await;
                done.lock().unwrap().push(("bulk", i));
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for i in 0..5 {
            let (b, done) = (b.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                b.acquire(1, Class::Priority).await;
                done.lock().unwrap().push(("priority", i));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = done.lock().unwrap().clone();
        let last_priority = order.iter().rposition(|(c, _)| *c == "priority").unwrap();
        assert!(
            last_priority <= 8,
            "priority requests waited behind bulk ones: {order:?}"
        );
    }

    /// Rate-limit answers cut the factor; a Retry-After holds everyone back.
    #[tokio::test]
    async fn rate_limit_answers_shrink_the_budget() {
        let b = EndpointBudget::new(
            "t",
            "http://127.0.0.1:2",
            "t",
            100,
            Costs::new(BudgetUnit::Requests, &Default::default()),
            Backend::default(),
        );
        b.acquire(1, Class::Priority).await;
        assert_eq!(b.snapshot().factor, 1000);
        let e = alloy::transports::TransportErrorKind::http_error(429, String::new());
        b.observe(&Err(e));
        assert_eq!(b.snapshot().factor, 500);
        let limited = alloy::rpc::json_rpc::Response {
            id: Id::Number(1),
            payload: alloy::rpc::json_rpc::ResponsePayload::<
                Box<serde_json::value::RawValue>,
                Box<serde_json::value::RawValue>,
            >::Failure(alloy::rpc::json_rpc::ErrorPayload {
                code: -32005,
                message: "limit exceeded".into(),
                data: None,
            }),
        };
        // Within a second of the first cut: counted, not cut again.
        b.observe(&Ok(ResponsePacket::Single(limited)));
        assert_eq!(b.snapshot().factor, 500);
        // A range error with the same code is not a rate limit.
        let range = alloy::transports::RpcError::ErrorResp(alloy::rpc::json_rpc::ErrorPayload {
            code: -32005,
            message: "query returned more than 10000 results".into(),
            data: None,
        });
        b.observe(&Err(range));
        assert_eq!(b.snapshot().factor, 500);
        let e = alloy::transports::TransportErrorKind::http_error_with_retry_after(
            429,
            String::new(),
            Some(Duration::from_millis(300)),
        );
        b.observe(&Err(e));
        let t = Instant::now();
        b.acquire(1, Class::Priority).await;
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }
}
