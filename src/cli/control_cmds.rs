//! `chainsync queue`: pause and resume queues, show them, set cluster-wide limits.

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::Out;
use crate::{app::App, queue::LimitConfig};

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Every queue: jobs due, scheduled and running, paused or not, the oldest due job's wait,
    /// and its limits.
    List,
    /// Pause a queue for every daemon: nothing more is fetched from it; running jobs finish;
    /// enqueues (scheduled ticks included) are kept for when it resumes.
    Pause { name: String },
    /// Resume a paused queue.
    Resume { name: String },
    /// The limits in force per queue and per kind, with the config's and where they come from.
    Limits,
    /// Change the cluster-wide limits of a queue or a kind at once, for every daemon (no
    /// restart); what is not named stays as it is; `none` removes a limit. A limit set here wins
    /// over the config until `--reset`.
    Limit(LimitArgs),
    /// Write the config's limits ([queues.*], [kinds.*]) to the database now (as a daemon's
    /// start does); limits set at runtime stay in force.
    ApplyConfig,
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// The queue to limit.
    #[arg(long, conflicts_with = "kind", required_unless_present = "kind")]
    pub queue: Option<String>,
    /// The job kind to limit.
    #[arg(long)]
    pub kind: Option<String>,
    /// Running jobs in the whole cluster, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub concurrency: Option<String>,
    /// Args fields whose values partition a kind's running jobs (comma-separated), or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub partition_by: Option<String>,
    /// Running jobs per partition, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub partition_concurrency: Option<String>,
    /// Jobs started per second in the whole cluster, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub rate: Option<String>,
    /// Jobs that may start at once after a quiet spell, or `none` (the default for the rate).
    #[arg(long, allow_hyphen_values = true)]
    pub burst: Option<String>,
    /// Back to the config's limits.
    #[arg(long, conflicts_with_all = ["concurrency", "partition_by", "partition_concurrency", "rate", "burst"])]
    pub reset: bool,
}

/// `Some(None)` for `none`, `Some(Some(v))` for a value; errors name the flag.
fn value<T: std::str::FromStr>(flag: &str, v: Option<&str>) -> anyhow::Result<Option<Option<T>>> {
    match v {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(s) => s
            .parse::<T>()
            .map(|v| Some(Some(v)))
            .map_err(|_| anyhow::anyhow!("--{flag}: expected a number or `none`, got {s:?}")),
    }
}

fn positive(flag: &str, v: Option<Option<i64>>) -> anyhow::Result<Option<Option<u32>>> {
    match v {
        Some(Some(n)) if n < 1 => bail!("--{flag}: must be at least 1, got {n}"),
        Some(Some(n)) => Ok(Some(Some(u32::try_from(n).unwrap_or(u32::MAX)))),
        Some(None) => Ok(Some(None)),
        None => Ok(None),
    }
}

/// The limits after applying the flags to `current`.
fn edited(mut l: LimitConfig, a: &LimitArgs) -> anyhow::Result<LimitConfig> {
    if let Some(c) = positive(
        "concurrency",
        value("concurrency", a.concurrency.as_deref())?,
    )? {
        l.concurrency = c;
    }
    if let Some(c) = positive(
        "partition-concurrency",
        value("partition-concurrency", a.partition_concurrency.as_deref())?,
    )? {
        l.partition_concurrency = c;
    }
    match a.partition_by.as_deref() {
        None => {}
        Some("none") => l.partition_by = None,
        Some(s) => {
            let fields: Vec<String> = s
                .split(',')
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .collect();
            if fields.is_empty() {
                bail!("--partition-by: name at least one args field, or `none`");
            }
            l.partition_by = Some(fields);
        }
    }
    if l.partition_by.is_none() {
        l.partition_concurrency = None;
    }
    if let Some(r) = value::<f64>("rate", a.rate.as_deref())? {
        if let Some(r) = r
            && (r.is_nan() || r <= 0.0)
        {
            bail!("--rate: must be above 0 jobs per second, got {r}");
        }
        l.rate = r;
    }
    if let Some(b) = value::<f64>("burst", a.burst.as_deref())? {
        if let Some(b) = b
            && (b.is_nan() || b < 1.0)
        {
            bail!("--burst: must be at least 1, got {b}");
        }
        l.burst = b;
    }
    if l.rate.is_none() {
        l.burst = None;
    }
    Ok(l)
}

fn num<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub async fn run(app: &App, out: &Out, cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::List => {
            let rows = app.queue.queue_overview().await?;
            let table = rows
                .iter()
                .map(|q| {
                    vec![
                        q.queue.clone(),
                        if q.paused { "paused" } else { "running" }.into(),
                        q.due.to_string(),
                        q.scheduled.to_string(),
                        q.running.to_string(),
                        format!("{:.1}s", q.oldest_due_age_secs),
                        num(q.concurrency),
                        num(q.rate),
                        if q.manual { "manual" } else { "config" }.into(),
                    ]
                })
                .collect();
            out.print(
                &rows,
                &[
                    "QUEUE",
                    "STATE",
                    "DUE",
                    "SCHEDULED",
                    "RUNNING",
                    "OLDEST DUE",
                    "CONCURRENCY",
                    "RATE/S",
                    "LIMITS FROM",
                ],
                table,
            );
        }
        QueueCmd::Pause { name } => {
            let changed = app.queue.pause_queue(&name).await?;
            let text = if changed {
                format!("queue {name} paused: no daemon fetches from it until it is resumed")
            } else {
                format!("queue {name} was paused already")
            };
            out.message(
                &json!({"queue": name, "paused": true, "changed": changed}),
                &text,
            );
        }
        QueueCmd::Resume { name } => {
            let changed = app.queue.resume_queue(&name).await?;
            let text = if changed {
                format!("queue {name} resumed")
            } else {
                format!("queue {name} was not paused")
            };
            out.message(
                &json!({"queue": name, "paused": false, "changed": changed}),
                &text,
            );
        }
        QueueCmd::Limits => {
            let queues = app.queue.queue_limits().await?;
            let kinds = app.queue.kind_limits().await?;
            let mut table = Vec::new();
            for q in &queues {
                table.push(vec![
                    format!("queue {}", q.queue),
                    num(q.concurrency),
                    "-".into(),
                    num(q.rate),
                    num(q.burst),
                    "-".into(),
                    if q.manual { "manual" } else { "config" }.into(),
                ]);
            }
            for k in &kinds {
                table.push(vec![
                    format!("kind {}", k.kind),
                    num(k.concurrency),
                    match (&k.partition_by, k.partition_concurrency) {
                        (Some(by), Some(n)) => format!("{n} per {}", by.join(",")),
                        _ => "-".into(),
                    },
                    num(k.rate),
                    num(k.burst),
                    k.running.to_string(),
                    if k.manual { "manual" } else { "config" }.into(),
                ]);
            }
            out.print(
                &json!({"queues": queues, "kinds": kinds}),
                &[
                    "TARGET",
                    "CONCURRENCY",
                    "PARTITIONS",
                    "RATE/S",
                    "BURST",
                    "RUNNING",
                    "FROM",
                ],
                table,
            );
        }
        QueueCmd::Limit(a) => {
            let (target, current) = match (&a.queue, &a.kind) {
                (Some(q), _) => {
                    let cur = app
                        .queue
                        .queue_limits()
                        .await?
                        .into_iter()
                        .find(|l| &l.queue == q)
                        .map(|l| LimitConfig {
                            concurrency: l.concurrency.map(|n| n.unsigned_abs()),
                            rate: l.rate,
                            burst: l.burst,
                            ..LimitConfig::default()
                        });
                    (format!("queue {q}"), cur.unwrap_or_default())
                }
                (None, Some(k)) => {
                    let cur = app
                        .queue
                        .kind_limits()
                        .await?
                        .into_iter()
                        .find(|l| &l.kind == k)
                        .map(|l| LimitConfig {
                            concurrency: l.concurrency.map(|n| n.unsigned_abs()),
                            partition_by: l.partition_by,
                            partition_concurrency: l
                                .partition_concurrency
                                .map(|n| n.unsigned_abs()),
                            rate: l.rate,
                            burst: l.burst,
                        });
                    (format!("kind {k}"), cur.unwrap_or_default())
                }
                (None, None) => bail!("name --queue or --kind"),
            };
            if a.reset {
                match (&a.queue, &a.kind) {
                    (Some(q), _) => app.queue.reset_queue_limit(q).await?,
                    (_, Some(k)) => app.queue.reset_kind_limit(k).await?,
                    _ => {}
                }
                out.message(
                    &json!({"target": target, "reset": true}),
                    &format!("{target}: back to the config's limits"),
                );
                return Ok(());
            }
            if a.queue.is_some() && (a.partition_by.is_some() || a.partition_concurrency.is_some())
            {
                bail!("--partition-by: partitions are limits of a kind (--kind), not of a queue");
            }
            let l = edited(current, &a)?;
            if l.partition_concurrency.is_some() != l.partition_by.is_some() {
                bail!("--partition-by and --partition-concurrency go together");
            }
            match (&a.queue, &a.kind) {
                (Some(q), _) => app.queue.set_queue_limit(q, &l).await?,
                (_, Some(k)) => app.queue.set_kind_limit(k, &l).await?,
                _ => {}
            }
            out.message(
                &json!({"target": target, "limits": l}),
                &format!(
                    "{target}: concurrency {}, partitions {}, rate {}/s (burst {}); in force for every daemon now",
                    num(l.concurrency),
                    match (&l.partition_by, l.partition_concurrency) {
                        (Some(by), Some(n)) => format!("{n} per {}", by.join(",")),
                        _ => "-".into(),
                    },
                    num(l.rate),
                    num(l.burst)
                ),
            );
        }
        QueueCmd::ApplyConfig => {
            app.apply_limits().await?;
            out.message(
                &json!({"applied": true}),
                "the config's limits are in force (limits set at runtime kept)",
            );
        }
    }
    Ok(())
}
