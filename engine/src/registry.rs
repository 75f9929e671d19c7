//! The registry of job kinds: [`Kinds`] is what every enqueuer needs (names, queues, policies,
//! argument checks), [`Registry`] adds how to run each kind with the application's services.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::Value;

use std::sync::Arc;

use crate::{Invalid, Job, JobContext, JobError, NewJob, RetryPolicy};

type RunFn<S> = fn(Value, JobContext<S>) -> BoxFuture<'static, Result<(), JobError>>;
type CheckFn = fn(&Value) -> Result<Option<String>, JobCheckError>;

/// A job refused before it is stored: unknown kind, arguments that do not decode or do not
/// validate, or a job option out of range.
#[derive(Debug, thiserror::Error)]
pub enum JobCheckError {
    #[error("unknown job kind {kind:?} (known: {known})")]
    UnknownKind { kind: String, known: String },
    /// The arguments do not decode into the kind's type.
    #[error("invalid args for {kind}: {source}")]
    Decode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The arguments decode but [`Job::validate`] refuses them.
    #[error("invalid args for {kind}: {source}")]
    Args {
        kind: &'static str,
        #[source]
        source: Invalid,
    },
    /// A job option (`priority`, `max_attempts`, backoff) out of range.
    #[error("{field} {message}")]
    Option {
        field: &'static str,
        message: String,
    },
}

/// Everything the engine needs to know about one kind, with the Rust type erased.
#[derive(Clone)]
pub struct KindSpec {
    pub kind: &'static str,
    pub queue: &'static str,
    pub policy: RetryPolicy,
    /// See [`Job::UNIQUE_WHILE_RUNNING`].
    pub unique_while_running: bool,
    /// JSON Schema (draft 2020-12) of the arguments as they decode, derived from the kind's type;
    /// `chainsync.enqueue()` checks args against it.
    pub args_schema: Value,
    /// Decodes and validates args; returns the kind's unique key for them.
    check: CheckFn,
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
            unique_while_running: J::UNIQUE_WHILE_RUNNING,
            args_schema: args_schema::<J>(),
            check: check::<J>,
        }
    }

    /// Decodes `args` into the kind's type and validates them; `Ok(unique_key)`.
    pub fn check(&self, args: &Value) -> Result<Option<String>, JobCheckError> {
        (self.check)(args)
    }
}

/// The JSON Schema (draft 2020-12) of arguments of type `T` as serde decodes them:
/// `deny_unknown_fields` becomes `additionalProperties: false`, a field with a default or of
/// type `Option` is not required. What `chainsync.kinds.args_schema` holds for a kind.
pub fn args_schema<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

fn decode<J: Job>(args: &Value) -> Result<J, JobCheckError> {
    let job: J = serde_json::from_value(args.clone()).map_err(|source| JobCheckError::Decode {
        kind: J::KIND,
        source,
    })?;
    job.validate().map_err(|source| JobCheckError::Args {
        kind: J::KIND,
        source,
    })?;
    Ok(job)
}

fn check<J: Job>(args: &Value) -> Result<Option<String>, JobCheckError> {
    decode::<J>(args).map(|j| j.unique_key())
}

fn run<J: Job>(
    args: Value,
    ctx: JobContext<J::Services>,
) -> BoxFuture<'static, Result<(), JobError>> {
    Box::pin(async move {
        let job = decode::<J>(&args).map_err(JobError::fatal)?;
        job.run(&ctx).await
    })
}

/// The set of known kinds, with their types erased: enough to check and enqueue jobs.
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    kinds: BTreeMap<&'static str, KindSpec>,
}

impl Kinds {
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
    pub fn check(&self, job: &mut NewJob) -> Result<(), JobCheckError> {
        let spec = self
            .get(&job.kind)
            .ok_or_else(|| JobCheckError::UnknownKind {
                kind: job.kind.clone(),
                known: self.names().join(", "),
            })?;
        let key = spec.check(&job.args)?;
        if job.unique_key.is_none() {
            job.unique_key = key;
        }
        if let Some(p) = job.priority
            && !(0..=100).contains(&p)
        {
            return Err(JobCheckError::Option {
                field: "priority",
                message: format!("must be in 0..=100, got {p}"),
            });
        }
        match (job.backoff_base_ms, job.backoff_cap_ms) {
            (Some(b), _) if b < 1 => {
                return Err(JobCheckError::Option {
                    field: "backoff_base_ms",
                    message: format!("must be positive, got {b}"),
                });
            }
            (_, Some(c)) if c < 1 => {
                return Err(JobCheckError::Option {
                    field: "backoff_cap_ms",
                    message: format!("must be positive, got {c}"),
                });
            }
            (Some(b), Some(c)) if c < b => {
                return Err(JobCheckError::Option {
                    field: "backoff_cap_ms",
                    message: format!("({c}) must not be below backoff_base_ms ({b})"),
                });
            }
            _ => {}
        }
        if let Some(m) = job.max_attempts
            && m < 1
        {
            return Err(JobCheckError::Option {
                field: "max_attempts",
                message: format!("must be at least 1, got {m}"),
            });
        }
        Ok(())
    }
}

/// The kinds an application runs, each with its run function over the services `S`.
pub struct Registry<S> {
    kinds: Arc<Kinds>,
    runners: BTreeMap<&'static str, RunFn<S>>,
}

impl<S> Clone for Registry<S> {
    fn clone(&self) -> Self {
        Self {
            kinds: self.kinds.clone(),
            runners: self.runners.clone(),
        }
    }
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Self {
            kinds: Arc::default(),
            runners: BTreeMap::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Registry<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds kind `J` (a later registration of the same wire name replaces the earlier one).
    pub fn register<J: Job<Services = S>>(mut self) -> Self {
        let mut specs: Vec<KindSpec> = self.kinds.specs().cloned().collect();
        specs.retain(|s| s.kind != J::KIND);
        specs.push(KindSpec::of::<J>());
        self.kinds = Arc::new(Kinds::from_specs(specs));
        self.runners.insert(J::KIND, run::<J>);
        self
    }

    /// The type-erased kinds, for the queue and every enqueuer.
    pub fn kinds(&self) -> &Arc<Kinds> {
        &self.kinds
    }

    /// Decodes and runs a job of `kind`; `None` when no kind of that name is registered.
    /// Undecodable args are `Fatal`.
    pub fn run(
        &self,
        kind: &str,
        args: Value,
        ctx: JobContext<S>,
    ) -> Option<BoxFuture<'static, Result<(), JobError>>> {
        self.runners.get(kind).map(|run| run(args, ctx))
    }
}
