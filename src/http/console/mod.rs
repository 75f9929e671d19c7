//! The admin console under `/admin`: server-rendered pages, every asset embedded.
//!
//! Sign-in: `GET /admin/login` shows a form; `POST /admin/login` with `http.admin_token` (or
//! `http.readonly_token`) opens a session (`chainsync.console_sessions`, shared by every daemon
//! on the database) and sets the cookie `chainsync_session` (`HttpOnly`, `SameSite=Strict`,
//! `Path=/admin`, `Max-Age` = `http.session_ttl`, `Secure` behind TLS). Every page without a live
//! session redirects to the sign-in page with `next` = the page asked for, filters included.
//! Every state-changing form carries the session's CSRF token and is refused without it; a
//! read-only session sees no action buttons and its POSTs answer 403. Tokens travel only in the
//! sign-in form's body: never in a URL, a page, browser storage or a log.

mod control;
mod figures;
mod html;
mod pages;
mod throttle;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use chainsync_engine::sessions::{self, Role, Session};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::HttpState;
use html::{Nav, esc, message, page};

pub const COOKIE: &str = "chainsync_session";

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#14213d\"/>\
<path d=\"M4 8h8M8 4v8\" stroke=\"#fff\" stroke-width=\"2\"/></svg>";

/// The session of the request, put there by [`require_session`].
#[derive(Debug, Clone)]
pub struct Signed {
    pub session: Session,
}

impl Signed {
    fn viewer(&self) -> html::Viewer<'_> {
        html::Viewer {
            role: self.session.role,
            csrf: &self.session.csrf,
        }
    }

    fn can_change(&self) -> bool {
        self.session.role == Role::Admin
    }
}

/// `/admin` routes.
pub fn router(state: HttpState) -> Router<HttpState> {
    let signed = Router::new()
        .route("/admin", get(pages::overview))
        .route("/admin/jobs", get(pages::jobs))
        .route("/admin/jobs/bulk", post(pages::jobs_bulk))
        .route("/admin/jobs/{id}", get(pages::job))
        .route("/admin/jobs/{id}/{action}", post(pages::job_action))
        .route("/admin/dead", get(pages::dead))
        .route("/admin/dead/bulk", post(pages::dead_bulk))
        .route("/admin/dead/{id}", get(pages::dead_one))
        .route("/admin/dead/{id}/{action}", post(pages::dead_action))
        .route("/admin/queues", get(control::queues))
        .route("/admin/queues/{name}/{action}", post(control::queue_action))
        .route("/admin/schedules", get(control::schedules))
        .route(
            "/admin/schedules/{name}/{action}",
            post(control::schedule_action),
        )
        .route("/admin/chain", get(pages::chain))
        .route("/admin/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state, require_session))
        .layer(axum::Extension(Arc::new(figures::FiguresCache::default())));
    Router::new()
        .merge(signed)
        .route(
            "/admin/login",
            get(login_page).post(login).layer(axum::Extension(Arc::new(
                throttle::SignInThrottle::default(),
            ))),
        )
        .route("/admin/assets/console.css", get(css))
        .route("/admin/assets/console.js", get(js))
        .route("/admin/assets/icon.svg", get(icon))
        .layer(middleware::from_fn(security_headers))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        JS,
    )
}

async fn icon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        ICON,
    )
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// An HTML answer with a status.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A `next` target that stays in the console (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/admin")
                && !n.starts_with("/admin/login")
                && !n.starts_with("/admin/logout")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/admin".into(),
    }
}

fn login_redirect(next: &str) -> Response {
    let target = if next == "/admin" {
        "/admin/login".to_string()
    } else {
        format!("/admin/login?next={}", html::enc(next))
    };
    Redirect::to(&target).into_response()
}

/// A cross-site POST names another origin; same-site requests name ours or none.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
}

async fn require_session(State(s): State<HttpState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD && !same_origin(req.headers()) {
        return html(
            StatusCode::FORBIDDEN,
            page(
                "Forbidden",
                Nav::None,
                None,
                &message("error", "cross-origin form submissions are refused"),
            ),
        );
    }
    let found = match cookie_value(req.headers()) {
        None => None,
        Some(secret) => match sessions::find(
            s.app.pool(),
            &secret,
            s.settings.admin_token.as_deref(),
            s.settings.readonly_token.as_deref(),
        )
        .await
        {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "console: session lookup failed");
                return unavailable();
            }
        },
    };
    let Some(session) = found else {
        // Back to sign-in, keeping the page (and its filters) the operator was on.
        let next = if method == Method::GET {
            req.uri()
                .path_and_query()
                .map_or("/admin".to_string(), |p| p.as_str().to_string())
        } else {
            referer_path(req.headers()).unwrap_or_else(|| "/admin".into())
        };
        return login_redirect(&safe_next(Some(&next)));
    };
    if method != Method::GET
        && method != Method::HEAD
        && req.uri().path() != "/admin/logout"
        && session.role != Role::Admin
    {
        return html(
            StatusCode::FORBIDDEN,
            page(
                "Forbidden",
                Nav::None,
                None,
                &format!(
                    "{}<p><a href=\"/admin\">Back to the console</a></p>",
                    message(
                        "error",
                        "this session is read-only: it cannot change anything"
                    )
                ),
            ),
        );
    }
    req.extensions_mut().insert(Signed { session });
    next.run(req).await
}

fn referer_path(headers: &HeaderMap) -> Option<String> {
    let r = headers.get(header::REFERER)?.to_str().ok()?;
    let (_, rest) = r.split_once("://")?;
    let path = &rest[rest.find('/')?..];
    Some(path.to_string())
}

pub(crate) fn unavailable() -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        page(
            "Database unavailable",
            Nav::None,
            None,
            &message(
                "error",
                "the database did not answer; try again in a moment",
            ),
        ),
    )
}

/// Checks the form's CSRF token against the session's.
pub(crate) fn csrf_ok(form: &BTreeMap<String, String>, signed: &Signed) -> bool {
    form.get("csrf")
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(signed.session.csrf.as_bytes())))
}

pub(crate) fn csrf_refused() -> Response {
    html(
        StatusCode::FORBIDDEN,
        page(
            "Form expired",
            Nav::None,
            None,
            &format!(
                "{}<p><a href=\"/admin\">Back to the console</a></p>",
                message(
                    "error",
                    "the form's security token is missing or stale; reload the page and try again"
                )
            ),
        ),
    )
}

fn login_form(next: &str, error: Option<&str>, disabled: bool) -> String {
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&message("error", e));
    }
    if disabled {
        body.push_str(&message(
            "error",
            "the console is disabled: set http.admin_token (and optionally http.readonly_token)",
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/admin/login\" class=\"login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Token<input type=\"password\" name=\"token\" autocomplete=\"current-password\" \
         required autofocus></label>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"muted\">Sign in with the admin token, or the read-only token to look without \
         changing anything.</p>",
        esc(next)
    ));
    page("Sign in", Nav::None, None, &body)
}

async fn login_page(
    State(s): State<HttpState>,
    q: Result<
        axum::extract::Query<BTreeMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    let next = q
        .ok()
        .and_then(|axum::extract::Query(q)| q.get("next").cloned());
    let disabled = s.settings.admin_token.is_none() && s.settings.readonly_token.is_none();
    html(
        StatusCode::OK,
        login_form(&safe_next(next.as_deref()), None, disabled),
    )
}

fn secure(s: &HttpState, headers: &HeaderMap) -> bool {
    s.settings.secure_cookies.unwrap_or_else(|| {
        headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    })
}

fn token_matches(given: &str, token: Option<&str>) -> bool {
    token.is_some_and(|t| bool::from(given.as_bytes().ct_eq(t.as_bytes())))
}

async fn login(
    State(s): State<HttpState>,
    axum::Extension(throttle): axum::Extension<Arc<throttle::SignInThrottle>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    form: Result<axum::Form<BTreeMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            login_form("/admin", Some("cross-origin sign-in refused"), false),
        );
    }
    let form = form.map(|axum::Form(f)| f).unwrap_or_default();
    let next = safe_next(form.get("next").map(String::as_str));
    // The peer's address (a proxy in front counts as one client; the overall limit holds too).
    let client = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    if let Err(wait) = throttle.check(client, std::time::Instant::now()) {
        warn!(client = ?client, "console: sign-in throttled after repeated failures");
        let secs = wait.as_secs().max(1);
        let mut res = html(
            StatusCode::TOO_MANY_REQUESTS,
            login_form(
                &next,
                Some(&format!("too many failed sign-ins: try again in {secs} s")),
                false,
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let given = form.get("token").map(String::as_str).unwrap_or_default();
    let admin = s.settings.admin_token.as_deref();
    let readonly = s.settings.readonly_token.as_deref();
    let role = if token_matches(given, admin) {
        Some((Role::Admin, admin))
    } else if token_matches(given, readonly) {
        Some((Role::ReadOnly, readonly))
    } else {
        None
    };
    let Some((role, Some(token))) = role else {
        throttle.failed(client, std::time::Instant::now());
        warn!(client = ?client, "console: sign-in refused (wrong token)");
        return html(
            StatusCode::UNAUTHORIZED,
            login_form(
                &next,
                Some("that token is not valid here"),
                admin.is_none() && readonly.is_none(),
            ),
        );
    };
    let opened = match sessions::open(s.app.pool(), role, token, s.settings.session_ttl).await {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "console: could not open a session");
            return unavailable();
        }
    };
    info!(role = role.as_str(), "console: signed in");
    let cookie = format!(
        "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}; Expires={}{}",
        opened.secret,
        s.settings.session_ttl.as_secs(),
        opened
            .session
            .expires_at
            .format("%a, %d %b %Y %H:%M:%S GMT"),
        if secure(&s, &headers) { "; Secure" } else { "" }
    );
    let mut res = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn logout(
    State(s): State<HttpState>,
    axum::Extension(signed): axum::Extension<Signed>,
    headers: HeaderMap,
    form: Result<axum::Form<BTreeMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|axum::Form(f)| f).unwrap_or_default();
    if !csrf_ok(&form, &signed) {
        return csrf_refused();
    }
    if let Some(secret) = cookie_value(&headers)
        && let Err(e) = sessions::close(s.app.pool(), &secret).await
    {
        warn!(error = %e, "console: could not close a session");
        return unavailable();
    }
    let mut res = Redirect::to("/admin/login").into_response();
    let clear = format!(
        "{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure(&s, &headers) { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}
