//! Effective per-kind policy: the kind's own defaults, overridden by `[kinds.<kind>]` config.

use std::{collections::BTreeMap, time::Duration};

use super::control::LimitConfig;
use crate::{Invalid, Kinds, RetryPolicy};
use serde::{Deserialize, Serialize};

/// `[kinds.<kind>]` in config. Every field optional; unset = the kind's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindOverride {
    pub queue: Option<String>,
    pub max_attempts: Option<u32>,
    #[serde(default, with = "crate::duration::opt_text")]
    pub backoff_base: Option<Duration>,
    #[serde(default, with = "crate::duration::opt_text")]
    pub backoff_cap: Option<Duration>,
    pub jitter: Option<f64>,
    /// Longest a single run may take before it counts as a failed attempt.
    #[serde(default, with = "crate::duration::opt_text")]
    pub timeout: Option<Duration>,
    /// Running jobs of the kind in the whole cluster (every daemon, every queue).
    pub global_concurrency: Option<u32>,
    /// Top-level args fields that partition the kind's running jobs, e.g. `["chain_id"]` …
    pub partition_by: Option<Vec<String>>,
    /// … and how many may run per partition.
    pub partition_concurrency: Option<u32>,
    /// Jobs of the kind started per second in the whole cluster.
    pub rate_limit: Option<f64>,
    /// Jobs that may start at once after a quiet spell (default: a tenth of a second's).
    pub rate_burst: Option<f64>,
}

impl KindOverride {
    /// The cluster-wide limits this override states.
    pub fn limits(&self) -> LimitConfig {
        LimitConfig {
            concurrency: self.global_concurrency,
            partition_by: self.partition_by.clone(),
            partition_concurrency: self.partition_concurrency,
            rate: self.rate_limit,
            burst: self.rate_burst,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KindPolicy {
    pub queue: String,
    pub retry: RetryPolicy,
    pub timeout: Duration,
}

/// Default run timeout of a job when neither the kind nor config sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_kind: BTreeMap<String, KindPolicy>,
    /// Cluster-wide limits per kind from the config (`[kinds.<kind>] global_concurrency`, …).
    limits: BTreeMap<String, LimitConfig>,
}

impl Policies {
    pub fn from_kinds(registry: &Kinds) -> Self {
        Self {
            by_kind: registry
                .specs()
                .map(|s| {
                    (
                        s.kind.to_string(),
                        KindPolicy {
                            queue: s.queue.to_string(),
                            retry: s.policy,
                            timeout: DEFAULT_TIMEOUT,
                        },
                    )
                })
                .collect(),
            limits: BTreeMap::new(),
        }
    }

    /// Applies config overrides; unknown kinds and invalid values are errors naming the key.
    pub fn with_overrides(
        registry: &Kinds,
        overrides: &BTreeMap<String, KindOverride>,
    ) -> Result<Self, Invalid> {
        let mut p = Self::from_kinds(registry);
        for (kind, o) in overrides {
            let entry = p.by_kind.get_mut(kind).ok_or_else(|| {
                Invalid::at(
                    format!("kinds.{kind}"),
                    format!("unknown job kind (known: {})", registry.names().join(", ")),
                )
            })?;
            if let Some(q) = &o.queue {
                if q.is_empty() {
                    return Err(Invalid::at(
                        format!("kinds.{kind}.queue"),
                        "must not be empty",
                    ));
                }
                entry.queue = q.clone();
            }
            if let Some(m) = o.max_attempts {
                entry.retry.max_attempts = m;
            }
            if let Some(b) = o.backoff_base {
                entry.retry.base = b;
            }
            if let Some(c) = o.backoff_cap {
                entry.retry.cap = c;
            }
            if let Some(j) = o.jitter {
                entry.retry.jitter = j;
            }
            if let Some(t) = o.timeout {
                if t.is_zero() {
                    return Err(Invalid::at(
                        format!("kinds.{kind}.timeout"),
                        "must be positive",
                    ));
                }
                entry.timeout = t;
            }
            entry
                .retry
                .validate()
                .map_err(|e| e.within(&format!("kinds.{kind}")))?;
            let limits = o.limits();
            if !limits.is_empty() {
                let fields: Option<Vec<String>> = registry
                    .get(kind)
                    .and_then(|spec| spec.args_schema.get("properties"))
                    .and_then(|p| p.as_object())
                    .map(|p| p.keys().cloned().collect());
                limits.validate(&format!("kinds.{kind}"), fields.as_deref())?;
                p.limits.insert(kind.clone(), limits);
            }
        }
        Ok(p)
    }

    /// The config's cluster-wide limits per kind.
    pub fn kind_limits(&self) -> &BTreeMap<String, LimitConfig> {
        &self.limits
    }

    /// Policy of `kind`; unknown kinds (rows from a newer or older binary) get the defaults.
    pub fn get(&self, kind: &str) -> KindPolicy {
        self.by_kind.get(kind).cloned().unwrap_or(KindPolicy {
            queue: "default".into(),
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Every queue some kind runs on.
    pub fn queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self.by_kind.values().map(|p| p.queue.clone()).collect();
        q.sort();
        q.dedup();
        q
    }
}
