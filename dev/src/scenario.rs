//! A chain scenario in one call: anvil with Multicall3, one `TestToken` minted to N seeded
//! holders, and the config text that names the chain and the token. The tests, the demo and the
//! benchmarks start from it and add what they need (more tokens, transfers, config keys).
//!
//! ```no_run
//! # async fn demo() -> Result<(), chainsync_dev::devchain::DevChainError> {
//! use chainsync_dev::scenario::TokenChain;
//!
//! let s = TokenChain::builder("TST").holders(1_000).start().await?;
//! // Lines written after `chain_toml()` belong to its `[[chains]]` table.
//! let config = format!("{}confirmations = 0\n{}", s.chain_toml(), s.token_toml());
//! # let _ = config;
//! # Ok(()) }
//! ```

use alloy::primitives::{Address, U256};

use crate::devchain::{self, DevChain, DevChainError, DevChainOptions};

/// How to build a [`TokenChain`]; from [`TokenChain::builder`].
#[derive(Clone, Debug)]
pub struct TokenChainBuilder {
    options: DevChainOptions,
    chain_name: String,
    name: String,
    symbol: String,
    decimals: u8,
    holders: usize,
    seed: u64,
    max_units: u64,
}

impl TokenChainBuilder {
    /// The token's name (default: its symbol).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn decimals(mut self, decimals: u8) -> Self {
        self.decimals = decimals;
        self
    }

    /// Holders to mint to (default none).
    pub fn holders(mut self, n: usize) -> Self {
        self.holders = n;
        self
    }

    /// Seed of the holders' addresses and amounts (default 42): same seed, same holders.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Each holder gets `1..=max_units` whole tokens' worth in base units (default 1000 tokens).
    pub fn max_units(mut self, units: u64) -> Self {
        self.max_units = units;
        self
    }

    /// The chain's `name` in the config text (default `anvil`).
    pub fn chain_name(mut self, name: &str) -> Self {
        self.chain_name = name.to_string();
        self
    }

    /// How anvil is started (default: [`DevChainOptions::default`]).
    pub fn options(mut self, options: DevChainOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts anvil, then builds the scenario on it.
    pub async fn start(self) -> Result<TokenChain, DevChainError> {
        let chain = DevChain::start_with(self.options.clone()).await?;
        self.on(chain).await
    }

    /// Builds the scenario on a chain already running (started or attached).
    pub async fn on(self, chain: DevChain) -> Result<TokenChain, DevChainError> {
        chain.install_multicall3().await?;
        let token = chain
            .deploy_token(&self.name, &self.symbol, self.decimals)
            .await?;
        let holders = devchain::random_holders(
            self.seed,
            self.holders,
            devchain::units(self.max_units, self.decimals),
        );
        if !holders.is_empty() {
            chain.mint_many(token, &holders).await?;
        }
        Ok(TokenChain {
            chain,
            token,
            symbol: self.symbol,
            decimals: self.decimals,
            chain_name: self.chain_name,
            holders,
        })
    }
}

/// A running chain with Multicall3 and a minted token.
#[derive(Debug)]
pub struct TokenChain {
    pub chain: DevChain,
    /// The `TestToken` contract.
    pub token: Address,
    pub symbol: String,
    pub decimals: u8,
    /// The chain's `name` in the config text.
    pub chain_name: String,
    /// Every holder minted to, with the amount minted.
    pub holders: Vec<(Address, U256)>,
}

impl TokenChain {
    /// A builder for a token `symbol` with 18 decimals and no holders, on a default anvil.
    pub fn builder(symbol: &str) -> TokenChainBuilder {
        TokenChainBuilder {
            options: DevChainOptions::default(),
            chain_name: "anvil".to_string(),
            name: symbol.to_string(),
            symbol: symbol.to_string(),
            decimals: 18,
            holders: 0,
            seed: 42,
            max_units: 1000,
        }
    }

    pub fn chain_id(&self) -> u64 {
        self.chain.chain_id()
    }

    /// The token's address as config and the database write it (`0x` + 40 lowercase hex).
    pub fn token_hex(&self) -> String {
        format!("{:#x}", self.token)
    }

    /// The holders' addresses as config and the database write them.
    pub fn holder_addresses(&self) -> Vec<String> {
        self.holders
            .iter()
            .map(|(a, _)| format!("{a:#x}"))
            .collect()
    }

    /// A `[[chains]]` table for this chain at its own RPC URL. Ends with the table's last key,
    /// so lines appended to it are keys of the same table.
    pub fn chain_toml(&self) -> String {
        self.chain_toml_at(&self.chain.url())
    }

    /// A `[[chains]]` table for this chain reached at `rpc_url` (a proxy or a gate in front).
    pub fn chain_toml_at(&self, rpc_url: &str) -> String {
        format!(
            "[[chains]]\nchain_id = {}\nname = \"{}\"\nrpc_urls = [\"{rpc_url}\"]\n",
            self.chain_id(),
            self.chain_name
        )
    }

    /// A `[[tokens]]` table for the token (an ERC20).
    pub fn token_toml(&self) -> String {
        format!(
            "[[tokens]]\nchain_id = {}\nsymbol = \"{}\"\naddress = \"{}\"\ndecimals = {}\nasset_class = \"erc20\"\n",
            self.chain_id(),
            self.symbol,
            self.token_hex(),
            self.decimals
        )
    }

    /// The chain and the token: what a config needs to sync the token's balances.
    pub fn config_toml(&self) -> String {
        format!("{}{}", self.chain_toml(), self.token_toml())
    }
}
