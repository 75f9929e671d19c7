//! The test kit: one module tree shared by every integration test file (`mod common;`).
//!
//! - scratch databases: each test gets its own, migrated, from
//!   `#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]`; [`db`] adds its URL (for child
//!   processes and configs), a pool of one's own on it, an [`App`](chainsync::app::App) over it,
//!   and `count(pool, sql)`;
//! - [`wait`]: waiting for a condition with a deadline that fails with what was awaited and what
//!   was last seen (tests have no unbounded loops);
//! - [`pgbouncer`]: a private PgBouncer in transaction mode in front of a server;
//! - [`chain`]: anvil with Multicall3 and a token minted to N holders, and its config text;
//! - [`running`]: the daemon's workers and live ingestion in-process;
//! - [`timeline`]: a token's balance history and points as its Transfer logs tell them, and as
//!   stored.
//!
//! Each test file uses a part of the kit; the rest is dead code there.
#![allow(dead_code, unused_imports)]

pub mod chain;
pub mod db;
pub mod pgbouncer;
pub mod running;
pub mod timeline;
pub mod wait;

pub use chain::{TokenChain, track_holders};
pub use db::{app, count, db_url, own_pool, try_count};
pub use wait::{wait, wait_count, wait_for};
