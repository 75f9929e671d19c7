//! Configuration: `config/default.toml` documents every key. Sources, later wins: the file
//! (`--config`, else `CHAINSYNC_CONFIG`, else built-in defaults), then environment variables
//! `CHAINSYNC_<SECTION>__<KEY>` (and `DATABASE_URL`), then flags. The raw values are validated
//! into settings at start-up; every error names its key.

use std::{collections::BTreeMap, path::Path};

use chainsync_engine::{Invalid, Kinds};
use chainsync_jobs::settings::DomainConfig;
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::{
    queue::{KindOverride, LimitConfig, Policies},
    runtime::{WorkerSettings, maintenance::MaintenanceSettings},
};

pub const DEFAULT_DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// The whole configuration as read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub database_url: String,
    /// `[database]`: pooler, direct URL, migrations at start-up, read replica, failover check.
    #[serde(default)]
    pub database: crate::db::DatabaseSettings,
    /// Optional Redis: balance cache and shared RPC rate limit.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Connections in the daemon's Postgres pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub maintenance: MaintenanceSettings,
    /// Per-kind overrides: `[kinds.sync-balances] max_attempts = 5`.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindOverride>,
    /// Cluster-wide limits per queue: `[queues.default] global_concurrency = 100`.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueOverride>,
    /// Periodic jobs.
    #[serde(default)]
    pub schedule: Vec<crate::scheduler::ScheduleConfig>,
    #[serde(default)]
    pub scheduler: crate::scheduler::SchedulerSettings,
    #[serde(default)]
    pub http: HttpSettings,
    /// `[metrics]`: how often the daemon samples lags and evaluates `[[alerts.rules]]`.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// `[telemetry]`: traces over OTLP/HTTP (off unless an endpoint is set).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetrySettings,
    /// Chains, tokens and the other job settings.
    #[serde(flatten)]
    pub domain: DomainConfig,
}

fn default_pool_size() -> u32 {
    20
}

/// Keys of the engine part; the domain part's keys come from `DomainConfig` itself.
const ENGINE_KEYS: &[&str] = &[
    "database_url",
    "database",
    "redis_url",
    "pool_size",
    "worker",
    "maintenance",
    "kinds",
    "queues",
    "schedule",
    "scheduler",
    "http",
    "metrics",
    "telemetry",
];

/// Every top-level key: the engine's and the domain part's.
fn known_keys() -> Vec<String> {
    let domain = serde_json::to_value(DomainConfig::default())
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
        .unwrap_or_default();
    ENGINE_KEYS
        .iter()
        .map(|k| (*k).to_string())
        .chain(domain)
        .collect()
}

/// Whether `CHAINSYNC_<key>` (prefix already stripped) is a configuration override.
/// `SECTION__KEY` always is, so a misspelt section is an error rather than silently ignored;
/// a plain name only when it is a top-level key (`DATABASE_URL`, `POOL_SIZE`, …). Other plain
/// names (`CONFIG`, `RPC_URL` of the demo, `TOOLS` of the scripts) belong to other tools.
fn env_key_is_config(key: &str, known: &[String]) -> bool {
    key.contains("__") || known.iter().any(|k| k.eq_ignore_ascii_case(key))
}

#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(#[from] pub Invalid);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(Invalid::new(message))
    }

    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self(Invalid::at(field, message))
    }
}

impl Config {
    /// Loads from an optional file, the environment and the given overrides.
    pub fn load(path: Option<&Path>, database_url: Option<&str>) -> Result<Self, ConfigError> {
        let mut fig =
            Figment::new().merge(Serialized::default("database_url", DEFAULT_DATABASE_URL));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::new(format!(
                    "file {} does not exist",
                    p.display()
                )));
            }
            fig = fig.merge(Toml::file(p));
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            fig = fig.merge(Serialized::default("database_url", url));
        }
        let known = known_keys();
        fig = fig.merge(
            Env::prefixed("CHAINSYNC_")
                .filter(move |key| env_key_is_config(key.as_str(), &known))
                .split("__"),
        );
        if let Some(url) = database_url {
            fig = fig.merge(Serialized::default("database_url", url));
        }
        Self::from_figment(fig)
    }

    /// Parses a TOML string (tests, examples).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::new()
                .merge(Serialized::default("database_url", DEFAULT_DATABASE_URL))
                .merge(Toml::string(text)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        // Unknown top-level keys are errors, like deny_unknown_fields (which serde cannot
        // combine with the flattened domain part).
        let known = known_keys();
        let raw: BTreeMap<String, figment::value::Value> = fig
            .extract()
            .map_err(|e| ConfigError::new(flatten_err(e)))?;
        for key in raw.keys() {
            if !known.iter().any(|k| k == key) {
                return Err(ConfigError::new(format!("unknown key {key:?}")));
            }
        }
        // The domain part on its own first: under `#[serde(flatten)]` serde reads it from a
        // buffer, and an error of a value inside (an address, an amount, a duration) would lose
        // its key.
        fig.extract::<DomainConfig>()
            .map_err(|e| ConfigError::new(flatten_err(e)))?;
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::new(flatten_err(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything that does not need a connection.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate(&self.database_url)?;
        if self.pool_size < 2 {
            return Err(ConfigError::at("pool_size", "must be at least 2"));
        }
        self.worker.validate()?;
        self.http.validate()?;
        self.metrics.validate()?;
        self.telemetry.validate()?;
        self.maintenance.validate()?;
        let registry = chainsync_jobs::registry();
        self.policies(registry.kinds())?;
        self.queue_limits(registry.kinds())?;
        self.schedules(registry.kinds())?;
        if self.scheduler.poll_interval.is_zero() {
            return Err(ConfigError::at(
                "scheduler.poll_interval",
                "must be positive",
            ));
        }
        self.domain.validate()?;
        Ok(())
    }

    /// Validated schedules.
    pub fn schedules(
        &self,
        registry: &Kinds,
    ) -> Result<Vec<crate::scheduler::Schedule>, ConfigError> {
        Ok(crate::scheduler::validate(&self.schedule, registry)?)
    }

    /// The cluster-wide limits of `[queues.<name>]`, checked: a queue must be one some kind
    /// runs on or one `worker.queues` names.
    pub fn queue_limits(
        &self,
        registry: &Kinds,
    ) -> Result<BTreeMap<String, LimitConfig>, ConfigError> {
        let mut known = self.policies(registry)?.queues();
        known.extend(self.worker.queues.iter().cloned());
        known.sort();
        known.dedup();
        let mut out = BTreeMap::new();
        for (name, q) in &self.queues {
            if !known.contains(name) {
                return Err(ConfigError::at(
                    format!("queues.{name}"),
                    format!("unknown queue (known: {})", known.join(", ")),
                ));
            }
            let l = q.limits();
            l.validate(&format!("queues.{name}"), None)?;
            out.insert(name.clone(), l);
        }
        Ok(out)
    }

    /// Effective per-kind policies.
    pub fn policies(&self, registry: &Kinds) -> Result<Policies, ConfigError> {
        Ok(Policies::with_overrides(registry, &self.kinds)?)
    }
}

/// figment's errors as one line, each with its key written as in messages elsewhere:
/// `tokens[1].address` (figment gives the path as `tokens.1.address`).
fn flatten_err(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let mut path = String::new();
            for part in &e.path {
                if part.parse::<usize>().is_ok() {
                    path.push('[');
                    path.push_str(part);
                    path.push(']');
                } else {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(part);
                }
            }
            if path.is_empty() {
                e.kind.to_string()
            } else {
                format!("{path}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `[queues.<name>]` in config: cluster-wide limits of one queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueOverride {
    /// Running jobs of the queue in the whole cluster.
    pub global_concurrency: Option<u32>,
    /// Jobs of the queue started per second in the whole cluster.
    pub rate_limit: Option<f64>,
    /// Jobs that may start at once after a quiet spell (default: a tenth of a second's).
    pub rate_burst: Option<f64>,
}

impl QueueOverride {
    pub fn limits(&self) -> LimitConfig {
        LimitConfig {
            concurrency: self.global_concurrency,
            rate: self.rate_limit,
            burst: self.rate_burst,
            ..LimitConfig::default()
        }
    }
}

/// `[http]` in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub enabled: bool,
    pub listen: String,
    /// Bearer token of the enqueue and admin endpoints; without one they answer 403.
    pub admin_token: Option<String>,
    /// A token that reads everything (console and GET endpoints) and changes nothing.
    pub readonly_token: Option<String>,
    /// How long a console sign-in lasts.
    #[serde(with = "chainsync_engine::duration::text")]
    pub session_ttl: std::time::Duration,
    /// `Secure` on the console's session cookie: `true`/`false`, or unset to follow the
    /// `X-Forwarded-Proto: https` of a TLS-terminating proxy.
    pub secure_cookies: Option<bool>,
    /// Serve balances and health without the token.
    pub public_balances: bool,
    pub public_health: bool,
    /// Largest request body in bytes; larger ones get 413.
    pub body_limit: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            admin_token: None,
            readonly_token: None,
            session_ttl: std::time::Duration::from_secs(12 * 3600),
            secure_cookies: None,
            public_balances: true,
            public_health: true,
            body_limit: 64 * 1024,
        }
    }
}

impl HttpSettings {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| Invalid::at("http.listen", format!("{e} (e.g. 127.0.0.1:8080)")))?;
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(Invalid::at(
                "http.admin_token",
                "use at least 16 characters",
            ));
        }
        if self.readonly_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(Invalid::at(
                "http.readonly_token",
                "use at least 16 characters",
            ));
        }
        if self.readonly_token.is_some() && self.readonly_token == self.admin_token {
            return Err(Invalid::at(
                "http.readonly_token",
                "must differ from http.admin_token",
            ));
        }
        if !(60..=30 * 86_400).contains(&self.session_ttl.as_secs()) {
            return Err(Invalid::at(
                "http.session_ttl",
                "must be between 1m and 30d",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.body_limit) {
            return Err(Invalid::at("http.body_limit", "must be in 1024..=67108864"));
        }
        Ok(())
    }
}

/// `[metrics]` in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// How often the daemon measures the lag gauges (database and chain heads) and evaluates
    /// the alert rules.
    #[serde(with = "chainsync_engine::duration::text")]
    pub sample_interval: std::time::Duration,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            sample_interval: std::time::Duration::from_secs(10),
        }
    }
}

impl MetricsSettings {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.sample_interval < std::time::Duration::from_secs(1)
            || self.sample_interval > std::time::Duration::from_secs(3600)
        {
            return Err(Invalid::at("metrics.sample_interval", "must be in 1s..=1h"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_that_are_config() {
        let known = known_keys();
        assert!(env_key_is_config("WORKER__CONCURRENCY", &known));
        assert!(env_key_is_config("WORKR__CONCURRENCY", &known));
        assert!(env_key_is_config("DATABASE_URL", &known));
        assert!(env_key_is_config("redis_url", &known));
        assert!(!env_key_is_config("RPC_URL", &known));
        assert!(!env_key_is_config("CONFIG", &known));
        assert!(!env_key_is_config("STRESS", &known));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::from_toml("databse_url = 'x'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("databse_url"), "{e}");
        let e = Config::from_toml("[worker]\nconcurrency = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.concurrency"), "{e}");
        let e = Config::from_toml("[worker]\nlease = 'soon'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lease"), "{e}");
        let e = Config::from_toml("[kinds.nope]\nmax_attempts = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kinds.nope"), "{e}");
        let e = Config::from_toml("[[schedule]]\nname = 'a'\nkind = 'noop'\ncron = '99 * * * *'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schedule[0].cron"), "{e}");
        let e = Config::from_toml("[[schedule]]\nname = 'a'\nkind = 'nope'\nevery = '5m'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schedule[0].kind"), "{e}");
        let e = Config::from_toml(
            "[[schedule]]\nname = 'a'\nkind = 'noop'\nevery = '5m'\ntimezone = 'Mars/Olympus'",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("schedule[0].timezone"), "{e}");
        let e = Config::from_toml(
            "[[schedule]]\nname = 'a'\nkind = 'noop'\nevery = '5m'\ncron = '* * * * *'",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exactly one of cron and every"), "{e}");
        let e = Config::from_toml("[kinds.noop]\nmax_attempts = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kinds.noop"), "{e}");
    }

    const CHAIN_AND_TOKENS: &str = r#"
[[chains]]
chain_id = 31337
name = "anvil"
rpc_urls = ["http://127.0.0.1:8545"]
multicall_address = "MULTICALL"

[[tokens]]
chain_id = 31337
symbol = "ETH"
decimals = 18
asset_class = "native"

[[tokens]]
chain_id = 31337
symbol = "RAT"
decimals = 18
asset_class = "major"
address = "TOKEN"
reconcile_threshold = "THRESHOLD"

[tracking]
addresses = ["TRACKED"]
"#;

    fn chain_config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut text = CHAIN_AND_TOKENS.to_string();
        for (k, v) in [
            ("MULTICALL", "0xcA11bde05977b3631167028862bE2a173976CA11"),
            ("TOKEN", "0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            ("THRESHOLD", "1000"),
            ("TRACKED", "0x00000000000000000000000000000000000000aa"),
        ] {
            let v = pairs.iter().find(|(p, _)| *p == k).map_or(v, |(_, v)| *v);
            text = text.replace(k, v);
        }
        Config::from_toml(&text)
    }

    #[test]
    fn addresses_and_amounts_are_typed_at_load_and_bad_ones_name_the_key() {
        let cfg = chain_config(&[]).unwrap();
        let t = &cfg.domain.tokens[1];
        assert_eq!(t.key().text(), "0x5fbdb2315678afecb367f032d93f642f64180aa3");
        assert_eq!(t.threshold(), alloy::primitives::U256::from(1000u64));
        for (key, value, want) in [
            (
                "TOKEN",
                "0x1234",
                "tokens[1].address: invalid address \"0x1234\"",
            ),
            (
                "THRESHOLD",
                "-5",
                "tokens[1].reconcile_threshold: invalid amount \"-5\"",
            ),
            (
                "MULTICALL",
                "0xnope",
                "chains[0].multicall_address: invalid address \"0xnope\"",
            ),
            (
                "TRACKED",
                "nope",
                "tracking.addresses[0]: invalid address \"nope\"",
            ),
        ] {
            let e = chain_config(&[(key, value)]).unwrap_err().to_string();
            assert!(e.contains(want), "{key}: {e}");
        }
        // A TRON form on an EVM chain parses, and validation refuses it for that chain.
        let e = chain_config(&[("TOKEN", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokens[1].address") && e.contains("family = \"tron\""),
            "{e}"
        );
    }

    #[test]
    fn bad_alert_and_health_settings_name_the_key_and_keep_secrets_out() {
        let target = "[[alerts.targets]]\nname = 'ops'\nurl = 'https://hooks.example/T0KEN-s3cret'\nhmac_secret = 'hmac-key-0123456789'\n";
        let ok = Config::from_toml(&format!(
            "{target}[[alerts.rules]]\nkind = 'dead_letters'\ntarget = 'ops'\n"
        ))
        .unwrap();
        let shown = format!(
            "{:?} {}",
            ok.domain.alerts,
            serde_json::to_string(&ok.domain).unwrap()
        );
        assert!(
            !shown.contains("T0KEN-s3cret") && !shown.contains("hmac-key"),
            "{shown}"
        );
        for (toml, key) in [
            (
                format!("{target}[[alerts.rules]]\nkind = 'nope'\ntarget = 'ops'"),
                "alerts.rules[0].kind",
            ),
            (
                "[[alerts.targets]]\nname = 'ops'\nurl = 'ftp://hooks.example/T0KEN-s3cret'".into(),
                "alerts.targets[0].url",
            ),
            (
                format!("{target}[[alerts.rules]]\nkind = 'health_score'\ntarget = 'ops'\nthreshold = 150"),
                "alerts.rules[0].threshold",
            ),
            (
                format!("{target}[[alerts.rules]]\nkind = 'failure_rate'\ntarget = 'ops'\nthreshold = 0"),
                "alerts.rules[0].threshold",
            ),
            (
                format!("{target}[[alerts.rules]]\nkind = 'dead_letters'\ntarget = 'pager'"),
                "alerts.rules[0].target",
            ),
            (
                format!("{target}[[alerts.rules]]\nkind = 'dead_letters'\ntarget = 'ops'\njob_kind = 'nope'"),
                "alerts.rules[0].job_kind",
            ),
            (
                format!("{target}[[alerts.rules]]\nkind = 'dead_letters'\ntarget = 'ops'\n[[alerts.rules]]\nkind = 'dead_letters'\ntarget = 'ops'"),
                "alerts.rules[1].name",
            ),
            (
                "[[alerts.targets]]\nname = 'ops'\nurl = 'https://h.example/x'\nhmac_secret = 'short'".into(),
                "alerts.targets[0].hmac_secret",
            ),
            (
                "[[alerts.targets]]\nname = 'ops'\nurl = 'https://h.example/x'\nkind = 'teams'".into(),
                "alerts.targets[0].kind",
            ),
            ("[health]\nmin_score = 0".into(), "health.min_score"),
            ("[health]\nbalance_max_age = '0s'".into(), "health.balance_max_age"),
            ("[metrics]\nsample_interval = '0s'".into(), "metrics.sample_interval"),
            ("[history]\nbalance_changes = '1h'".into(), "history.balance_changes"),
            ("[history]\nevents = 'soon'".into(), "history.events"),
            ("[history]\npoints_history = '2w'".into(), "history.points_history"),
            ("[history]\nperiod_blocks = 0".into(), "history.period_blocks"),
            ("[history]\nkeep = '30d'".into(), "keep"),
        ] {
            let e = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(!e.contains("T0KEN-s3cret"), "{e}");
        }
    }

    #[test]
    fn shipped_default_config_parses() {
        let text = include_str!("../config/default.toml");
        let cfg = Config::from_toml(text).unwrap();
        assert_eq!(cfg.worker, WorkerSettings::default());
        assert_eq!(cfg.maintenance, MaintenanceSettings::default());
        assert_eq!(
            cfg.domain.history,
            chainsync_jobs::history::HistoryConfig::default()
        );
    }
}
