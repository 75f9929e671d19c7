//! A real local EVM chain for tests, the demo and benchmarks: an `anvil` process on a free loopback
//! port, the test contracts from `contracts/`, Multicall3 at its canonical address, and fast ways to
//! create many token holders with real `Transfer` events.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chainsync_dev::devchain::DevChainError> {
//! use chainsync_dev::devchain::{DevChain, random_holders};
//! use alloy::primitives::U256;
//!
//! let chain = DevChain::start().await?;
//! chain.install_multicall3().await?;
//! let token = chain.deploy_token("Test", "TST", 18).await?;
//! let holders = random_holders(7, 1_000, U256::from(10u64).pow(U256::from(21u64)));
//! chain.mint_many(token, &holders).await?;
//! chain.stop().await?; // the RPC goes away...
//! chain.restart().await?; // ...and comes back on the same port with the same state
//! # Ok(()) }
//! ```
//!
//! The anvil binary is found via `$ANVIL_BIN`, then `PATH`, then the npm prefix used by
//! `scripts/install-deps.sh`. The process is killed and reaped when the [`DevChain`] is dropped.

pub mod contracts;
mod gate;
mod holders;
mod ops;
mod process;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, TxHash, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest::Url;

pub use contracts::MULTICALL3_ADDRESS;
pub use gate::RpcGate;
pub use holders::{BatchOutcome, MINT_CHUNK, MINT_CHUNK_CAPPED, holder_addresses, random_holders};

use process::AnvilProcess;

/// Errors from starting or driving the dev chain.
#[derive(Debug, thiserror::Error)]
pub enum DevChainError {
    #[error(
        "anvil not found (searched {searched}); run scripts/install-deps.sh or set ANVIL_BIN to the anvil binary"
    )]
    AnvilNotFound { searched: String },
    #[error("could not spawn {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("anvil exited during start-up ({status}); last output:\n{log}")]
    Exited { status: String, log: String },
    #[error("anvil did not start listening within {after:?}; last output:\n{log}")]
    StartTimeout { after: Duration, log: String },
    #[error("anvil is stopped; call restart() first")]
    NotRunning,
    #[error("RPC error: {0}")]
    Rpc(#[from] alloy::transports::TransportError),
    #[error("contract call failed: {0}")]
    Contract(#[from] alloy::contract::Error),
    #[error("transaction {hash} reverted")]
    Reverted { hash: TxHash },
    #[error("transaction {hash} not mined within {after:?}")]
    NotMined { hash: TxHash, after: Duration },
    #[error("no dev account with index {index} (the chain has {count})")]
    NoSigner { index: usize, count: usize },
    #[error("state file {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// How to start anvil.
#[derive(Clone, Debug)]
pub struct DevChainOptions {
    /// Interval mining; `None` mines a block for every transaction (automine).
    pub block_time: Option<Duration>,
    /// Number of prefunded dev accounts (anvil's default mnemonic).
    pub accounts: u32,
    /// Ether given to each dev account.
    pub balance_eth: u64,
    /// Chain id reported by the node.
    pub chain_id: u64,
    /// Block gas limit; `None` keeps anvil's default (30M).
    pub gas_limit: Option<u64>,
    /// EVM hardfork (`--hardfork`). Default `prague`: the last one without the per-transaction
    /// gas cap of Osaka (EIP-7825), so one `mintMany` can create thousands of holders. `None`
    /// keeps anvil's default.
    pub hardfork: Option<String>,
    /// How long to wait for anvil to start listening.
    pub startup_timeout: Duration,
    /// How long to wait for a sent transaction to be mined.
    pub receipt_timeout: Duration,
    /// Further anvil flags, passed as they are.
    pub extra_args: Vec<String>,
}

impl Default for DevChainOptions {
    fn default() -> Self {
        Self {
            block_time: None,
            accounts: 10,
            balance_eth: 10_000,
            chain_id: 31_337,
            gas_limit: None,
            hardfork: Some("prague".to_string()),
            startup_timeout: Duration::from_secs(30),
            receipt_timeout: Duration::from_secs(120),
            extra_args: Vec::new(),
        }
    }
}

/// A running (or stopped, for restart) anvil with a signing provider for its dev accounts.
pub struct DevChain {
    binary: PathBuf,
    opts: Mutex<DevChainOptions>,
    port: u16,
    url: Url,
    provider: DynProvider,
    signers: Vec<PrivateKeySigner>,
    process: Mutex<Option<AnvilProcess>>,
    saved_state: Mutex<Option<Bytes>>,
    state_dir: PathBuf,
    attached: bool,
}

impl std::fmt::Debug for DevChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevChain")
            .field("url", &self.url.as_str())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// Dev account 0 of the public test mnemonic ("test test ... junk") that anvil and hardhat
/// prefund. A well-known test key: it only ever signs on local dev chains.
const DEFAULT_DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

impl DevChain {
    /// Starts anvil with default options (automine, 10 accounts, chain id 31337).
    pub async fn start() -> Result<Self, DevChainError> {
        Self::start_with(DevChainOptions::default()).await
    }

    /// Starts anvil with the given options on a free loopback port and waits until it answers.
    pub async fn start_with(opts: DevChainOptions) -> Result<Self, DevChainError> {
        let binary = process::find_anvil()?;
        let (process, started) = AnvilProcess::spawn(&binary, &opts, 0, None).await?;
        let url = Url::parse(&format!("http://127.0.0.1:{}", started.port))
            .map_err(|e| DevChainError::Invalid(e.to_string()))?;
        let chain = Self::build(binary, opts, url, started.signers, Some(process))?;
        chain.wait_ready().await?;
        Ok(chain)
    }

    /// Uses a dev node that is already running (anvil, or another node with anvil's `anvil_*`
    /// methods) instead of starting one. Transactions are signed with `key` (hex private key), or
    /// else with dev account 0 of the standard test mnemonic that anvil and hardhat prefund. The
    /// node is not stopped on drop, and [`Self::stop`]/[`Self::restart`] are refused.
    pub async fn attach(url: &str, key: Option<&str>) -> Result<Self, DevChainError> {
        let parsed =
            Url::parse(url).map_err(|e| DevChainError::Invalid(format!("RPC URL {url:?}: {e}")))?;
        let key = key.unwrap_or(DEFAULT_DEV_KEY);
        let signer = PrivateKeySigner::from_str(key.trim())
            .map_err(|e| DevChainError::Invalid(format!("dev private key: {e}")))?;
        let probe = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(parsed.clone());
        let chain_id = probe.get_chain_id().await?;
        let opts = DevChainOptions {
            chain_id,
            ..DevChainOptions::default()
        };
        let chain = Self::build(PathBuf::new(), opts, parsed, vec![signer], None)?;
        chain.wait_ready().await?;
        Ok(chain)
    }

    fn build(
        binary: PathBuf,
        opts: DevChainOptions,
        url: Url,
        signers: Vec<PrivateKeySigner>,
        process: Option<AnvilProcess>,
    ) -> Result<Self, DevChainError> {
        let attached = process.is_none();
        let mut signer_iter = signers.iter().cloned();
        let first = signer_iter
            .next()
            .ok_or(DevChainError::NoSigner { index: 0, count: 0 })?;
        let mut wallet = EthereumWallet::new(first);
        for signer in signer_iter {
            wallet.register_signer(signer);
        }
        // Simple (uncached) nonces: snapshots, reverts and restarts change nonces under us.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(wallet)
            .connect_http(url.clone())
            .erased();
        let port = url.port_or_known_default().unwrap_or(0);
        let state_dir = std::env::temp_dir().join(format!(
            "chainsync-devchain-{}-{}-{}",
            std::process::id(),
            port,
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        Ok(Self {
            binary,
            opts: Mutex::new(opts),
            port,
            url,
            provider,
            signers,
            process: Mutex::new(process),
            saved_state: Mutex::new(None),
            state_dir,
            attached,
        })
    }

    /// Whether this chain was attached to ([`Self::attach`]) rather than started.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// The HTTP JSON-RPC URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.url.as_str().trim_end_matches('/').to_string()
    }

    /// `host:port` of the node, for TCP-level tools such as [`RpcGate`].
    pub fn host_port(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or("127.0.0.1"),
            self.port
        )
    }

    /// The HTTP JSON-RPC URL as a parsed URL.
    pub fn http_url(&self) -> Url {
        self.url.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn chain_id(&self) -> u64 {
        self.options().chain_id
    }

    /// The options anvil runs with (block time reflects `set_block_time`).
    pub fn options(&self) -> DevChainOptions {
        self.opts.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// A provider that signs for every dev account (`from` picks the account; default: index 0).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Addresses of the prefunded dev accounts, in anvil's order.
    pub fn accounts(&self) -> Vec<Address> {
        self.signers.iter().map(|s| s.address()).collect()
    }

    /// The account that deploys contracts and mints (dev account 0).
    pub fn deployer(&self) -> Address {
        self.signers
            .first()
            .map(|s| s.address())
            .unwrap_or_default()
    }

    /// The private key of dev account `index`, e.g. to sign transactions elsewhere.
    pub fn signer(&self, index: usize) -> Result<PrivateKeySigner, DevChainError> {
        self.signers
            .get(index)
            .cloned()
            .ok_or(DevChainError::NoSigner {
                index,
                count: self.signers.len(),
            })
    }

    pub fn is_running(&self) -> bool {
        self.attached || self.process.lock().map(|p| p.is_some()).unwrap_or(false)
    }

    /// The last lines anvil printed, for diagnosing failures.
    pub fn logs(&self) -> Vec<String> {
        self.process
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(AnvilProcess::log_lines))
            .unwrap_or_default()
    }

    /// Stops anvil, keeping its state (blocks, logs, balances, nonces) for [`Self::restart`].
    /// Until then the URL refuses connections, as a crashed RPC node would.
    pub async fn stop(&self) -> Result<(), DevChainError> {
        if self.attached {
            return Err(DevChainError::Invalid(
                "an attached node is not stopped or restarted by chainsync".into(),
            ));
        }
        if !self.is_running() {
            return Ok(());
        }
        let state = self.provider.anvil_dump_state().await?;
        if let Ok(mut saved) = self.saved_state.lock() {
            *saved = Some(state);
        }
        let process = self.process.lock().ok().and_then(|mut p| p.take());
        if let Some(process) = process {
            process.kill();
        }
        Ok(())
    }

    /// Starts anvil again on the same port with the state saved by [`Self::stop`] (stopping it first
    /// if it is running). Block numbers and hashes, logs and balances are as they were.
    pub async fn restart(&self) -> Result<(), DevChainError> {
        self.stop().await?;
        let state = self.saved_state.lock().ok().and_then(|s| s.clone());
        let state_file = match state {
            Some(state) => Some(self.write_state(&state).await?),
            None => None,
        };
        let opts = self.options();
        let deadline = Instant::now() + opts.startup_timeout;
        // The port was just released; another process could hold it briefly, so retry a little.
        let process = loop {
            match AnvilProcess::spawn(&self.binary, &opts, self.port, state_file.as_deref()).await {
                Ok((process, _)) => break process,
                Err(DevChainError::Exited { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if let Ok(mut p) = self.process.lock() {
            *p = Some(process);
        }
        self.wait_ready().await
    }

    /// Writes the gzip state from `anvil_dumpState` as the JSON that `--load-state` reads.
    async fn write_state(&self, state: &Bytes) -> Result<PathBuf, DevChainError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| DevChainError::State { path, source }
        };
        tokio::fs::create_dir_all(&self.state_dir)
            .await
            .map_err(io(&self.state_dir))?;
        let gz = self.state_dir.join("state.json.gz");
        let json = self.state_dir.join("state.json");
        tokio::fs::write(&gz, state).await.map_err(io(&gz))?;
        let out = std::fs::File::create(&json).map_err(io(&json))?;
        let status = tokio::process::Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .stdout(out)
            .status()
            .await
            .map_err(io(&gz))?;
        if !status.success() {
            return Err(DevChainError::State {
                path: gz.display().to_string(),
                source: std::io::Error::other(format!("gzip -dc exited with {status}")),
            });
        }
        Ok(json)
    }

    async fn wait_ready(&self) -> Result<(), DevChainError> {
        let timeout = self.options().startup_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            match self.provider.get_chain_id().await {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Signs (for a dev account in `from`, default account 0), sends, and waits for the receipt;
    /// a reverted transaction is an error.
    pub async fn send(&self, tx: TransactionRequest) -> Result<TransactionReceipt, DevChainError> {
        let pending = self.provider.send_transaction(tx).await?;
        let hash = *pending.tx_hash();
        self.wait_receipt(hash).await
    }

    /// Waits until `hash` is mined and succeeded.
    pub async fn wait_receipt(&self, hash: TxHash) -> Result<TransactionReceipt, DevChainError> {
        let timeout = self.options().receipt_timeout;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            if let Some(receipt) = self.provider.get_transaction_receipt(hash).await? {
                if !receipt.status() {
                    return Err(DevChainError::Reverted { hash });
                }
                return Ok(receipt);
            }
            if Instant::now() >= deadline {
                return Err(DevChainError::NotMined {
                    hash,
                    after: timeout,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Sends a transaction from any address via anvil's impersonation (no key needed).
    pub async fn send_impersonated(
        &self,
        tx: TransactionRequest,
    ) -> Result<TransactionReceipt, DevChainError> {
        let from = tx
            .from
            .ok_or_else(|| DevChainError::Invalid("impersonated tx needs from".into()))?;
        self.provider.anvil_impersonate_account(from).await?;
        let hash = self
            .provider
            .anvil_send_impersonated_transaction(tx)
            .await?;
        self.wait_receipt(hash).await
    }

    /// A transaction request from dev account `index` to `to` with `input`.
    pub fn tx_from(
        &self,
        index: usize,
        to: Address,
        input: impl Into<Bytes>,
    ) -> Result<TransactionRequest, DevChainError> {
        let from = self.signer(index)?.address();
        Ok(TransactionRequest::default()
            .with_from(from)
            .with_to(to)
            .with_input(input.into()))
    }
}

impl Drop for DevChain {
    fn drop(&mut self) {
        if let Ok(mut process) = self.process.lock()
            && let Some(process) = process.take()
        {
            process.kill();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The token amount `units * 10^decimals`.
pub fn units(units: u64, decimals: u8) -> U256 {
    U256::from(units) * U256::from(10u64).pow(U256::from(decimals))
}
