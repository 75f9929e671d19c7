//! The console's pages: overview, jobs and a job, dead letters and one, schedules, chain data.
//! Filters come from the query string; a value that does not parse gets a message on the page
//! (status 400), never an error page without the form.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use axum::{
    Extension, Form,
    extract::{Path, Query, State, rejection::FormRejection, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chainsync_engine::queue::{
    BulkJobAction, DeadCursor, DeadLetter, DeadQuery, JobQuery, JobRow, QueueError,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    Signed, csrf_ok, csrf_refused,
    figures::FiguresCache,
    html,
    html::{Nav, clip, esc, hidden, input, message, opt_time, page, query_string, select, time},
    unavailable,
};
use crate::http::HttpState;

type Params = BTreeMap<String, String>;

fn params(q: Result<Query<Params>, QueryRejection>) -> Params {
    q.map(|Query(p)| p).unwrap_or_default()
}

fn form(f: Result<Form<Params>, FormRejection>) -> Params {
    f.map(|Form(p)| p).unwrap_or_default()
}

fn get<'a>(p: &'a Params, k: &str) -> &'a str {
    p.get(k).map(|s| s.trim()).unwrap_or_default()
}

fn opt(p: &Params, k: &str) -> Option<String> {
    let v = get(p, k);
    (!v.is_empty()).then(|| v.to_string())
}

/// A time typed into a filter: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` / `YYYY-MM-DD HH:MM` /
/// `YYYY-MM-DD` read as UTC.
fn parse_time(label: &str, s: &str) -> Result<Option<DateTime<Utc>>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for f in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(Some(Utc.from_utc_datetime(&t)));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(Some(Utc.from_utc_datetime(&t)));
    }
    Err(format!(
        "{label}: {s:?} is not a time (use YYYY-MM-DD HH:MM in UTC, or RFC 3339)"
    ))
}

fn parse_limit(p: &Params, errors: &mut Vec<String>) -> i64 {
    match get(p, "limit") {
        "" => 50,
        s => match s.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                errors.push(format!("limit: {s:?} is not a number from 1 to 500"));
                50
            }
        },
    }
}

/// The jobs filter of a query string or a form, with the messages of what did not parse.
struct JobsFilter {
    q: JobQuery,
    before: Option<Uuid>,
    limit: i64,
    errors: Vec<String>,
    raw: Params,
}

const JOB_KEYS: [&str; 7] = ["state", "kind", "queue", "q", "from", "to", "limit"];

fn jobs_filter(s: &HttpState, p: &Params) -> JobsFilter {
    let mut errors = Vec::new();
    let state = opt(p, "state");
    if let Some(st) = &state
        && !chainsync_engine::queue::admin::STATES.contains(&st.as_str())
    {
        errors.push(format!(
            "state: {st:?} is not one of {}",
            chainsync_engine::queue::admin::STATES.join(", ")
        ));
    }
    let kind = opt(p, "kind");
    if let Some(k) = &kind
        && !s.app.queue.kinds().names().contains(&k.as_str())
    {
        errors.push(format!("kind: {k:?} is not a known kind"));
    }
    let from = parse_time("from", get(p, "from")).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let to = parse_time("to", get(p, "to")).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        errors.push("the time range is empty: from must be before to".into());
    }
    let before = match get(p, "before") {
        "" => None,
        b => match Uuid::parse_str(b) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(format!("before: {b:?} is not a job id"));
                None
            }
        },
    };
    let limit = parse_limit(p, &mut errors);
    let text = opt(p, "q");
    if text.as_ref().is_some_and(|t| t.chars().count() > 200) {
        errors.push("text: at most 200 characters".into());
    }
    JobsFilter {
        q: JobQuery {
            state,
            kind,
            queue: opt(p, "queue"),
            text,
            from,
            to,
        },
        before,
        limit,
        errors,
        raw: JOB_KEYS
            .iter()
            .filter_map(|k| opt(p, k).map(|v| ((*k).to_string(), v)))
            .collect(),
    }
}

fn raw_query(raw: &Params, keys: &[&str]) -> String {
    let pairs: Vec<(&str, String)> = keys
        .iter()
        .map(|k| (*k, raw.get(*k).cloned().unwrap_or_default()))
        .collect();
    query_string(&pairs)
}

fn hidden_filter(raw: &Params, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| hidden(k, raw.get(*k).map(String::as_str).unwrap_or_default()))
        .collect()
}

pub(super) fn queue_error(e: QueueError) -> (StatusCode, String) {
    match e {
        QueueError::Invalid(m) => (StatusCode::BAD_REQUEST, m),
        QueueError::NotFound(m) => (StatusCode::NOT_FOUND, format!("{m} not found")),
        QueueError::Conflict(m) => (StatusCode::CONFLICT, m),
        QueueError::Db(e) => {
            tracing::warn!(error = %e, "console: database error");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again in a moment".into(),
            )
        }
    }
}

fn last_error(errors: &Value) -> String {
    errors
        .as_array()
        .and_then(|a| a.last())
        .and_then(|e| e.get("error"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn done_message(p: &Params) -> String {
    let n = get(p, "n").parse::<u64>().unwrap_or(0);
    let text = match get(p, "done") {
        "cancel" => format!("Cancelled {n} job(s)."),
        "retry" => format!("Queued {n} job(s) to run now."),
        "delete" => format!("Deleted {n} job(s)."),
        "replay" => format!("Replayed {n} dead letter(s) into the queue."),
        "purge" => format!("Purged {n} dead letter(s)."),
        "cancelled" => "The job was cancelled.".into(),
        "retried" => "The job is queued to run now.".into(),
        _ => return String::new(),
    };
    message("ok", &text)
}

fn state_badge(state: &str) -> String {
    format!("<span class=\"badge st-{0}\">{0}</span>", esc(state))
}

/// The end of an id: v7 ids made close together share their first, time-ordered digits.
fn short(id: &Uuid) -> String {
    let s = id.to_string();
    format!("<code title=\"{s}\">…{}</code>", &s[s.len() - 8..])
}

// ------------------------------------------------------------------------------------------
// Overview

pub async fn overview(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Extension(cache): Extension<Arc<FiguresCache>>,
) -> Response {
    let now = Utc::now();
    let Some(figures) = cache.get(&s.app).await else {
        let b = "<div id=\"live\" data-refresh=\"2000\"><p>Counting jobs… this page \
                 updates itself.</p></div>";
        return super::html(
            StatusCode::OK,
            page("Overview", Nav::Overview, Some(&signed.viewer()), b),
        );
    };
    let (groups, activity, latency, health) = (
        &figures.groups,
        &figures.activity,
        &figures.latency,
        &figures.health,
    );
    let counts: Vec<(String, String, String, i64)> = groups
        .iter()
        .map(|g| (g.queue.clone(), g.kind.clone(), g.state.clone(), g.jobs))
        .collect();
    // Per queue: ready, scheduled (available, not due), running, oldest ready wait.
    let mut depths: BTreeMap<&str, (i64, i64, i64, Option<f64>)> = BTreeMap::new();
    for g in groups.iter() {
        let d = depths.entry(g.queue.as_str()).or_default();
        match g.state.as_str() {
            "available" => {
                d.0 += g.ready;
                d.1 += g.jobs - g.ready;
                d.3 = match (d.3, g.oldest_ready_secs) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            "running" => d.2 += g.jobs,
            _ => {}
        }
    }
    depths.retain(|_, d| d.0 + d.1 + d.2 > 0);
    let mut b = String::from("<div id=\"live\" data-refresh=\"5000\">");
    // Totals per state.
    let mut per_state: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, _, st, n) in &counts {
        *per_state.entry(st.as_str()).or_default() += n;
    }
    b.push_str("<section aria-labelledby=\"h-states\"><h2 id=\"h-states\">Jobs by state</h2><ul class=\"cards\">");
    for st in chainsync_engine::queue::admin::STATES {
        let n = per_state.get(st).copied().unwrap_or(0);
        let _ = write!(
            b,
            "<li><a href=\"/admin/jobs?state={st}\"><span class=\"n\">{}</span> {st}</a></li>",
            html::group(&n.to_string())
        );
    }
    let _ = write!(
        b,
        "<li><a href=\"/admin/dead\"><span class=\"n\">{}</span> dead letters</a></li></ul></section>",
        html::group(&health.dead_letters.to_string())
    );
    // Chart.
    b.push_str("<section aria-labelledby=\"h-act\"><h2 id=\"h-act\">Last hour, per minute</h2>");
    b.push_str(&chart(activity, figures.taken_at));
    let done: i64 = activity.iter().map(|a| a.completed).sum();
    let dead: i64 = activity.iter().map(|a| a.dead).sum();
    let _ = write!(
        b,
        "<p class=\"legend\"><span class=\"key ok\"></span> completed ({} in the hour) \
         <span class=\"key bad\"></span> dead-lettered ({} in the hour). Counts come from \
         retained jobs (maintenance.completed_retention).</p></section>",
        html::group(&done.to_string()),
        html::group(&dead.to_string())
    );
    // Latency and health.
    let _ = write!(
        b,
        "<section aria-labelledby=\"h-lat\"><h2 id=\"h-lat\">Enqueue to start</h2>\
         <p>{} jobs started and finished in the last hour: median {}, p95 {}, max {}.</p></section>",
        html::group(&latency.started.to_string()),
        latency.p50_secs.map_or("—".into(), html::secs),
        latency.p95_secs.map_or("—".into(), html::secs),
        latency.max_secs.map_or("—".into(), html::secs),
    );
    let _ = write!(
        b,
        "<section aria-labelledby=\"h-health\"><h2 id=\"h-health\">Health</h2>\
         <p class=\"score {}\">Score <strong>{}</strong>/100 ({})</p>\
         <table><caption>Inputs of the score</caption><tbody>\
         <tr><th scope=\"row\">database reachable</th><td>{}</td></tr>\
         <tr><th scope=\"row\">migrated</th><td>{}</td></tr>\
         <tr><th scope=\"row\">available jobs</th><td>{}</td></tr>\
         <tr><th scope=\"row\">running jobs</th><td>{}</td></tr>\
         <tr><th scope=\"row\">overdue (runnable &gt; 5 min)</th><td>{}</td></tr>\
         <tr><th scope=\"row\">dead letters</th><td>{}</td></tr>\
         <tr><th scope=\"row\">addresses with stale points</th><td>{}</td></tr>",
        if health.healthy { "good" } else { "poor" },
        health.score,
        if health.healthy {
            "healthy"
        } else {
            "unhealthy"
        },
        health.database,
        health.migrated,
        html::group(&health.queue_available.to_string()),
        html::group(&health.queue_running.to_string()),
        html::group(&health.queue_overdue.to_string()),
        html::group(&health.dead_letters.to_string()),
        health
            .points_lagging_addresses
            .map_or("—".into(), |n| n.to_string()),
    );
    for c in &health.chains {
        let _ = write!(
            b,
            "<tr><th scope=\"row\">chain {} ({}) newest balance</th><td>block {} · {} ago; \
             ingestion block {} · {}</td></tr>",
            c.chain_id,
            esc(&c.name),
            c.last_block.map_or("—".into(), |n| n.to_string()),
            c.sync_lag_seconds
                .map_or("—".into(), |n| html::secs(n as f64)),
            c.ingest_block.map_or("—".into(), |n| n.to_string()),
            c.ingest_lag_seconds
                .map_or("—".into(), |n| format!("{} ago", html::secs(n as f64))),
        );
    }
    b.push_str("</tbody></table>");
    if !health.problems.is_empty() {
        b.push_str("<ul class=\"problems\">");
        for p in &health.problems {
            let _ = write!(b, "<li>{}</li>", esc(p));
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
    // Queues.
    b.push_str(
        "<section aria-labelledby=\"h-q\"><h2 id=\"h-q\">Queues</h2><div class=\"scroll\"><table>\
         <thead><tr><th scope=\"col\">queue</th><th scope=\"col\">ready</th>\
         <th scope=\"col\">scheduled / backing off</th><th scope=\"col\">running</th>\
         <th scope=\"col\">oldest ready waits</th></tr></thead><tbody>",
    );
    if depths.is_empty() {
        b.push_str("<tr><td colspan=\"5\">No queued or running jobs.</td></tr>");
    }
    for (queue, (ready, scheduled, running, oldest)) in &depths {
        let _ = write!(
            b,
            "<tr><td><a href=\"/admin/jobs?queue={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html::enc(queue),
            esc(queue),
            html::group(&ready.to_string()),
            html::group(&scheduled.to_string()),
            html::group(&running.to_string()),
            oldest.map_or("—".into(), html::secs),
        );
    }
    b.push_str(
        "</tbody></table></div><p class=\"muted\"><a href=\"/admin/queues\">Queues</a>: \
         paused or not, limits, pause and resume.</p></section>",
    );
    // Queue × kind × state.
    b.push_str(
        "<section aria-labelledby=\"h-qk\"><h2 id=\"h-qk\">Jobs by queue, kind and state</h2>\
         <div class=\"scroll\"><table id=\"counts\"><thead><tr><th scope=\"col\">queue</th>\
         <th scope=\"col\">kind</th><th scope=\"col\">state</th><th scope=\"col\">jobs</th></tr></thead><tbody>",
    );
    for (queue, kind, st, n) in &counts {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/admin/jobs?{}\">{}</a></td></tr>",
            esc(queue),
            esc(kind),
            state_badge(st),
            query_string(&[
                ("state", st.clone()),
                ("kind", kind.clone()),
                ("queue", queue.clone())
            ]),
            html::group(&n.to_string())
        );
    }
    let _ = write!(
        b,
        "</tbody></table></div></section><p class=\"muted\">Figures taken {} ({} ago, at most \
         every {} s while someone looks); the page refreshes every 5 s.</p></div>",
        time(figures.taken_at),
        html::secs((now - figures.taken_at).num_milliseconds().max(0) as f64 / 1000.0),
        super::figures::FRESH.as_secs()
    );
    super::html(
        StatusCode::OK,
        page("Overview", Nav::Overview, Some(&signed.viewer()), &b),
    )
}

/// Bars per minute over the hour before `now`: completed up, dead-lettered down.
fn chart(
    activity: &[chainsync_engine::queue::browse::MinuteActivity],
    now: DateTime<Utc>,
) -> String {
    const W: i64 = 600;
    const H: i64 = 160;
    const MID: i64 = 120;
    let start = now - chrono::Duration::minutes(59);
    let start_min = start.timestamp().div_euclid(60);
    let max_up = activity
        .iter()
        .map(|a| a.completed)
        .max()
        .unwrap_or(0)
        .max(1);
    let max_down = activity.iter().map(|a| a.dead).max().unwrap_or(0).max(1);
    let mut s = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"Jobs completed and \
         dead-lettered per minute over the last hour\"><line x1=\"0\" y1=\"{MID}\" x2=\"{W}\" y2=\"{MID}\" class=\"axis\"/>"
    );
    for a in activity {
        let i = a.minute.timestamp().div_euclid(60) - start_min;
        if !(0..60).contains(&i) {
            continue;
        }
        let x = i * 10;
        let up = a.completed * (MID - 5) / max_up;
        let down = a.dead * (H - MID - 2) / max_down;
        let label = format!(
            "{}: {} completed, {} cancelled, {} dead-lettered",
            a.minute.format("%H:%M UTC"),
            a.completed,
            a.cancelled,
            a.dead
        );
        if up > 0 {
            let _ = write!(
                s,
                "<rect class=\"ok\" x=\"{x}\" y=\"{}\" width=\"8\" height=\"{up}\"><title>{}</title></rect>",
                MID - up,
                esc(&label)
            );
        }
        if down > 0 {
            let _ = write!(
                s,
                "<rect class=\"bad\" x=\"{x}\" y=\"{MID}\" width=\"8\" height=\"{down}\"><title>{}</title></rect>",
                esc(&label)
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"2\" y=\"12\" class=\"lbl\">{max_up}/min</text>\
         <text x=\"2\" y=\"{}\" class=\"lbl\">{}</text>\
         <text x=\"{}\" y=\"{}\" class=\"lbl\" text-anchor=\"end\">{}</text></svg>",
        H - 4,
        start.format("%H:%M UTC"),
        W - 2,
        H - 4,
        now.format("%H:%M UTC"),
    );
    s
}

// ------------------------------------------------------------------------------------------
// Jobs

fn jobs_form(s: &HttpState, raw: &Params) -> String {
    let kinds: Vec<String> = s
        .app
        .queue
        .kinds()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let states: Vec<String> = chainsync_engine::queue::admin::STATES
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    let g = |k: &str| {
        raw.get(k)
            .map(String::as_str)
            .unwrap_or_default()
            .to_string()
    };
    format!(
        "<form method=\"get\" action=\"/admin/jobs\" class=\"filters\" role=\"search\">{}{}{}{}{}{}{}\
         <button type=\"submit\">Apply</button> <a href=\"/admin/jobs\">Clear</a></form>",
        select("state", "State", &states, &g("state")),
        select("kind", "Kind", &kinds, &g("kind")),
        input("queue", "Queue", "text", &g("queue"), "default"),
        input(
            "q",
            "Text in args or errors",
            "search",
            &g("q"),
            "0xabc… or timeout"
        ),
        input(
            "from",
            "Created from (UTC)",
            "text",
            &g("from"),
            "2026-11-27 00:00"
        ),
        input(
            "to",
            "Created before (UTC)",
            "text",
            &g("to"),
            "2026-11-28 00:00"
        ),
        input("limit", "Per page", "number", &g("limit"), "50"),
    )
}

pub async fn jobs(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let p = params(q);
    let f = jobs_filter(&s, &p);
    let mut b = done_message(&p);
    b.push_str(&jobs_form(&s, &f.raw));
    if !f.errors.is_empty() {
        for e in &f.errors {
            b.push_str(&message("error", e));
        }
        return super::html(
            StatusCode::BAD_REQUEST,
            page("Jobs", Nav::Jobs, Some(&signed.viewer()), &b),
        );
    }
    let found = match s.app.queue.browse_jobs(&f.q, f.before, f.limit).await {
        Ok(r) => r,
        Err(e) => {
            let (st, m) = queue_error(e);
            b.push_str(&message("error", &m));
            return super::html(st, page("Jobs", Nav::Jobs, Some(&signed.viewer()), &b));
        }
    };
    let base = raw_query(&f.raw, &JOB_KEYS);
    let sep = if base.is_empty() { "" } else { "&" };
    if let Some(sr) = &found.searched {
        // A bounded search: say how far it looked, and offer to look further.
        let _ = write!(
            b,
            "<p class=\"msg msg-note\" id=\"searched\" role=\"status\">{} the {} newest jobs \
             {}(down to one created {}); older jobs were not searched. \
             <a href=\"/admin/jobs?{}{sep}before={}\" rel=\"next\">Search the next {} »</a></p>",
            if found.rows.is_empty() {
                "No match among"
            } else {
                "These are the matches among"
            },
            html::group(&sr.examined.to_string()),
            if f.before.is_some() {
                "before this page's starting point "
            } else {
                ""
            },
            time(sr.last_created_at),
            esc(&base),
            sr.last_id,
            html::group(&sr.examined.to_string()),
        );
    }
    b.push_str(&jobs_table(&found.rows));
    b.push_str("<nav class=\"pager\" aria-label=\"Pages\">");
    if f.before.is_some() {
        let _ = write!(b, "<a href=\"/admin/jobs?{}\">« Newest</a> ", esc(&base));
    }
    if found.more
        && let Some(last) = found.rows.last()
    {
        let _ = write!(
            b,
            "<a href=\"/admin/jobs?{}{sep}before={}\" rel=\"next\">Older »</a>",
            esc(&base),
            last.id
        );
    }
    b.push_str("</nav>");
    if signed.can_change() {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/admin/jobs/bulk\" class=\"bulk\">{}{}\
             <fieldset><legend>Bulk action on every job this filter selects</legend>\
             <label>Action<select name=\"action\"><option value=\"cancel\">Cancel</option>\
             <option value=\"retry\">Retry now</option><option value=\"delete\">Delete</option>\
             </select></label> <button type=\"submit\" id=\"bulk-review\">Review…</button>\
             </fieldset></form>",
            super::html::csrf_field(&signed.session.csrf),
            hidden_filter(&f.raw, &JOB_KEYS[..6]),
        );
    }
    super::html(
        StatusCode::OK,
        page("Jobs", Nav::Jobs, Some(&signed.viewer()), &b),
    )
}

fn jobs_table(rows: &[JobRow]) -> String {
    let mut b = String::from(
        "<div class=\"scroll\"><table id=\"jobs\"><thead><tr><th scope=\"col\">id</th>\
         <th scope=\"col\">kind</th><th scope=\"col\">queue</th><th scope=\"col\">state</th>\
         <th scope=\"col\">attempt</th><th scope=\"col\">created</th><th scope=\"col\">runs at</th>\
         <th scope=\"col\">last error</th></tr></thead><tbody>",
    );
    if rows.is_empty() {
        b.push_str("<tr><td colspan=\"8\">No jobs match.</td></tr>");
    }
    for j in rows {
        let _ = write!(
            b,
            "<tr id=\"job-{}\"><td><a href=\"/admin/jobs/{}\">{}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            j.id,
            j.id,
            short(&j.id),
            esc(&j.kind),
            esc(&j.queue),
            state_badge(&j.state),
            j.attempt,
            j.max_attempts,
            time(j.created_at),
            time(j.run_at),
            esc(&clip(&last_error(&j.errors), 120)),
        );
    }
    b.push_str("</tbody></table></div>");
    b
}

pub async fn jobs_bulk(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    f: Result<Form<Params>, FormRejection>,
) -> Response {
    let p = form(f);
    if !csrf_ok(&p, &signed) {
        return csrf_refused();
    }
    let filter = jobs_filter(&s, &p);
    let back = format!("/admin/jobs?{}", raw_query(&filter.raw, &JOB_KEYS));
    let fail = |st: StatusCode, m: &str| {
        super::html(
            st,
            page(
                "Bulk action",
                Nav::Jobs,
                Some(&signed.viewer()),
                &format!(
                    "{}<p><a href=\"{}\">Back to the jobs</a></p>",
                    message("error", m),
                    esc(&back)
                ),
            ),
        )
    };
    let Some(action) = BulkJobAction::parse(get(&p, "action")) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "action: choose cancel, retry or delete",
        );
    };
    if let Some(e) = filter.errors.first() {
        return fail(StatusCode::BAD_REQUEST, e);
    }
    if get(&p, "confirm").is_empty() {
        let n = match s.app.queue.count_jobs_for(&filter.q, action).await {
            Ok(n) => n,
            Err(e) => {
                let (st, m) = queue_error(e);
                return fail(st, &m);
            }
        };
        let verb = match action {
            BulkJobAction::Cancel => "Cancel",
            BulkJobAction::Retry => "Retry now",
            BulkJobAction::Delete => "Delete",
        };
        let applies = match action {
            BulkJobAction::Cancel => "available or running",
            BulkJobAction::Retry => "available or cancelled",
            BulkJobAction::Delete => "not running",
        };
        let body = format!(
            "<p id=\"confirm-text\">{verb} <strong>{}</strong> job(s): those the filter \
             <code>{}</code> selects that are {applies}.</p>\
             <form method=\"post\" action=\"/admin/jobs/bulk\">{}{}{}{}\
             <button type=\"submit\" class=\"danger\" id=\"bulk-confirm\">{verb} {} job(s)</button> \
             <a href=\"{}\">Back</a></form>",
            html::group(&n.to_string()),
            esc(&describe(&filter.raw, &JOB_KEYS[..6])),
            super::html::csrf_field(&signed.session.csrf),
            hidden_filter(&filter.raw, &JOB_KEYS[..6]),
            hidden("action", action.as_str()),
            hidden("confirm", &n.to_string()),
            html::group(&n.to_string()),
            esc(&back),
        );
        return super::html(
            StatusCode::OK,
            page("Confirm", Nav::Jobs, Some(&signed.viewer()), &body),
        );
    }
    match s.app.queue.bulk_jobs(&filter.q, action).await {
        Ok(n) => {
            tracing::info!(
                action = action.as_str(),
                jobs = n,
                "console: bulk action on jobs"
            );
            let sep = if back.ends_with('?') { "" } else { "&" };
            Redirect::to(&format!("{back}{sep}done={}&n={n}", action.as_str())).into_response()
        }
        Err(e) => {
            let (st, m) = queue_error(e);
            fail(st, &m)
        }
    }
}

fn describe(raw: &Params, keys: &[&str]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .filter_map(|k| raw.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    if parts.is_empty() {
        "(none: every job)".into()
    } else {
        parts.join(", ")
    }
}

/// The run a job is in, or ended with, beside its failed attempts: (attempt, started, finished,
/// state).
type LastRun<'a> = (i32, DateTime<Utc>, Option<DateTime<Utc>>, &'a str);

fn rfc3339(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Every attempt: the failed ones from the job's error history (when each started and ended,
/// how long it ran as its worker measured, its error), then the run that succeeded or runs now.
fn attempts_table(errors: &Value, last: Option<LastRun<'_>>) -> String {
    let mut b = String::from(
        "<div class=\"scroll\"><table id=\"attempts\"><thead><tr><th scope=\"col\">attempt</th>\
         <th scope=\"col\">started</th><th scope=\"col\">ended</th><th scope=\"col\">ran for</th>\
         <th scope=\"col\">outcome</th><th scope=\"col\">error</th></tr></thead><tbody>",
    );
    let list = errors.as_array().cloned().unwrap_or_default();
    if list.is_empty() && last.is_none() {
        b.push_str("<tr><td colspan=\"6\">Not run yet.</td></tr>");
    }
    for e in &list {
        let field = |k: &str| match e.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let started = rfc3339(e.get("started_at"));
        let ended = rfc3339(e.get("at"));
        let ran = match (e.get("ran_ms").and_then(Value::as_f64), started, ended) {
            (Some(ms), _, _) => html::secs(ms / 1000.0),
            // A lost run (lease expired): how long until it was found lost.
            (None, Some(s), Some(t)) => format!(
                "lost after {}",
                html::secs((t - s).num_milliseconds().max(0) as f64 / 1000.0)
            ),
            _ => "—".into(),
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{ran}</td><td>{}</td>\
             <td class=\"err\"><pre>{}</pre></td></tr>",
            esc(&field("attempt")),
            opt_time(started),
            ended.map_or_else(|| esc(&field("at")), time),
            state_badge(&field("class")),
            esc(&field("error"))
        );
    }
    if let Some((attempt, started, finished, state)) = last {
        let (ended, ran) = match finished {
            Some(f) => (
                time(f),
                html::secs((f - started).num_milliseconds().max(0) as f64 / 1000.0),
            ),
            None => (
                "—".into(),
                format!(
                    "{} so far",
                    html::secs((Utc::now() - started).num_milliseconds().max(0) as f64 / 1000.0)
                ),
            ),
        };
        let _ = write!(
            b,
            "<tr class=\"last-run\"><td>{attempt}</td><td>{}</td><td>{ended}</td><td>{ran}</td>\
             <td>{}</td><td></td></tr>",
            time(started),
            state_badge(state),
        );
    }
    b.push_str("</tbody></table></div>");
    b
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

pub async fn job(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let p = params(q);
    job_page(&s, &signed, &id, done_message(&p), StatusCode::OK).await
}

async fn job_page(
    s: &HttpState,
    signed: &Signed,
    id: &str,
    notice: String,
    status: StatusCode,
) -> Response {
    let v = signed.viewer();
    let Ok(uuid) = Uuid::parse_str(id) else {
        return super::html(
            StatusCode::BAD_REQUEST,
            page(
                "Job",
                Nav::Jobs,
                Some(&v),
                &message("error", &format!("{id:?} is not a job id")),
            ),
        );
    };
    let j = match s.app.queue.get_job(uuid).await {
        Ok(j) => j,
        Err(QueueError::NotFound(_)) => {
            // Perhaps it died: its dead letter has the same id.
            if s.app.queue.get_dead(uuid).await.is_ok() {
                return Redirect::to(&format!("/admin/dead/{uuid}")).into_response();
            }
            return super::html(
                StatusCode::NOT_FOUND,
                page(
                    "Job",
                    Nav::Jobs,
                    Some(&v),
                    &message(
                        "error",
                        &format!(
                            "job {uuid} not found (finished jobs are pruned after the retention)"
                        ),
                    ),
                ),
            );
        }
        Err(e) => {
            let (st, m) = queue_error(e);
            return super::html(st, page("Job", Nav::Jobs, Some(&v), &message("error", &m)));
        }
    };
    // The run under way, or the one that ended the job (not a failed one: those are in the
    // error history).
    let failed = j.errors.as_array().map_or(0, Vec::len);
    let last_run = match (j.state.as_str(), j.started_at) {
        ("running", Some(t)) => Some((j.attempt, t, None, "running")),
        ("completed" | "cancelled", Some(t))
            if j.finished_at.is_some_and(|f| f >= t)
                && usize::try_from(j.attempt).is_ok_and(|a| a > failed) =>
        {
            Some((j.attempt, t, j.finished_at, j.state.as_str()))
        }
        _ => None,
    };
    let mut b = notice;
    let _ = write!(
        b,
        "<dl class=\"facts\"><dt>id</dt><dd><code>{}</code></dd><dt>kind</dt><dd>{}</dd>\
         <dt>queue</dt><dd>{}</dd><dt>state</dt><dd>{}</dd><dt>attempt</dt><dd>{} of {}</dd>\
         <dt>priority</dt><dd>{}</dd><dt>unique key</dt><dd>{}</dd><dt>lease</dt><dd>{}</dd></dl>",
        j.id,
        esc(&j.kind),
        esc(&j.queue),
        state_badge(&j.state),
        j.attempt,
        j.max_attempts,
        j.priority,
        j.unique_key.as_deref().map_or("—".into(), esc),
        match (j.lease_owner, j.lease_expires_at) {
            (Some(o), Some(t)) => format!("worker {} until {}", short(&o), time(t)),
            _ => "—".into(),
        },
    );
    let _ = write!(
        b,
        "<h2>Timeline</h2><ol class=\"timeline\"><li>created {}</li><li>runs at {}</li>\
         <li>started {}</li><li>finished {}</li></ol>",
        time(j.created_at),
        time(j.run_at),
        opt_time(j.started_at),
        opt_time(j.finished_at)
    );
    if signed.can_change() {
        b.push_str("<div class=\"actions\">");
        if matches!(j.state.as_str(), "available" | "running") {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/admin/jobs/{}/cancel\">{}<button type=\"submit\" class=\"danger\">Cancel</button></form>",
                j.id,
                super::html::csrf_field(&signed.session.csrf)
            );
        }
        if matches!(j.state.as_str(), "available" | "cancelled" | "completed") {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/admin/jobs/{}/retry\">{}<button type=\"submit\">Retry now</button></form>",
                j.id,
                super::html::csrf_field(&signed.session.csrf)
            );
        }
        b.push_str("</div>");
    }
    let _ = write!(
        b,
        "<h2>Arguments</h2><pre class=\"json\">{}</pre><h2>Attempts</h2>{}<p class=\"muted\">\
         A failed attempt's time is measured by its worker; the last run's, from its start to the \
         recording of its outcome. Successful runs of a job that ran again (retried by hand) are \
         not kept.</p>",
        esc(&pretty(&j.args)),
        attempts_table(&j.errors, last_run)
    );
    super::html(
        status,
        page(
            &format!("Job {}", &id[..id.len().min(8)]),
            Nav::Jobs,
            Some(&v),
            &b,
        ),
    )
}

pub async fn job_action(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Path((id, action)): Path<(String, String)>,
    f: Result<Form<Params>, FormRejection>,
) -> Response {
    let p = form(f);
    if !csrf_ok(&p, &signed) {
        return csrf_refused();
    }
    let Ok(uuid) = Uuid::parse_str(&id) else {
        return job_page(&s, &signed, &id, String::new(), StatusCode::BAD_REQUEST).await;
    };
    let (res, done) = match action.as_str() {
        "cancel" => (s.app.queue.cancel_job(uuid).await, "cancelled"),
        "retry" => (s.app.queue.retry_job(uuid).await, "retried"),
        _ => {
            return job_page(
                &s,
                &signed,
                &id,
                message("error", &format!("unknown action {action:?}")),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    match res {
        Ok(()) => {
            tracing::info!(job = %uuid, action = %action, "console: job action");
            Redirect::to(&format!("/admin/jobs/{uuid}?done={done}")).into_response()
        }
        Err(e) => {
            let (st, m) = queue_error(e);
            job_page(&s, &signed, &id, message("error", &m), st).await
        }
    }
}

// ------------------------------------------------------------------------------------------
// Dead letters

const DEAD_KEYS: [&str; 6] = ["kind", "queue", "q", "from", "to", "limit"];

struct DeadFilter {
    q: DeadQuery,
    before: Option<DeadCursor>,
    limit: i64,
    errors: Vec<String>,
    raw: Params,
}

fn dead_filter(s: &HttpState, p: &Params) -> DeadFilter {
    let mut errors = Vec::new();
    let kind = opt(p, "kind");
    if let Some(k) = &kind
        && !s.app.queue.kinds().names().contains(&k.as_str())
    {
        errors.push(format!("kind: {k:?} is not a known kind"));
    }
    let from = parse_time("from", get(p, "from")).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let to = parse_time("to", get(p, "to")).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        errors.push("the time range is empty: from must be before to".into());
    }
    let before = match get(p, "before") {
        "" => None,
        b => match b
            .split_once('_')
            .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, Uuid::parse_str(id).ok()?)))
            .and_then(|(t, id)| {
                Some(DeadCursor {
                    failed_at: DateTime::from_timestamp_micros(t)?,
                    id,
                })
            }) {
            Some(c) => Some(c),
            None => {
                errors.push(format!("before: {b:?} is not a page position"));
                None
            }
        },
    };
    let limit = parse_limit(p, &mut errors);
    DeadFilter {
        q: DeadQuery {
            kind,
            queue: opt(p, "queue"),
            text: opt(p, "q"),
            from,
            to,
        },
        before,
        limit,
        errors,
        raw: DEAD_KEYS
            .iter()
            .filter_map(|k| opt(p, k).map(|v| ((*k).to_string(), v)))
            .collect(),
    }
}

fn dead_form(s: &HttpState, raw: &Params) -> String {
    let kinds: Vec<String> = s
        .app
        .queue
        .kinds()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let g = |k: &str| {
        raw.get(k)
            .map(String::as_str)
            .unwrap_or_default()
            .to_string()
    };
    format!(
        "<form method=\"get\" action=\"/admin/dead\" class=\"filters\" role=\"search\">{}{}{}{}{}{}\
         <button type=\"submit\">Apply</button> <a href=\"/admin/dead\">Clear</a></form>",
        select("kind", "Kind", &kinds, &g("kind")),
        input("queue", "Queue", "text", &g("queue"), "default"),
        input(
            "q",
            "Text in args or errors",
            "search",
            &g("q"),
            "0xabc… or timeout"
        ),
        input(
            "from",
            "Failed from (UTC)",
            "text",
            &g("from"),
            "2026-11-27 00:00"
        ),
        input(
            "to",
            "Failed before (UTC)",
            "text",
            &g("to"),
            "2026-11-28 00:00"
        ),
        input("limit", "Per page", "number", &g("limit"), "50"),
    )
}

pub async fn dead(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let p = params(q);
    let f = dead_filter(&s, &p);
    let v = signed.viewer();
    let mut b = done_message(&p);
    b.push_str(&dead_form(&s, &f.raw));
    if !f.errors.is_empty() {
        for e in &f.errors {
            b.push_str(&message("error", e));
        }
        return super::html(
            StatusCode::BAD_REQUEST,
            page("Dead letters", Nav::Dead, Some(&v), &b),
        );
    }
    let rows = match s.app.queue.browse_dead(&f.q, f.before, f.limit + 1).await {
        Ok(r) => r,
        Err(e) => {
            let (st, m) = queue_error(e);
            b.push_str(&message("error", &m));
            return super::html(st, page("Dead letters", Nav::Dead, Some(&v), &b));
        }
    };
    let lim = usize::try_from(f.limit).unwrap_or(usize::MAX);
    let more = rows.len() > lim;
    let rows = &rows[..rows.len().min(lim)];
    b.push_str(&dead_table(
        rows,
        signed.can_change().then_some(signed.session.csrf.as_str()),
    ));
    let base = raw_query(&f.raw, &DEAD_KEYS);
    b.push_str("<nav class=\"pager\" aria-label=\"Pages\">");
    if f.before.is_some() {
        let _ = write!(b, "<a href=\"/admin/dead?{}\">« Newest</a> ", esc(&base));
    }
    if more && let Some(last) = rows.last() {
        let sep = if base.is_empty() { "" } else { "&" };
        let _ = write!(
            b,
            "<a href=\"/admin/dead?{}{sep}before={}_{}\" rel=\"next\">Older »</a>",
            esc(&base),
            last.failed_at.timestamp_micros(),
            last.id
        );
    }
    b.push_str("</nav>");
    if signed.can_change() {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/admin/dead/bulk\" class=\"bulk\">{}{}\
             <fieldset><legend>Bulk action on every dead letter this filter selects</legend>\
             <label>Action<select name=\"action\"><option value=\"replay\">Replay</option>\
             <option value=\"purge\">Purge</option></select></label> \
             <button type=\"submit\" id=\"dead-bulk-review\">Review…</button></fieldset></form>",
            super::html::csrf_field(&signed.session.csrf),
            hidden_filter(&f.raw, &DEAD_KEYS[..5]),
        );
    }
    super::html(
        StatusCode::OK,
        page("Dead letters", Nav::Dead, Some(&v), &b),
    )
}

fn dead_table(rows: &[DeadLetter], csrf: Option<&str>) -> String {
    let mut b = String::from(
        "<div class=\"scroll\"><table id=\"dead\"><thead><tr><th scope=\"col\">id</th>\
         <th scope=\"col\">kind</th><th scope=\"col\">queue</th><th scope=\"col\">reason</th>\
         <th scope=\"col\">attempts</th><th scope=\"col\">failed</th><th scope=\"col\">last error</th>",
    );
    if csrf.is_some() {
        b.push_str("<th scope=\"col\"><span class=\"sr\">actions</span></th>");
    }
    b.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        b.push_str("<tr><td colspan=\"8\">No dead letters match.</td></tr>");
    }
    for d in rows {
        let _ = write!(
            b,
            "<tr id=\"dl-{}\"><td><a href=\"/admin/dead/{}\">{}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}/{}</td><td>{}</td><td class=\"err\">{}</td>",
            d.id,
            d.id,
            short(&d.id),
            esc(&d.kind),
            esc(&d.queue),
            esc(&d.reason),
            d.attempt,
            d.max_attempts,
            time(d.failed_at),
            esc(&clip(&last_error(&d.errors), 120)),
        );
        if let Some(c) = csrf {
            let _ = write!(
                b,
                "<td><form method=\"post\" action=\"/admin/dead/{}/replay\">{}\
                 <button type=\"submit\" class=\"replay\">Replay</button></form></td>",
                d.id,
                super::html::csrf_field(c)
            );
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table></div>");
    b
}

pub async fn dead_bulk(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    f: Result<Form<Params>, FormRejection>,
) -> Response {
    let p = form(f);
    if !csrf_ok(&p, &signed) {
        return csrf_refused();
    }
    let filter = dead_filter(&s, &p);
    let back = format!("/admin/dead?{}", raw_query(&filter.raw, &DEAD_KEYS));
    let fail = |st: StatusCode, m: &str| {
        super::html(
            st,
            page(
                "Bulk action",
                Nav::Dead,
                Some(&signed.viewer()),
                &format!(
                    "{}<p><a href=\"{}\">Back to the dead letters</a></p>",
                    message("error", m),
                    esc(&back)
                ),
            ),
        )
    };
    let action = get(&p, "action");
    if action != "replay" && action != "purge" {
        return fail(StatusCode::BAD_REQUEST, "action: choose replay or purge");
    }
    if let Some(e) = filter.errors.first() {
        return fail(StatusCode::BAD_REQUEST, e);
    }
    if get(&p, "confirm").is_empty() {
        let n = match s.app.queue.count_dead_matching(&filter.q).await {
            Ok(n) => n,
            Err(e) => {
                let (st, m) = queue_error(e);
                return fail(st, &m);
            }
        };
        let verb = if action == "replay" {
            "Replay"
        } else {
            "Purge"
        };
        let note = if action == "replay" {
            format!(
                " At most {REPLAY_CAP} per action; dead letters whose unique key an active job holds stay."
            )
        } else {
            " Purged dead letters are gone for good.".into()
        };
        let body = format!(
            "<p id=\"confirm-text\">{verb} <strong>{}</strong> dead letter(s) selected by <code>{}</code>.{}</p>\
             <form method=\"post\" action=\"/admin/dead/bulk\">{}{}{}{}\
             <button type=\"submit\" class=\"danger\" id=\"bulk-confirm\">{verb} {} dead letter(s)</button> \
             <a href=\"{}\">Back</a></form>",
            html::group(&n.to_string()),
            esc(&describe(&filter.raw, &DEAD_KEYS[..5])),
            esc(&note),
            super::html::csrf_field(&signed.session.csrf),
            hidden_filter(&filter.raw, &DEAD_KEYS[..5]),
            hidden("action", action),
            hidden("confirm", &n.to_string()),
            html::group(&n.to_string()),
            esc(&back)
        );
        return super::html(
            StatusCode::OK,
            page("Confirm", Nav::Dead, Some(&signed.viewer()), &body),
        );
    }
    let res = if action == "replay" {
        s.app
            .queue
            .replay_matching(&filter.q, REPLAY_CAP)
            .await
            .map(|ids| ids.len() as u64)
    } else {
        s.app.queue.purge_matching(&filter.q).await
    };
    match res {
        Ok(n) => {
            tracing::info!(
                action,
                dead_letters = n,
                "console: bulk action on dead letters"
            );
            let sep = if back.ends_with('?') { "" } else { "&" };
            Redirect::to(&format!("{back}{sep}done={action}&n={n}")).into_response()
        }
        Err(e) => {
            let (st, m) = queue_error(e);
            fail(st, &m)
        }
    }
}

const REPLAY_CAP: i64 = 10_000;

pub async fn dead_one(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
) -> Response {
    dead_page(&s, &signed, &id, String::new(), StatusCode::OK).await
}

async fn dead_page(
    s: &HttpState,
    signed: &Signed,
    id: &str,
    notice: String,
    status: StatusCode,
) -> Response {
    let v = signed.viewer();
    let Ok(uuid) = Uuid::parse_str(id) else {
        return super::html(
            StatusCode::BAD_REQUEST,
            page(
                "Dead letter",
                Nav::Dead,
                Some(&v),
                &message("error", &format!("{id:?} is not an id")),
            ),
        );
    };
    let d = match s.app.queue.get_dead(uuid).await {
        Ok(d) => d,
        Err(QueueError::NotFound(_)) => {
            if s.app.queue.get_job(uuid).await.is_ok() {
                return Redirect::to(&format!("/admin/jobs/{uuid}")).into_response();
            }
            return super::html(
                StatusCode::NOT_FOUND,
                page(
                    "Dead letter",
                    Nav::Dead,
                    Some(&v),
                    &message("error", &format!("dead letter {uuid} not found")),
                ),
            );
        }
        Err(e) => {
            let (st, m) = queue_error(e);
            return super::html(
                st,
                page("Dead letter", Nav::Dead, Some(&v), &message("error", &m)),
            );
        }
    };
    let mut b = notice;
    let _ = write!(
        b,
        "<dl class=\"facts\"><dt>id</dt><dd><code>{}</code></dd><dt>kind</dt><dd>{}</dd>\
         <dt>queue</dt><dd>{}</dd><dt>reason</dt><dd>{}</dd><dt>attempts</dt><dd>{} of {}</dd>\
         <dt>created</dt><dd>{}</dd><dt>failed</dt><dd>{}</dd><dt>unique key</dt><dd>{}</dd></dl>",
        d.id,
        esc(&d.kind),
        esc(&d.queue),
        esc(&d.reason),
        d.attempt,
        d.max_attempts,
        time(d.created_at),
        time(d.failed_at),
        d.unique_key.as_deref().map_or("—".into(), esc),
    );
    if signed.can_change() {
        let _ = write!(
            b,
            "<div class=\"actions\"><form method=\"post\" action=\"/admin/dead/{0}/replay\">{1}\
             <button type=\"submit\" class=\"replay\">Replay</button></form>\
             <form method=\"post\" action=\"/admin/dead/{0}/purge\">{1}\
             <button type=\"submit\" class=\"danger\">Purge</button></form></div>",
            d.id,
            super::html::csrf_field(&signed.session.csrf)
        );
    }
    let _ = write!(
        b,
        "<h2>Arguments</h2><pre class=\"json\">{}</pre><h2>Every attempt</h2>{}",
        esc(&pretty(&d.args)),
        attempts_table(&d.errors, None)
    );
    super::html(status, page("Dead letter", Nav::Dead, Some(&v), &b))
}

pub async fn dead_action(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Path((id, action)): Path<(String, String)>,
    f: Result<Form<Params>, FormRejection>,
) -> Response {
    let p = form(f);
    if !csrf_ok(&p, &signed) {
        return csrf_refused();
    }
    let Ok(uuid) = Uuid::parse_str(&id) else {
        return dead_page(&s, &signed, &id, String::new(), StatusCode::BAD_REQUEST).await;
    };
    let res = match action.as_str() {
        "replay" => s.app.queue.replay(uuid).await.map(|_| ()),
        "purge" => s
            .app
            .queue
            .purge(Some(uuid), None, None, false)
            .await
            .map(|_| ()),
        _ => {
            return dead_page(
                &s,
                &signed,
                &id,
                message("error", &format!("unknown action {action:?}")),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    match res {
        Ok(()) => {
            tracing::info!(dead_letter = %uuid, action = %action, "console: dead-letter action");
            Redirect::to(&format!("/admin/dead?done={action}&n=1")).into_response()
        }
        Err(e) => {
            let (st, m) = queue_error(e);
            dead_page(&s, &signed, &id, message("error", &m), st).await
        }
    }
}

// ------------------------------------------------------------------------------------------
// Chain data

pub async fn chain(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let p = params(q);
    let v = signed.viewer();
    let given = get(&p, "address");
    let mut b = format!(
        "<form method=\"get\" action=\"/admin/chain\" class=\"filters\" role=\"search\">{}\
         <button type=\"submit\">Look up</button></form>",
        input("address", "Address", "text", given, "0x… or T…")
    );
    if given.is_empty() {
        return super::html(StatusCode::OK, page("Chain data", Nav::Chain, Some(&v), &b));
    }
    // Any form: the lookup spans every chain, and a TRON account is the same 20 bytes.
    let address = match chainsync_jobs::ids::parse_address_any(given) {
        Ok(a) => chainsync_jobs::ids::address_text(&a),
        Err(e) => {
            b.push_str(&message("error", &format!("address: {e}")));
            return super::html(
                StatusCode::BAD_REQUEST,
                page("Chain data", Nav::Chain, Some(&v), &b),
            );
        }
    };
    let domain = &s.app.config.domain;
    let chains: Vec<i64> = domain
        .chains
        .iter()
        .filter_map(|c| i64::try_from(c.chain_id).ok())
        .collect();
    let r = match chainsync_jobs::console::address_report(s.app.read_pool(), &chains, &address, 100)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "console: address lookup failed");
            return unavailable();
        }
    };
    let token_of = |chain_id: i64, token: &str| -> Option<(String, u8)> {
        domain.tokens.iter().find_map(|t| {
            let key = t.key().text();
            (i64::try_from(t.chain_id).ok()? == chain_id && key == token)
                .then(|| (t.symbol.clone(), t.decimals))
        })
    };
    let amt = |chain_id: i64, token: &str, raw: &str| {
        let t = token_of(chain_id, token);
        html::amount(raw, t.as_ref().map(|(s, d)| (s.as_str(), *d)))
    };
    let chain_name = |id: i64| {
        domain
            .chains
            .iter()
            .find(|c| i64::try_from(c.chain_id).ok() == Some(id))
            .map_or_else(|| id.to_string(), |c| format!("{} ({id})", c.name))
    };
    // Addresses in each chain's own form: base58check on TRON chains.
    let family = |chain_id: i64| domain.family(u64::try_from(chain_id).unwrap_or(0));
    let tok = |chain_id: i64, token: &str| {
        let shown = family(chain_id).show_stored(token);
        token_of(chain_id, token).map_or_else(
            || format!("<code>{}</code>", esc(&shown)),
            |(sym, _)| format!("{} <code class=\"raw\">{}</code>", esc(&sym), esc(&shown)),
        )
    };
    let tron_form = if domain
        .chains
        .iter()
        .any(|c| c.family == chainsync_jobs::ids::ChainFamily::Tron)
    {
        format!(
            " (<code>{}</code> on TRON chains)",
            esc(&chainsync_jobs::ids::ChainFamily::Tron.show_stored(&address))
        )
    } else {
        String::new()
    };
    let _ = write!(
        b,
        "<p>Address <code>{}</code>{tron_form} — {}.</p>",
        esc(&address),
        if r.tracked {
            "tracked"
        } else {
            "not in tracked_addresses"
        }
    );
    b.push_str("<h2 id=\"h-bal\">Balances</h2><div class=\"scroll\"><table id=\"balances\"><thead><tr><th scope=\"col\">chain</th><th scope=\"col\">token</th><th scope=\"col\">amount</th><th scope=\"col\">block</th><th scope=\"col\">updated</th><th scope=\"col\">lag</th></tr></thead><tbody>");
    if r.balances.is_empty() {
        b.push_str("<tr><td colspan=\"6\">No stored balance.</td></tr>");
    }
    let now = Utc::now();
    for x in &r.balances {
        let lag = (now - x.updated_at).num_milliseconds() as f64 / 1000.0;
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&chain_name(x.chain_id)),
            tok(x.chain_id, &x.token),
            amt(x.chain_id, &x.token, &x.amount),
            esc(&x.block_hash),
            x.block_number,
            time(x.updated_at),
            html::secs(lag),
        );
    }
    b.push_str("</tbody></table></div>");
    b.push_str("<h2>Balance history</h2><div class=\"scroll\"><table id=\"changes\"><thead><tr><th scope=\"col\">chain</th><th scope=\"col\">token</th><th scope=\"col\">block</th><th scope=\"col\">block time</th><th scope=\"col\">from</th><th scope=\"col\">to</th><th scope=\"col\">seen by</th></tr></thead><tbody>");
    if r.changes.is_empty() {
        b.push_str("<tr><td colspan=\"7\">No recorded change.</td></tr>");
    }
    for c in &r.changes {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&chain_name(c.chain_id)),
            tok(c.chain_id, &c.token),
            c.block_number,
            c.block_time
                .map_or_else(|| format!("seen {}", time(c.observed_at)), time),
            c.old_amount
                .as_deref()
                .map_or("first seen".into(), |a| amt(c.chain_id, &c.token, a)),
            amt(c.chain_id, &c.token, &c.new_amount),
            esc(&c.source),
        );
    }
    b.push_str("</tbody></table></div>");
    b.push_str("<h2>Points per window</h2><div class=\"scroll\"><table id=\"points\"><thead><tr><th scope=\"col\">chain</th><th scope=\"col\">token</th><th scope=\"col\">window (1 h from)</th><th scope=\"col\">time-weighted balance</th><th scope=\"col\">points</th><th scope=\"col\">computed</th></tr></thead><tbody>");
    if r.points.is_empty() {
        b.push_str("<tr><td colspan=\"6\">No points window computed.</td></tr>");
    }
    for x in &r.points {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&chain_name(x.chain_id)),
            tok(x.chain_id, &x.token),
            time(x.window_start),
            amt(x.chain_id, &x.token, &x.twab),
            esc(&html::group(&x.points)),
            time(x.computed_at),
        );
    }
    b.push_str("</tbody></table></div>");
    b.push_str("<h2>Reconcile: mismatches and repairs</h2><div class=\"scroll\"><table id=\"mismatches\"><thead><tr><th scope=\"col\">found</th><th scope=\"col\">chain</th><th scope=\"col\">token</th><th scope=\"col\">block</th><th scope=\"col\">stored</th><th scope=\"col\">on chain</th><th scope=\"col\">difference</th><th scope=\"col\">repair</th></tr></thead><tbody>");
    if r.mismatches.is_empty() {
        b.push_str("<tr><td colspan=\"8\">No mismatch recorded.</td></tr>");
    }
    for m in &r.mismatches {
        let repair = match (&m.repaired_at, &m.repaired_to) {
            (Some(t), Some(to)) => format!(
                "set to {} at {} ({})",
                amt(m.chain_id, &m.token, to),
                time(*t),
                esc(m.repair_reason.as_deref().unwrap_or_default())
            ),
            _ => "not repaired".into(),
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td></tr>",
            time(m.found_at),
            esc(&chain_name(m.chain_id)),
            tok(m.chain_id, &m.token),
            m.block_number,
            m.stored_amount
                .as_deref()
                .map_or("none".into(), |a| amt(m.chain_id, &m.token, a)),
            amt(m.chain_id, &m.token, &m.chain_amount),
            amt(m.chain_id, &m.token, &m.difference),
            if m.above_threshold {
                " <span class=\"badge st-bad\">above threshold</span>"
            } else {
                ""
            },
            repair,
        );
    }
    b.push_str("</tbody></table></div>");
    b.push_str("<h2>Tracked transactions</h2><div class=\"scroll\"><table id=\"txs\"><thead><tr><th scope=\"col\">chain</th><th scope=\"col\">hash</th><th scope=\"col\">state</th><th scope=\"col\">block</th><th scope=\"col\">confirmations</th><th scope=\"col\">first seen</th><th scope=\"col\">error</th></tr></thead><tbody>");
    if r.txs.is_empty() {
        b.push_str("<tr><td colspan=\"7\">No tracked transaction touches this address.</td></tr>");
    }
    for t in &r.txs {
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            esc(&chain_name(t.chain_id)),
            esc(&t.hash),
            state_badge(&t.state),
            t.block_number.map_or("—".into(), |n| n.to_string()),
            t.confirmations,
            time(t.first_seen),
            esc(t.error.as_deref().unwrap_or_default()),
        );
    }
    b.push_str("</tbody></table></div>");
    super::html(StatusCode::OK, page("Chain data", Nav::Chain, Some(&v), &b))
}
