//! chainsync: keeps an application's Postgres database in step with EVM chains.
//!
//! The `chainsync` binary's library: it wires the queue engine (crate `chainsync-engine`: how
//! work runs) and the job kinds (crate `chainsync-jobs`: what work exists) into the daemon, the
//! CLI, the HTTP API and configuration. It names no concrete kind.

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
#[cfg(feature = "dev")]
pub mod dev;
pub mod health;
pub mod http;
pub mod telemetry;

pub use chainsync_engine::{duration, queue, runtime, scheduler};
