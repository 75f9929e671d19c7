//! The console's controls: queues (paused or not, depth, limits; pause and resume) and schedules
//! (next runs in their zone, last run and outcome; run now, switch off and on). Changes go
//! through the engine's control functions, so every daemon on the database follows them.

use std::{collections::BTreeMap, collections::BTreeSet, fmt::Write as _, sync::Arc};

use axum::{
    Extension, Form,
    extract::{Path, Query, State, rejection::FormRejection, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chainsync_engine::scheduler::{self, Spec};
use chrono::Utc;

use super::{
    Signed, csrf_ok, csrf_refused,
    figures::FiguresCache,
    html::{self, Nav, esc, message, page, time},
    unavailable,
};
use crate::http::HttpState;

type Params = BTreeMap<String, String>;

fn done(p: &Params) -> String {
    let name = p.get("name").map(String::as_str).unwrap_or_default();
    let text = match p.get("done").map(String::as_str).unwrap_or_default() {
        "paused" => format!("Queue {name} is paused: no daemon takes its jobs now."),
        "resumed" => format!("Queue {name} is running again."),
        "already-paused" => format!("Queue {name} was paused already."),
        "not-paused" => format!("Queue {name} was not paused."),
        "run" => format!(
            "Schedule {name}: its job is queued to run now ({}).",
            p.get("job").map(String::as_str).unwrap_or_default()
        ),
        "waiting" => format!(
            "Schedule {name}: a job it queued earlier still waits to start ({}); \
             no second one was queued.",
            p.get("job").map(String::as_str).unwrap_or_default()
        ),
        "enabled" => format!("Schedule {name} is switched on for every daemon."),
        "disabled" => {
            format!("Schedule {name} is switched off for every daemon: it enqueues nothing.")
        }
        "unchanged" => format!("Schedule {name} was in that state already."),
        _ => return String::new(),
    };
    message("ok", &text)
}

fn back_with(path: &str, pairs: &[(&str, String)]) -> Response {
    Redirect::to(&format!("{path}?{}", html::query_string(pairs))).into_response()
}

fn limit_text(concurrency: Option<i32>, rate: Option<f64>, burst: Option<f64>) -> String {
    let mut parts = Vec::new();
    if let Some(c) = concurrency {
        parts.push(format!("{c} running at most"));
    }
    if let Some(r) = rate {
        parts.push(format!(
            "{r} started/s{}",
            burst.map_or(String::new(), |b| format!(" (burst {b})"))
        ));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

// ------------------------------------------------------------------------------------------
// Queues

pub async fn queues(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Extension(cache): Extension<Arc<FiguresCache>>,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let p = q.map(|Query(p)| p).unwrap_or_default();
    let v = signed.viewer();
    // Paused state and limits fresh from their small tables; counts of jobs from the overview's
    // figures (a pass over the jobs table, taken in the background), with their age.
    let (controls, kind_limits) =
        match tokio::try_join!(s.app.queue.queue_controls(), s.app.queue.kind_limits()) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "console: queue controls not read");
                return unavailable();
            }
        };
    let figures = cache.peek(&s.app);
    // Per queue: ready, scheduled, running, oldest ready wait.
    let mut depth: BTreeMap<String, (i64, i64, i64, Option<f64>)> = BTreeMap::new();
    if let Some(f) = &figures {
        for g in &f.groups {
            let d = depth.entry(g.queue.clone()).or_default();
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
    }
    let mut names: BTreeSet<String> = controls.iter().map(|c| c.queue.clone()).collect();
    for k in s.app.queue.kinds().names() {
        names.insert(s.app.queue.policies().get(k).queue.clone());
    }
    names.extend(depth.keys().cloned());

    let mut b = done(&p);
    b.push_str(
        "<div class=\"scroll\"><table id=\"queues\"><thead><tr><th scope=\"col\">queue</th>\
         <th scope=\"col\">state</th><th scope=\"col\">ready</th>\
         <th scope=\"col\">scheduled / backing off</th><th scope=\"col\">running</th>\
         <th scope=\"col\">oldest ready waits</th><th scope=\"col\">limits</th>",
    );
    if signed.can_change() {
        b.push_str("<th scope=\"col\"><span class=\"sr\">actions</span></th>");
    }
    b.push_str("</tr></thead><tbody>");
    for name in &names {
        let c = controls.iter().find(|c| &c.queue == name);
        let paused = c.is_some_and(|c| c.paused);
        let state = match c.and_then(|c| c.paused_at) {
            Some(t) if paused => format!(
                "<span class=\"badge st-paused\">paused</span> since {}",
                time(t)
            ),
            _ if paused => "<span class=\"badge st-paused\">paused</span>".into(),
            _ => "<span class=\"badge st-running\">running</span>".into(),
        };
        let limits = c.map_or_else(
            || "none".to_string(),
            |c| {
                let t = limit_text(c.concurrency, c.rate, c.burst);
                if c.manual && t != "none" {
                    format!("{t} <span class=\"muted\">(set at runtime)</span>")
                } else {
                    t
                }
            },
        );
        let d = depth.get(name);
        let n = |x: Option<i64>| {
            if figures.is_none() {
                "…".to_string()
            } else {
                html::group(&x.unwrap_or(0).to_string())
            }
        };
        let _ = write!(
            b,
            "<tr data-queue=\"{}\"><th scope=\"row\"><a href=\"/admin/jobs?queue={}\">{}</a></th>\
             <td class=\"qstate\">{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{limits}</td>",
            esc(name),
            html::enc(name),
            esc(name),
            n(d.map(|d| d.0)),
            n(d.map(|d| d.1)),
            n(d.map(|d| d.2)),
            d.and_then(|d| d.3).map_or("—".into(), html::secs),
        );
        if signed.can_change() {
            let (action, label, class) = if paused {
                ("resume", "Resume", "resume")
            } else {
                ("pause", "Pause", "danger pause")
            };
            let _ = write!(
                b,
                "<td><form method=\"post\" action=\"/admin/queues/{}/{action}\">{}\
                 <button type=\"submit\" class=\"{class}\" aria-label=\"{label} queue {}\">{label}</button>\
                 </form></td>",
                html::enc(name),
                html::csrf_field(&signed.session.csrf),
                esc(name),
            );
        }
        b.push_str("</tr>");
    }
    if names.is_empty() {
        b.push_str("<tr><td colspan=\"8\">No queue known yet.</td></tr>");
    }
    b.push_str("</tbody></table></div>");
    match &figures {
        Some(f) => {
            let _ = write!(
                b,
                "<p class=\"muted\" id=\"counts-age\">Counts of jobs taken {} ({} ago); paused \
                 state and limits as of now. A paused queue keeps its jobs: running ones finish, \
                 none starts until it is resumed, on every daemon.</p>",
                time(f.taken_at),
                html::secs((Utc::now() - f.taken_at).num_milliseconds().max(0) as f64 / 1000.0),
            );
        }
        None => b.push_str(
            "<p class=\"muted\" id=\"counts-age\">Counting jobs… reload in a moment for the \
             counts.</p>",
        ),
    }
    b.push_str(
        "<h2 id=\"h-kinds\">Limits of kinds</h2><div class=\"scroll\"><table id=\"kind-limits\">\
         <thead><tr><th scope=\"col\">kind</th><th scope=\"col\">limits</th>\
         <th scope=\"col\">per partition</th><th scope=\"col\">running now</th></tr></thead><tbody>",
    );
    let limited: Vec<_> = kind_limits
        .iter()
        .filter(|k| k.concurrency.is_some() || k.rate.is_some() || k.partition_by.is_some())
        .collect();
    if limited.is_empty() {
        b.push_str("<tr><td colspan=\"4\">No kind has a limit.</td></tr>");
    }
    for k in limited {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            esc(&k.kind),
            limit_text(k.concurrency, k.rate, k.burst),
            if k.manual {
                " <span class=\"muted\">(set at runtime)</span>"
            } else {
                ""
            },
            match (&k.partition_by, k.partition_concurrency) {
                (Some(by), Some(n)) => format!("{n} running per {}", esc(&by.join(", "))),
                _ => "—".into(),
            },
            html::group(&k.running.to_string()),
        );
    }
    b.push_str(
        "</tbody></table></div><p class=\"muted\">Limits are set in the config \
         (<code>[queues.NAME]</code>, <code>[kinds.KIND]</code>) or at runtime with \
         <code>chainsync queue limit</code>; they hold for the whole cluster.</p>",
    );
    super::html(StatusCode::OK, page("Queues", Nav::Queues, Some(&v), &b))
}

pub async fn queue_action(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Path((name, action)): Path<(String, String)>,
    f: Result<Form<Params>, FormRejection>,
) -> Response {
    let p = f.map(|Form(p)| p).unwrap_or_default();
    if !csrf_ok(&p, &signed) {
        return csrf_refused();
    }
    let res = match action.as_str() {
        "pause" => s
            .app
            .queue
            .pause_queue(&name)
            .await
            .map(|changed| if changed { "paused" } else { "already-paused" }),
        "resume" => s
            .app
            .queue
            .resume_queue(&name)
            .await
            .map(|changed| if changed { "resumed" } else { "not-paused" }),
        _ => {
            return failure(
                &signed,
                Nav::Queues,
                StatusCode::BAD_REQUEST,
                &format!("unknown action {action:?} (pause or resume)"),
                "/admin/queues",
            );
        }
    };
    match res {
        Ok(done) => {
            tracing::info!(queue = %name, action = %action, "console: queue control");
            back_with(
                "/admin/queues",
                &[("done", done.into()), ("name", name.clone())],
            )
        }
        Err(e) => {
            let (st, m) = super::pages::queue_error(e);
            failure(&signed, Nav::Queues, st, &m, "/admin/queues")
        }
    }
}

fn failure(signed: &Signed, nav: Nav, st: StatusCode, m: &str, back: &str) -> Response {
    super::html(
        st,
        page(
            "Not done",
            nav,
            Some(&signed.viewer()),
            &format!(
                "{}<p><a href=\"{}\">Back</a></p>",
                message("error", m),
                esc(back)
            ),
        ),
    )
}

// ------------------------------------------------------------------------------------------
// Schedules

pub async fn schedules(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let p = q.map(|Query(p)| p).unwrap_or_default();
    let v = signed.viewer();
    let list = match s.app.config.schedules(s.app.registry.kinds()) {
        Ok(l) => l,
        Err(e) => {
            return super::html(
                StatusCode::OK,
                page(
                    "Schedules",
                    Nav::Schedules,
                    Some(&v),
                    &message("error", &e.to_string()),
                ),
            );
        }
    };
    let now = Utc::now();
    let status = match scheduler::status(&s.app.queue, &list, now).await {
        Ok(st) => st,
        Err(_) => return unavailable(),
    };
    let mut b = done(&p);
    b.push_str(
        "<div class=\"scroll\"><table id=\"schedules\"><thead><tr><th scope=\"col\">schedule</th>\
         <th scope=\"col\">kind</th><th scope=\"col\">when</th><th scope=\"col\">enabled</th>\
         <th scope=\"col\">next runs (schedule's zone)</th><th scope=\"col\">last run</th>\
         <th scope=\"col\">outcome</th>",
    );
    if signed.can_change() {
        b.push_str("<th scope=\"col\"><span class=\"sr\">actions</span></th>");
    }
    b.push_str("</tr></thead><tbody>");
    if status.is_empty() {
        b.push_str(
            "<tr><td colspan=\"8\">No schedules configured ([[schedule]] in the config).</td></tr>",
        );
    }
    for (sched, st) in list.iter().zip(&status) {
        let tz = match &sched.spec {
            Spec::Cron { tz, .. } => *tz,
            Spec::Every(_) => chrono_tz::UTC,
        };
        let next: Vec<String> = st.next_runs.iter().map(|t| html::time_in(*t, tz)).collect();
        let badge = |o: &str| format!("<span class=\"badge st-{0}\">{0}</span>", esc(o));
        let outcome = match (&st.last_outcome, st.last_job) {
            (Some(o), Some(id)) if o == "dead" => {
                format!("<a href=\"/admin/dead/{id}\">{}</a>", badge(o))
            }
            (Some(o), Some(id)) if o != "pruned" => {
                format!("<a href=\"/admin/jobs/{id}\">{}</a>", badge(o))
            }
            (Some(o), _) => badge(o),
            (None, _) => "—".into(),
        };
        let enabled = match &st.switch {
            Some(w) => format!(
                "{} <span class=\"muted\">(switched {} by {} at {})</span>",
                if st.enabled { "yes" } else { "no" },
                if w.enabled { "on" } else { "off" },
                esc(w.changed_by.as_deref().unwrap_or("?")),
                time(w.changed_at)
            ),
            None => format!(
                "{} <span class=\"muted\">(config)</span>",
                if st.enabled { "yes" } else { "no" }
            ),
        };
        let _ = write!(
            b,
            "<tr data-schedule=\"{}\"><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"enabled\">{enabled}</td>\
             <td>{}</td><td>{}{}</td><td class=\"outcome\">{outcome}</td>",
            esc(&st.name),
            esc(&st.name),
            esc(&st.kind),
            esc(&st.spec),
            if next.is_empty() {
                "—".into()
            } else {
                next.join("<br>")
            },
            st.last_tick.map_or("—".into(), |t| html::time_in(t, tz)),
            if st.last_manual { " (run now)" } else { "" },
        );
        if signed.can_change() {
            let csrf = html::csrf_field(&signed.session.csrf);
            let name = html::enc(&st.name);
            let (toggle, label) = if st.enabled {
                ("disable", "Switch off")
            } else {
                ("enable", "Switch on")
            };
            let _ = write!(
                b,
                "<td><div class=\"actions tight\">\
                 <form method=\"post\" action=\"/admin/schedules/{name}/run\">{csrf}\
                 <button type=\"submit\" class=\"run\" aria-label=\"Run {0} now\">Run now</button></form>\
                 <form method=\"post\" action=\"/admin/schedules/{name}/{toggle}\">{csrf}\
                 <button type=\"submit\" class=\"{toggle}\" aria-label=\"{label} {0}\">{label}</button></form>\
                 </div></td>",
                esc(&st.name),
            );
        }
        b.push_str("</tr>");
    }
    b.push_str(
        "</tbody></table></div><p class=\"muted\">Switching a schedule off or on here holds for \
         every daemon and wins over <code>enabled</code> in the config; switched back on, it runs \
         from its next tick (ticks that fell while it was off are not run). Run now queues the \
         schedule's job at once, with the unique key <code>schedule:NAME:now</code>: asking again \
         while that job waits to start queues no second one.</p>",
    );
    super::html(
        StatusCode::OK,
        page("Schedules", Nav::Schedules, Some(&v), &b),
    )
}

pub async fn schedule_action(
    State(s): State<HttpState>,
    Extension(signed): Extension<Signed>,
    Path((name, action)): Path<(String, String)>,
    f: Result<Form<Params>, FormRejection>,
) -> Response {
    let p = f.map(|Form(p)| p).unwrap_or_default();
    if !csrf_ok(&p, &signed) {
        return csrf_refused();
    }
    let list = match s.app.config.schedules(s.app.registry.kinds()) {
        Ok(l) => l,
        Err(e) => {
            return failure(
                &signed,
                Nav::Schedules,
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                "/admin/schedules",
            );
        }
    };
    let Some(sched) = list.iter().find(|x| x.name == name) else {
        return failure(
            &signed,
            Nav::Schedules,
            StatusCode::NOT_FOUND,
            &format!("no schedule named {name:?} in the config"),
            "/admin/schedules",
        );
    };
    let q = &s.app.queue;
    let res = match action.as_str() {
        "run" => scheduler::run_now(q, sched, "console").await.map(|e| {
            (
                if e.inserted { "run" } else { "waiting" },
                Some(e.id.to_string()),
            )
        }),
        "enable" | "disable" => {
            let on = action == "enable";
            scheduler::set_enabled(q, &name, on, "console", Utc::now())
                .await
                .map(|changed| {
                    (
                        match (changed, on) {
                            (false, _) => "unchanged",
                            (true, true) => "enabled",
                            (true, false) => "disabled",
                        },
                        None,
                    )
                })
        }
        _ => {
            return failure(
                &signed,
                Nav::Schedules,
                StatusCode::BAD_REQUEST,
                &format!("unknown action {action:?} (run, enable or disable)"),
                "/admin/schedules",
            );
        }
    };
    match res {
        Ok((done, job)) => {
            let mut pairs = vec![("done", done.to_string()), ("name", name.clone())];
            if let Some(j) = job {
                pairs.push(("job", j));
            }
            back_with("/admin/schedules", &pairs)
        }
        Err(e) => {
            let (st, m) = super::pages::queue_error(e);
            failure(&signed, Nav::Schedules, st, &m, "/admin/schedules")
        }
    }
}
