//! Chain access: one alloy HTTP provider per configured chain, built from the settings.
//!
//! Per chain: every URL of `rpc_urls` is a reqwest HTTP transport with the chain's request
//! timeout, behind that endpoint's RPC budget when `rpc_budget` is set ([`budget`], shared by
//! every daemon); [`fallback::FallbackTransport`] tries them in order; alloy's `RetryBackoffLayer`
//! on top retries rate-limited requests inside the job attempt (each retry passes the budget
//! again). What is still failing after that is classified once, in [`error::classify`], into
//! Retry / Snooze / Fatal.
//!
//! The chain's family decides what a read can be pinned to ([`StateAccess`]): an EVM node serves
//! state at any block (reads go to the pinned block's hash), a TRON node only at `latest` (reads
//! go to `latest`, bracketed by the head, see `balance_sync::read_consistent`). The differences of
//! the wire format live in [`tron`]; nothing outside this module asks for the family.

pub mod budget;
pub mod error;
pub mod fallback;
pub mod multicall;
pub mod receipt;
pub mod tron;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use alloy::{
    eips::{BlockId, BlockNumberOrTag},
    primitives::{Address, B256, Bytes},
    providers::{Provider, RootProvider},
    rpc::client::ClientBuilder,
    rpc::types::{TransactionInput, TransactionRequest},
    transports::{
        BoxTransport, TransportError,
        http::{Http, reqwest},
        layers::RetryBackoffLayer,
    },
};
use tower::Layer;

use crate::{JobError, ids::ChainFamily, settings::ChainConfig, settings::DomainConfig};
pub use error::classify;
use fallback::{Endpoint, FallbackTransport};

/// `confirmations` of an EVM chain that does not set it.
pub const DEFAULT_CONFIRMATIONS: u64 = 12;

/// How long a failed-over chain waits before trying its first URL again.
const PROBE_PRIMARY_AFTER: Duration = Duration::from_secs(60);

pub use crate::settings::parse_rpc_url;

/// `scheme://host[:port]` only: what logs and errors may say about an endpoint.
pub fn redact_url(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// A block that every read of one job run is pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedBlock {
    pub number: u64,
    pub hash: B256,
    /// Unix seconds.
    pub timestamp: u64,
}

impl PinnedBlock {
    pub fn time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp(i64::try_from(self.timestamp).ok()?, 0)
    }
}

/// What state a chain's node serves to calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateAccess {
    /// State at any (recent) block: every read of a run is pinned to one block.
    AnyBlock,
    /// Only the latest state (TRON): a read is placed at the head it was taken at.
    LatestOnly,
}

/// One chain's provider and settings.
pub struct ChainClient {
    pub config: ChainConfig,
    pub provider: RootProvider,
    /// Multicall3 for batched reads; `None`: JSON-RPC batches (TRON without a configured one).
    pub multicall: Option<Address>,
    /// The budget of each endpoint, in `rpc_urls` order; empty when `rpc_budget` is 0.
    pub budgets: Vec<Arc<budget::EndpointBudget>>,
}

impl std::fmt::Debug for ChainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainClient")
            .field("chain_id", &self.config.chain_id)
            .field("name", &self.config.name)
            .field("endpoints", &self.config.rpc_urls.len())
            .finish()
    }
}

/// A chain client that cannot be built; names the chain and the key.
#[derive(Debug, thiserror::Error)]
pub enum ChainSetupError {
    #[error("chains[chain_id={chain_id}]: HTTP client: {source}")]
    HttpClient {
        chain_id: u64,
        #[source]
        source: reqwest::Error,
    },
    #[error("chains[chain_id={chain_id}].rpc_urls[{index}]: {source}")]
    RpcUrl {
        chain_id: u64,
        index: usize,
        #[source]
        source: crate::settings::RpcUrlError,
    },
    #[error("chains[chain_id={chain_id}].rpc_urls: at least one URL is required")]
    NoRpcUrl { chain_id: u64 },
}

impl ChainClient {
    /// Builds the provider with budgets private to this process; nothing is sent to the node yet.
    pub fn new(config: &ChainConfig) -> Result<Self, ChainSetupError> {
        Self::with_budget(config, &budget::Backend::default())
    }

    /// Builds the provider, its endpoints' budgets shared through `backend`.
    pub fn with_budget(
        config: &ChainConfig,
        backend: &budget::Backend,
    ) -> Result<Self, ChainSetupError> {
        let chain_id = config.chain_id;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|source| ChainSetupError::HttpClient { chain_id, source })?;
        let mut endpoints = Vec::with_capacity(config.rpc_urls.len());
        let mut budgets = Vec::new();
        let costs = budget::Costs::new(config.rpc_budget_unit, &config.rpc_method_costs);
        for (i, raw) in config.rpc_urls.iter().enumerate() {
            let url = parse_rpc_url(raw).map_err(|source| ChainSetupError::RpcUrl {
                chain_id,
                index: i,
                source,
            })?;
            let label = format!("rpc_urls[{i}] {}", redact_url(&url));
            let http = Http::with_client(http.clone(), url.clone());
            let transport = if config.rpc_budget > 0 {
                let b = budget::EndpointBudget::new(
                    &config.name,
                    url.as_str(),
                    &redact_url(&url),
                    config.rpc_budget,
                    costs.clone(),
                    backend.clone(),
                );
                budgets.push(b.clone());
                BoxTransport::new(budget::BudgetLayer::new(b).layer(http))
            } else {
                BoxTransport::new(http)
            };
            endpoints.push(Endpoint { label, transport });
        }
        if endpoints.is_empty() {
            return Err(ChainSetupError::NoRpcUrl { chain_id });
        }
        let is_local = config.rpc_urls.iter().all(|u| {
            parse_rpc_url(u).is_ok_and(|u| {
                matches!(
                    u.host_str(),
                    Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
                )
            })
        });
        let client = ClientBuilder::default()
            .layer(RetryBackoffLayer::new_with_policy(
                config.rate_limit_retries,
                u64::try_from(config.rate_limit_backoff.as_millis()).unwrap_or(u64::MAX),
                config.compute_units_per_second,
                error::RetryUnlessRange,
            ))
            .transport(
                FallbackTransport::new(endpoints, PROBE_PRIMARY_AFTER)
                    .with_chain(&config.name, config.chain_id),
                is_local,
            );
        let multicall = config.multicall();
        Ok(Self {
            config: config.clone(),
            provider: RootProvider::new(client),
            multicall,
            budgets,
        })
    }

    pub fn chain_id(&self) -> u64 {
        self.config.chain_id
    }

    pub fn family(&self) -> ChainFamily {
        self.config.family
    }

    /// What state the node serves.
    pub fn state_access(&self) -> StateAccess {
        match self.config.family {
            ChainFamily::Evm => StateAccess::AnyBlock,
            ChainFamily::Tron => StateAccess::LatestOnly,
        }
    }

    /// `eth_call` of `input` on `to` at `block`: pinned to the block's hash on EVM chains; at
    /// `latest` on TRON, the only state it serves (the caller places the read, see
    /// [`StateAccess`]).
    pub async fn eth_call(
        &self,
        to: Address,
        input: Bytes,
        block: &PinnedBlock,
    ) -> Result<Bytes, TransportError> {
        match self.config.family {
            ChainFamily::Evm => {
                let tx = TransactionRequest::default()
                    .to(to)
                    .input(TransactionInput::new(input));
                self.provider
                    .call(tx)
                    .block(BlockId::from(block.hash))
                    .await
            }
            ChainFamily::Tron => tron::call_latest(&self.provider, to, input).await,
        }
    }

    /// The block parameter of a raw call at `block`: its hash (EIP-1898) on EVM chains,
    /// `latest` on TRON.
    pub fn call_params(&self, block: &PinnedBlock) -> serde_json::Value {
        match self.config.family {
            ChainFamily::Evm => serde_json::json!({ "blockHash": block.hash }),
            ChainFamily::Tron => serde_json::json!("latest"),
        }
    }

    /// Blocks a transaction's block needs, itself included, before it counts as final (and
    /// ingestion stays that far behind the head): `confirmations` when configured, else
    /// [`DEFAULT_CONFIRMATIONS`] on EVM chains and on TRON the depth at which a block is
    /// solidified ([`tron::SOLIDIFIED_DEPTH`]).
    pub fn confirmations(&self) -> u64 {
        self.config
            .confirmations
            .unwrap_or(match self.config.family {
                ChainFamily::Evm => DEFAULT_CONFIRMATIONS,
                ChainFamily::Tron => tron::SOLIDIFIED_DEPTH,
            })
    }

    /// The receipt of `hash`, or `None` when the node has none (see [`receipt`]).
    pub async fn receipt(&self, hash: B256) -> Result<Option<receipt::TxReceipt>, JobError> {
        receipt::fetch(&self.provider, hash)
            .await
            .map_err(|e| self.rpc_error("eth_getTransactionReceipt", &e))
    }

    /// Whether the node knows the transaction `hash` (mined or, on nodes that show them, in its
    /// pool; java-tron shows only mined ones).
    pub async fn transaction_known(&self, hash: B256) -> Result<bool, JobError> {
        receipt::known(&self.provider, hash)
            .await
            .map_err(|e| self.rpc_error("eth_getTransactionByHash", &e))
    }

    /// Converts an RPC error of this chain into a job result.
    pub fn rpc_error(&self, what: &str, e: &TransportError) -> JobError {
        error::classify_for(&self.config.name, self.config.chain_id, what, e)
    }

    /// The latest block number.
    pub async fn head(&self) -> Result<u64, JobError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| self.rpc_error("eth_blockNumber", &e))
    }

    /// The block at `number`, or `None` when the node does not have it (yet).
    pub async fn block_at(&self, number: u64) -> Result<Option<PinnedBlock>, JobError> {
        if self.config.family == ChainFamily::Tron {
            return tron::block(&self.provider, BlockNumberOrTag::Number(number))
                .await
                .map_err(|e| self.rpc_error("eth_getBlockByNumber", &e));
        }
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| self.rpc_error("eth_getBlockByNumber", &e))?;
        Ok(block.map(|b| PinnedBlock {
            number: b.header.inner.number,
            hash: b.header.hash,
            timestamp: b.header.inner.timestamp,
        }))
    }

    /// The block balance reads are pinned to: `head - balance_lag_blocks`. On TRON the latest
    /// block (the one state it serves).
    pub async fn pin_block(&self) -> Result<PinnedBlock, JobError> {
        if self.config.family == ChainFamily::Tron {
            return tron::block(&self.provider, BlockNumberOrTag::Latest)
                .await
                .map_err(|e| self.rpc_error("eth_getBlockByNumber", &e))?
                .ok_or_else(|| {
                    JobError::retry(format!(
                        "chain {}: the node returned no latest block",
                        self.chain_id()
                    ))
                });
        }
        let head = self.head().await?;
        let number = head.saturating_sub(self.config.balance_lag_blocks);
        self.block_at(number).await?.ok_or_else(|| {
            JobError::retry(format!(
                "chain {}: block {number} not available from the node",
                self.chain_id()
            ))
        })
    }
}

/// Every configured chain, by chain id.
#[derive(Debug, Default)]
pub struct Chains {
    by_id: BTreeMap<u64, Arc<ChainClient>>,
}

impl Chains {
    /// Every chain with budgets private to this process.
    pub fn from_settings(settings: &DomainConfig) -> Result<Self, ChainSetupError> {
        Self::from_settings_with(settings, &budget::Backend::default())
    }

    /// Every chain, the endpoints' budgets shared through `backend`.
    pub fn from_settings_with(
        settings: &DomainConfig,
        backend: &budget::Backend,
    ) -> Result<Self, ChainSetupError> {
        let mut by_id = BTreeMap::new();
        for c in &settings.chains {
            by_id.insert(c.chain_id, Arc::new(ChainClient::with_budget(c, backend)?));
        }
        Ok(Self { by_id })
    }

    /// The chain, or `Fatal` when it is not configured.
    pub fn get(&self, chain_id: u64) -> Result<Arc<ChainClient>, JobError> {
        self.by_id.get(&chain_id).cloned().ok_or_else(|| {
            JobError::fatal(format!(
                "unknown chain {chain_id} (configured: {})",
                self.ids()
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.by_id.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        let u = parse_rpc_url("https://eth-mainnet.g.alchemy.com/v2/SECRETKEY").unwrap();
        assert_eq!(redact_url(&u), "https://eth-mainnet.g.alchemy.com");
        let u = parse_rpc_url("http://user:pw@127.0.0.1:8545/?key=SECRET").unwrap();
        assert_eq!(redact_url(&u), "http://127.0.0.1:8545");
        for bad in [
            "",
            "127.0.0.1:8545",
            "ws://x",
            "file:///etc/passwd",
            "https://",
        ] {
            let e = parse_rpc_url(bad).unwrap_err().to_string();
            assert!(!bad.is_empty() && !e.contains(bad) || bad.is_empty(), "{e}");
        }
        let e = parse_rpc_url("wss://node.example/SECRET")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[tokio::test]
    async fn unknown_chain_is_fatal() {
        let chains = Chains::default();
        assert!(
            matches!(chains.get(1), Err(JobError::Fatal { message: m, .. }) if m.contains("unknown chain 1"))
        );
    }
}
