//! The result protocol of a job run (ok, retry with backoff, snooze, or fatal) and the error of
//! input refused before anything is written ([`Invalid`]).

use std::time::Duration;

/// The underlying error a job failure keeps as its cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a job run did not succeed, and what the engine does about it.
///
/// `Retry` and `Fatal` carry a message and, when the failure came from another error (an RPC
/// call, a query), that error as their [`source`](std::error::Error::source), typed, for code
/// that looks into it. They display as the message followed by every cause, `"msg: cause:
/// cause"` ([`JobError::report`]): the text logs show and the error history and the dead letters
/// store.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient failure: retried after the kind's exponential backoff; uses an attempt.
    #[error("{}", with_causes(.message, .source))]
    Retry {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Not now (e.g. an RPC rate limit): run again after the delay; does not use an attempt.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
    /// Will never succeed (bad arguments, unknown token): straight to the dead letters.
    #[error("{}", with_causes(.message, .source))]
    Fatal {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl JobError {
    /// A transient failure described by `e` (no cause kept).
    pub fn retry(e: impl std::fmt::Display) -> Self {
        Self::Retry {
            message: e.to_string(),
            source: None,
        }
    }

    /// A permanent failure described by `e` (no cause kept).
    pub fn fatal(e: impl std::fmt::Display) -> Self {
        Self::Fatal {
            message: e.to_string(),
            source: None,
        }
    }

    /// A transient failure: what was being done (`context`) and the error that stopped it.
    pub fn retry_from(context: impl std::fmt::Display, source: impl Into<BoxError>) -> Self {
        Self::Retry {
            message: context.to_string(),
            source: Some(source.into()),
        }
    }

    /// A permanent failure: what was being done (`context`) and the error that stopped it.
    pub fn fatal_from(context: impl std::fmt::Display, source: impl Into<BoxError>) -> Self {
        Self::Fatal {
            message: context.to_string(),
            source: Some(source.into()),
        }
    }

    /// Short class name stored with the error history.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Retry { .. } => "retry",
            Self::Snooze(_) => "snooze",
            Self::Fatal { .. } => "fatal",
        }
    }

    /// The message without its causes (`None` for a snooze).
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Retry { message, .. } | Self::Fatal { message, .. } => Some(message),
            Self::Snooze(_) => None,
        }
    }

    /// The message followed by every cause: `"msg: cause: cause"`, the text stored in the
    /// error history and the dead letters.
    pub fn report(&self) -> String {
        report(self)
    }
}

fn with_causes(message: &str, source: &Option<BoxError>) -> String {
    match source {
        None => message.to_string(),
        Some(s) => {
            let causes = report(s.as_ref());
            if message.is_empty() {
                causes
            } else if message.contains(&causes) {
                message.to_string()
            } else {
                format!("{message}: {causes}")
            }
        }
    }
}

/// `e` and its chain of sources as one line, `"msg: cause: cause"`. A cause whose text the line
/// already holds (an error that repeats its source in its own message) is not repeated.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        // Database errors are transient from the job's point of view (connection lost, deadlock,
        // serialization failure); constraint bugs surface in the error history and exhaust.
        Self::retry_from("database", e)
    }
}

impl From<serde_json::Error> for JobError {
    fn from(e: serde_json::Error) -> Self {
        Self::fatal_from("arguments", e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn report_is_the_whole_chain() {
        let e = JobError::retry_from(
            "chain 1: eth_call",
            Outer(std::io::Error::other("connection reset")),
        );
        assert_eq!(e.message(), Some("chain 1: eth_call"));
        assert_eq!(e.report(), "chain 1: eth_call: outer connection reset");
        assert_eq!(e.to_string(), e.report());
        assert_eq!(e.class(), "retry");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn plain_errors_report_their_message() {
        let e = JobError::fatal("bad args");
        assert_eq!(e.report(), "bad args");
        assert_eq!(e.class(), "fatal");
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            JobError::Snooze(Duration::from_secs(3)).report(),
            "snoozed for 3s"
        );
    }

    #[test]
    fn sqlx_errors_keep_their_cause() {
        let e = JobError::from(sqlx::Error::RowNotFound);
        assert!(matches!(e, JobError::Retry { .. }));
        assert!(e.report().starts_with("database: "), "{}", e.report());
    }
}
