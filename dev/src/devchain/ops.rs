//! Contract deployment, token operations and chain controls (mining, snapshots, reorgs).

use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::anvil::{ReorgOptions, TransactionData};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::sol_types::SolCall;

use super::contracts::{
    MULTICALL3_ADDRESS, Multicall3, ReferralRegistry, RevertingToken, TestMultiToken, TestToken,
};
use super::{DevChain, DevChainError};

impl DevChain {
    async fn deploy(&self, code: Bytes) -> Result<Address, DevChainError> {
        let tx = TransactionRequest::default()
            .with_from(self.deployer())
            .with_deploy_code(code);
        let receipt = self.send(tx).await?;
        receipt.contract_address.ok_or_else(|| {
            DevChainError::Invalid("deployment receipt has no contract address".into())
        })
    }

    /// Deploys `TestToken` (ERC20 with open `mint`, `mintMany`, `transferMany`, `burn`).
    pub async fn deploy_token(
        &self,
        name: &str,
        symbol: &str,
        decimals: u8,
    ) -> Result<Address, DevChainError> {
        let code = TestToken::deploy_builder(
            &self.provider,
            name.to_string(),
            symbol.to_string(),
            decimals,
        )
        .calldata()
        .clone();
        self.deploy(code).await
    }

    /// Deploys `TestMultiToken` (minimal ERC1155 with open minting).
    pub async fn deploy_multi_token(&self) -> Result<Address, DevChainError> {
        self.deploy(TestMultiToken::BYTECODE.clone()).await
    }

    /// Deploys `ReferralRegistry` (emits `ReferralRegistered(user, referrer)`).
    pub async fn deploy_referral(&self) -> Result<Address, DevChainError> {
        self.deploy(ReferralRegistry::BYTECODE.clone()).await
    }

    /// Deploys `RevertingToken`, whose `balanceOf` always reverts.
    pub async fn deploy_reverting_token(&self) -> Result<Address, DevChainError> {
        self.deploy(RevertingToken::BYTECODE.clone()).await
    }

    /// Puts the Multicall3 runtime code at its canonical address
    /// 0xcA11bde05977b3631167028862bE2a173976CA11 (`anvil_setCode`).
    pub async fn install_multicall3(&self) -> Result<Address, DevChainError> {
        self.provider
            .anvil_set_code(MULTICALL3_ADDRESS, Multicall3::DEPLOYED_BYTECODE.clone())
            .await?;
        Ok(MULTICALL3_ADDRESS)
    }

    /// Mints `amount` of `token` to `to` from the deployer.
    pub async fn mint(
        &self,
        token: Address,
        to: Address,
        amount: U256,
    ) -> Result<TransactionReceipt, DevChainError> {
        let input = TestToken::mintCall { to, amount }.abi_encode();
        self.send(self.tx_from(0, token, input)?).await
    }

    /// Transfers `amount` of `token` from dev account `from_signer_index` to `to`.
    pub async fn transfer(
        &self,
        token: Address,
        from_signer_index: usize,
        to: Address,
        amount: U256,
    ) -> Result<TransactionReceipt, DevChainError> {
        let input = TestToken::transferCall { to, amount }.abi_encode();
        self.send(self.tx_from(from_signer_index, token, input)?)
            .await
    }

    /// Transfers `amount` of `token` from any holder (impersonated; the holder is given ether for
    /// gas if it has none).
    pub async fn transfer_from_holder(
        &self,
        token: Address,
        from: Address,
        to: Address,
        amount: U256,
    ) -> Result<TransactionReceipt, DevChainError> {
        self.ensure_gas_money(from).await?;
        let input = TestToken::transferCall { to, amount }.abi_encode();
        let tx = TransactionRequest::default()
            .with_from(from)
            .with_to(token)
            .with_input(input);
        self.send_impersonated(tx).await
    }

    pub(super) async fn ensure_gas_money(&self, who: Address) -> Result<(), DevChainError> {
        let gas_money = U256::from(10u64).pow(U256::from(18u64));
        if self.provider.get_balance(who).await? < gas_money {
            self.provider.anvil_set_balance(who, gas_money).await?;
        }
        Ok(())
    }

    /// `balanceOf(holder)` of an ERC20 at the latest block.
    pub async fn balance_of(&self, token: Address, holder: Address) -> Result<U256, DevChainError> {
        Ok(TestToken::new(token, &self.provider)
            .balanceOf(holder)
            .call()
            .await?)
    }

    /// Native balance in wei at the latest block.
    pub async fn eth_balance(&self, holder: Address) -> Result<U256, DevChainError> {
        Ok(self.provider.get_balance(holder).await?)
    }

    /// Sends `wei` of ether from dev account `from_signer_index` to `to` (a real transaction).
    pub async fn send_eth(
        &self,
        from_signer_index: usize,
        to: Address,
        wei: U256,
    ) -> Result<TransactionReceipt, DevChainError> {
        let tx = self
            .tx_from(from_signer_index, to, Bytes::new())?
            .with_value(wei);
        self.send(tx).await
    }

    /// Sets a native balance directly (`anvil_setBalance`).
    pub async fn set_eth_balance(&self, who: Address, wei: U256) -> Result<(), DevChainError> {
        Ok(self.provider.anvil_set_balance(who, wei).await?)
    }

    /// ERC1155 `mint(to, id, amount)` on a `TestMultiToken` (emits `TransferSingle`).
    pub async fn mint_1155(
        &self,
        token: Address,
        to: Address,
        id: U256,
        amount: U256,
    ) -> Result<TransactionReceipt, DevChainError> {
        let input = TestMultiToken::mintCall { to, id, amount }.abi_encode();
        self.send(self.tx_from(0, token, input)?).await
    }

    /// ERC1155 `mintBatch(to, ids, amounts)` (emits `TransferBatch`).
    pub async fn mint_1155_batch(
        &self,
        token: Address,
        to: Address,
        ids: Vec<U256>,
        amounts: Vec<U256>,
    ) -> Result<TransactionReceipt, DevChainError> {
        let input = TestMultiToken::mintBatchCall { to, ids, amounts }.abi_encode();
        self.send(self.tx_from(0, token, input)?).await
    }

    /// ERC1155 `balanceOf(account, id)`.
    pub async fn balance_of_1155(
        &self,
        token: Address,
        account: Address,
        id: U256,
    ) -> Result<U256, DevChainError> {
        Ok(TestMultiToken::new(token, &self.provider)
            .balanceOf(account, id)
            .call()
            .await?)
    }

    /// `ReferralRegistry.registerFor(user, referrer)` (emits `ReferralRegistered`).
    pub async fn register_referral(
        &self,
        registry: Address,
        user: Address,
        referrer: Address,
    ) -> Result<TransactionReceipt, DevChainError> {
        let input = ReferralRegistry::registerForCall { user, referrer }.abi_encode();
        self.send(self.tx_from(0, registry, input)?).await
    }

    /// Latest block number.
    pub async fn block_number(&self) -> Result<u64, DevChainError> {
        Ok(self.provider.get_block_number().await?)
    }

    /// Mines `n` empty blocks at once.
    pub async fn mine(&self, n: u64) -> Result<(), DevChainError> {
        Ok(self.provider.anvil_mine(Some(n), None).await?)
    }

    /// `evm_snapshot`: returns an id for [`Self::revert`].
    pub async fn snapshot(&self) -> Result<U256, DevChainError> {
        Ok(self.provider.anvil_snapshot().await?)
    }

    /// `evm_revert` to a snapshot; true if it existed.
    pub async fn revert(&self, id: U256) -> Result<bool, DevChainError> {
        Ok(self.provider.anvil_revert(id).await?)
    }

    /// `anvil_reorg`: replaces the last `depth` blocks with new ones holding `txs`, each paired with
    /// the offset (0..depth) of the new block it goes into. Block hashes from the reorged height on
    /// change; the chain is as long as before.
    pub async fn reorg(
        &self,
        depth: u64,
        txs: Vec<(TransactionRequest, u64)>,
    ) -> Result<(), DevChainError> {
        let tx_block_pairs = txs
            .into_iter()
            .map(|(tx, block)| (TransactionData::JSON(tx), block))
            .collect();
        Ok(self
            .provider
            .anvil_reorg(ReorgOptions {
                depth,
                tx_block_pairs,
            })
            .await?)
    }

    /// `anvil_rollback`: drops the last `depth` blocks.
    pub async fn rollback(&self, depth: u64) -> Result<(), DevChainError> {
        Ok(self.provider.anvil_rollback(Some(depth)).await?)
    }

    /// Interval mining every `block_time` (whole seconds, at least 1), or automine with `None`.
    /// Kept across [`Self::restart`].
    pub async fn set_block_time(&self, block_time: Option<Duration>) -> Result<(), DevChainError> {
        match block_time {
            Some(t) => {
                self.provider
                    .anvil_set_interval_mining(t.as_secs().max(1))
                    .await?;
            }
            None => {
                self.provider.anvil_set_interval_mining(0).await?;
                self.provider.anvil_set_auto_mine(true).await?;
            }
        }
        if let Ok(mut opts) = self.opts.lock() {
            opts.block_time = block_time.map(|t| Duration::from_secs(t.as_secs().max(1)));
        }
        Ok(())
    }

    /// Turns automatic mining of each transaction on or off (off: transactions wait in the pool
    /// until [`Self::mine`]).
    pub async fn set_automine(&self, enabled: bool) -> Result<(), DevChainError> {
        Ok(self.provider.anvil_set_auto_mine(enabled).await?)
    }
}
