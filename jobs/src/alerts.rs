//! Alerts that reach a person: `[[alerts.targets]]` (where notifications go) and
//! `[[alerts.rules]]` (what is watched). The daemon evaluates the rules periodically
//! ([`evaluate`]); a rule that starts firing for a subject (a job kind, a chain, a token) opens
//! one incident in `chainsync.alert_incidents` and enqueues one `deliver-alert` job in the same
//! transaction; when the condition clears, the incident is resolved with one more. An incident
//! already open is not notified again, and a subject whose incident was resolved less than the
//! rule's `cool_down` ago opens no new one. Several daemons may evaluate at once: the unique
//! open-incident index lets one of them open (or resolve) each incident.

use std::{collections::HashSet, fmt, time::Duration};

use chainsync_engine::{
    Invalid,
    duration::{format_duration, parse_duration},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::PgPool;

use crate::{Job, kinds::deliver_alert::DeliverAlert, observe::Sample, settings::DomainConfig};

/// `[alerts]`: targets and rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub targets: Vec<AlertTarget>,
    pub rules: Vec<AlertRule>,
}

/// Body format of a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The notification as a JSON object (see [`Notice`]).
    #[default]
    Json,
    /// `{"text": "..."}`, accepted by Slack incoming webhooks and compatible receivers.
    Slack,
    /// Anything else: refused by [`AlertsConfig::validate`] with the key named (serde cannot
    /// name it inside the flattened domain settings).
    #[serde(other)]
    Unknown,
}

/// One `[[alerts.targets]]` entry. Its URL (which may embed a token) and HMAC key are secrets:
/// `Debug` and `Serialize` redact them, and errors and logs name the target only.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTarget {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub kind: TargetKind,
    /// When set, each POST carries `X-Chainsync-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default)]
    pub hmac_secret: Option<String>,
}

impl fmt::Debug for AlertTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertTarget")
            .field("name", &self.name)
            .field("url", &"***")
            .field("kind", &self.kind)
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Serialize for AlertTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("AlertTarget", 4)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("url", "***")?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "***"))?;
        st.end()
    }
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Dead letters of a kind that failed within `window`: at least `threshold` (default 1).
    DeadLetters,
    /// Reconcile mismatches above the token's `reconcile_threshold` recorded within `window`,
    /// per chain and token: at least `threshold` (default 1).
    ReconcileMismatch,
    /// Age of the newest stored balance of a token above `threshold` seconds (default 3600).
    BalanceLag,
    /// Ingestion checkpoint more than `threshold` blocks behind the head (default 100).
    IngestLag,
    /// Points windows behind above `threshold` (default 2).
    PointsBehind,
    /// Health score below `threshold` (default: `health.min_score`).
    HealthScore,
    /// Failed attempts of a kind above `threshold` % (default 1) of its attempts within `window`
    /// in this daemon, once there are at least `min_runs` (default 20).
    FailureRate,
    /// Anything else: refused by [`AlertsConfig::validate`] with the key named.
    #[serde(other)]
    Unknown,
}

impl RuleKind {
    pub const ALL: [RuleKind; 7] = [
        Self::DeadLetters,
        Self::ReconcileMismatch,
        Self::BalanceLag,
        Self::IngestLag,
        Self::PointsBehind,
        Self::HealthScore,
        Self::FailureRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeadLetters => "dead_letters",
            Self::ReconcileMismatch => "reconcile_mismatch",
            Self::BalanceLag => "balance_lag",
            Self::IngestLag => "ingest_lag",
            Self::PointsBehind => "points_behind",
            Self::HealthScore => "health_score",
            Self::FailureRate => "failure_rate",
            Self::Unknown => "unknown",
        }
    }

    fn default_threshold(self) -> f64 {
        match self {
            Self::DeadLetters | Self::ReconcileMismatch => 1.0,
            Self::BalanceLag => 3600.0,
            Self::IngestLag => 100.0,
            Self::PointsBehind => 2.0,
            Self::HealthScore => 60.0,
            Self::FailureRate | Self::Unknown => 1.0,
        }
    }

    /// Allowed thresholds, inclusive, and their unit for messages.
    fn threshold_range(self) -> (f64, f64, &'static str) {
        match self {
            Self::DeadLetters | Self::ReconcileMismatch => (1.0, 1e9, "count"),
            Self::BalanceLag => (1.0, 365.0 * 86400.0, "seconds"),
            Self::IngestLag => (1.0, 1e9, "blocks"),
            Self::PointsBehind => (1.0, 1e6, "windows"),
            Self::HealthScore => (1.0, 100.0, "score"),
            Self::FailureRate | Self::Unknown => (0.0, 100.0, "percent"),
        }
    }

    fn default_window(self) -> Duration {
        match self {
            Self::ReconcileMismatch => Duration::from_secs(3600),
            _ => Duration::from_secs(900),
        }
    }
}

/// A duration written as text ("15m") in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDuration(pub Duration);

impl Serialize for TextDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(TextDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// One `[[alerts.rules]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub kind: RuleKind,
    /// Name of the `[[alerts.targets]]` entry notified.
    pub target: String,
    /// Unique name of the rule (default: its kind); incidents are recorded under it.
    #[serde(default)]
    pub name: Option<String>,
    /// See [`RuleKind`] for the meaning and default of each kind's threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Look-back of `dead_letters`, `reconcile_mismatch` and `failure_rate`.
    #[serde(default)]
    pub window: Option<TextDuration>,
    /// After a resolved incident, no new one for the same subject until this has passed.
    #[serde(default)]
    pub cool_down: Option<TextDuration>,
    /// Only this job kind (`dead_letters`, `failure_rate`).
    #[serde(default)]
    pub job_kind: Option<String>,
    /// `failure_rate`: fewer attempts than this in the window never fire.
    #[serde(default)]
    pub min_runs: Option<u64>,
}

pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(900);

impl AlertRule {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.kind.as_str().to_string())
    }
    pub fn threshold(&self) -> f64 {
        self.threshold
            .unwrap_or_else(|| self.kind.default_threshold())
    }
    pub fn window(&self) -> Duration {
        self.window.map_or(self.kind.default_window(), |w| w.0)
    }
    pub fn cool_down(&self) -> Duration {
        self.cool_down.map_or(DEFAULT_COOL_DOWN, |c| c.0)
    }
    pub fn min_runs(&self) -> u64 {
        self.min_runs.unwrap_or(20)
    }
}

impl AlertsConfig {
    pub fn target(&self, name: &str) -> Option<&AlertTarget> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Checks targets and rules; errors name the key (`alerts.rules[0].threshold`). Messages
    /// never repeat a URL or a secret. `kinds` are the known job kinds.
    pub fn validate(&self, kinds: &[&str]) -> Result<(), Invalid> {
        let mut names = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("alerts.targets[{i}]");
            if t.kind == TargetKind::Unknown {
                return Err(Invalid::at(
                    format!("{key}.kind"),
                    "must be \"json\" or \"slack\"",
                ));
            }
            if t.name.trim().is_empty() {
                return Err(Invalid::at(format!("{key}.name"), "must not be empty"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(Invalid::at(
                    format!("{key}.name"),
                    format!("{:?} is used twice", t.name),
                ));
            }
            let url = alloy::transports::http::reqwest::Url::parse(&t.url)
                .map_err(|e| Invalid::at(format!("{key}.url"), format!("not a valid URL ({e})")))?;
            match url.scheme() {
                "http" | "https" => {}
                other => {
                    return Err(Invalid::at(
                        format!("{key}.url"),
                        format!("scheme {other:?} is not supported (http or https)"),
                    ));
                }
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(Invalid::at(format!("{key}.url"), "no host"));
            }
            if t.hmac_secret.as_deref().is_some_and(|s| s.len() < 16) {
                return Err(Invalid::at(
                    format!("{key}.hmac_secret"),
                    "use at least 16 characters",
                ));
            }
        }
        let mut rule_names = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("alerts.rules[{i}]");
            if self.target(&r.target).is_none() {
                return Err(Invalid::at(
                    format!("{key}.target"),
                    format!("{:?} is not a name in [[alerts.targets]]", r.target),
                ));
            }
            if !rule_names.insert(r.name()) {
                return Err(Invalid::at(
                    format!("{key}.name"),
                    format!(
                        "{:?} is used by two rules (give each rule of a kind its own name)",
                        r.name()
                    ),
                ));
            }
            if r.kind == RuleKind::Unknown {
                return Err(Invalid::at(
                    format!("{key}.kind"),
                    format!(
                        "unknown rule kind (one of: {})",
                        RuleKind::ALL.map(RuleKind::as_str).join(", ")
                    ),
                ));
            }
            let (lo, hi, unit) = r.kind.threshold_range();
            let th = r.threshold();
            let ok = th.is_finite()
                && th <= hi
                && if r.kind == RuleKind::FailureRate {
                    th > lo
                } else {
                    th >= lo
                };
            if !ok {
                return Err(Invalid::at(
                    format!("{key}.threshold"),
                    format!(
                        "{th} is out of range for {} ({unit}, {lo}..={hi}{})",
                        r.kind.as_str(),
                        if r.kind == RuleKind::FailureRate {
                            ", above 0"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if r.window().is_zero() || r.window() > chainsync_engine::metrics::OUTCOME_WINDOW_MAX {
                return Err(Invalid::at(format!("{key}.window"), "must be in 1s..=1d"));
            }
            if let Some(k) = &r.job_kind {
                if !matches!(r.kind, RuleKind::DeadLetters | RuleKind::FailureRate) {
                    return Err(Invalid::at(
                        format!("{key}.job_kind"),
                        "only for dead_letters and failure_rate rules",
                    ));
                }
                if !kinds.contains(&k.as_str()) {
                    return Err(Invalid::at(
                        format!("{key}.job_kind"),
                        format!("unknown job kind {k:?}"),
                    ));
                }
            }
            if r.min_runs.is_some() && r.kind != RuleKind::FailureRate {
                return Err(Invalid::at(
                    format!("{key}.min_runs"),
                    "only for failure_rate rules",
                ));
            }
            if r.min_runs == Some(0) {
                return Err(Invalid::at(format!("{key}.min_runs"), "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// What one rule found for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `kind=noop`, `chain=mainnet token=USDC`, `chain=mainnet`, `daemon`.
    pub subject: String,
    /// `None`: could not be measured this time (an open incident stays open).
    pub firing: Option<bool>,
    pub value: Option<f64>,
    pub summary: String,
}

/// Figures the rules read beside the database.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// The latest sample of the domain's lags; `None` when sampling failed.
    pub sample: Option<&'a Sample>,
    /// The daemon's health score, when computed.
    pub health_score: Option<u8>,
}

/// The notification of one incident: the body of a `json` target, `text` for a `slack` one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    pub source: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub rule: String,
    pub kind: String,
    pub subject: String,
    pub summary: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub incident: i64,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub text: String,
}

fn window_text(d: Duration) -> String {
    format_duration(d)
}

/// Evaluates one rule. `None` when its inputs are unavailable (nothing changes).
async fn findings(
    db: &PgPool,
    settings: &DomainConfig,
    rule: &AlertRule,
    inputs: &Inputs<'_>,
) -> Result<Option<Vec<Finding>>, sqlx::Error> {
    let th = rule.threshold();
    let window = rule.window();
    let since = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    let out = match rule.kind {
        RuleKind::Unknown => return Ok(None),
        RuleKind::DeadLetters => {
            // Dead deliveries are not alerted about through the deliveries themselves (a
            // receiver that is down would otherwise feed its own alerts); they are in the
            // metrics and the dead-letter list.
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT kind, count(*) FROM chainsync.dead_letters
                 WHERE failed_at >= $1 AND kind <> $2 AND ($3::text IS NULL OR kind = $3)
                 GROUP BY 1 ORDER BY 1",
            )
            .bind(since)
            .bind(DeliverAlert::KIND)
            .bind(&rule.job_kind)
            .fetch_all(db)
            .await?;
            rows.into_iter()
                .map(|(kind, n)| Finding {
                    subject: format!("kind={kind}"),
                    firing: Some(n as f64 >= th),
                    value: Some(n as f64),
                    summary: format!(
                        "{n} {kind} job(s) moved to the dead letters in the last {}",
                        window_text(window)
                    ),
                })
                .collect()
        }
        RuleKind::ReconcileMismatch => {
            let rows: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT chain_id, token, count(*) FROM chainsync.balance_mismatches
                 WHERE above_threshold AND found_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .bind(since)
            .fetch_all(db)
            .await?;
            rows.into_iter()
                .map(|(cid, token, n)| {
                    let cid = u64::try_from(cid).unwrap_or(0);
                    let chain = crate::observe::chain_label(settings, cid);
                    let symbol = settings
                        .tokens
                        .iter()
                        .find(|t| t.chain_id == cid && t.key().text() == token)
                        .map_or(token.clone(), |t| t.symbol.clone());
                    Finding {
                        subject: format!("chain={chain} token={symbol}"),
                        firing: Some(n as f64 >= th),
                        value: Some(n as f64),
                        summary: format!(
                            "reconcile found {n} balance(s) of {symbol} on {chain} off by more than the token's threshold in the last {}",
                            window_text(window)
                        ),
                    }
                })
                .collect()
        }
        RuleKind::BalanceLag | RuleKind::PointsBehind => {
            let Some(sample) = inputs.sample else {
                return Ok(None);
            };
            let mut v = Vec::new();
            for c in &sample.chains {
                for t in &c.tokens {
                    let (value, what) = if rule.kind == RuleKind::BalanceLag {
                        (t.balance_lag_seconds, "newest stored balance is")
                    } else {
                        (t.points_windows_behind.map(|w| w as f64), "points windows behind:")
                    };
                    let Some(value) = value else { continue };
                    let summary = if rule.kind == RuleKind::BalanceLag {
                        format!(
                            "{} on {}: {what} {value:.0} s old (threshold {th} s)",
                            t.symbol, c.name
                        )
                    } else {
                        format!("{} on {}: {what} {value} (threshold {th})", t.symbol, c.name)
                    };
                    v.push(Finding {
                        subject: format!("chain={} token={}", c.name, t.symbol),
                        firing: Some(value > th),
                        value: Some(value),
                        summary,
                    });
                }
            }
            v
        }
        RuleKind::IngestLag => {
            let Some(sample) = inputs.sample else {
                return Ok(None);
            };
            sample
                .chains
                .iter()
                .filter(|c| c.ingests)
                .map(|c| {
                    let value = c.ingest_lag_blocks.map(|b| b as f64);
                    Finding {
                        subject: format!("chain={}", c.name),
                        firing: value.map(|v| v > th),
                        value,
                        summary: format!(
                            "event ingestion on {} is {} block(s) behind the head (threshold {th})",
                            c.name,
                            value.map_or("?".to_string(), |v| v.to_string())
                        ),
                    }
                })
                .collect()
        }
        RuleKind::HealthScore => {
            let Some(score) = inputs.health_score else {
                return Ok(None);
            };
            vec![Finding {
                subject: "daemon".into(),
                firing: Some(f64::from(score) < th),
                value: Some(f64::from(score)),
                summary: format!("health score {score} (alert below {th})"),
            }]
        }
        // Every daemon's attempts (`chainsync.job_outcomes`), not only this one's.
        RuleKind::FailureRate => chainsync_engine::metrics::cluster_outcomes(db, window)
            .await?
            .into_iter()
            .filter(|(kind, _, _)| rule.job_kind.as_ref().is_none_or(|k| k == kind))
            .map(|(kind, ok, failed)| {
                let runs = ok + failed;
                let pct = if runs == 0 {
                    0.0
                } else {
                    failed as f64 * 100.0 / runs as f64
                };
                Finding {
                    subject: format!("kind={kind}"),
                    firing: Some(runs >= rule.min_runs() && pct > th),
                    value: Some(pct),
                    summary: format!(
                        "{kind}: {failed} of {runs} attempt(s) failed in the last {} ({pct:.1} %, threshold {th} %)",
                        window_text(window)
                    ),
                }
            })
            .collect(),
    };
    Ok(Some(out))
}

/// Notifications enqueued by one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub opened: Vec<(String, String)>,
    pub resolved: Vec<(String, String)>,
}

/// Evaluates every rule, opening and resolving incidents with their notifications.
pub async fn evaluate(
    db: &PgPool,
    settings: &DomainConfig,
    inputs: &Inputs<'_>,
) -> Result<Evaluation, sqlx::Error> {
    let mut ev = Evaluation::default();
    for rule in &settings.alerts.rules {
        let Some(found) = findings(db, settings, rule, inputs).await? else {
            continue;
        };
        apply(db, rule, &found, &mut ev).await?;
    }
    Ok(ev)
}

/// id, opened_at, resolved_at, summary, value of a resolved incident.
type ResolvedRow = (i64, DateTime<Utc>, DateTime<Utc>, String, Option<f64>);

async fn apply(
    db: &PgPool,
    rule: &AlertRule,
    found: &[Finding],
    ev: &mut Evaluation,
) -> Result<(), sqlx::Error> {
    let name = rule.name();
    let open: Vec<(String,)> = sqlx::query_as(
        "SELECT subject FROM chainsync.alert_incidents WHERE rule = $1 AND resolved_at IS NULL",
    )
    .bind(&name)
    .fetch_all(db)
    .await?;
    for f in found.iter().filter(|f| f.firing == Some(true)) {
        if open.iter().any(|o| o.0 == f.subject) {
            continue;
        }
        let mut tx = db.begin().await?;
        let opened: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO chainsync.alert_incidents (rule, kind, subject, summary, value, threshold)
             SELECT $1, $2, $3, $4, $5, $6
             WHERE NOT EXISTS (SELECT 1 FROM chainsync.alert_incidents
                               WHERE rule = $1 AND subject = $3
                                 AND resolved_at > now() - make_interval(secs => $7))
             ON CONFLICT (rule, subject) WHERE resolved_at IS NULL DO NOTHING
             RETURNING id, opened_at",
        )
        .bind(&name)
        .bind(rule.kind.as_str())
        .bind(&f.subject)
        .bind(&f.summary)
        .bind(f.value)
        .bind(rule.threshold())
        .bind(rule.cool_down().as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, opened_at)) = opened else {
            continue;
        };
        let notice = notice(rule, f, "firing", id, opened_at, None);
        enqueue_delivery(&mut tx, rule, &notice).await?;
        tx.commit().await?;
        ev.opened.push((name.clone(), f.subject.clone()));
    }
    for (subject,) in &open {
        let now = found.iter().find(|f| &f.subject == subject);
        let clear = match now {
            None => true,
            Some(f) => f.firing == Some(false),
        };
        if !clear {
            continue;
        }
        let mut tx = db.begin().await?;
        let resolved: Option<ResolvedRow> = sqlx::query_as(
            "UPDATE chainsync.alert_incidents SET resolved_at = now()
                 WHERE rule = $1 AND subject = $2 AND resolved_at IS NULL
                 RETURNING id, opened_at, resolved_at, summary, value",
        )
        .bind(&name)
        .bind(subject)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, opened_at, resolved_at, summary, value)) = resolved else {
            continue;
        };
        let f = Finding {
            subject: subject.clone(),
            firing: Some(false),
            value: now.and_then(|f| f.value).or(value),
            summary: now.map_or(format!("resolved: {summary}"), |f| f.summary.clone()),
        };
        let notice = notice(rule, &f, "resolved", id, opened_at, Some(resolved_at));
        enqueue_delivery(&mut tx, rule, &notice).await?;
        tx.commit().await?;
        ev.resolved.push((name.clone(), subject.clone()));
    }
    Ok(())
}

fn notice(
    rule: &AlertRule,
    f: &Finding,
    status: &str,
    id: i64,
    opened_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
) -> Notice {
    let name = rule.name();
    let text = format!(
        "[{}] chainsync {name} ({}): {}",
        status.to_uppercase(),
        f.subject,
        f.summary
    );
    Notice {
        source: "chainsync".into(),
        status: status.into(),
        rule: name,
        kind: rule.kind.as_str().into(),
        subject: f.subject.clone(),
        summary: f.summary.clone(),
        value: f.value,
        threshold: rule.threshold(),
        incident: id,
        opened_at,
        resolved_at,
        text,
    }
}

/// Enqueues the delivery in the caller's transaction through `chainsync.enqueue`, keyed by
/// incident and status so that a repeated evaluation never enqueues it twice.
async fn enqueue_delivery(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rule: &AlertRule,
    notice: &Notice,
) -> Result<(), sqlx::Error> {
    let job = DeliverAlert {
        target: rule.target.clone(),
        alert: serde_json::to_value(notice).unwrap_or_default(),
    };
    let args = serde_json::to_value(&job).unwrap_or_default();
    sqlx::query("SELECT chainsync.enqueue($1, $2, unique_key => $3)")
        .bind(DeliverAlert::KIND)
        .bind(args)
        .bind(format!("alert:{}:{}", notice.incident, notice.status))
        .execute(&mut **tx)
        .await?;
    metrics::counter!(
        "chainsync_alerts_total",
        "rule" => rule.kind.as_str(),
        "status" => notice.status.clone()
    )
    .increment(1);
    Ok(())
}
