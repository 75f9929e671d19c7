//! One file per job kind.

pub mod noop;
