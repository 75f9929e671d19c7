//! The result protocol of a job run (ok, retry with backoff, snooze, or fatal) and the error of
//! input refused before anything is written ([`Invalid`]).

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

/// Input refused before anything was written (settings, schedules, a job's arguments): which
/// field, as a dotted path such as `worker.lease` or `schedule[2].cron`, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct Invalid {
    pub field: Option<String>,
    pub message: String,
}

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    /// An error about `field`.
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The same error seen from a parent: `prefix` goes in front of the field path.
    pub fn within(self, prefix: &str) -> Self {
        let field = match self.field {
            Some(f) if f.starts_with('[') => format!("{prefix}{f}"),
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_string(),
        };
        Self {
            field: Some(field),
            message: self.message,
        }
    }

    fn render(&self) -> String {
        match &self.field {
            Some(f) => format!("{f}: {}", self.message),
            None => self.message.clone(),
        }
    }
}
