//! Domain settings the jobs read: chains, tokens, tracking, thresholds. Parsed by the binary's
//! config loader (file → env → flags) and validated here so every error names its key.

use serde::{Deserialize, Serialize};

/// The job-facing part of the configuration, flattened into the top level of the config file.
/// (No `deny_unknown_fields` here: the loader rejects unknown top-level keys itself. Every field
/// must have `#[serde(default)]` and serialize, so the loader can list the known keys.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DomainConfig {
    #[serde(default)]
    pub chains: Vec<ChainConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One EVM chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub chain_id: u64,
    pub name: String,
    /// One or more RPC URLs; later ones are fallbacks.
    pub rpc_urls: Vec<String>,
    #[serde(default = "default_confirmations")]
    pub confirmations: u64,
}

fn default_confirmations() -> u64 {
    12
}

/// One tracked token (or the native coin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub chain_id: u64,
    pub symbol: String,
    /// `None` for the chain's native coin.
    #[serde(default)]
    pub address: Option<String>,
    pub decimals: u8,
    pub asset_class: AssetClass,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AssetClass {
    Native,
    Major,
    Erc20,
    Nft,
}

impl DomainConfig {
    /// Checks cross-references; errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, c) in self.chains.iter().enumerate() {
            if c.rpc_urls.is_empty() {
                return Err(format!(
                    "chains[{i}].rpc_urls: at least one URL is required"
                ));
            }
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if !self.chains.iter().any(|c| c.chain_id == t.chain_id) {
                return Err(format!(
                    "tokens[{i}].chain_id: chain {} is not configured",
                    t.chain_id
                ));
            }
        }
        Ok(())
    }
}
