//! The APNs provider: delivers a [`Notification`] to an iOS device through Apple's HTTP/2
//! provider API, with token (.p8) or certificate (.p12 / PEM) authentication.
//!
//! The provider API: <https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns>.
//!
//! Why it looks the way it does:
//! * Its own client rather than the a2 crate: the base URL and an extra CA must be configurable
//!   (tests run against a local HTTP/2 server; private relays exist), while a2 hard-codes
//!   Apple's hosts and trusts only the webpki roots; unknown APNs reasons must survive as strings
//!   (a2's reason enum drops them); and idle connections need HTTP/2 PINGs (a2 sends none). The
//!   connections are h2conn.rs's, on the `h2` crate directly rather than reqwest, which cost
//!   more CPU per push than the rest of the send path (docs/performance.md).
//! * Credentials may arrive after start (admin upload), so they live behind a lock and are
//!   swapped whole with their connection pool; in-flight deliveries finish on the old pool.
//! * Verdicts follow the HTTP status first and the `reason` second, so a reason Apple adds later
//!   still lands in the right class.
//! * Device tokens, keys, JWTs and payloads are never logged; a token shows only its prefix.
//!
//! What an answer that asks to slow down holds back (transport.rs `Holds`):
//! * 429 `TooManyRequests` is about one device token ("too many requests to the same token"):
//!   that token is held back for its `Retry-After` (at most an hour), else a minute doubling up
//!   to an hour. Other devices' sends go on.
//! * 429 `TooManyProviderTokenUpdates` and a 5xx (`ServiceUnavailable`, `Shutdown`, after the
//!   retry on another connection) are about the whole provider, but only held as long as APNs
//!   (or a relay) says in `Retry-After`: Apple documents none and advises retrying, and a
//!   provider-wide hold of its own would turn one restarting APNs node into lost notifications
//!   for every device. The publishing server's retry is the backoff.

mod auth;
mod h2conn;
mod jwt;
mod payload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT,
};
use http::{Method, StatusCode};
use serde::Deserialize;

pub use auth::{CredentialError, CredentialInfo, Credentials};

use crate::transport::{Answered, Backoff, Hold, Holds};
use crate::{ConfigError, Device, Notification, Provider, RegistrationError, Verdict};
use h2conn::{Pool, SendError, Settings};
use jwt::TokenSigner;
use payload::{MappingSettings, Planned, PushType};

/// Apple's production endpoint.
pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
/// Apple's development (sandbox) endpoint.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// Pause before retrying a 500/503, so a restarting APNs node is not hit again at once.
const SERVER_ERROR_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// First hold of a device after 429 `TooManyRequests`; doubles up to `MAX_DEVICE_BACKOFF`.
const DEVICE_BACKOFF: Duration = Duration::from_secs(60);
const MAX_DEVICE_BACKOFF: Duration = Duration::from_secs(3600);

/// `apns-collapse-id` may be at most this many bytes.
const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// How much of an error response is read (so the stream completes) and kept for the reason.
const MAX_RESPONSE_READ_BYTES: usize = 8 * 1024;
const MAX_REASON_CHARS: usize = 200;

/// `[providers.<id>]` with `kind = "apns"`; the keys are documented in `etc/pushgate.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The app's bundle id (`apns-topic`); VoIP pushes go to `<topic>.voip`.
    pub topic: String,
    pub environment: Environment,
    /// Defaults to Apple's production or sandbox endpoint for `environment`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Extra trusted CA (PEM), added to the system roots: tests and private relays.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Token auth: the .p8 key file, its key id and the team id.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    /// Certificate auth from a PKCS#12 bundle and its password.
    #[serde(default)]
    pub p12_file: Option<PathBuf>,
    #[serde(default)]
    pub p12_password: Option<String>,
    /// Certificate auth from a PEM certificate (+ chain) and a PEM private key.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Connections to APNs (Tigase's `pool-size`).
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// HTTP/2 PING interval on idle connections; 0 sends none.
    #[serde(default = "defaults::ping_interval_secs")]
    pub ping_interval_secs: u64,
    /// Bound on one request, connection to last response byte.
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// `apns-expiration` = now + this; 0 = "now or never".
    #[serde(default = "defaults::expiration_secs")]
    pub expiration_secs: u64,
    /// The same for VoIP pushes: a stale ring is useless.
    #[serde(default = "defaults::voip_expiration_secs")]
    pub voip_expiration_secs: u64,
    /// `apns-collapse-id` for every push (≤ 64 bytes).
    #[serde(default)]
    pub collapse_id: Option<String>,
    /// Bodies longer than this many characters are cut and end in "…".
    #[serde(default = "defaults::max_body_chars")]
    pub max_body_chars: usize,
}

mod defaults {
    pub fn pool_size() -> usize {
        2
    }
    pub fn ping_interval_secs() -> u64 {
        60
    }
    pub fn request_timeout_secs() -> u64 {
        8
    }
    pub fn expiration_secs() -> u64 {
        86_400
    }
    pub fn voip_expiration_secs() -> u64 {
        30
    }
    pub fn max_body_chars() -> usize {
        500
    }
}

impl ApnsConfig {
    /// A configuration with every optional key at its default and no credentials.
    pub fn new(topic: impl Into<String>, environment: Environment) -> Self {
        Self {
            topic: topic.into(),
            environment,
            base_url: None,
            ca_file: None,
            key_file: None,
            key_id: None,
            team_id: None,
            p12_file: None,
            p12_password: None,
            cert_file: None,
            private_key_file: None,
            pool_size: defaults::pool_size(),
            ping_interval_secs: defaults::ping_interval_secs(),
            request_timeout_secs: defaults::request_timeout_secs(),
            expiration_secs: defaults::expiration_secs(),
            voip_expiration_secs: defaults::voip_expiration_secs(),
            collapse_id: None,
            max_body_chars: defaults::max_body_chars(),
        }
    }

    /// Every numeric key in its range (`section` is the section's dotted path).
    pub fn check_ranges(&self, section: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{section}.{field}");
        ConfigError::check_range(&key("pool_size"), self.pool_size, 1..=64)?;
        ConfigError::check_range(
            &key("ping_interval_secs"),
            self.ping_interval_secs,
            0..=3600,
        )?;
        // A call ringing an hour late is no call.
        ConfigError::check_range(
            &key("voip_expiration_secs"),
            self.voip_expiration_secs,
            0..=3600,
        )?;
        crate::check_common_ranges(
            section,
            ("expiration_secs", self.expiration_secs),
            self.max_body_chars,
            self.request_timeout_secs,
        )
    }
}

/// Which APNs environment the app's tokens belong to; a token from the other one is refused as
/// `BadDeviceToken`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    fn label(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }
}

/// Credentials in use, with the pool built for them (certificate auth binds the TLS identity
/// to the connections) and, for token auth, the shared provider token.
struct Active {
    info: CredentialInfo,
    pool: Pool,
    signer: Option<TokenSigner>,
}

/// The APNs provider for one app (topic + environment).
pub struct Apns {
    /// The configuration section's dotted path, for logs.
    key: String,
    topic: String,
    environment: Environment,
    base_url: String,
    connection_settings: Settings,
    /// `apns-topic` for ordinary pushes and for VoIP pushes, and `apns-collapse-id` from the
    /// configuration: built once.
    topic_header: HeaderValue,
    voip_topic_header: HeaderValue,
    collapse_id_header: Option<HeaderValue>,
    pool_size: usize,
    request_timeout: Duration,
    mapping: MappingSettings,
    active: RwLock<Option<Arc<Active>>>,
    /// Devices APNs answered `TooManyRequests` for; the provider while APNs asks it to wait.
    holds: Holds,
}

impl fmt::Debug for Apns {
    /// Shows the settings but never credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Apns")
            .field("key", &self.key)
            .field("topic", &self.topic)
            .field("environment", &self.environment)
            .field("base_url", &self.base_url)
            .field("pool_size", &self.pool_size)
            .field("credentials", &self.credential_info())
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// Builds the provider for the section at `key`; every error names the offending key below
    /// it. Credentials in the config are optional: an app may get them later via the admin
    /// command. Without credentials, send() answers `Verdict::Transient`.
    pub fn new(key: &str, config: &ApnsConfig) -> Result<Self, ConfigError> {
        let err = |field: &str, message: String| ConfigError::in_section(key, field, message);

        config.check_ranges(key)?;
        if config.topic.trim().is_empty() || config.topic.contains(char::is_whitespace) {
            return Err(err("topic", "must be the app's bundle id".to_owned()));
        }
        let base_url = match &config.base_url {
            Some(u) => {
                let url =
                    url::Url::parse(u).map_err(|e| err("base_url", format!("not a URL: {e}")))?;
                if url.scheme() != "https" || url.host().is_none() {
                    return Err(err("base_url", "must be an https:// URL".to_owned()));
                }
                u.trim_end_matches('/').to_owned()
            }
            None => match config.environment {
                Environment::Production => PRODUCTION_URL.to_owned(),
                Environment::Sandbox => SANDBOX_URL.to_owned(),
            },
        };
        if let Some(id) = &config.collapse_id
            && (id.is_empty() || id.len() > MAX_COLLAPSE_ID_BYTES)
        {
            return Err(err(
                "collapse_id",
                format!(
                    "must be 1 to {MAX_COLLAPSE_ID_BYTES} bytes, got {}",
                    id.len()
                ),
            ));
        }
        let extra_roots = match &config.ca_file {
            Some(path) => {
                crate::transport::load_ca_file(path).map_err(|e| err("ca_file", e.to_string()))?
            }
            None => Vec::new(),
        };
        let header = |field: &str, value: &str| {
            HeaderValue::from_str(value)
                .map_err(|_| err(field, "must not contain control characters".to_owned()))
        };
        let topic_header = header("topic", &config.topic)?;
        let voip_topic_header = header("topic", &format!("{}.voip", config.topic))?;
        let collapse_id_header = match &config.collapse_id {
            Some(id) => Some(header("collapse_id", id)?),
            None => None,
        };
        let request_timeout = Duration::from_secs(config.request_timeout_secs);

        let apns = Self {
            key: key.to_owned(),
            topic: config.topic.clone(),
            environment: config.environment,
            base_url,
            connection_settings: Settings {
                extra_roots,
                connect_timeout: request_timeout,
                ping_interval: (config.ping_interval_secs > 0)
                    .then(|| Duration::from_secs(config.ping_interval_secs)),
            },
            topic_header,
            voip_topic_header,
            collapse_id_header,
            pool_size: config.pool_size,
            request_timeout,
            mapping: MappingSettings {
                max_body_chars: config.max_body_chars,
                expiration_secs: config.expiration_secs,
                voip_expiration_secs: config.voip_expiration_secs,
            },
            active: RwLock::new(None),
            holds: Holds::new(
                "APNs",
                Backoff::new(DEVICE_BACKOFF, MAX_DEVICE_BACKOFF),
                Backoff::as_asked(),
            ),
        };

        match load_credentials(config).map_err(|(field, message)| err(field, message))? {
            Some((field, credentials)) => {
                let info = apns
                    .set_credentials(credentials)
                    .map_err(|e| err(field, e.to_string()))?;
                tracing::info!(provider = key, topic = %apns.topic, environment = apns.environment.label(),
                    credentials = info.kind, subject = info.subject.as_deref().unwrap_or(""), "APNs provider ready");
            }
            None => tracing::warn!(
                provider = key,
                topic = %apns.topic,
                "APNs provider has no credentials; deliveries fail until some are uploaded"
            ),
        }
        Ok(apns)
    }

    /// Hot-swaps credentials (validated first); new connections and JWTs use them at once. Safe
    /// to call concurrently with send(): deliveries in flight finish with the old ones.
    pub fn set_credentials(
        &self,
        credentials: Credentials,
    ) -> Result<CredentialInfo, CredentialError> {
        let info = credentials.validate(SystemTime::now())?;
        let signer = match &credentials {
            Credentials::Token {
                key_pem,
                key_id,
                team_id,
            } => Some(TokenSigner::new(key_pem, key_id, team_id)?),
            Credentials::Certificate { .. } => None,
        };
        let identity = credentials.identity_pem();
        let pool = Pool::build(
            self.pool_size,
            &self.base_url,
            &self.connection_settings,
            identity.as_deref(),
        )
        .map_err(|e| CredentialError::Unreadable(e.to_string()))?;
        let active = Arc::new(Active {
            info: info.clone(),
            pool,
            signer,
        });
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Some(active);
        tracing::info!(provider = %self.key, credentials = info.kind, "APNs credentials installed");
        Ok(info)
    }

    pub fn credential_info(&self) -> Option<CredentialInfo> {
        self.current().map(|a| a.info.clone())
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// Makes the cached provider token look `by` older, so tests can exercise the renewal
    /// rules without waiting 20 minutes. No effect with certificate auth.
    #[doc(hidden)]
    pub fn backdate_provider_token(&self, by: Duration) {
        if let Some(signer) = self.current().as_ref().and_then(|a| a.signer.as_ref()) {
            signer.backdate(by);
        }
    }

    fn current(&self) -> Option<Arc<Active>> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One delivery, run inside the delivery span: at most one retry on another connection
    /// after a connection failure, and one after `ExpiredProviderToken` with a renewed token.
    async fn deliver(&self, active: &Active, push: &Planned<'_>) -> Verdict {
        let mut jwt = match &active.signer {
            Some(s) => match s.current() {
                Ok(t) => Some(t),
                Err(reason) => return Verdict::OurFault { reason },
            },
            None => None,
        };
        let uri = match active
            .pool
            .uri(&format!("/3/device/{}", push.token.as_str()))
        {
            Ok(uri) => uri,
            Err(e) => return cannot_build(&e),
        };
        let body = Bytes::from(push.body.clone());
        let mut slot = active.pool.next_slot();
        let mut may_reconnect = true;
        let mut may_renew = true;
        let mut may_retry_server_error = true;
        // Retries share the one bound, so a delivery never takes longer than request_timeout.
        let deadline = crate::transport::deadline_after(self.request_timeout);
        loop {
            if deadline.saturating_duration_since(Instant::now()).is_zero() {
                return self.no_answer();
            }
            let head = match self.request(uri.clone(), push, jwt.as_deref(), body.len()) {
                Ok(head) => head,
                Err(verdict) => return verdict,
            };
            let answer = match active
                .pool
                .send(slot, head, body.clone(), deadline, MAX_RESPONSE_READ_BYTES)
                .await
            {
                Ok(a) => a,
                Err(e) if may_reconnect && e.is_connection_error() => {
                    tracing::debug!(error = %crate::transport::error_chain(&e), "APNs connection failed; retrying on the next connection");
                    may_reconnect = false;
                    slot += 1;
                    continue;
                }
                Err(e) => return self.failed(&e),
            };
            let status = answer.status;
            let span = tracing::Span::current();
            span.record("status", status.as_u16());
            if let Some(id) = answer.headers.get("apns-id").and_then(|v| v.to_str().ok()) {
                span.record("apns_id", id);
            }
            let retry_after = crate::transport::retry_after(&answer.headers);
            let reason = reason_of(&answer.body);
            match classify(status, &reason, retry_after, self.environment) {
                // Apple: 500 and 503 (ServiceUnavailable, Shutdown) are retried, on a new
                // connection; once, within the same deadline, unless told to wait longer.
                Classified::Done(Verdict::Transient { .. })
                    if may_retry_server_error
                        && matches!(status.as_u16(), 500 | 503)
                        && retry_after.is_none() =>
                {
                    tracing::debug!(
                        status = status.as_u16(),
                        "APNs server error; retrying once on the next connection"
                    );
                    may_retry_server_error = false;
                    slot += 1;
                    let pause = SERVER_ERROR_RETRY_PAUSE
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                Classified::Done(v) => {
                    let answered = answered_by(status, &reason);
                    self.holds
                        .record(push.token.as_str(), answered, retry_after, Instant::now());
                    return v;
                }
                Classified::ExpiredProviderToken => {
                    let (Some(signer), Some(rejected), true) = (&active.signer, &jwt, may_renew)
                    else {
                        return Verdict::Transient {
                            retry_after: None,
                            reason: "APNs answered 403 ExpiredProviderToken".to_owned(),
                        };
                    };
                    may_renew = false;
                    match signer.after_rejection(rejected) {
                        Ok(Some(fresh)) => jwt = Some(fresh),
                        Ok(None) => {
                            tracing::error!(
                                "APNs calls a provider token younger than 20 min expired; is the clock right?"
                            );
                            return Verdict::Transient {
                                retry_after: None,
                                reason: "APNs answered 403 ExpiredProviderToken to a token younger than 20 minutes (clock skew?)".to_owned(),
                            };
                        }
                        Err(reason) => return Verdict::OurFault { reason },
                    }
                }
            }
        }
    }

    fn no_answer(&self) -> Verdict {
        Verdict::Transient {
            retry_after: None,
            reason: format!(
                "no answer from APNs within {} s",
                self.request_timeout.as_secs()
            ),
        }
    }

    /// The verdict on a request that got no answer. The messages never hold the request (its
    /// path carries the device token, its headers the provider token).
    fn failed(&self, err: &SendError) -> Verdict {
        crate::transport::count_if_out_of_descriptors(err);
        if err.is_timeout() {
            return self.no_answer();
        }
        let what = match err {
            SendError::Connect(_) => "cannot connect to",
            _ => "request failed to",
        };
        Verdict::Transient {
            retry_after: None,
            reason: format!("{what} APNs: {}", crate::transport::error_chain(err)),
        }
    }

    /// The request head for `push`; a header that cannot be built is pushgate's fault.
    fn request(
        &self,
        uri: http::Uri,
        push: &Planned<'_>,
        jwt: Option<&str>,
        body_len: usize,
    ) -> Result<http::Request<()>, Verdict> {
        let topic = if push.push_type == PushType::Voip {
            &self.voip_topic_header
        } else {
            &self.topic_header
        };
        let expiration = match push.expiration_secs {
            0 => 0,
            secs => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .saturating_add(secs),
        };
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.reserve(10);
        headers.insert(APNS_TOPIC.clone(), topic.clone());
        headers.insert(
            APNS_PUSH_TYPE.clone(),
            HeaderValue::from_static(push.push_type.header()),
        );
        headers.insert(
            APNS_PRIORITY.clone(),
            HeaderValue::from_static(push.push_type.priority(push.priority)),
        );
        headers.insert(APNS_EXPIRATION.clone(), HeaderValue::from(expiration));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        let collapse_id = match push.collapse_id.as_deref() {
            Some(id) => Some(HeaderValue::from_str(id).map_err(|e| cannot_build(&e))?),
            None => self.collapse_id_header.clone(),
        };
        if let Some(id) = collapse_id {
            headers.insert(APNS_COLLAPSE_ID.clone(), id);
        }
        if let Some(jwt) = jwt {
            let value = HeaderValue::try_from(format!("bearer {jwt}"))
                .map_err(|_| cannot_build(&"the provider token is not a header value"))?;
            headers.insert(AUTHORIZATION, value);
        }
        Ok(request)
    }
}

static APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
static APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
static APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
static APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
static APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

/// pushgate's user agent, as on its other HTTP requests.
const USER_AGENT_VALUE: &str = concat!("pushgate/", env!("CARGO_PKG_VERSION"));

fn cannot_build(err: &dyn fmt::Display) -> Verdict {
    Verdict::OurFault {
        reason: format!("cannot build the request to APNs: {err}"),
    }
}

#[async_trait::async_trait]
impl Provider for Apns {
    fn validate(&self, device: &Device) -> Result<(), RegistrationError> {
        check_token(device.token.as_str()).map_err(RegistrationError::InvalidToken)?;
        if let Some(second) = &device.second_token {
            check_token(second.as_str())
                .map_err(|m| RegistrationError::InvalidToken(format!("second token: {m}")))?;
        }
        Ok(())
    }

    async fn send(&self, device: &Device, notification: &Notification) -> Verdict {
        let span = crate::transport::delivery_span!(
            "apns_delivery",
            self.key,
            device,
            notification,
            push_type,
            apns_id
        );
        let delivery = self.send_inner(device, notification);
        crate::transport::in_delivery_span(span, "apns delivery", delivery).await
    }

    fn as_apns(&self) -> Option<&Apns> {
        Some(self)
    }
}

impl Apns {
    async fn send_inner(&self, device: &Device, notification: &Notification) -> Verdict {
        let push = match payload::plan(device, notification, &self.mapping) {
            Ok(p) => p,
            Err(reason) => return Verdict::OurFault { reason },
        };
        tracing::Span::current().record("push_type", push.push_type.header());
        if let Err(m) = check_token(push.token.as_str()) {
            // The path must not carry anything but hex; APNs would refuse it as BadDeviceToken.
            return Verdict::DeadToken {
                reason: format!("stored token is unusable: {m}"),
            };
        }
        if let Some(held) = self.holds.check(push.token.as_str(), Instant::now()) {
            return held;
        }
        let Some(active) = self.current() else {
            return Verdict::Transient {
                retry_after: None,
                reason: "no APNs credentials configured".to_owned(),
            };
        };
        self.deliver(&active, &push).await
    }
}

/// APNs device tokens are hex: 32 bytes today, longer ones are allowed for the future.
fn check_token(token: &str) -> Result<(), String> {
    if !(64..=200).contains(&token.len()) {
        return Err(format!(
            "an APNs token is 64 to 200 hex characters, got {}",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("an APNs token consists of hex characters only".to_owned());
    }
    Ok(())
}

/// Reads whichever credentials the section configures; `Err((key, message))` names the key.
fn load_credentials(
    config: &ApnsConfig,
) -> Result<Option<(&'static str, Credentials)>, (&'static str, String)> {
    let token_auth =
        config.key_file.is_some() || config.key_id.is_some() || config.team_id.is_some();
    let p12_auth = config.p12_file.is_some() || config.p12_password.is_some();
    let pem_auth = config.cert_file.is_some() || config.private_key_file.is_some();
    if [token_auth, p12_auth, pem_auth]
        .iter()
        .filter(|b| **b)
        .count()
        > 1
    {
        let field = if token_auth { "key_file" } else { "p12_file" };
        return Err((
            field,
            "configure one kind of credentials: key_file/key_id/team_id (token), p12_file/p12_password, or cert_file/private_key_file".to_owned(),
        ));
    }
    if token_auth {
        let path = config.key_file.as_deref().ok_or((
            "key_file",
            "required for token auth (key_id/team_id are set)".to_owned(),
        ))?;
        let key_id = config
            .key_id
            .as_deref()
            .ok_or(("key_id", "required with key_file".to_owned()))?;
        let team_id = config
            .team_id
            .as_deref()
            .ok_or(("team_id", "required with key_file".to_owned()))?;
        let pem = read_text(path).map_err(|m| ("key_file", m))?;
        let credentials = Credentials::from_p8(&pem, key_id, team_id).map_err(|e| match e {
            CredentialError::InvalidIdentifier {
                what: "team_id",
                message,
            } => ("team_id", message),
            CredentialError::InvalidIdentifier { message, .. } => ("key_id", message),
            other => ("key_file", format!("{}: {other}", path.display())),
        })?;
        return Ok(Some(("key_file", credentials)));
    }
    if p12_auth {
        let path = config
            .p12_file
            .as_deref()
            .ok_or(("p12_file", "required with p12_password".to_owned()))?;
        let der = std::fs::read(path)
            .map_err(|e| ("p12_file", format!("cannot read {}: {e}", path.display())))?;
        let credentials = Credentials::from_p12(&der, config.p12_password.as_deref().unwrap_or(""))
            .map_err(|e| match e {
                CredentialError::WrongPassword => ("p12_password", e.to_string()),
                other => ("p12_file", format!("{}: {other}", path.display())),
            })?;
        return Ok(Some(("p12_file", credentials)));
    }
    if pem_auth {
        let cert_path = config
            .cert_file
            .as_deref()
            .ok_or(("cert_file", "required with private_key_file".to_owned()))?;
        let key_path = config
            .private_key_file
            .as_deref()
            .ok_or(("private_key_file", "required with cert_file".to_owned()))?;
        let cert = read_text(cert_path).map_err(|m| ("cert_file", m))?;
        let key = read_text(key_path).map_err(|m| ("private_key_file", m))?;
        let credentials =
            Credentials::from_pem(&cert, &key).map_err(|e| ("cert_file", e.to_string()))?;
        return Ok(Some(("cert_file", credentials)));
    }
    Ok(None)
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// What an APNs answer means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Classified {
    Done(Verdict),
    /// Renew the provider token and retry once.
    ExpiredProviderToken,
}

/// Maps an APNs answer onto a verdict: the status decides the class, the reason refines it.
/// Unknown reasons keep their string. Apple's statuses and reasons:
/// <https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns>.
pub(crate) fn classify(
    status: StatusCode,
    reason: &str,
    retry_after: Option<Duration>,
    environment: Environment,
) -> Classified {
    let code = status.as_u16();
    let shown = if reason.is_empty() {
        format!("APNs answered {code}")
    } else {
        format!("APNs answered {code} {reason}")
    };
    let verdict = match (code, reason) {
        (200, _) => Verdict::Sent,
        (410, _) | (400, "DeviceTokenNotForTopic") => Verdict::DeadToken { reason: shown },
        (400, "BadDeviceToken") => {
            tracing::info!(
                environment = environment.label(),
                "APNs refused the token as BadDeviceToken; a token of the other environment?"
            );
            Verdict::DeadToken {
                reason: format!("{shown} (sent to the {} environment)", environment.label()),
            }
        }
        // A stale connection, not the notification: worth another try.
        (400, "IdleTimeout") => Verdict::Transient {
            retry_after: None,
            reason: shown,
        },
        (403, "ExpiredProviderToken") => return Classified::ExpiredProviderToken,
        (403, _) => {
            tracing::error!(reason = %shown, "APNs refused pushgate's credentials; devices are kept");
            Verdict::Transient {
                retry_after: None,
                reason: format!("{shown} (credentials or configuration)"),
            }
        }
        (429, _) | (500..=599, _) => Verdict::Transient {
            retry_after,
            reason: shown,
        },
        _ => Verdict::OurFault { reason: shown },
    };
    Classified::Done(verdict)
}

/// What an APNs answer means for later sends (see the module docs).
pub(crate) fn answered_by(status: StatusCode, reason: &str) -> Answered {
    match (status.as_u16(), reason) {
        (200, _) => Answered::Delivered,
        (429, "TooManyProviderTokenUpdates") | (500..=599, _) => Answered::Hold(Hold::Service),
        (429, _) => Answered::Hold(Hold::Device),
        _ => Answered::Nothing,
    }
}

/// The `reason` of an APNs error body, read leniently: JSON `{"reason":…}`, else a printable
/// excerpt of whatever came back, else empty.
pub(crate) fn reason_of(body: &[u8]) -> String {
    crate::transport::error_reason(body, MAX_REASON_CHARS, |v| {
        v.get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or_default()
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(code: u16, reason: &str) -> Classified {
        classify(
            StatusCode::from_u16(code).unwrap(),
            reason,
            None,
            Environment::Production,
        )
    }

    #[test]
    fn classification_by_status_then_reason() {
        assert_eq!(verdict(200, ""), Classified::Done(Verdict::Sent));
        assert!(matches!(
            verdict(410, "Unregistered"),
            Classified::Done(Verdict::DeadToken { .. })
        ));
        assert!(matches!(
            verdict(410, "SomethingNew"),
            Classified::Done(Verdict::DeadToken { .. })
        ));
        assert!(
            matches!(verdict(400, "BadDeviceToken"), Classified::Done(Verdict::DeadToken { reason }) if reason.contains("production"))
        );
        assert_eq!(
            verdict(403, "ExpiredProviderToken"),
            Classified::ExpiredProviderToken
        );
        assert!(matches!(
            verdict(403, "BadCertificateEnvironment"),
            Classified::Done(Verdict::Transient { .. })
        ));
        assert!(matches!(
            verdict(400, "BadTopic"),
            Classified::Done(Verdict::OurFault { .. })
        ));
        assert!(
            matches!(verdict(418, "Teapot"), Classified::Done(Verdict::OurFault { reason }) if reason.contains("Teapot"))
        );
        assert!(
            matches!(verdict(502, "Whatever"), Classified::Done(Verdict::Transient { reason, .. }) if reason.contains("Whatever"))
        );
    }

    #[test]
    fn slow_down_answers_hold_the_device_or_the_provider() {
        let hold = |code, reason| answered_by(StatusCode::from_u16(code).unwrap(), reason);
        assert_eq!(hold(429, "TooManyRequests"), Answered::Hold(Hold::Device));
        assert_eq!(
            hold(429, "TooManyProviderTokenUpdates"),
            Answered::Hold(Hold::Service)
        );
        for reason in ["ServiceUnavailable", "Shutdown", "InternalServerError"] {
            assert!(
                matches!(hold(503, reason), Answered::Hold(Hold::Service)),
                "{reason}"
            );
        }
        assert_eq!(hold(200, ""), Answered::Delivered);
        assert_eq!(hold(410, "Unregistered"), Answered::Nothing);
        assert_eq!(hold(403, "InvalidProviderToken"), Answered::Nothing);
    }

    #[test]
    fn tokens_must_be_hex_of_sane_length() {
        assert!(check_token(&"a0".repeat(32)).is_ok());
        assert!(check_token(&"A".repeat(200)).is_ok());
        assert!(check_token(&"a".repeat(63)).is_err());
        assert!(check_token(&"a".repeat(201)).is_err());
        assert!(check_token(&format!("{}/x", "a".repeat(64))).is_err());
    }
}
