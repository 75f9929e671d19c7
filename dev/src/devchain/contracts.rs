//! Bindings for the test contracts in `contracts/src`, generated from the checked-in artifacts in
//! `contracts/out` (rebuilt by `scripts/build-contracts.sh`).

#![allow(missing_docs, clippy::too_many_arguments)]

use alloy::primitives::{Address, address};
use alloy::sol;

/// The canonical Multicall3 address, the same on every chain.
pub const MULTICALL3_ADDRESS: Address = address!("0xcA11bde05977b3631167028862bE2a173976CA11");

// `include_str!` makes cargo rebuild this module when an artifact changes; `sol!` reads the same
// files for the ABI and bytecode.
const _ARTIFACTS: [&str; 5] = [
    include_str!("../../../contracts/out/TestToken.json"),
    include_str!("../../../contracts/out/TestMultiToken.json"),
    include_str!("../../../contracts/out/ReferralRegistry.json"),
    include_str!("../../../contracts/out/RevertingToken.json"),
    include_str!("../../../contracts/out/Multicall3.json"),
];

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    TestToken,
    "../contracts/out/TestToken.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    TestMultiToken,
    "../contracts/out/TestMultiToken.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    ReferralRegistry,
    "../contracts/out/ReferralRegistry.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    RevertingToken,
    "../contracts/out/RevertingToken.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Multicall3,
    "../contracts/out/Multicall3.json"
);
