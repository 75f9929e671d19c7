//! Queue commands: migrate, enqueue, jobs, dlq, kinds.

use anyhow::{Context, bail};
use chainsync_jobs::NewJob;
use serde_json::{Value, json};

use super::{
    DlqCmd, EnqueueArgs, JobsCmd,
    output::{Out, clip, short_time},
};
use crate::{
    app::App,
    duration::format_duration,
    queue::{DlqFilter, JobFilter},
};

pub async fn migrate(app: &App, out: &Out) -> anyhow::Result<()> {
    app.check_database().await?;
    app.migrate().await.context("migration failed")?;
    let kinds = app.queue.kinds().names();
    out.message(
        &json!({"migrated": true, "kinds": kinds}),
        &format!(
            "schema chainsync up to date; {} job kinds registered",
            kinds.len()
        ),
    );
    Ok(())
}

pub async fn enqueue(app: &App, out: &Out, a: EnqueueArgs) -> anyhow::Result<()> {
    let args: Value = serde_json::from_str(&a.args)
        .map_err(|e| anyhow::anyhow!("--args is not valid JSON: {e}"))?;
    if !args.is_object() {
        bail!("--args must be a JSON object, e.g. '{{\"chain_id\": 1}}'");
    }
    let unique_for_ms = a
        .unique_for
        .as_deref()
        .map(|s| {
            crate::duration::parse_duration(s)
                .map_err(|e| anyhow::anyhow!("--unique-for: {e}"))
                .and_then(|d| {
                    if d.is_zero() {
                        bail!("--unique-for: must be positive")
                    }
                    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                })
        })
        .transpose()?;
    let job = NewJob {
        unique_for_ms,
        kind: a.kind,
        args,
        queue: a.queue,
        priority: a.priority,
        run_at: a.run_at,
        unique_key: a.unique_key,
        max_attempts: a.max_attempts,
        traceparent: a.traceparent,
        ..NewJob::default()
    };
    let e = app.queue.enqueue(job).await?;
    let text = if e.inserted {
        format!("enqueued {}", e.id)
    } else {
        format!("already queued as {} (same unique key)", e.id)
    };
    out.message(&e, &text);
    Ok(())
}

pub async fn jobs(app: &App, out: &Out, cmd: JobsCmd) -> anyhow::Result<()> {
    match cmd {
        JobsCmd::List {
            state,
            kind,
            queue,
            limit,
            offset,
        } => {
            let rows = app
                .queue
                .list_jobs(&JobFilter {
                    state,
                    kind,
                    queue,
                    limit,
                    offset,
                })
                .await?;
            let table = rows
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        j.kind.clone(),
                        j.queue.clone(),
                        j.state.clone(),
                        format!("{}/{}", j.attempt, j.max_attempts),
                        short_time(&j.run_at),
                        last_error(&j.errors),
                    ]
                })
                .collect();
            out.print(
                &rows,
                &[
                    "ID",
                    "KIND",
                    "QUEUE",
                    "STATE",
                    "ATTEMPT",
                    "RUN AT",
                    "LAST ERROR",
                ],
                table,
            );
        }
        JobsCmd::Show { id } => {
            let j = app.queue.get_job(id).await?;
            let mut rows = vec![
                vec!["id".into(), j.id.to_string()],
                vec!["kind".into(), j.kind.clone()],
                vec!["queue".into(), j.queue.clone()],
                vec!["state".into(), j.state.clone()],
                vec![
                    "attempt".into(),
                    format!("{}/{}", j.attempt, j.max_attempts),
                ],
                vec!["priority".into(), j.priority.to_string()],
                vec!["run_at".into(), short_time(&j.run_at)],
                vec!["created_at".into(), short_time(&j.created_at)],
                vec![
                    "unique_key".into(),
                    j.unique_key.clone().unwrap_or_default(),
                ],
                vec!["args".into(), j.args.to_string()],
            ];
            rows.extend(error_rows(&j.errors));
            out.print(&j, &["FIELD", "VALUE"], rows);
        }
        JobsCmd::Cancel { id } => {
            app.queue.cancel_job(id).await?;
            out.message(&json!({"cancelled": id}), &format!("cancelled {id}"));
        }
    }
    Ok(())
}

/// The newest error of a history, clipped for a table cell.
fn last_error(errors: &Value) -> String {
    errors
        .as_array()
        .and_then(|a| a.last())
        .and_then(|e| e.get("error"))
        .and_then(Value::as_str)
        .map(|s| clip(s, 60))
        .unwrap_or_default()
}

fn error_rows(errors: &Value) -> Vec<Vec<String>> {
    errors
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    vec![
                        format!(
                            "error #{}",
                            e.get("attempt").map(Value::to_string).unwrap_or_default()
                        ),
                        format!(
                            "{} [{}] {}",
                            e.get("at").and_then(Value::as_str).unwrap_or(""),
                            e.get("class").and_then(Value::as_str).unwrap_or(""),
                            e.get("error").and_then(Value::as_str).unwrap_or("")
                        ),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn dlq(app: &App, out: &Out, cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List {
            kind,
            since,
            limit,
            offset,
        } => {
            let rows = app
                .queue
                .list_dead(&DlqFilter {
                    kind,
                    since,
                    until: None,
                    limit,
                    offset,
                })
                .await?;
            let table = rows
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.kind.clone(),
                        d.reason.clone(),
                        d.attempt.to_string(),
                        short_time(&d.failed_at),
                        last_error(&d.errors),
                    ]
                })
                .collect();
            out.print(
                &rows,
                &[
                    "ID",
                    "KIND",
                    "REASON",
                    "ATTEMPTS",
                    "FAILED AT",
                    "LAST ERROR",
                ],
                table,
            );
        }
        DlqCmd::Show { id } => {
            let d = app.queue.get_dead(id).await?;
            let mut rows = vec![
                vec!["id".into(), d.id.to_string()],
                vec!["kind".into(), d.kind.clone()],
                vec!["reason".into(), d.reason.clone()],
                vec![
                    "attempts".into(),
                    format!("{}/{}", d.attempt, d.max_attempts),
                ],
                vec!["failed_at".into(), short_time(&d.failed_at)],
                vec!["args".into(), d.args.to_string()],
            ];
            rows.extend(error_rows(&d.errors));
            out.print(&d, &["FIELD", "VALUE"], rows);
        }
        DlqCmd::Replay { id, kind, since } => {
            let ids = match id {
                Some(id) => vec![app.queue.replay(id).await?],
                None => app.queue.replay_filter(kind.as_deref(), since).await?,
            };
            out.message(
                &json!({"replayed": ids}),
                &format!("replayed {} dead letter(s)", ids.len()),
            );
        }
        DlqCmd::Purge {
            id,
            kind,
            before,
            all,
        } => {
            let n = app.queue.purge(id, kind.as_deref(), before, all).await?;
            out.message(&json!({"purged": n}), &format!("purged {n} dead letter(s)"));
        }
    }
    Ok(())
}

pub fn kinds(app: &App, out: &Out) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut value = Vec::new();
    for spec in app.queue.kinds().specs() {
        let p = app.queue.policies().get(spec.kind);
        rows.push(vec![
            spec.kind.to_string(),
            p.queue.clone(),
            p.retry.max_attempts.to_string(),
            format_duration(p.retry.base),
            format_duration(p.retry.cap),
            format_duration(p.timeout),
        ]);
        value.push(json!({
            "kind": spec.kind, "queue": p.queue, "max_attempts": p.retry.max_attempts,
            "backoff_base": format_duration(p.retry.base), "backoff_cap": format_duration(p.retry.cap),
            "timeout": format_duration(p.timeout),
        }));
    }
    out.print(
        &value,
        &[
            "KIND",
            "QUEUE",
            "MAX ATTEMPTS",
            "BACKOFF BASE",
            "BACKOFF CAP",
            "TIMEOUT",
        ],
        rows,
    );
    Ok(())
}

pub async fn schedules(app: &App, out: &Out) -> anyhow::Result<()> {
    let schedules = app.config.schedules(app.queue.kinds())?;
    let rows = crate::scheduler::status(&app.queue, &schedules, chrono::Utc::now()).await?;
    let table = rows
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.clone(),
                s.spec.clone(),
                if s.enabled { "yes".into() } else { "no".into() },
                s.next_runs.first().map(short_time).unwrap_or_default(),
                s.last_tick.as_ref().map(short_time).unwrap_or_default(),
                s.last_outcome.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.print(
        &rows,
        &[
            "NAME",
            "KIND",
            "SCHEDULE",
            "ENABLED",
            "NEXT RUN (UTC)",
            "LAST TICK",
            "LAST OUTCOME",
        ],
        table,
    );
    Ok(())
}

fn find_schedule(app: &App, name: &str) -> anyhow::Result<crate::scheduler::Schedule> {
    let schedules = app.config.schedules(app.queue.kinds())?;
    let known = schedules
        .iter()
        .map(|s| s.name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    schedules
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow::anyhow!("no schedule named {name:?} in the config (known: {known})"))
}

/// `chainsync schedule run NAME`.
pub async fn schedule_run(app: &App, out: &Out, name: &str) -> anyhow::Result<()> {
    let s = find_schedule(app, name)?;
    let e = crate::scheduler::run_now(&app.queue, &s, "cli").await?;
    let text = if e.inserted {
        format!("schedule {name}: enqueued {}", e.id)
    } else {
        format!(
            "schedule {name}: its job {} still waits to start; none added",
            e.id
        )
    };
    out.message(&e, &text);
    Ok(())
}

/// `chainsync schedule enable|disable NAME`.
pub async fn schedule_switch(app: &App, out: &Out, name: &str, on: bool) -> anyhow::Result<()> {
    find_schedule(app, name)?;
    let changed =
        crate::scheduler::set_enabled(&app.queue, name, on, "cli", chrono::Utc::now()).await?;
    let state = if on { "on" } else { "off" };
    let text = if changed {
        format!("schedule {name} switched {state} for every daemon")
    } else {
        format!("schedule {name} was switched {state} already")
    };
    out.message(
        &json!({"schedule": name, "enabled": on, "changed": changed}),
        &text,
    );
    Ok(())
}

pub(super) fn chain_id(app: &App, chain: &str) -> anyhow::Result<u64> {
    let found = app
        .config
        .domain
        .chains
        .iter()
        .find(|c| c.name == chain || c.chain_id.to_string() == chain)
        .map(|c| c.chain_id);
    found.ok_or_else(|| anyhow::anyhow!("unknown chain {chain:?}: not in the config's [[chains]]"))
}

pub async fn backfill(app: &App, out: &Out, cmd: super::BackfillCmd) -> anyhow::Result<()> {
    use chainsync_jobs::{
        domain::Domain,
        points::backfill::{Gap, lag},
    };
    let services = app.services().await?;
    match cmd {
        super::BackfillCmd::Check { chain } => {
            let id = chain_id(app, &chain)?;
            let rows = lag(&services, Some(id), chrono::Utc::now()).await?;
            let table = rows
                .iter()
                .map(|l| {
                    vec![
                        l.token.clone(),
                        l.lagging_addresses.to_string(),
                        l.oldest_gap_start
                            .as_ref()
                            .map(short_time)
                            .unwrap_or_default(),
                        l.windows_missing.to_string(),
                    ]
                })
                .collect();
            out.print(
                &rows,
                &[
                    "TOKEN",
                    "LAGGING ADDRESSES",
                    "OLDEST GAP",
                    "WINDOWS MISSING",
                ],
                table,
            );
        }
        super::BackfillCmd::Scan { chain } => {
            let id = chain_id(app, &chain)?;
            let jobs = Domain::new(services.clone())
                .startup_jobs(Some(id), chrono::Utc::now())
                .await?;
            let n = jobs.len();
            let done = app.queue.enqueue_many(jobs).await?;
            out.message(
                &done,
                &format!("enqueued {n} backfill job(s) for chain {chain}"),
            );
        }
        super::BackfillCmd::Points { chain, from, to } => {
            let id = chain_id(app, &chain)?;
            if from >= to {
                bail!("FROM must be before TO");
            }
            let gaps: Vec<Gap> = app
                .config
                .domain
                .points
                .rates
                .iter()
                .filter(|r| r.chain_id == id)
                .map(|r| Gap {
                    chain_id: id,
                    token: r.token.text.clone(),
                    from,
                    to,
                })
                .collect();
            let jobs = Domain::backfill_jobs(&gaps)?;
            if jobs.is_empty() {
                bail!("no [[points.rates]] entry for chain {chain}");
            }
            let done = app.queue.enqueue_many(jobs).await?;
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("backfill jobs running (a daemon must be up)");
            loop {
                let open = app.queue.open_jobs(Domain::BACKFILL_KIND).await?;
                bar.set_message(format!("{open} backfill job(s) open"));
                if open == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                bar.tick();
            }
            bar.finish_and_clear();
            out.message(&done, "backfill finished");
        }
    }
    Ok(())
}
