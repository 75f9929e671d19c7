//! The result protocol of a job run: ok, retry with backoff, snooze, or fatal.

use std::time::Duration;

/// Why a job run did not succeed, and what the engine does about it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient failure: retried after the kind's exponential backoff; uses an attempt.
    #[error("{0}")]
    Retry(String),
    /// Not now (e.g. an RPC rate limit): run again after the delay; does not use an attempt.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
    /// Will never succeed (bad arguments, unknown token): straight to the dead letters.
    #[error("{0}")]
    Fatal(String),
}

impl JobError {
    pub fn retry(e: impl std::fmt::Display) -> Self {
        Self::Retry(e.to_string())
    }

    pub fn fatal(e: impl std::fmt::Display) -> Self {
        Self::Fatal(e.to_string())
    }

    /// Short class name stored with the error history.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Retry(_) => "retry",
            Self::Snooze(_) => "snooze",
            Self::Fatal(_) => "fatal",
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        // Database errors are transient from the job's point of view (connection lost, deadlock,
        // serialization failure); constraint bugs surface in the error history and exhaust.
        Self::Retry(format!("database: {e}"))
    }
}

impl From<serde_json::Error> for JobError {
    fn from(e: serde_json::Error) -> Self {
        Self::Fatal(format!("arguments: {e}"))
    }
}
