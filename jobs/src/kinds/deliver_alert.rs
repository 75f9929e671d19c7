//! `deliver-alert`: posts one alert notification (an incident opened or resolved) to one
//! `[[alerts.targets]]` entry. The job's arguments name the target; its URL and HMAC key stay in
//! the configuration, never in the queue. A receiver that is down gets retries with backoff and
//! the job ends in the dead letters when they are exhausted.

use std::time::Duration;

use async_trait::async_trait;
use chainsync_engine::Invalid;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, RetryPolicy,
    alerts::{AlertTarget, TargetKind},
};

/// Time allowed for one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>` when the target has an `hmac_secret`.
pub const SIGNATURE_HEADER: &str = "x-chainsync-signature";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverAlert {
    /// Name of the `[[alerts.targets]]` entry.
    pub target: String,
    /// The notification: the JSON body posted to a `json` target (see [`crate::alerts::Notice`]).
    pub alert: serde_json::Value,
}

#[async_trait]
impl Job for DeliverAlert {
    type Services = crate::Services;

    const KIND: &'static str = "deliver-alert";
    const QUEUE: &'static str = "alerts";

    /// About 1 h of retries (5 s doubling to 10 min), then the dead letters.
    fn retry_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 12,
            base: Duration::from_secs(5),
            cap: Duration::from_secs(600),
            jitter: 0.1,
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.target.trim().is_empty() {
            return Err(Invalid::at("target", "must not be empty"));
        }
        if !self.alert.is_object() {
            return Err(Invalid::at("alert", "must be a JSON object"));
        }
        Ok(())
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let target = ctx
            .services
            .settings
            .alerts
            .target(&self.target)
            .ok_or_else(|| {
                JobError::fatal(format!(
                    "alert target {:?} is not configured in [[alerts.targets]]",
                    self.target
                ))
            })?;
        post(target, &self.alert).await
    }
}

/// The body posted to `target` for `alert`.
pub fn body(target: &AlertTarget, alert: &serde_json::Value) -> Result<Vec<u8>, JobError> {
    let value = match target.kind {
        TargetKind::Json | TargetKind::Unknown => alert.clone(),
        TargetKind::Slack => serde_json::json!({
            "text": alert.get("text").and_then(|t| t.as_str()).unwrap_or("chainsync alert"),
        }),
    };
    serde_json::to_vec(&value).map_err(|e| JobError::fatal_from("alert body", e))
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    type HmacSha256 = Hmac<sha2::Sha256>;
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts `alert` to `target`. Errors name the target, never its URL.
pub async fn post(target: &AlertTarget, alert: &serde_json::Value) -> Result<(), JobError> {
    use alloy::transports::http::reqwest;
    let body = body(target, alert)?;
    let client = reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .build()
        .map_err(|e| JobError::retry_from("HTTP client", e.without_url()))?;
    let mut req = client
        .post(target.url.as_str())
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("chainsync/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(secret) = &target.hmac_secret {
        req = req.header(SIGNATURE_HEADER, signature(secret, &body));
    }
    let resp = req.body(body).send().await.map_err(|e| {
        JobError::retry_from(format!("alert target {:?}", target.name), e.without_url())
    })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(JobError::retry(format!(
            "alert target {:?}: HTTP {status}",
            target.name
        )))
    }
}
