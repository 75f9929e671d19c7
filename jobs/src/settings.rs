//! Domain settings the jobs read: chains, tokens, tracking, thresholds. Parsed by the binary's
//! config loader (file → env → flags) and validated here so every error names its key.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use alloy::primitives::{Address, U256, address};
use serde::{Deserialize, Serialize};

use chainsync_engine::Invalid;

use crate::ids::{ChainFamily, IdError, TokenKey, parse_address_any, parse_amount};

/// Canonical Multicall3 deployment, the same address on every chain that has it.
pub const MULTICALL3: Address = address!("0xcA11bde05977b3631167028862bE2a173976CA11");

/// The job-facing part of the configuration, flattened into the top level of the config file.
/// (No `deny_unknown_fields` here: the loader rejects unknown top-level keys itself. Every field
/// must have `#[serde(default)]` and serialize, so the loader can list the known keys.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DomainConfig {
    #[serde(default)]
    pub chains: Vec<ChainConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub tracking: TrackingConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    /// `[[ingest]]`: event ingestion per chain.
    #[serde(default)]
    pub ingest: Vec<IngestConfig>,
    /// `[points]`: rates and backfill bounds.
    #[serde(default)]
    pub points: crate::points::PointsConfig,
    /// `[alerts]`: notification targets and the rules that notify them.
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// `[health]`: thresholds of the health score.
    #[serde(default)]
    pub health: crate::health::HealthConfig,
    /// `[rpc_budget]`: priority classes, membership and adaptation of the RPC budgets
    /// (`chains[].rpc_budget`).
    #[serde(default)]
    pub rpc_budget: RpcBudgetConfig,
    /// `[history]`: how long each history is kept (whole partitions are dropped).
    #[serde(default)]
    pub history: crate::history::HistoryConfig,
}

/// One chain: EVM, or TRON through its Ethereum-compatible JSON-RPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub chain_id: u64,
    pub name: String,
    /// `evm` (default) or `tron`: how the node is read and how addresses are written.
    #[serde(default)]
    pub family: ChainFamily,
    /// One or more RPC URLs; later ones are fallbacks.
    pub rpc_urls: Vec<String>,
    /// Blocks a transaction's block needs, itself included, before it counts as confirmed;
    /// ingestion stays this far behind the head. Default 12; on TRON chains 19, the depth at
    /// which a block is solidified (see `ChainClient::confirmations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmations: Option<u64>,
    /// Balances are read at `head - balance_lag_blocks` (0 = the latest block). TRON: only 0.
    #[serde(default)]
    pub balance_lag_blocks: u64,
    /// Multicall3 contract used for batched reads (EVM default: the canonical Multicall3).
    /// TRON has no default: without one, reads go out as JSON-RPC batches of `eth_call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicall_address: Option<ConfigAddress>,
    /// Calls per Multicall3 `aggregate3` request.
    #[serde(default = "default_batch_size")]
    pub multicall_batch_size: usize,
    /// Multicall batches read and written concurrently by one full sync.
    #[serde(default = "default_in_flight")]
    pub batches_in_flight: usize,
    /// A tracked transaction not confirmed after this long is flagged `stuck`.
    #[serde(
        default = "default_max_pending",
        with = "chainsync_engine::duration::text"
    )]
    pub max_pending_time: Duration,
    /// Timeout of one HTTP request to the node.
    #[serde(
        default = "default_request_timeout",
        with = "chainsync_engine::duration::text"
    )]
    pub request_timeout: Duration,
    /// Retries of a rate-limited request inside one job attempt before the job is snoozed.
    #[serde(default = "default_rate_limit_retries")]
    pub rate_limit_retries: u32,
    /// Base delay of those retries.
    #[serde(
        default = "default_rate_limit_backoff",
        with = "chainsync_engine::duration::text"
    )]
    pub rate_limit_backoff: Duration,
    /// Compute units per second alloy's retry layer assumes when it spaces the in-attempt
    /// retries of rate-limited requests (it limits nothing else; `rpc_budget` does).
    #[serde(default = "default_cups")]
    pub compute_units_per_second: u64,
    /// Units per second each endpoint of this chain (each of `rpc_urls`) may receive from all
    /// daemons together; 0 = no budget.
    #[serde(default)]
    pub rpc_budget: u64,
    /// What `rpc_budget` counts: `requests` (each JSON-RPC call, batch entries included) or
    /// `compute_units` (per method, see `rpc_method_costs`).
    #[serde(default)]
    pub rpc_budget_unit: crate::chain::budget::BudgetUnit,
    /// Compute units per method over the built-in table (`default` = methods in neither).
    #[serde(default)]
    pub rpc_method_costs: BTreeMap<String, u32>,
}

fn default_batch_size() -> usize {
    1000
}
fn default_in_flight() -> usize {
    4
}
fn default_max_pending() -> Duration {
    Duration::from_secs(1800)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_rate_limit_retries() -> u32 {
    5
}
fn default_rate_limit_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_cups() -> u64 {
    660
}

/// One tracked token (or the native coin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub chain_id: u64,
    pub symbol: String,
    /// `None` (or `"native"`) for the chain's native coin.
    #[serde(default)]
    pub address: Option<ConfigToken>,
    pub decimals: u8,
    pub asset_class: AssetClass,
    /// A reconcile difference above this many base units raises an alert (log + metric).
    /// Written as a base-10 string (`"1000000"`), parsed when the config is read.
    #[serde(default, with = "amount_text")]
    pub reconcile_threshold: U256,
}

impl TokenConfig {
    /// The token's key.
    pub fn key(&self) -> TokenKey {
        self.address.as_ref().map_or(TokenKey::Native, |a| a.key)
    }

    /// A reconcile difference above this many base units raises an alert.
    pub fn threshold(&self) -> U256 {
        self.reconcile_threshold
    }
}

/// An address written in the config, parsed when the config is read (any form of
/// [`parse_address_any`]); the text is kept to check it against its chain's family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigAddress {
    pub address: Address,
    pub text: String,
}

impl ConfigAddress {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Ok(Self {
            address: parse_address_any(s)?,
            text: s.to_string(),
        })
    }

    /// The address as a chain of `family` accepts it (a TRON form is refused on EVM chains).
    pub fn check(&self, family: ChainFamily) -> Result<Address, IdError> {
        family.parse_address(&self.text)
    }
}

impl Serialize for ConfigAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ConfigAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `native` or a token address written in the config, parsed when the config is read; the text
/// is kept to check it against its chain's family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigToken {
    pub key: TokenKey,
    pub text: String,
}

impl ConfigToken {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Ok(Self {
            key: TokenKey::parse(s)?,
            text: s.to_string(),
        })
    }

    /// The key as a chain of `family` accepts it (a TRON form is refused on EVM chains).
    pub fn check(&self, family: ChainFamily) -> Result<TokenKey, IdError> {
        TokenKey::parse_for(family, &self.text)
    }
}

impl Serialize for ConfigToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ConfigToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// serde for amounts written as base-10 strings.
mod amount_text {
    use alloy::primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_amount(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, schemars::JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AssetClass {
    Native,
    Major,
    Erc20,
    Nft,
}

impl AssetClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Major => "major",
            Self::Erc20 => "erc20",
            Self::Nft => "nft",
        }
    }
}

/// Where the addresses to sync come from; the union of every source is used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingConfig {
    /// Fixed addresses.
    #[serde(default)]
    pub addresses: Vec<ConfigAddress>,
    /// Include the `chainsync.tracked_addresses` table (CLI `track add|remove|import`, Rust API).
    #[serde(default = "yes")]
    pub use_table: bool,
    /// A query against the application's own tables whose first column is an address,
    /// e.g. `SELECT address FROM users`. Rows that are not addresses are skipped and counted.
    #[serde(default)]
    pub query: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            use_table: true,
            query: None,
        }
    }
}

/// Reconciliation of stored against on-chain balances.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Correct mismatching stored balances (with an audit row in `balance_repairs`).
    #[serde(default)]
    pub auto_repair: bool,
}

/// Redis balance cache written through by the sync jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Lifetime of a cached balance.
    #[serde(default = "default_ttl", with = "chainsync_engine::duration::text")]
    pub balance_ttl: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            balance_ttl: default_ttl(),
        }
    }
}

impl DomainConfig {
    /// Checks values and cross-references; errors name the offending key. (Addresses and
    /// amounts were parsed when the config was read; here they are checked against their
    /// chain.)
    pub fn validate(&self) -> Result<(), Invalid> {
        self.points.validate()?;
        self.history.validate()?;
        for (i, g) in self.ingest.iter().enumerate() {
            let key = format!("ingest[{i}]");
            g.validate(&key, self.family(g.chain_id))?;
            if !self.chains.iter().any(|c| c.chain_id == g.chain_id) {
                return Err(Invalid::at(
                    format!("{key}.chain_id"),
                    format!("chain {} is not configured", g.chain_id),
                ));
            }
        }
        let mut ids = HashSet::new();
        for (i, c) in self.chains.iter().enumerate() {
            c.validate(&format!("chains[{i}]"))?;
            if !ids.insert(c.chain_id) {
                return Err(Invalid::at(
                    format!("chains[{i}].chain_id"),
                    format!("chain {} is configured twice", c.chain_id),
                ));
            }
        }
        let mut tokens = HashSet::new();
        let mut symbols = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("tokens[{i}]");
            let at = |field: &str, message: String| Invalid::at(format!("{key}.{field}"), message);
            if !ids.contains(&t.chain_id) {
                return Err(at(
                    "chain_id",
                    format!("chain {} is not configured", t.chain_id),
                ));
            }
            if t.symbol.trim().is_empty() {
                return Err(at("symbol", "must not be empty".into()));
            }
            let family = self.family(t.chain_id);
            let token = match &t.address {
                None => TokenKey::Native,
                Some(a) => a.check(family).map_err(|e| at("address", e.to_string()))?,
            };
            match (token, t.asset_class) {
                (TokenKey::Native, AssetClass::Native) => {}
                (TokenKey::Native, other) => {
                    return Err(at(
                        "asset_class",
                        format!(
                            "the native coin must have asset_class \"native\", got {:?}",
                            other.as_str()
                        ),
                    ));
                }
                (TokenKey::Contract(_), AssetClass::Native) => {
                    return Err(at(
                        "asset_class",
                        "\"native\" is only for the chain's coin (no address)".into(),
                    ));
                }
                (TokenKey::Contract(_), _) => {}
            }
            if t.decimals > 77 {
                return Err(at("decimals", format!("at most 77, got {}", t.decimals)));
            }
            if !tokens.insert((t.chain_id, token)) {
                return Err(at(
                    "address",
                    format!("token {token} is configured twice on chain {}", t.chain_id),
                ));
            }
            if !symbols.insert((t.chain_id, t.symbol.to_ascii_lowercase())) {
                return Err(at(
                    "symbol",
                    format!("{:?} is used twice on chain {}", t.symbol, t.chain_id),
                ));
            }
        }
        self.tracking.validate()?;
        if self.cache.balance_ttl < Duration::from_secs(1) {
            return Err(Invalid::at("cache.balance_ttl", "must be at least 1s"));
        }
        self.health.validate()?;
        let kinds = crate::registry().kinds().names();
        self.alerts.validate(&kinds)?;
        self.rpc_budget.validate(&kinds)?;
        Ok(())
    }

    pub fn chain(&self, chain_id: u64) -> Option<&ChainConfig> {
        self.chains.iter().find(|c| c.chain_id == chain_id)
    }

    /// The family of a configured chain (EVM for a chain that is not configured).
    pub fn family(&self, chain_id: u64) -> ChainFamily {
        self.chain(chain_id).map_or(ChainFamily::Evm, |c| c.family)
    }
}

impl ChainConfig {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        if self.name.trim().is_empty() {
            return Err(Invalid::at(format!("{key}.name"), "must not be empty"));
        }
        if self.rpc_urls.is_empty() {
            return Err(Invalid::at(
                format!("{key}.rpc_urls"),
                "at least one URL is required",
            ));
        }
        for (j, u) in self.rpc_urls.iter().enumerate() {
            parse_rpc_url(u)
                .map_err(|e| Invalid::at(format!("{key}.rpc_urls[{j}]"), e.to_string()))?;
        }
        if let Some(a) = &self.multicall_address {
            a.check(self.family)
                .map_err(|e| Invalid::at(format!("{key}.multicall_address"), e.to_string()))?;
        }
        if self.family == ChainFamily::Tron && self.balance_lag_blocks != 0 {
            return Err(Invalid::at(
                format!("{key}.balance_lag_blocks"),
                "TRON nodes serve state only at the latest block; must be 0",
            ));
        }
        if !(1..=10_000).contains(&self.multicall_batch_size) {
            return Err(Invalid::at(
                format!("{key}.multicall_batch_size"),
                format!("must be in 1..=10000, got {}", self.multicall_batch_size),
            ));
        }
        if !(1..=64).contains(&self.batches_in_flight) {
            return Err(Invalid::at(
                format!("{key}.batches_in_flight"),
                format!("must be in 1..=64, got {}", self.batches_in_flight),
            ));
        }
        for (name, v) in [
            ("max_pending_time", self.max_pending_time),
            ("request_timeout", self.request_timeout),
            ("rate_limit_backoff", self.rate_limit_backoff),
        ] {
            if v.is_zero() {
                return Err(Invalid::at(format!("{key}.{name}"), "must be positive"));
            }
        }
        if self.compute_units_per_second == 0 {
            return Err(Invalid::at(
                format!("{key}.compute_units_per_second"),
                "must be positive",
            ));
        }
        if self.rpc_budget > 1_000_000 {
            return Err(Invalid::at(
                format!("{key}.rpc_budget"),
                format!("at most 1000000 units per second, got {}", self.rpc_budget),
            ));
        }
        if !self.rpc_method_costs.is_empty()
            && self.rpc_budget_unit != crate::chain::budget::BudgetUnit::ComputeUnits
        {
            return Err(Invalid::at(
                format!("{key}.rpc_method_costs"),
                "only used with rpc_budget_unit = \"compute_units\"",
            ));
        }
        for (method, cost) in &self.rpc_method_costs {
            if method.trim().is_empty() {
                return Err(Invalid::at(
                    format!("{key}.rpc_method_costs"),
                    "a method name is empty",
                ));
            }
            if *cost > 100_000 {
                return Err(Invalid::at(
                    format!("{key}.rpc_method_costs.{method}"),
                    format!("at most 100000, got {cost}"),
                ));
            }
        }
        Ok(())
    }

    /// The Multicall3 address: the configured one, else on EVM chains the canonical one, on
    /// TRON none.
    pub fn multicall(&self) -> Option<Address> {
        match (&self.multicall_address, self.family) {
            (Some(a), _) => Some(a.address),
            (None, ChainFamily::Evm) => Some(MULTICALL3),
            (None, ChainFamily::Tron) => None,
        }
    }
}

impl TrackingConfig {
    fn validate(&self) -> Result<(), Invalid> {
        // The addresses were parsed when the config was read (`ConfigAddress`).
        if let Some(q) = &self.query {
            check_query(q).map_err(|e| Invalid::at("tracking.query", e))?;
        }
        Ok(())
    }
}

/// A tracking query must be one read-only statement.
fn check_query(q: &str) -> Result<(), String> {
    let body = q.trim().trim_end_matches(';').trim();
    if body.is_empty() {
        return Err("must not be empty".into());
    }
    if body.contains(';') {
        return Err("must be a single statement".into());
    }
    let first = body
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if first != "select" && first != "with" {
        return Err(format!(
            "must be a SELECT (or WITH … SELECT) statement, starts with {first:?}"
        ));
    }
    Ok(())
}

/// An RPC URL that cannot be used. It never repeats the URL: it may hold an API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcUrlError {
    #[error("not a valid URL ({source})")]
    Parse {
        #[source]
        source: url::ParseError,
    },
    #[error("scheme {scheme:?} is not supported (http or https)")]
    Scheme { scheme: String },
    #[error("the URL has no host")]
    NoHost,
}

/// Parses an RPC URL (http or https). The error never repeats the URL: it may hold an API key.
pub fn parse_rpc_url(s: &str) -> Result<alloy::transports::http::reqwest::Url, RpcUrlError> {
    let url = alloy::transports::http::reqwest::Url::parse(s.trim())
        .map_err(|source| RpcUrlError::Parse { source })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(RpcUrlError::Scheme {
                scheme: other.to_string(),
            });
        }
    }
    if url.host_str().is_none() {
        return Err(RpcUrlError::NoHost);
    }
    Ok(url)
}

/// `[rpc_budget]`: how the per-endpoint RPC budgets (`chains[].rpc_budget`) are shared.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcBudgetConfig {
    /// Kinds whose RPCs go ahead of bulk work; every other kind is bulk. RPCs outside jobs are
    /// priority unless their caller says otherwise (`chainsync sync|ingest` are bulk).
    #[serde(default = "default_priority_kinds")]
    pub priority_kinds: Vec<String>,
    /// Postgres mode: how often a daemon using an endpoint says so (and learns how many do).
    #[serde(
        default = "default_budget_heartbeat",
        with = "chainsync_engine::duration::text"
    )]
    pub heartbeat: Duration,
    /// A daemon not heard from for this long (or idle on the endpoint that long) no longer
    /// counts.
    #[serde(
        default = "default_member_ttl",
        with = "chainsync_engine::duration::text"
    )]
    pub member_ttl: Duration,
    /// A rate-limit answer multiplies the budget by this (at most once a second)...
    #[serde(default = "default_backoff")]
    pub backoff: f64,
    /// ...down to this share of it.
    #[serde(default = "default_min_factor")]
    pub min_factor: f64,
    /// The shrunken budget holds this long after the last rate-limit answer...
    #[serde(default = "default_hold", with = "chainsync_engine::duration::text")]
    pub hold: Duration,
    /// ...then grows back linearly to the full budget over this long.
    #[serde(
        default = "default_recovery",
        with = "chainsync_engine::duration::text"
    )]
    pub recovery: Duration,
}

fn default_priority_kinds() -> Vec<String> {
    vec!["sync-user-balance".into(), "check-pending-tx".into()]
}
fn default_budget_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_member_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_backoff() -> f64 {
    0.5
}
fn default_min_factor() -> f64 {
    0.05
}
fn default_hold() -> Duration {
    Duration::from_secs(10)
}
fn default_recovery() -> Duration {
    Duration::from_secs(60)
}

impl Default for RpcBudgetConfig {
    fn default() -> Self {
        Self {
            priority_kinds: default_priority_kinds(),
            heartbeat: default_budget_heartbeat(),
            member_ttl: default_member_ttl(),
            backoff: default_backoff(),
            min_factor: default_min_factor(),
            hold: default_hold(),
            recovery: default_recovery(),
        }
    }
}

impl RpcBudgetConfig {
    /// The class of a job kind's RPCs.
    pub fn class_of(&self, kind: &str) -> crate::chain::budget::Class {
        if self.priority_kinds.iter().any(|k| k == kind) {
            crate::chain::budget::Class::Priority
        } else {
            crate::chain::budget::Class::Bulk
        }
    }

    fn validate(&self, kinds: &[&str]) -> Result<(), Invalid> {
        for (i, k) in self.priority_kinds.iter().enumerate() {
            if !kinds.contains(&k.as_str()) {
                return Err(Invalid::at(
                    format!("rpc_budget.priority_kinds[{i}]"),
                    format!("unknown job kind {k:?} (known: {})", kinds.join(", ")),
                ));
            }
        }
        if self.heartbeat < Duration::from_millis(100) {
            return Err(Invalid::at("rpc_budget.heartbeat", "at least 100ms"));
        }
        if self.member_ttl < self.heartbeat * 2 {
            return Err(Invalid::at(
                "rpc_budget.member_ttl",
                "at least twice rpc_budget.heartbeat",
            ));
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            return Err(Invalid::at(
                "rpc_budget.backoff",
                format!("must be above 0 and below 1, got {}", self.backoff),
            ));
        }
        if !(self.min_factor >= 0.001 && self.min_factor <= 1.0) {
            return Err(Invalid::at(
                "rpc_budget.min_factor",
                format!("must be in 0.001..=1, got {}", self.min_factor),
            ));
        }
        for (name, d) in [("hold", self.hold), ("recovery", self.recovery)] {
            if d > Duration::from_secs(86_400) {
                return Err(Invalid::at(format!("rpc_budget.{name}"), "at most 1d"));
            }
        }
        Ok(())
    }
}

/// `[[ingest]]` in config: what to ingest on one chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub chain_id: u64,
    /// Contracts whose logs are ingested.
    pub contracts: Vec<ContractConfig>,
    /// First block to ingest when there is no checkpoint yet.
    #[serde(default)]
    pub start_block: u64,
    /// Blocks per `eth_getLogs` request: first try, floor and ceiling of the adaptive size.
    #[serde(default = "default_initial_range")]
    pub initial_range: u64,
    #[serde(default = "one")]
    pub min_range: u64,
    #[serde(default = "default_max_range")]
    pub max_range: u64,
    /// Most blocks one job run ingests; a run that stops short enqueues the next one.
    #[serde(default = "default_blocks_per_run")]
    pub max_blocks_per_run: u64,
    /// Recent block hashes kept for reorg detection.
    #[serde(default = "default_keep_hashes")]
    pub keep_block_hashes: u64,
    /// Live mode: the daemon polls the chain head every `poll_interval` and enqueues
    /// `ingest-events` as soon as a new block is past `confirmations`.
    #[serde(default = "yes")]
    pub live: bool,
    #[serde(default = "default_poll", with = "chainsync_engine::duration::text")]
    pub poll_interval: Duration,
    /// Balance history only for tracked addresses (see `[tracking]`) instead of every holder a
    /// transfer log of a configured token touches.
    #[serde(default)]
    pub tracked_only: bool,
}

/// One contract: the standard transfer events are always decoded; `events` adds more by
/// signature, e.g. `ReferralRegistered(address indexed user, address indexed referrer)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractConfig {
    pub address: ConfigAddress,
    #[serde(default)]
    pub events: Vec<String>,
}

fn default_initial_range() -> u64 {
    500
}
fn one() -> u64 {
    1
}
fn default_max_range() -> u64 {
    5000
}
fn default_blocks_per_run() -> u64 {
    200_000
}
fn default_keep_hashes() -> u64 {
    256
}
fn default_poll() -> Duration {
    Duration::from_millis(500)
}

impl IngestConfig {
    pub fn validate(&self, key: &str, family: ChainFamily) -> Result<(), Invalid> {
        if self.contracts.is_empty() {
            return Err(Invalid::at(
                format!("{key}.contracts"),
                "at least one contract is required",
            ));
        }
        for (i, c) in self.contracts.iter().enumerate() {
            c.address
                .check(family)
                .map_err(|e| Invalid::at(format!("{key}.contracts[{i}].address"), e.to_string()))?;
            for (j, e) in c.events.iter().enumerate() {
                crate::ingest::decode::CustomEvent::parse(e).map_err(|e| {
                    Invalid::at(format!("{key}.contracts[{i}].events[{j}]"), e.to_string())
                })?;
            }
        }
        if self.min_range == 0
            || self.min_range > self.initial_range
            || self.initial_range > self.max_range
        {
            return Err(Invalid::at(
                key,
                "need 1 <= min_range <= initial_range <= max_range",
            ));
        }
        if self.live && self.poll_interval < Duration::from_millis(10) {
            return Err(Invalid::at(format!("{key}.poll_interval"), "at least 10ms"));
        }
        if self.max_blocks_per_run == 0 || self.keep_block_hashes == 0 {
            return Err(Invalid::at(
                key,
                "max_blocks_per_run and keep_block_hashes must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_json() -> serde_json::Value {
        // The binary loads TOML through figment into the same serde model; JSON is equivalent.
        serde_json::json!({
            "chains": [{"chain_id": 31337, "name": "anvil",
                        "rpc_urls": ["http://127.0.0.1:8545", "https://backup.example/v2/KEY"]}],
            "tokens": [
                {"chain_id": 31337, "symbol": "ETH", "decimals": 18, "asset_class": "native"},
                {"chain_id": 31337, "symbol": "RAT", "decimals": 18, "asset_class": "major",
                 "address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                 "reconcile_threshold": "1000000000000000000"}
            ],
            "tracking": {"addresses": ["0x00000000000000000000000000000000000000aa"],
                         "query": "SELECT address FROM users"}
        })
    }

    fn base() -> DomainConfig {
        serde_json::from_value(base_json()).unwrap()
    }

    fn err_of(f: impl FnOnce(&mut DomainConfig)) -> String {
        let mut c = base();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn valid_config_passes_with_defaults() {
        let c = base();
        c.validate().unwrap();
        let chain = c.chain(31337).unwrap();
        assert_eq!(chain.multicall(), Some(MULTICALL3));
        assert_eq!(chain.multicall_batch_size, 1000);
        assert!(c.tracking.use_table);
        assert!(!c.reconcile.auto_repair);
        assert_eq!(
            c.tokens[1].threshold(),
            U256::from(10u64).pow(U256::from(18))
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(String, &str)> = vec![
            (
                err_of(|c| c.chains[0].rpc_urls.clear()),
                "chains[0].rpc_urls",
            ),
            (
                err_of(|c| c.chains[0].rpc_urls[1] = "ftp://x".into()),
                "chains[0].rpc_urls[1]",
            ),
            (
                err_of(|c| c.chains[0].multicall_batch_size = 0),
                "chains[0].multicall_batch_size",
            ),
            (
                err_of(|c| c.chains[0].batches_in_flight = 100),
                "chains[0].batches_in_flight",
            ),
            (
                err_of(|c| c.chains.push(c.chains[0].clone())),
                "chains[1].chain_id",
            ),
            (err_of(|c| c.tokens[1].chain_id = 1), "tokens[1].chain_id"),
            (
                err_of(|c| c.tokens[0].asset_class = AssetClass::Erc20),
                "tokens[0].asset_class",
            ),
            (
                err_of(|c| c.tokens[1].asset_class = AssetClass::Native),
                "tokens[1].asset_class",
            ),
            (
                err_of(|c| c.tokens[1].symbol = "eth".into()),
                "tokens[1].symbol",
            ),
            (
                err_of(|c| c.tracking.query = Some("DELETE FROM users".into())),
                "tracking.query",
            ),
            (
                err_of(|c| c.tracking.query = Some("SELECT 1; DROP TABLE users".into())),
                "tracking.query",
            ),
            (
                err_of(|c| c.cache.balance_ttl = Duration::ZERO),
                "cache.balance_ttl",
            ),
            (
                err_of(|c| c.chains[0].rpc_budget = 2_000_000),
                "chains[0].rpc_budget",
            ),
            (
                err_of(|c| {
                    c.chains[0].rpc_method_costs.insert("eth_call".into(), 26);
                }),
                "chains[0].rpc_method_costs",
            ),
            (
                err_of(|c| {
                    c.chains[0].rpc_budget_unit = crate::chain::budget::BudgetUnit::ComputeUnits;
                    c.chains[0]
                        .rpc_method_costs
                        .insert("eth_call".into(), 1_000_000);
                }),
                "chains[0].rpc_method_costs.eth_call",
            ),
            (
                err_of(|c| c.rpc_budget.priority_kinds = vec!["sync-everything".into()]),
                "rpc_budget.priority_kinds[0]",
            ),
            (err_of(|c| c.rpc_budget.backoff = 1.5), "rpc_budget.backoff"),
            (
                err_of(|c| c.rpc_budget.min_factor = 0.0),
                "rpc_budget.min_factor",
            ),
            (
                err_of(|c| c.rpc_budget.member_ttl = Duration::from_millis(1500)),
                "rpc_budget.member_ttl",
            ),
        ];
        for (err, key) in cases {
            assert!(err.starts_with(key), "{err:?} does not start with {key:?}");
        }
    }

    #[test]
    fn tron_chains_take_tron_addresses() {
        let mut v = base_json();
        v["chains"].as_array_mut().unwrap().push(serde_json::json!(
            {"chain_id": 728126428, "name": "tron", "family": "tron",
             "rpc_urls": ["http://127.0.0.1:8545/jsonrpc"]}));
        v["tokens"].as_array_mut().unwrap().extend([
            serde_json::json!({"chain_id": 728126428, "symbol": "TRX", "decimals": 6,
                               "asset_class": "native"}),
            serde_json::json!({"chain_id": 728126428, "symbol": "USDT", "decimals": 6,
                               "asset_class": "major",
                               "address": "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"}),
        ]);
        v["tracking"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                "41a614f803b6fd780986a42c78ec9c7f77e6ded13c"
            ));
        let c: DomainConfig = serde_json::from_value(v.clone()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.family(728126428), ChainFamily::Tron);
        assert_eq!(c.family(31337), ChainFamily::Evm);
        assert_eq!(c.chain(728126428).unwrap().multicall(), None);
        assert_eq!(
            c.tokens[3].key().text(),
            "0xa614f803b6fd780986a42c78ec9c7f77e6ded13c"
        );
        // A mistyped base58 address does not even load, and says the checksum is wrong (the
        // loader adds its key: see the binary's config tests).
        let mut bad = v.clone();
        bad["tokens"][3]["address"] = serde_json::json!("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u");
        let e = serde_json::from_value::<DomainConfig>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum"), "{e}");
        // A base58 address on an EVM chain is refused with the reason.
        let mut evm = v.clone();
        evm["tokens"][1]["address"] = serde_json::json!("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t");
        let e = serde_json::from_value::<DomainConfig>(evm)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("tokens[1].address") && e.contains("tron"),
            "{e}"
        );
        let mut lag = v.clone();
        lag["chains"][1]["balance_lag_blocks"] = serde_json::json!(3);
        let e = serde_json::from_value::<DomainConfig>(lag)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("chains[1].balance_lag_blocks"), "{e}");
        let mut fam = v;
        fam["chains"][1]["family"] = serde_json::json!("solana");
        let e = serde_json::from_value::<DomainConfig>(fam).unwrap_err();
        assert!(e.to_string().contains("solana"), "{e}");
    }

    #[test]
    fn addresses_and_amounts_are_parsed_when_read() {
        for (path, bad, says) in [
            (&["tokens", "1", "address"][..], "0x1234", "invalid address"),
            (
                &["tokens", "1", "reconcile_threshold"][..],
                "-5",
                "invalid amount",
            ),
            (
                &["chains", "0", "multicall_address"][..],
                "0xnope",
                "invalid address",
            ),
        ] {
            let mut v = base_json();
            let mut at = &mut v;
            for p in path {
                at = match p.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*p],
                };
            }
            *at = serde_json::json!(bad);
            let e = serde_json::from_value::<DomainConfig>(v)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains(bad), "{path:?}: {e}");
        }
        let mut v = base_json();
        v["tracking"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!("nope"));
        let e = serde_json::from_value::<DomainConfig>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid address \"nope\""), "{e}");
        // Typed values need no parsing at use.
        let c = base();
        assert_eq!(
            c.tracking.addresses[0].address,
            "0x00000000000000000000000000000000000000aa"
                .parse::<Address>()
                .unwrap()
        );
        assert_eq!(
            c.tokens[1].key().text(),
            "0x5fbdb2315678afecb367f032d93f642f64180aa3"
        );
        assert_eq!(c.tokens[0].key(), TokenKey::Native);
        assert_eq!(c.tokens[0].threshold(), U256::ZERO);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let mut v = base_json();
        v["chains"][0]["rpc_url"] = serde_json::json!("http://x");
        let e = serde_json::from_value::<DomainConfig>(v).unwrap_err();
        assert!(e.to_string().contains("rpc_url"), "{e}");
    }
}
