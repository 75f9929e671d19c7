//! The one registry of job kinds. Adding a kind = one file in `kinds/` + one line in `builtin`.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::{Job, JobContext, JobError, NewJob, RetryPolicy, kinds};

type RunFn = fn(Value, JobContext) -> BoxFuture<'static, Result<(), JobError>>;
type CheckFn = fn(&Value) -> Result<Option<String>, String>;

/// Everything the engine needs to know about one kind, with the Rust type erased.
#[derive(Clone)]
pub struct KindSpec {
    pub kind: &'static str,
    pub queue: &'static str,
    pub policy: RetryPolicy,
    /// Decodes and validates args; returns the kind's unique key for them.
    check: CheckFn,
    run: RunFn,
}

impl std::fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindSpec")
            .field("kind", &self.kind)
            .field("queue", &self.queue)
            .field("policy", &self.policy)
            .finish()
    }
}

impl KindSpec {
    pub fn of<J: Job>() -> Self {
        Self {
            kind: J::KIND,
            queue: J::QUEUE,
            policy: J::retry_policy(),
            check: check::<J>,
            run: run::<J>,
        }
    }

    /// Decodes `args` into the kind's type and validates them; `Ok(unique_key)`.
    pub fn check(&self, args: &Value) -> Result<Option<String>, String> {
        (self.check)(args)
    }

    /// Decodes and runs. Undecodable args are `Fatal`.
    pub fn run(&self, args: Value, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        (self.run)(args, ctx)
    }
}

fn decode<J: Job>(args: &Value) -> Result<J, String> {
    let job: J = serde_json::from_value(args.clone())
        .map_err(|e| format!("invalid args for {}: {e}", J::KIND))?;
    job.validate()
        .map_err(|e| format!("invalid args for {}: {e}", J::KIND))?;
    Ok(job)
}

fn check<J: Job>(args: &Value) -> Result<Option<String>, String> {
    decode::<J>(args).map(|j| j.unique_key())
}

fn run<J: Job>(args: Value, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
    Box::pin(async move {
        let job = decode::<J>(&args).map_err(JobError::Fatal)?;
        job.run(&ctx).await
    })
}

/// The set of known kinds.
#[derive(Debug, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindSpec>,
}

impl Registry {
    /// Every kind chainsync ships.
    pub fn builtin() -> Self {
        Self::from_specs(vec![
            KindSpec::of::<kinds::noop::Noop>(),
            KindSpec::of::<kinds::sync_user_balance::SyncUserBalance>(),
            KindSpec::of::<kinds::sync_balances::SyncBalances>(),
            KindSpec::of::<kinds::reconcile_chain::ReconcileChain>(),
            KindSpec::of::<kinds::check_pending_tx::CheckPendingTx>(),
            KindSpec::of::<kinds::ingest_events::IngestEvents>(),
            KindSpec::of::<kinds::backfill_window::BackfillWindow>(),
            KindSpec::of::<kinds::compute_points::ComputePoints>(),
        ])
    }

    pub fn from_specs(specs: Vec<KindSpec>) -> Self {
        Self {
            kinds: specs.into_iter().map(|s| (s.kind, s)).collect(),
        }
    }

    pub fn get(&self, kind: &str) -> Option<&KindSpec> {
        self.kinds.get(kind)
    }

    pub fn specs(&self) -> impl Iterator<Item = &KindSpec> {
        self.kinds.values()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// Validates a wire job: known kind, args decode; fills in the unique key when unset.
    pub fn check(&self, job: &mut NewJob) -> Result<(), String> {
        let spec = self.get(&job.kind).ok_or_else(|| {
            format!(
                "unknown job kind {:?} (known: {})",
                job.kind,
                self.names().join(", ")
            )
        })?;
        let key = spec.check(&job.args)?;
        if job.unique_key.is_none() {
            job.unique_key = key;
        }
        if let Some(p) = job.priority
            && !(0..=100).contains(&p)
        {
            return Err(format!("priority must be in 0..=100, got {p}"));
        }
        match (job.backoff_base_ms, job.backoff_cap_ms) {
            (Some(b), _) if b < 1 => {
                return Err(format!("backoff_base_ms must be positive, got {b}"));
            }
            (_, Some(c)) if c < 1 => {
                return Err(format!("backoff_cap_ms must be positive, got {c}"));
            }
            (Some(b), Some(c)) if c < b => {
                return Err(format!(
                    "backoff_cap_ms ({c}) must not be below backoff_base_ms ({b})"
                ));
            }
            _ => {}
        }
        if let Some(m) = job.max_attempts
            && m < 1
        {
            return Err(format!("max_attempts must be at least 1, got {m}"));
        }
        Ok(())
    }
}
