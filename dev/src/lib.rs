//! chainsync-dev: development tooling, outside the production code path. The demo and the
//! benchmarks (the `chainsync` binary's `dev` feature) and the tests use it.
//!
//! - [`devchain`]: a real local EVM chain (anvil) with the test contracts and Multicall3;
//! - [`scratch`]: throwaway databases.

pub mod devchain;
pub mod scratch;
