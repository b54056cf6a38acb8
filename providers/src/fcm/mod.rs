//! The FCM provider: delivers a [`Notification`] to an Android device through Firebase Cloud
//! Messaging's HTTP v1 API, authenticated with a Google service account.
//!
//! The API: <https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send>.
//!
//! Why it looks the way it does:
//! * Its own OAuth (oauth.rs) on ring rather than gcp_auth/jsonwebtoken: one RS256 signature, no
//!   `rsa` crate (RUSTSEC-2023-0071), and a cache that shares one refresh among concurrent
//!   deliveries.
//! * Its own client on reqwest: the base URL and an extra CA are configurable (tests run against
//!   a local HTTP/2 server; private relays exist). Sends speak HTTP/2 only, so concurrent
//!   deliveries multiplex over one connection instead of opening one each.
//! * Verdicts follow the HTTP status first and FCM's `errorCode` second, so a code Google adds
//!   later still lands in the right class; only answers that certainly mean "this token is gone"
//!   delete a registration.
//! * Access tokens, the key, device tokens (beyond a prefix) and message content are never logged.
//!
//! What an answer that asks to slow down holds back (transport.rs `Holds`), and for how long
//! (its `Retry-After`, at most an hour, else the backoff):
//! * 429 `QUOTA_EXCEEDED` is about the message's target (FCM's per-device rate) unless its
//!   details say the project's quota is spent (a google.rpc `QuotaFailure` violation with a
//!   `project:` subject, or an `ErrorInfo` `RATE_LIMIT_EXCEEDED`, as Google's quota system
//!   answers): so it holds back that device (at least a minute, doubling up to an hour), and
//!   the whole project only when FCM said the project is over quota. Other devices' sends go on.
//! * A 5xx is about the service, not the message: it holds back every send for seconds,
//!   doubling up to a minute, or as long as `Retry-After` says.

pub(crate) mod message;
pub(crate) mod oauth;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;

use crate::transport::{Answered, Backoff, Hold, Holds};
use crate::{ConfigError, Device, Notification, Provider, RegistrationError, Verdict};
use message::MappingSettings;
use oauth::{ServiceAccount, TokenSource};

/// Google's endpoint.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";

/// FCM registration tokens are ~160 characters today; this bounds what is stored.
const MAX_TOKEN_CHARS: usize = 4096;
/// Google's floor for backing off after `QUOTA_EXCEEDED`: at least a minute
/// (<https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>).
const QUOTA_BACKOFF: Duration = Duration::from_secs(60);
/// Longest a device is held back after repeated 429s.
const MAX_DEVICE_BACKOFF: Duration = Duration::from_secs(3600);
/// First hold of the whole service after a 5xx; doubles up to `MAX_SERVICE_BACKOFF`.
const SERVICE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_SERVICE_BACKOFF: Duration = Duration::from_secs(60);
/// How much of an answer is read (so the stream completes) and kept for the reason.
const MAX_RESPONSE_READ_BYTES: usize = 16 * 1024;
const MAX_REASON_CHARS: usize = 300;
/// PINGs on idle connections, so a connection that died silently is noticed before a send.
const PING_INTERVAL: Duration = Duration::from_secs(60);

/// `[providers.<id>]` with `kind = "fcm"`; the keys are documented in `etc/pushgate.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The Google service-account JSON (`project_id`, `private_key`, `private_key_id`,
    /// `client_email`, `token_uri`).
    pub service_account_file: PathBuf,
    /// FCM's endpoint; only tests and relays change it.
    #[serde(default = "defaults::base_url")]
    pub base_url: String,
    /// Extra trusted CA (PEM), added to the system roots: tests and private relays.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `android.ttl`: how long FCM keeps an undelivered message.
    #[serde(default = "defaults::ttl_secs")]
    pub ttl_secs: u64,
    /// Bodies longer than this many characters are cut and end in "…".
    #[serde(default = "defaults::max_body_chars")]
    pub max_body_chars: usize,
    /// Bound on one delivery, access token included.
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Members merged into every message (Sygnal's `fcm_options`), e.g.
    /// `{ android = { restricted_package_name = "org.example" } }` or an `apns` or `webpush`
    /// block; objects merge member by member. What pushgate sets itself (`token`, `data`,
    /// `android.priority`, `android.ttl`, `android.collapse_key`) cannot be set here.
    #[serde(default)]
    pub message_options: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    pub fn base_url() -> String {
        super::DEFAULT_BASE_URL.to_owned()
    }
    pub fn ttl_secs() -> u64 {
        86_400
    }
    pub fn max_body_chars() -> usize {
        500
    }
    pub fn request_timeout_secs() -> u64 {
        8
    }
}

impl FcmConfig {
    /// A configuration with every optional key at its default.
    pub fn new(service_account_file: impl Into<PathBuf>) -> Self {
        Self {
            service_account_file: service_account_file.into(),
            base_url: defaults::base_url(),
            ca_file: None,
            ttl_secs: defaults::ttl_secs(),
            max_body_chars: defaults::max_body_chars(),
            request_timeout_secs: defaults::request_timeout_secs(),
            message_options: serde_json::Map::new(),
        }
    }

    /// Every numeric key in its range (`section` is the section's dotted path).
    pub fn check_ranges(&self, section: &str) -> Result<(), ConfigError> {
        crate::check_common_ranges(
            section,
            ("ttl_secs", self.ttl_secs),
            self.max_body_chars,
            self.request_timeout_secs,
        )
    }
}

/// The FCM provider for one Firebase project.
pub struct Fcm {
    /// The configuration section's dotted path, for logs.
    key: String,
    send_url: String,
    client: reqwest::Client,
    tokens: TokenSource,
    request_timeout: Duration,
    mapping: MappingSettings,
    /// Devices FCM answered 429 for: at least a minute before the next try (`QUOTA_BACKOFF`);
    /// the whole service after 5xx answers or a spent project quota: seconds, doubling up to a
    /// minute.
    holds: Holds,
}

impl fmt::Debug for Fcm {
    /// Shows the settings but never credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fcm")
            .field("key", &self.key)
            .field("project_id", &self.tokens.project_id())
            .field("send_url", &self.send_url)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// Builds the provider for the section at `key`; every error names the offending key below
    /// it. The service account is read and its key checked now, so a bad file stops the start.
    pub fn new(key: &str, config: &FcmConfig) -> Result<Self, ConfigError> {
        let err = |field: &str, message: String| ConfigError::in_section(key, field, message);
        config.check_ranges(key)?;
        message::check_options(&config.message_options).map_err(|member| {
            err(
                &format!("message_options.{member}"),
                "pushgate sets this member itself".to_owned(),
            )
        })?;
        let account = ServiceAccount::load(&config.service_account_file)
            .map_err(|e| err("service_account_file", e.to_string()))?;
        let url = url::Url::parse(&config.base_url)
            .map_err(|e| err("base_url", format!("not a URL: {e}")))?;
        if url.scheme() != "https" || url.host().is_none() {
            return Err(err("base_url", "must be an https:// URL".to_owned()));
        }
        let extra_roots = crate::transport::extra_roots(config.ca_file.as_deref())
            .map_err(|e| err("ca_file", e.to_string()))?;
        let request_timeout = Duration::from_secs(config.request_timeout_secs);
        let built = |builder: reqwest::ClientBuilder| {
            builder
                .build()
                .map_err(|e| err("ca_file", format!("cannot build the HTTP client: {e}")))
        };
        let client = built(crate::transport::h2_client_builder(
            request_timeout,
            &extra_roots,
            Some(PING_INTERVAL),
        ))?;
        // The token endpoint may be plain http on loopback (checked in oauth.rs) and need not
        // speak HTTP/2, so it gets its own client.
        let token_client = built(crate::transport::client_builder(
            request_timeout,
            &extra_roots,
        ))?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            config.base_url.trim_end_matches('/'),
            account.project_id
        );
        let project_id = account.project_id.clone();
        let fcm = Self {
            key: key.to_owned(),
            send_url,
            client,
            tokens: TokenSource::new(account, token_client, request_timeout),
            request_timeout,
            mapping: MappingSettings {
                max_body_chars: config.max_body_chars,
                ttl_secs: config.ttl_secs,
                options: config.message_options.clone(),
            },
            holds: Holds::new(
                "FCM",
                Backoff::new(QUOTA_BACKOFF, MAX_DEVICE_BACKOFF),
                Backoff::new(SERVICE_BACKOFF, MAX_SERVICE_BACKOFF),
            ),
        };
        tracing::info!(provider = key, project_id, "FCM provider ready");
        Ok(fcm)
    }

    /// Makes the cached access token look `by` older, so tests can exercise its renewal without
    /// waiting for it.
    #[doc(hidden)]
    pub async fn backdate_access_token(&self, by: Duration) {
        self.tokens.backdate(by).await;
    }

    /// One delivery, run inside the delivery span: at most one retry after a connection
    /// failure, and one with a fresh access token after a 401. Everything shares one bound.
    /// Delivers `body`; returns what FCM's last answer said about holding back, and the verdict.
    async fn deliver(&self, body: &[u8]) -> (Answered, Verdict) {
        let mut answered = Answered::Nothing;
        let verdict = self.deliver_inner(body, &mut answered).await;
        (answered, verdict)
    }

    async fn deliver_inner(&self, body: &[u8], answered: &mut Answered) -> Verdict {
        let deadline = crate::transport::deadline_after(self.request_timeout);
        let timed_out = || Verdict::Transient {
            retry_after: None,
            reason: format!(
                "no answer from FCM within {} s",
                self.request_timeout.as_secs()
            ),
        };
        let mut may_refresh = true;
        let mut may_reconnect = true;
        loop {
            let access = match tokio::time::timeout_at(deadline.into(), self.tokens.get()).await {
                Err(_) => return timed_out(),
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "no FCM access token");
                    return Verdict::Transient {
                        retry_after: None,
                        reason: format!("no FCM access token: {e}"),
                    };
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return timed_out();
            }
            let request = self
                .client
                .post(&self.send_url)
                .timeout(left)
                .header(http::header::AUTHORIZATION, format!("Bearer {access}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if may_reconnect && crate::transport::is_connection_error(&e) => {
                    tracing::debug!(error = %e.without_url(), "FCM connection failed; retrying once");
                    may_reconnect = false;
                    continue;
                }
                Err(e) => {
                    return crate::transport::classify_request_error(
                        e,
                        self.request_timeout,
                        "FCM",
                    );
                }
            };
            let status = response.status();
            tracing::Span::current().record("status", status.as_u16());
            let retry_after = crate::transport::retry_after(response.headers());
            let answer = crate::transport::read_capped(response, MAX_RESPONSE_READ_BYTES).await;
            let error = FcmError::parse(&answer);
            *answered = answered_by(status, error.as_ref());
            match classify(status, error.as_ref(), retry_after) {
                Classified::Done(v) => return v,
                Classified::Unauthenticated(reason) if may_refresh => {
                    tracing::info!(%reason, "FCM refused the access token; refreshing it once");
                    may_refresh = false;
                    self.tokens.invalidate(&access).await;
                }
                Classified::Unauthenticated(reason) => {
                    tracing::error!(%reason, "FCM refused a freshly fetched access token; check the service account's permissions");
                    return Verdict::Transient {
                        retry_after: None,
                        reason: format!("{reason} (after a token refresh; credentials)"),
                    };
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for Fcm {
    fn validate(&self, device: &Device) -> Result<(), RegistrationError> {
        check_token(device.token.as_str()).map_err(RegistrationError::InvalidToken)
    }

    async fn send(&self, device: &Device, notification: &Notification) -> Verdict {
        let span = crate::transport::delivery_span!(
            "fcm_delivery",
            self.key,
            device,
            notification,
            priority
        );
        let delivery = self.send_inner(device, notification);
        crate::transport::in_delivery_span(span, "fcm delivery", delivery).await
    }
}

impl Fcm {
    async fn send_inner(&self, device: &Device, notification: &Notification) -> Verdict {
        if let Err(m) = check_token(device.token.as_str()) {
            return Verdict::DeadToken {
                reason: format!("stored token is unusable: {m}"),
            };
        }
        let planned = match message::plan(device.token.as_str(), notification, &self.mapping) {
            Ok(p) => p,
            Err(reason) => return Verdict::OurFault { reason },
        };
        tracing::Span::current().record("priority", planned.priority);
        let token = device.token.as_str();
        if let Some(held) = self.holds.check(token, Instant::now()) {
            return held;
        }
        let (answered, verdict) = self.deliver(&planned.body).await;
        let asked = match &verdict {
            Verdict::Transient { retry_after, .. } => *retry_after,
            _ => None,
        };
        self.holds.record(token, answered, asked, Instant::now());
        verdict
    }
}

/// What an FCM answer means for later sends (see the module docs).
pub(crate) fn answered_by(status: StatusCode, error: Option<&FcmError>) -> Answered {
    match status.as_u16() {
        200..=299 => Answered::Delivered,
        429 if error.is_some_and(|e| e.project_quota) => Answered::Hold(Hold::Service),
        429 => Answered::Hold(Hold::Device),
        500..=599 => Answered::Hold(Hold::Service),
        _ => Answered::Nothing,
    }
}

/// FCM registration tokens are opaque printable strings (base64url-ish with `:`).
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("an FCM registration token cannot be empty".to_owned());
    }
    if token.chars().count() > MAX_TOKEN_CHARS {
        return Err(format!(
            "an FCM registration token is at most {MAX_TOKEN_CHARS} characters"
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "an FCM registration token contains no whitespace or control characters".to_owned(),
        );
    }
    Ok(())
}

/// The parts of a Google API error answer that decide the verdict, read leniently: any of them
/// may be missing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FcmError {
    /// Canonical status, e.g. `INVALID_ARGUMENT`.
    status: String,
    message: String,
    /// The `FcmError` detail's `errorCode`, e.g. `UNREGISTERED`.
    error_code: String,
    /// The first `BadRequest` field violation: field path and description.
    field: Option<(String, String)>,
    /// A quota detail says the project's quota is spent, not one device's.
    project_quota: bool,
}

impl FcmError {
    /// `None` when the answer is not a Google error object (e.g. a relay's HTML page).
    pub(crate) fn parse(body: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let error = value.get("error")?.as_object()?;
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(|s| s.as_str())
                .map(|s| crate::transport::printable(s, MAX_REASON_CHARS))
                .unwrap_or_default()
        };
        let mut parsed = FcmError {
            status: text(error.get("status")),
            message: text(error.get("message")),
            ..Default::default()
        };
        for detail in error
            .get("details")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
        {
            if parsed.error_code.is_empty() {
                parsed.error_code = text(detail.get("errorCode"));
            }
            if parsed.field.is_none()
                && let Some(v) = detail
                    .get("fieldViolations")
                    .and_then(|f| f.as_array())
                    .and_then(|f| f.first())
            {
                parsed.field = Some((text(v.get("field")), text(v.get("description"))));
            }
            parsed.project_quota |= is_project_quota(detail);
        }
        Some(parsed)
    }

    /// The error code, else the status: what the reason shows first.
    fn code(&self) -> &str {
        if self.error_code.is_empty() {
            &self.status
        } else {
            &self.error_code
        }
    }

    fn is(&self, code: &str) -> bool {
        self.error_code == code || self.status == code
    }

    /// 400 INVALID_ARGUMENT about the token itself rather than about the message.
    fn is_invalid_token(&self) -> bool {
        if self
            .field
            .as_ref()
            .is_some_and(|(f, _)| f == "message.token")
        {
            return true;
        }
        let m = self.message.to_ascii_lowercase();
        m.contains("registration token") && (m.contains("not a valid") || m.contains("invalid"))
    }
}

/// Whether one google.rpc error detail says the project's quota is spent: a `QuotaFailure`
/// violation whose subject is `project:<id>`, or an `ErrorInfo` `RATE_LIMIT_EXCEEDED` (Google's
/// per-consumer quota answer).
fn is_project_quota(detail: &serde_json::Value) -> bool {
    let of_type = |t: &str| {
        detail
            .get("@type")
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.ends_with(t))
    };
    if of_type("google.rpc.QuotaFailure") {
        return detail
            .get("violations")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("subject").and_then(|s| s.as_str()))
            .any(|s| s.starts_with("project:") || s.starts_with("projects/"));
    }
    of_type("google.rpc.ErrorInfo")
        && detail.get("reason").and_then(|r| r.as_str()) == Some("RATE_LIMIT_EXCEEDED")
}

/// What an FCM answer means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Classified {
    Done(Verdict),
    /// The access token was refused: refresh it and retry once. Carries the reason.
    Unauthenticated(String),
}

/// Maps an FCM answer onto a verdict (the error codes:
/// <https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>): the status decides the
/// class, the error code refines it. Unknown codes keep their string.
pub(crate) fn classify(
    status: StatusCode,
    error: Option<&FcmError>,
    retry_after: Option<Duration>,
) -> Classified {
    let code = status.as_u16();
    let shown = match error {
        Some(e) => {
            let mut s = format!("FCM answered {code}");
            if !e.code().is_empty() {
                s.push(' ');
                s.push_str(e.code());
            }
            if !e.message.is_empty() {
                s.push_str(": ");
                s.push_str(&e.message);
            }
            if let Some((field, description)) = &e.field {
                s.push_str(&format!(" (field {field}: {description})"));
            }
            s
        }
        None => format!("FCM answered {code}"),
    };
    let transient = |retry_after, reason| Verdict::Transient {
        retry_after,
        reason,
    };
    let verdict = match (code, error) {
        (200..=299, _) => Verdict::Sent,
        (_, Some(e)) if e.error_code == "UNREGISTERED" => Verdict::DeadToken { reason: shown },
        // A 404 without UNREGISTERED is not about the token: a wrong project_id or base_url, or
        // a relay's page. Deleting registrations for it would wipe every device at once.
        (404, _) => Verdict::OurFault {
            reason: format!("{shown} without UNREGISTERED (are project_id and base_url right?)"),
        },
        (403, Some(e)) if e.is("SENDER_ID_MISMATCH") => Verdict::DeadToken { reason: shown },
        (400, Some(e)) if e.is_invalid_token() => Verdict::DeadToken { reason: shown },
        (401, Some(e)) if e.is("THIRD_PARTY_AUTH_ERROR") => {
            tracing::error!(reason = %shown, "FCM cannot reach the platform behind it (APNs or web push credentials in the Firebase project); devices are kept");
            transient(None, format!("{shown} (Firebase project configuration)"))
        }
        (401, _) => return Classified::Unauthenticated(shown),
        (403, _) => {
            tracing::error!(reason = %shown, "FCM refused pushgate's service account (permission, disabled API or wrong project); devices are kept");
            transient(None, format!("{shown} (credentials or configuration)"))
        }
        (429, _) => transient(Some(retry_after.unwrap_or(QUOTA_BACKOFF)), shown),
        (500..=599, _) => transient(retry_after, shown),
        _ => Verdict::OurFault { reason: shown },
    };
    Classified::Done(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google(code: u16, status: &str, message: &str, error_code: Option<&str>) -> Vec<u8> {
        let details = match error_code {
            Some(c) => serde_json::json!([{
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": c
            }]),
            None => serde_json::json!([]),
        };
        serde_json::json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string()
            .into_bytes()
    }

    fn verdict(code: u16, body: &[u8], retry_after: Option<u64>) -> Classified {
        classify(
            StatusCode::from_u16(code).unwrap(),
            FcmError::parse(body).as_ref(),
            retry_after.map(Duration::from_secs),
        )
    }

    #[test]
    fn classification_by_status_then_error_code() {
        // Google error answers: (HTTP status, canonical status, message, FcmError code) and the
        // verdict they must get.
        let answers = [
            (
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
                Some("UNREGISTERED"),
                "dead_token",
            ),
            // A wrong project_id: Google's 404 without an FcmError must not delete every device.
            (
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
                None,
                "our_fault",
            ),
            (
                403,
                "PERMISSION_DENIED",
                "SenderId mismatch",
                Some("SENDER_ID_MISMATCH"),
                "dead_token",
            ),
            (
                403,
                "PERMISSION_DENIED",
                "Permission denied",
                None,
                "transient",
            ),
            (
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                Some("INVALID_ARGUMENT"),
                "dead_token",
            ),
            (
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.android.ttl'",
                Some("INVALID_ARGUMENT"),
                "our_fault",
            ),
            (
                401,
                "UNAUTHENTICATED",
                "Auth error from APNS or Web Push Service",
                Some("THIRD_PARTY_AUTH_ERROR"),
                "transient",
            ),
        ];
        for (code, status, message, error_code, expected) in answers {
            let Classified::Done(v) =
                verdict(code, &google(code, status, message, error_code), None)
            else {
                panic!("{code} {status} {message}: not a final verdict");
            };
            assert_eq!(v.label(), expected, "{code} {status} {message}");
            let (Verdict::DeadToken { reason }
            | Verdict::Transient { reason, .. }
            | Verdict::OurFault { reason }) = v
            else {
                panic!("{code} {status} {message}: sent");
            };
            // The reason shows what FCM said.
            assert!(reason.contains(error_code.unwrap_or(status)), "{reason}");
            assert!(reason.contains(message), "{reason}");
        }

        assert_eq!(verdict(200, b"{}", None), Classified::Done(Verdict::Sent));
        assert!(matches!(
            verdict(404, b"<html>Not Found</html>", None),
            Classified::Done(Verdict::OurFault { .. })
        ));
        assert!(matches!(
            verdict(
                401,
                &google(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials.",
                    None
                ),
                None
            ),
            Classified::Unauthenticated(_)
        ));
        assert_eq!(
            verdict(
                429,
                &google(429, "RESOURCE_EXHAUSTED", "quota", Some("QUOTA_EXCEEDED")),
                None
            ),
            Classified::Done(Verdict::Transient {
                retry_after: Some(QUOTA_BACKOFF),
                reason: "FCM answered 429 QUOTA_EXCEEDED: quota".into()
            })
        );
        assert!(matches!(
            verdict(503, b"", Some(7)),
            Classified::Done(Verdict::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            verdict(418, b"teapot", None),
            Classified::Done(Verdict::OurFault { .. })
        ));
    }

    #[test]
    fn field_violations_are_read() {
        let body = serde_json::json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid JSON payload received.",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.data[0].value", "description": "Invalid value"}]}]}});
        let e = FcmError::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            e.field,
            Some(("message.data[0].value".into(), "Invalid value".into()))
        );
        assert!(!e.is_invalid_token());
        let token = serde_json::json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "x",
            "details": [{"fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}]}});
        assert!(
            FcmError::parse(token.to_string().as_bytes())
                .unwrap()
                .is_invalid_token()
        );
    }

    #[test]
    fn quota_holds_the_device_unless_the_project_is_over_quota() {
        let hold = |body: &[u8]| {
            answered_by(
                StatusCode::TOO_MANY_REQUESTS,
                FcmError::parse(body).as_ref(),
            )
        };
        let with_detail = |detail: serde_json::Value| {
            serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "message": "quota", "details": [detail]}})
            .to_string()
            .into_bytes()
        };
        let device = Answered::Hold(Hold::Device);
        let project = Answered::Hold(Hold::Service);
        assert_eq!(
            hold(&google(
                429,
                "RESOURCE_EXHAUSTED",
                "q",
                Some("QUOTA_EXCEEDED")
            )),
            device
        );
        assert_eq!(hold(b"overloaded"), device);
        assert_eq!(
            hold(&with_detail(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"subject": "project:1234", "description": "per-project rate"}]
            }))),
            project
        );
        assert_eq!(
            hold(&with_detail(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"subject": "device", "description": "per-device rate"}]
            }))),
            device
        );
        assert_eq!(
            hold(&with_detail(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "RATE_LIMIT_EXCEEDED", "domain": "googleapis.com",
                "metadata": {"quota_unit": "1/min/{project}", "consumer": "projects/1234"}
            }))),
            project
        );
        assert_eq!(answered_by(StatusCode::SERVICE_UNAVAILABLE, None), project);
        assert_eq!(answered_by(StatusCode::OK, None), Answered::Delivered);
        assert_eq!(answered_by(StatusCode::NOT_FOUND, None), Answered::Nothing);
    }

    #[test]
    fn tokens_must_be_printable_and_bounded() {
        assert!(check_token("dQw4w9WgXcQ:APA91bH-some_token").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token("a b").is_err());
        assert!(check_token("a\u{7}b").is_err());
        assert!(check_token(&"a".repeat(4096)).is_ok());
        assert!(check_token(&"a".repeat(4097)).is_err());
    }
}
