//! chainsync: keeps an application's Postgres database in step with EVM chains.
//!
//! HOW work runs lives here: the queue engine ([`queue`]), the worker runtime on apalis
//! ([`runtime`]), configuration, telemetry and the CLI. WHAT work exists lives in the
//! `chainsync-jobs` crate.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod devchain;
pub mod health;
pub mod http;
pub mod http_bench;
pub mod ingest_bench;
pub mod queue;
pub mod runtime;
pub mod scheduler;
pub mod sync_bench;
pub mod telemetry;
