//! The scheduler: periodic jobs from `[[schedule]]` config. Each tick is claimed in
//! `chainsync.cron_claims (schedule, tick)` in the same transaction as its job, so any number of
//! daemons enqueue each tick exactly once. A schedule switched off or on at runtime
//! (`chainsync.schedule_switches`, see [`set_enabled`]) is switched for every daemon at its next
//! pass; [`run_now`] enqueues a schedule's job at once, as a tick would.

mod spec;

use std::{sync::Arc, time::Duration};

use crate::{Invalid, Kinds, NewJob};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use spec::Spec;

use crate::{
    Enqueued,
    queue::{Queue, QueueError},
};

/// `[[schedule]]` in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub name: String,
    pub kind: String,
    #[serde(default = "empty_args")]
    pub args: Value,
    /// Cron expression (5 fields, or 6 with seconds), evaluated in `timezone`.
    #[serde(default)]
    pub cron: Option<String>,
    /// Fixed interval ("30s", "5m"), aligned to the Unix epoch.
    #[serde(default)]
    pub every: Option<String>,
    /// IANA zone of the cron expression, e.g. "Asia/Shanghai".
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catch_up: CatchUp,
    #[serde(default)]
    pub priority: Option<i16>,
    #[serde(default)]
    pub queue: Option<String>,
}

fn empty_args() -> Value {
    Value::Object(Default::default())
}
fn utc() -> String {
    "UTC".into()
}
fn yes() -> bool {
    true
}

/// A tick whose previous job of the same schedule is still queued or running.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Recorded as skipped; no job.
    #[default]
    Skip,
    /// Enqueued anyway.
    Queue,
}

/// Ticks missed while no daemon ran.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Skipped: the schedule resumes at its next tick.
    #[default]
    None,
    /// One job for the latest missed tick (within `scheduler.catch_up_horizon`).
    One,
}

/// `[scheduler]` in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    pub enabled: bool,
    /// How often due ticks are looked for.
    #[serde(with = "crate::duration::text")]
    pub poll_interval: Duration,
    /// A tick is on time while it is at most this old; older ones count as missed.
    #[serde(with = "crate::duration::text")]
    pub tolerance: Duration,
    /// How far back `catch_up = "one"` looks for a missed tick.
    #[serde(with = "crate::duration::text")]
    pub catch_up_horizon: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(1),
            tolerance: Duration::from_secs(60),
            catch_up_horizon: Duration::from_secs(7 * 86_400),
        }
    }
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub kind: String,
    pub args: Value,
    pub spec: Spec,
    pub enabled: bool,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub priority: Option<i16>,
    pub queue: Option<String>,
}

/// Validates `[[schedule]]` entries; errors name the key (`schedule[2].cron: ...`).
pub fn validate(configs: &[ScheduleConfig], registry: &Kinds) -> Result<Vec<Schedule>, Invalid> {
    let mut out: Vec<Schedule> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let key = format!("schedule[{i}]");
        if c.name.trim().is_empty() {
            return Err(Invalid::at(format!("{key}.name"), "must not be empty"));
        }
        if out.iter().any(|s| s.name == c.name) {
            return Err(Invalid::at(
                format!("{key}.name"),
                format!("{:?} is used twice", c.name),
            ));
        }
        let tz: chrono_tz::Tz = c.timezone.parse().map_err(|_| {
            Invalid::at(
                format!("{key}.timezone"),
                format!("unknown time zone {:?}", c.timezone),
            )
        })?;
        let spec = match (&c.cron, &c.every) {
            (Some(cron), None) => {
                Spec::cron(cron, tz).map_err(|e| e.within(&format!("{key}.cron")))?
            }
            (None, Some(every)) => {
                let d = crate::duration::parse_duration(every)
                    .map_err(|e| Invalid::at(format!("{key}.every"), e.to_string()))?;
                Spec::every(d).map_err(|e| e.within(&key))?
            }
            _ => {
                return Err(Invalid::at(key, "give exactly one of cron and every"));
            }
        };
        let mut probe = NewJob {
            priority: c.priority,
            queue: c.queue.clone(),
            ..NewJob::untyped(c.kind.clone(), c.args.clone())
        };
        registry
            .check(&mut probe)
            .map_err(|e| Invalid::at(format!("{key}.kind/args"), e.to_string()))?;
        out.push(Schedule {
            name: c.name.clone(),
            kind: c.kind.clone(),
            args: c.args.clone(),
            spec,
            enabled: c.enabled,
            overlap: c.overlap,
            catch_up: c.catch_up,
            priority: c.priority,
            queue: c.queue.clone(),
        });
    }
    Ok(out)
}

/// Source of "now", injectable for tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What happened to one due tick in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    Enqueued {
        schedule: String,
        tick: DateTime<Utc>,
        job: uuid::Uuid,
    },
    Skipped {
        schedule: String,
        tick: DateTime<Utc>,
    },
}

pub struct Scheduler {
    queue: Queue,
    schedules: Vec<Schedule>,
    settings: SchedulerSettings,
    /// Per schedule: the last tick this instance has dealt with (claimed by anyone).
    seen: Vec<Option<DateTime<Utc>>>,
    started: bool,
    instance: String,
}

impl Scheduler {
    pub fn new(queue: Queue, schedules: Vec<Schedule>, settings: SchedulerSettings) -> Self {
        let n = schedules.len();
        Self {
            queue,
            schedules,
            settings,
            seen: vec![None; n],
            started: false,
            instance: format!("{}-{}", hostname(), std::process::id()),
        }
    }

    /// One pass at `now`: claims and enqueues every due tick. Safe to run on any number of
    /// instances at once.
    pub async fn tick_once(&mut self, now: DateTime<Utc>) -> Result<Vec<TickOutcome>, QueueError> {
        let first_pass = !self.started;
        self.started = true;
        let switches = switches(&self.queue).await?;
        let mut outcomes = Vec::new();
        for i in 0..self.schedules.len() {
            let s = &self.schedules[i];
            let switch = switches.iter().find(|w| w.schedule == s.name);
            if !switch.map_or(s.enabled, |w| w.enabled) {
                continue;
            }
            // On time, or, on the first pass with catch_up = one, the latest missed tick.
            let horizon = if first_pass && s.catch_up == CatchUp::One {
                self.settings.catch_up_horizon
            } else {
                self.settings.tolerance
            };
            let Some(tick) = s.spec.latest_at_or_before(now, horizon) else {
                continue;
            };
            if self.seen[i] == Some(tick) {
                continue;
            }
            // Switched on at runtime: ticks that fell while it was off are not run.
            if switch.is_some_and(|w| tick < w.changed_at) {
                self.seen[i] = Some(tick);
                continue;
            }
            if let Some(o) = self.claim(i, tick).await? {
                outcomes.push(o);
            }
            self.seen[i] = Some(tick);
        }
        Ok(outcomes)
    }

    /// Claims `tick` of schedule `i` and enqueues its job in one transaction.
    async fn claim(
        &self,
        i: usize,
        tick: DateTime<Utc>,
    ) -> Result<Option<TickOutcome>, QueueError> {
        let s = &self.schedules[i];
        let mut tx = self.queue.pool().begin().await?;
        let claimed = sqlx::query(
            "INSERT INTO chainsync.cron_claims (schedule, tick, claimed_by) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(&s.name)
        .bind(tick)
        .bind(&self.instance)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            return Ok(None); // another instance has it
        }
        let prefix = format!("schedule:{}:", s.name);
        if s.overlap == Overlap::Skip {
            let busy: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM chainsync.jobs
                 WHERE state IN ('available', 'running') AND starts_with(unique_key, $1))",
            )
            .bind(&prefix)
            .fetch_one(&mut *tx)
            .await?;
            if busy {
                tx.commit().await?;
                info!(schedule = %s.name, %tick, "previous run still active; tick skipped");
                return Ok(Some(TickOutcome::Skipped {
                    schedule: s.name.clone(),
                    tick,
                }));
            }
        }
        let job = NewJob {
            priority: s.priority,
            queue: s.queue.clone(),
            unique_key: Some(format!("{prefix}{}", tick.to_rfc3339())),
            ..NewJob::untyped(s.kind.clone(), s.args.clone())
        };
        let e = self.queue.enqueue_in(&mut tx, job).await?;
        sqlx::query(
            "UPDATE chainsync.cron_claims SET job_id = $3 WHERE schedule = $1 AND tick = $2",
        )
        .bind(&s.name)
        .bind(tick)
        .bind(e.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        info!(schedule = %s.name, %tick, job = %e.id, "scheduled job enqueued");
        Ok(Some(TickOutcome::Enqueued {
            schedule: s.name.clone(),
            tick,
            job: e.id,
        }))
    }

    /// Runs passes every `poll_interval` until `stop`.
    pub async fn run(mut self, clock: Arc<dyn Clock>, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.settings.poll_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.tick_once(clock.now()).await {
                warn!(error = %e, "scheduler pass failed; retrying next poll");
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// A schedule switched off or on at runtime, for every daemon (`chainsync.schedule_switches`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Switch {
    pub schedule: String,
    pub enabled: bool,
    pub changed_at: DateTime<Utc>,
    /// Who switched it (`console`, `cli`).
    pub changed_by: Option<String>,
}

/// Every runtime switch (a handful of rows; read by each scheduler pass).
pub async fn switches(queue: &Queue) -> Result<Vec<Switch>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT schedule, enabled, changed_at, changed_by FROM chainsync.schedule_switches",
    )
    .fetch_all(queue.pool())
    .await?)
}

/// Switches schedule `name` on or off for every daemon from `at` on (wins over the config's
/// `enabled`). Switched on, its ticks before `at` are not run. Returns `false` when it was in
/// that state already (by an earlier switch).
pub async fn set_enabled(
    queue: &Queue,
    name: &str,
    enabled: bool,
    by: &str,
    at: DateTime<Utc>,
) -> Result<bool, QueueError> {
    let changed = sqlx::query(
        "INSERT INTO chainsync.schedule_switches AS w (schedule, enabled, changed_at, changed_by)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (schedule) DO UPDATE
         SET enabled = EXCLUDED.enabled, changed_at = EXCLUDED.changed_at,
             changed_by = EXCLUDED.changed_by
         WHERE w.enabled <> EXCLUDED.enabled",
    )
    .bind(name)
    .bind(enabled)
    .bind(at)
    .bind(by)
    .execute(queue.pool())
    .await?
    .rows_affected();
    if changed == 1 {
        info!(schedule = name, enabled, by, "schedule switched");
    }
    Ok(changed == 1)
}

/// Enqueues the job of schedule `s` now, through the queue's enqueue (its checks, its unique
/// keys): the job carries the unique key `schedule:<name>:now`, so asking again while it waits
/// to start returns the waiting job, and an `overlap = "skip"` tick sees it as the schedule's
/// run. A new job is recorded as a manual claim of the schedule (its last run). Runs whether the
/// schedule is switched on or not.
pub async fn run_now(queue: &Queue, s: &Schedule, by: &str) -> Result<Enqueued, QueueError> {
    let job = NewJob {
        priority: s.priority,
        queue: s.queue.clone(),
        unique_key: Some(format!("schedule:{}:now", s.name)),
        ..NewJob::untyped(s.kind.clone(), s.args.clone())
    };
    let mut tx = queue.pool().begin().await?;
    let e = queue.enqueue_in(&mut tx, job).await?;
    if e.inserted {
        sqlx::query(
            "INSERT INTO chainsync.cron_claims (schedule, tick, job_id, claimed_by, manual)
             VALUES ($1, clock_timestamp(), $2, $3, true) ON CONFLICT DO NOTHING",
        )
        .bind(&s.name)
        .bind(e.id)
        .bind(by)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    info!(schedule = %s.name, job = %e.id, inserted = e.inserted, by, "schedule run now");
    Ok(e)
}

/// One row of `chainsync schedule list`.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub kind: String,
    pub spec: String,
    /// In force: the runtime switch if there is one, else the config.
    pub enabled: bool,
    /// The runtime switch (console, CLI) that overrides the config's `enabled`.
    pub switch: Option<Switch>,
    pub next_runs: Vec<DateTime<Utc>>,
    pub last_tick: Option<DateTime<Utc>>,
    /// `enqueued`/`available`/`running`/`completed`/`cancelled`/`dead`/`skipped`/`pruned`.
    pub last_outcome: Option<String>,
    pub last_job: Option<uuid::Uuid>,
    /// The last run was asked for ("run now"), not a tick of the schedule.
    pub last_manual: bool,
}

/// A schedule's latest claim: its tick, its job, what became of the job, made by "run now".
type LastClaim = (DateTime<Utc>, Option<uuid::Uuid>, Option<String>, bool);

/// Next runs and last outcome of each schedule.
pub async fn status(
    queue: &Queue,
    schedules: &[Schedule],
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleStatus>, QueueError> {
    let switches = switches(queue).await?;
    let mut out = Vec::new();
    for s in schedules {
        let switch = switches.iter().find(|w| w.schedule == s.name).cloned();
        let enabled = switch.as_ref().map_or(s.enabled, |w| w.enabled);
        let mut next_runs = Vec::new();
        let mut t = now;
        for _ in 0..3 {
            match s.spec.next_after(t) {
                Some(n) => {
                    next_runs.push(n);
                    t = n;
                }
                None => break,
            }
        }
        let last: Option<LastClaim> = sqlx::query_as(
            "SELECT c.tick, c.job_id,
                    CASE WHEN c.job_id IS NULL THEN 'skipped'
                         WHEN j.state IS NOT NULL THEN j.state::text
                         WHEN d.id IS NOT NULL THEN 'dead'
                         ELSE 'pruned' END,
                    c.manual
             FROM chainsync.cron_claims c
             LEFT JOIN chainsync.all_jobs j ON j.id = c.job_id
             LEFT JOIN chainsync.dead_letters d ON d.id = c.job_id
             WHERE c.schedule = $1 ORDER BY c.tick DESC LIMIT 1",
        )
        .bind(&s.name)
        .fetch_optional(queue.pool())
        .await?;
        out.push(ScheduleStatus {
            name: s.name.clone(),
            kind: s.kind.clone(),
            spec: s.spec.describe(),
            enabled,
            switch,
            next_runs: if enabled { next_runs } else { Vec::new() },
            last_tick: last.as_ref().map(|l| l.0),
            last_outcome: last.as_ref().and_then(|l| l.2.clone()),
            last_manual: last.as_ref().is_some_and(|l| l.3),
            last_job: last.and_then(|l| l.1),
        });
    }
    Ok(out)
}
