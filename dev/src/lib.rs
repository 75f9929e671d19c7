//! chainsync-dev: development tooling, outside the production code path. The demo and the
//! benchmarks (the `chainsync` binary's `dev` feature) and the tests use it.
//!
//! - [`devchain`]: a real local EVM chain (anvil) with the test contracts and Multicall3;
//! - [`scenario`]: a chain with Multicall3 and a token minted to N holders, and its config text;
//! - [`scratch`]: throwaway databases;
//! - [`tron_standin`]: java-tron's JSON-RPC in front of anvil, for TRON chains.

pub mod devchain;
pub mod scenario;
pub mod scratch;
pub mod tron_standin;
