//! The dev chain on a real anvil: contracts deploy, 2,000 holders are minted and read back through
//! Multicall3 `aggregate3`, transfers move balances, and stop/restart keeps the chain.
//! Fails (does not skip) when anvil is missing.

use std::time::Instant;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use chainsync_dev::devchain::contracts::{
    ReferralRegistry, RevertingToken, TestMultiToken, TestToken,
};
use chainsync_dev::devchain::{
    DevChain, DevChainOptions, MULTICALL3_ADDRESS, holder_addresses, random_holders, units,
};

async fn start() -> DevChain {
    match DevChain::start().await {
        Ok(chain) => chain,
        Err(e) => panic!("the dev chain needs anvil (scripts/install-deps.sh installs it): {e}"),
    }
}

/// Reads `balanceOf` for every holder through the canonical Multicall3 address in batches.
async fn multicall_balances(
    chain: &DevChain,
    token: Address,
    holders: &[Address],
    block: u64,
) -> Vec<Result<U256, String>> {
    let provider = chain.provider();
    let erc20 = TestToken::new(token, provider);
    let mut out = Vec::with_capacity(holders.len());
    for part in holders.chunks(1000) {
        let mut call = provider
            .multicall()
            .dynamic::<TestToken::balanceOfCall>()
            .block(block.into());
        for holder in part {
            call = call.add_dynamic(erc20.balanceOf(*holder));
        }
        let results = call
            .aggregate3()
            .await
            .expect("aggregate3 through Multicall3");
        out.extend(results.into_iter().map(|r| r.map_err(|f| format!("{f:?}"))));
    }
    out
}

#[tokio::test]
async fn devchain_end_to_end() {
    let chain = start().await;
    assert_eq!(chain.chain_id(), 31_337);
    assert_eq!(chain.provider().get_chain_id().await.unwrap(), 31_337);
    assert_eq!(chain.accounts().len(), 10);

    assert_eq!(
        chain.install_multicall3().await.unwrap(),
        MULTICALL3_ADDRESS
    );
    assert!(
        !chain
            .provider()
            .get_code_at(MULTICALL3_ADDRESS)
            .await
            .unwrap()
            .is_empty()
    );

    let token = chain.deploy_token("Test Token", "TST", 6).await.unwrap();
    let erc20 = TestToken::new(token, chain.provider());
    assert_eq!(erc20.decimals().call().await.unwrap(), 6);
    assert_eq!(erc20.symbol().call().await.unwrap(), "TST");
    let multi = chain.deploy_multi_token().await.unwrap();
    let referral = chain.deploy_referral().await.unwrap();
    let reverting = chain.deploy_reverting_token().await.unwrap();

    // 2,000 holders with real Transfer events.
    let holders = random_holders(42, 2_000, units(1_000_000, 6));
    let started = Instant::now();
    let minted = chain.mint_many_chunked(token, &holders, 500).await.unwrap();
    println!(
        "minted {} holders in {} txs, {:?}",
        holders.len(),
        minted.tx_hashes.len(),
        started.elapsed()
    );
    assert_eq!(minted.tx_hashes.len(), 4);
    let filter = Filter::new()
        .address(token)
        .event_signature(TestToken::Transfer::SIGNATURE_HASH)
        .from_block(minted.first_block)
        .to_block(minted.last_block);
    let logs = chain.provider().get_logs(&filter).await.unwrap();
    assert_eq!(logs.len(), holders.len());
    let total: U256 = holders.iter().map(|(_, v)| *v).sum();
    assert_eq!(erc20.totalSupply().call().await.unwrap(), total);

    // Every balance read back through aggregate3 equals what was minted.
    let addresses: Vec<Address> = holders.iter().map(|(a, _)| *a).collect();
    let block = chain.block_number().await.unwrap();
    let balances = multicall_balances(&chain, token, &addresses, block).await;
    assert_eq!(balances.len(), holders.len());
    for ((holder, expected), got) in holders.iter().zip(&balances) {
        assert_eq!(got.as_ref().ok(), Some(expected), "balance of {holder}");
    }

    // A reverting token fails its own calls only; the batch still answers.
    let provider = chain.provider();
    let bad = RevertingToken::new(reverting, provider);
    let mixed = provider
        .multicall()
        .dynamic::<TestToken::balanceOfCall>()
        .add_dynamic(erc20.balanceOf(addresses[0]))
        .add_call_dynamic(
            alloy::providers::CallItem::<TestToken::balanceOfCall>::new(
                reverting,
                bad.balanceOf(addresses[0]).calldata().clone(),
            )
            .allow_failure(true),
        )
        .aggregate3()
        .await
        .unwrap();
    assert_eq!(mixed[0].as_ref().ok(), Some(&holders[0].1));
    assert!(mixed[1].is_err());
    assert!(chain.balance_of(reverting, addresses[0]).await.is_err());
    // Multicall3 helpers answer like the canonical contract.
    let (number, eth) = provider
        .multicall()
        .get_block_number()
        .get_eth_balance(chain.deployer())
        .aggregate()
        .await
        .unwrap();
    assert!(number >= U256::from(block));
    assert!(eth > U256::ZERO);

    // A transfer between dev accounts and one from an impersonated holder.
    let [a0, a1] = [chain.accounts()[0], chain.accounts()[1]];
    chain.mint(token, a0, units(100, 6)).await.unwrap();
    chain.transfer(token, 0, a1, units(40, 6)).await.unwrap();
    assert_eq!(chain.balance_of(token, a0).await.unwrap(), units(60, 6));
    assert_eq!(chain.balance_of(token, a1).await.unwrap(), units(40, 6));
    let (h0, v0) = holders[0];
    let (h1, v1) = holders[1];
    let moved = chain
        .holder_transfers(token, &[(h0, h1, v0)])
        .await
        .unwrap();
    assert_eq!(moved.tx_hashes.len(), 1);
    assert_eq!(chain.balance_of(token, h0).await.unwrap(), U256::ZERO);
    assert_eq!(chain.balance_of(token, h1).await.unwrap(), v0 + v1);
    // More than the balance reverts.
    assert!(chain.transfer(token, 1, a0, units(41, 6)).await.is_err());

    // ERC1155 and the referral registry emit their events.
    let id = U256::from(7u64);
    chain
        .mint_1155(multi, a1, id, U256::from(3u64))
        .await
        .unwrap();
    assert_eq!(
        chain.balance_of_1155(multi, a1, id).await.unwrap(),
        U256::from(3u64)
    );
    let receipt = chain
        .mint_1155_batch(
            multi,
            a0,
            vec![U256::from(1u64), id],
            vec![U256::from(5u64), U256::from(6u64)],
        )
        .await
        .unwrap();
    assert!(
        receipt
            .decoded_log::<TestMultiToken::TransferBatch>()
            .is_some()
    );
    let receipt = chain.register_referral(referral, h1, a0).await.unwrap();
    let event = receipt
        .decoded_log::<ReferralRegistry::ReferralRegistered>()
        .unwrap();
    assert_eq!((event.user, event.referrer), (h1, a0));
    assert!(
        chain.register_referral(referral, h1, a1).await.is_err(),
        "registered twice"
    );

    // Snapshot/revert and mining.
    let before = chain.block_number().await.unwrap();
    let snap = chain.snapshot().await.unwrap();
    chain.transfer(token, 0, a1, units(1, 6)).await.unwrap();
    chain.mine(5).await.unwrap();
    assert_eq!(chain.block_number().await.unwrap(), before + 6);
    assert!(chain.revert(snap).await.unwrap());
    assert_eq!(chain.block_number().await.unwrap(), before);
    assert_eq!(chain.balance_of(token, a1).await.unwrap(), units(40, 6));

    // Stop: the RPC is gone. Restart: same port, same blocks, same balances.
    let head = chain.block_number().await.unwrap();
    let head_hash = chain
        .provider()
        .get_block_by_number(head.into())
        .await
        .unwrap()
        .unwrap()
        .header
        .hash;
    let url = chain.url();
    chain.stop().await.unwrap();
    assert!(!chain.is_running());
    assert!(
        chain.provider().get_block_number().await.is_err(),
        "stopped chain still answers"
    );
    chain.restart().await.unwrap();
    assert_eq!(chain.url(), url);
    assert_eq!(chain.block_number().await.unwrap(), head);
    let hash = chain
        .provider()
        .get_block_by_number(head.into())
        .await
        .unwrap()
        .unwrap()
        .header
        .hash;
    assert_eq!(hash, head_hash);
    assert_eq!(chain.balance_of(token, h1).await.unwrap(), v0 + v1);
    let logs = chain.provider().get_logs(&filter).await.unwrap();
    assert_eq!(logs.len(), holders.len(), "logs survive a restart");
    let again = multicall_balances(&chain, token, &addresses[..10], head).await;
    assert_eq!(again[0], Ok(U256::ZERO));
    assert_eq!(again[1], Ok(v0 + v1));
    assert_eq!(again[2..], balances[2..10]);
    // And it keeps working: nonces continue.
    chain.transfer(token, 1, a0, units(1, 6)).await.unwrap();
    assert_eq!(chain.balance_of(token, a1).await.unwrap(), units(39, 6));
}

#[tokio::test]
async fn reorg_replaces_blocks() {
    let chain = start().await;
    let token = chain.deploy_token("Reorg", "RG", 18).await.unwrap();
    let holder = holder_addresses(9, 1)[0];
    chain.mint(token, holder, U256::from(5u64)).await.unwrap();
    chain.mine(3).await.unwrap();
    let head = chain.block_number().await.unwrap();
    let old = chain
        .provider()
        .get_block_by_number(head.into())
        .await
        .unwrap()
        .unwrap()
        .header
        .hash;
    let tx = chain
        .tx_from(
            0,
            token,
            alloy::sol_types::SolCall::abi_encode(&TestToken::mintCall {
                to: holder,
                amount: U256::from(2u64),
            }),
        )
        .unwrap();
    chain.reorg(2, vec![(tx, 0)]).await.unwrap();
    assert_eq!(chain.block_number().await.unwrap(), head);
    let new = chain
        .provider()
        .get_block_by_number(head.into())
        .await
        .unwrap()
        .unwrap()
        .header
        .hash;
    assert_ne!(old, new);
    assert_eq!(
        chain.balance_of(token, holder).await.unwrap(),
        U256::from(7u64)
    );
}

#[tokio::test]
async fn interval_mining_and_many_accounts() {
    let opts = DevChainOptions {
        block_time: Some(std::time::Duration::from_secs(1)),
        accounts: 50,
        ..DevChainOptions::default()
    };
    let chain = DevChain::start_with(opts)
        .await
        .expect("anvil with interval mining");
    assert_eq!(chain.accounts().len(), 50);
    let token = chain.deploy_token("Slow", "SLW", 18).await.unwrap();
    let holders = random_holders(3, 600, U256::from(1_000u64));
    let minted = chain.mint_many(token, &holders).await.unwrap();
    assert_eq!(minted.tx_hashes.len(), 1);
    assert_eq!(
        chain.balance_of(token, holders[599].0).await.unwrap(),
        holders[599].1
    );
    chain
        .transfer(token, 49, holders[0].0, U256::ZERO)
        .await
        .unwrap();

    // Back to automine: a transfer is mined at once, in a block of its own.
    chain.set_block_time(None).await.unwrap();
    assert_eq!(chain.options().block_time, None);
    let head = chain.block_number().await.unwrap();
    let started = Instant::now();
    chain
        .transfer(token, 1, holders[1].0, U256::ZERO)
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    assert_eq!(chain.block_number().await.unwrap(), head + 1);
}

#[tokio::test]
async fn holder_transfers_match_a_model() {
    let chain = start().await;
    let token = chain.deploy_token("Model", "MDL", 18).await.unwrap();
    let holders = random_holders(11, 30, U256::from(1_000u64));
    chain.mint_many(token, &holders).await.unwrap();
    let mut model: std::collections::HashMap<Address, U256> = holders.iter().copied().collect();
    // Chained transfers: several from the same sender, some receivers sending on later.
    let mut transfers = Vec::new();
    for i in 0..120usize {
        let (from, _) = holders[(i * 7) % holders.len()];
        let (to, _) = holders[(i * 13 + 5) % holders.len()];
        let amount = U256::from(1 + (i % 3) as u64);
        if from == to || model[&from] < amount {
            continue;
        }
        *model.get_mut(&from).unwrap() -= amount;
        *model.get_mut(&to).unwrap() += amount;
        transfers.push((from, to, amount));
    }
    assert!(transfers.len() > 100);
    let outcome = chain.holder_transfers(token, &transfers).await.unwrap();
    assert_eq!(outcome.tx_hashes.len(), transfers.len());
    assert!(
        outcome.last_block - outcome.first_block <= 1,
        "mined in few blocks"
    );
    for (holder, expected) in &model {
        assert_eq!(
            chain.balance_of(token, *holder).await.unwrap(),
            *expected,
            "{holder}"
        );
    }
    // Automine is back on afterwards: a plain transfer is mined at once.
    let head = chain.block_number().await.unwrap();
    chain
        .transfer(token, 0, holders[0].0, U256::ZERO)
        .await
        .unwrap();
    assert_eq!(chain.block_number().await.unwrap(), head + 1);
}
