//! One file per job kind.

pub mod backfill_window;
pub mod check_pending_tx;
pub mod compute_points;
pub mod deliver_alert;
pub mod ingest_events;
pub mod noop;
pub mod reconcile_chain;
pub mod sync_balances;
pub mod sync_user_balance;
