//! The sections of the configuration file other than `[providers.*]`, with their defaults.
//! etc/pushgate.toml documents every key; `Config::validate` (in `mod.rs`) checks the ranges.

use std::path::PathBuf;
use std::time::Duration;

use pushgate_providers::host::HostPattern;
use serde::Deserialize;

use super::{ConfigError, in_range};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    pub jid: String,
    pub secret: String,
    #[serde(default = "default_server")]
    pub server: String,
    #[serde(default = "default_max_reconnect")]
    pub max_reconnect_delay_secs: u64,
    #[serde(default = "default_idle_ping")]
    pub idle_ping_secs: u64,
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout_secs: u64,
    /// What this instance does when the server replaces it with another one (`<conflict/>`).
    #[serde(default)]
    pub when_replaced: WhenReplaced,
}

/// What an instance does when the XMPP server says another instance of the component is
/// connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenReplaced {
    /// Stay up, not ready, and try again after `max_reconnect_delay_secs` (a hot standby).
    #[default]
    Standby,
    /// Finish the deliveries in flight (within `limits.shutdown_timeout_secs`) and exit with
    /// status 3: the end of a rolling restart.
    Exit,
}

fn default_server() -> String {
    "127.0.0.1:5347".into()
}
fn default_max_reconnect() -> u64 {
    30
}
fn default_idle_ping() -> u64 {
    60
}
fn default_publish_timeout() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub url: Option<String>,
    /// Registrations kept in memory for publish lookups (0 = none); see storage/cache.rs.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: usize,
    /// And the memory they may take, about (0 = none).
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: usize,
    /// How long a cached registration is trusted: the longest another instance's change (an
    /// unregister) can go unseen here.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: default_data_dir(),
            url: None,
            cache_capacity: default_cache_capacity(),
            cache_max_bytes: default_cache_max_bytes(),
            cache_ttl_secs: default_cache_ttl(),
        }
    }
}

fn default_cache_capacity() -> usize {
    10_000
}
fn default_cache_max_bytes() -> usize {
    4 << 20
}
fn default_cache_ttl() -> u64 {
    30
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    #[serde(default = "default_max_payload")]
    pub max_payload_size: u32,
    /// At most one low-priority push per registration in this many seconds (0: no limit).
    #[serde(default = "default_low_priority_interval")]
    pub low_priority_interval_secs: u64,
    /// Registrations one account may hold; a new device beyond it is refused.
    #[serde(default = "default_max_per_account")]
    pub max_per_account: u32,
    /// New devices per account domain and minute (token bucket, burst = this; 0: no limit).
    #[serde(default = "default_rate_per_domain")]
    pub rate_per_domain_per_minute: u32,
    /// If non-empty, only accounts of these domains may register (exact or `*.suffix`).
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// Accounts of these domains may not register.
    #[serde(default)]
    pub deny_domains: Vec<String>,
    /// Publishing servers whose notifications without a summary form are wake-ups, not
    /// messages (exact or `*.suffix`): ejabberd with `include_body` set to a text.
    #[serde(default)]
    pub background_without_summary: Vec<String>,
    /// When a registration is removed (dead token, unregister), tell its account with the
    /// XEP-0357 affiliation-`none` notification (remote disabling).
    #[serde(default = "yes")]
    pub notify_removal: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            max_payload_size: default_max_payload(),
            low_priority_interval_secs: default_low_priority_interval(),
            max_per_account: default_max_per_account(),
            rate_per_domain_per_minute: default_rate_per_domain(),
            allow_domains: Vec::new(),
            deny_domains: Vec::new(),
            background_without_summary: Vec::new(),
            notify_removal: true,
        }
    }
}

fn default_max_per_account() -> u32 {
    20
}
fn default_rate_per_domain() -> u32 {
    600
}

impl RegistrationConfig {
    /// `allow_domains`, `deny_domains` or `background_without_summary`, parsed (validate() has
    /// checked them).
    pub fn domain_patterns(list: &[String]) -> Vec<HostPattern> {
        list.iter()
            .filter_map(|p| HostPattern::parse(p).ok())
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "registration.max_per_account",
            self.max_per_account,
            1..=10_000,
        )?;
        // 0: no limit.
        in_range(
            "registration.rate_per_domain_per_minute",
            self.rate_per_domain_per_minute,
            0..=1_000_000,
        )?;
        for (key, list) in [
            ("allow_domains", &self.allow_domains),
            ("deny_domains", &self.deny_domains),
            (
                "background_without_summary",
                &self.background_without_summary,
            ),
        ] {
            for (i, pattern) in list.iter().enumerate() {
                HostPattern::parse(pattern)
                    .map_err(|m| ConfigError::invalid(format!("registration.{key}[{i}]"), m))?;
            }
        }
        Ok(())
    }
}

fn default_low_priority_interval() -> u64 {
    10
}

fn default_max_payload() -> u32 {
    3000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bare JIDs allowed to run admin commands (`set-apns-certificate`); they also get the
    /// certificate expiry warnings.
    #[serde(default)]
    pub jids: Vec<String>,
    #[serde(default = "default_expiry_warning_days")]
    pub cert_expiry_warning_days: u32,
    #[serde(default = "default_cert_check_interval")]
    pub cert_check_interval_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            jids: Vec::new(),
            cert_expiry_warning_days: default_expiry_warning_days(),
            cert_check_interval_secs: default_cert_check_interval(),
        }
    }
}

fn default_expiry_warning_days() -> u32 {
    30
}
fn default_cert_check_interval() -> u64 {
    3600
}

/// `[http]`: the small HTTP server (Siskin's REST unregister, health checks, `/metrics`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `ip:port` to listen on, e.g. `127.0.0.1:5281`; absent = no HTTP server.
    #[serde(default)]
    pub listen: Option<String>,
    /// Largest accepted request body; bigger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Unregister requests allowed per client IP and minute (token bucket, burst = this).
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_minute: u32,
    /// Take the client IP from the last `X-Forwarded-For` hop (only behind a proxy that sets it).
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// A client must finish its request head this long after connecting (or after its first
    /// byte on a kept-alive connection), else it is disconnected: slowloris.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// A request body must have arrived this long after the head, else 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// A kept-alive connection with no request for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Open connections at most; see `src/http/server.rs` for what happens beyond.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            max_body_bytes: default_max_body_bytes(),
            rate_limit_per_minute: default_rate_limit(),
            trust_forwarded_for: false,
            header_timeout_secs: default_header_timeout(),
            body_timeout_secs: default_body_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    4096
}
fn default_rate_limit() -> u32 {
    60
}
fn default_header_timeout() -> u64 {
    10
}
fn default_body_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_connections() -> usize {
    512
}

impl HttpConfig {
    /// The parsed `listen` address (validate() has checked it).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|l| l.parse().ok())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(listen) = &self.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::invalid(
                "http.listen",
                format!("'{listen}' is not ip:port (e.g. 127.0.0.1:5281 or [::1]:5281)"),
            ));
        }
        in_range("http.max_body_bytes", self.max_body_bytes, 64..=1024 * 1024)?;
        in_range(
            "http.rate_limit_per_minute",
            self.rate_limit_per_minute,
            1..=60_000,
        )?;
        in_range(
            "http.header_timeout_secs",
            self.header_timeout_secs,
            1..=300,
        )?;
        in_range("http.body_timeout_secs", self.body_timeout_secs, 1..=300)?;
        in_range("http.idle_timeout_secs", self.idle_timeout_secs, 1..=3600)?;
        in_range("http.max_connections", self.max_connections, 8..=65_536)
    }
}

/// `[limits]`: what one peer may cost pushgate (docs/admin-guide.md, "Limits and abuse").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest stanza read from the XMPP server; larger ones are skipped unread and answered
    /// `policy-violation`.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting in a stanza (the stanza itself is depth 1).
    pub max_depth: usize,
    /// Longest element or attribute name.
    pub max_name_bytes: usize,
    /// Longest attribute value (a full JID can be 3071 bytes).
    pub max_attribute_bytes: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Most elements in one stanza.
    pub max_elements: usize,
    /// Stanzas handled at once; more are answered `wait` at once.
    pub max_in_flight: usize,
    /// Bytes of stanza the stanzas in flight may hold between them; beyond, `wait` at once.
    pub max_in_flight_bytes: usize,
    /// Deliveries in progress at once per provider.
    pub provider_concurrency: usize,
    /// Deliveries waiting for a provider slot; more are answered `wait` at once.
    pub provider_queue: usize,
    /// Deliveries in progress at once per endpoint host (WebPush push services).
    pub host_concurrency: usize,
    /// Deliveries waiting for a slot of one host; more are answered `wait` at once.
    pub host_queue: usize,
    /// After SIGTERM or Ctrl-C, in-flight work gets this long; then pushgate exits anyway.
    pub shutdown_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let stanza = pushgate_providers::framing::Limits::default();
        LimitsConfig {
            max_stanza_bytes: stanza.max_bytes,
            max_depth: stanza.max_depth,
            max_name_bytes: stanza.max_name_bytes,
            max_attribute_bytes: stanza.max_attribute_bytes,
            max_attributes: stanza.max_attributes,
            max_elements: stanza.max_elements,
            max_in_flight: 4096,
            max_in_flight_bytes: 64 * 1024 * 1024,
            provider_concurrency: 256,
            provider_queue: 2048,
            host_concurrency: 64,
            host_queue: 512,
            shutdown_timeout_secs: 10,
        }
    }
}

impl LimitsConfig {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The framer's bounds for the component stream.
    pub fn stanza_limits(&self) -> pushgate_providers::framing::Limits {
        pushgate_providers::framing::Limits {
            max_bytes: self.max_stanza_bytes,
            max_depth: self.max_depth,
            max_name_bytes: self.max_name_bytes,
            max_attribute_bytes: self.max_attribute_bytes,
            max_attributes: self.max_attributes,
            max_elements: self.max_elements,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "limits.max_stanza_bytes",
            self.max_stanza_bytes,
            4096..=16 * 1024 * 1024,
        )?;
        in_range("limits.max_depth", self.max_depth, 8..=256)?;
        in_range("limits.max_name_bytes", self.max_name_bytes, 32..=1024)?;
        // A full JID takes up to 3071 bytes; the XML parser stops at 8192.
        in_range(
            "limits.max_attribute_bytes",
            self.max_attribute_bytes,
            3072..=8000,
        )?;
        in_range("limits.max_attributes", self.max_attributes, 4..=256)?;
        in_range("limits.max_elements", self.max_elements, 16..=65_536)?;
        in_range("limits.max_in_flight", self.max_in_flight, 16..=65_536)?;
        // At least one stanza of the largest size must fit.
        in_range(
            "limits.max_in_flight_bytes",
            self.max_in_flight_bytes,
            self.max_stanza_bytes.max(1 << 20)..=1 << 32,
        )?;
        in_range(
            "limits.provider_concurrency",
            self.provider_concurrency,
            1..=10_000,
        )?;
        in_range("limits.provider_queue", self.provider_queue, 0..=100_000)?;
        in_range("limits.host_concurrency", self.host_concurrency, 1..=1000)?;
        in_range("limits.host_queue", self.host_queue, 0..=100_000)?;
        in_range(
            "limits.shutdown_timeout_secs",
            self.shutdown_timeout_secs,
            1..=300,
        )
    }
}

/// `[retry]`: the durable retry queue (`core/retry.rs`). A delivery that fails for now is
/// queued in the database and the publish answered `result`; a worker retries it until the
/// notification's time to live runs out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Notifications queued at most, over every instance (0: no queue; a failed delivery is
    /// answered `wait` and not retried).
    pub max_queued: u64,
    /// Notifications queued at most per device; beyond, the publish is answered `wait`.
    pub max_queued_per_device: u32,
    /// How long a call notification is worth retrying: a call is over by then.
    pub voip_ttl_secs: u64,
    /// How long a message notification is worth retrying.
    pub message_ttl_secs: u64,
    /// How long a wake-up (background, clear) is worth retrying; only the newest per device
    /// is kept.
    pub background_ttl_secs: u64,
    /// Longest wait between two attempts (the schedule doubles from 1 s, with jitter).
    pub max_backoff_secs: u64,
    /// How long one retry attempt may take.
    pub attempt_timeout_secs: u64,
    /// Retry attempts in progress at once per instance.
    pub concurrency: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_queued: 100_000,
            max_queued_per_device: 50,
            voip_ttl_secs: 30,
            message_ttl_secs: 3600,
            background_ttl_secs: 3600,
            max_backoff_secs: 60,
            attempt_timeout_secs: 10,
            concurrency: 32,
        }
    }
}

impl RetryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        in_range("retry.max_queued", self.max_queued, 0..=10_000_000)?;
        in_range(
            "retry.max_queued_per_device",
            self.max_queued_per_device,
            1..=10_000,
        )?;
        in_range("retry.voip_ttl_secs", self.voip_ttl_secs, 1..=3600)?;
        in_range(
            "retry.message_ttl_secs",
            self.message_ttl_secs,
            1..=7 * 86_400,
        )?;
        in_range(
            "retry.background_ttl_secs",
            self.background_ttl_secs,
            1..=7 * 86_400,
        )?;
        in_range("retry.max_backoff_secs", self.max_backoff_secs, 1..=3600)?;
        in_range(
            "retry.attempt_timeout_secs",
            self.attempt_timeout_secs,
            1..=60,
        )?;
        in_range("retry.concurrency", self.concurrency, 1..=10_000)
    }
}

/// The most Matrix app data (the app's and the pusher's `default_payload`, as JSON) a push may carry:
/// with pushgate's part at its largest it still fits the smallest provider payload (a WebPush
/// record's 3993 bytes of plaintext; APNs and FCM take 4096).
pub const MAX_DEFAULT_PAYLOAD_BYTES: usize = 2048;

/// `[matrix]`: the Matrix push gateway front (`fronts/matrix`), served on the HTTP listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// One section per Matrix `app_id` (exact, or a glob with `*`; an exact match wins).
    #[serde(default)]
    pub apps: std::collections::BTreeMap<String, MatrixAppConfig>,
}

/// One Matrix app: which provider delivers its pushers' notifications, and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixAppConfig {
    /// A provider id of `[providers.*]`.
    pub provider: String,
    /// How the pusher's pushkey maps onto the provider's token: `base64` (decoded and written
    /// as hex: what Matrix recommends for APNs tokens, and Sygnal's default) or `as-is`.
    #[serde(default)]
    pub pushkey: PushkeyEncoding,
    /// Whether the unread count becomes the app's badge.
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
    /// The app's pushers carry PushKit (VoIP) tokens: calls go as APNs VoIP pushes, and nothing
    /// else is sent to them (iOS ends an app that gets a VoIP push without reporting a call).
    #[serde(default)]
    pub voip: bool,
    /// App data merged into every push of the app, under the pusher's own `default_payload`.
    #[serde(default)]
    pub default_payload: serde_json::Map<String, serde_json::Value>,
    /// Tweaks that make an event a call for this app, e.g. `{ sound = "ring" }` (what the
    /// homeserver's call rules set, also for group calls and calls not typed
    /// `m.call.invite`). Empty: only `m.call.invite` is a call.
    #[serde(default)]
    pub call_tweaks: serde_json::Map<String, serde_json::Value>,
}

/// How a Matrix pushkey is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushkeyEncoding {
    #[default]
    AsIs,
    Base64,
}

fn yes() -> bool {
    true
}

impl MatrixConfig {
    pub(super) fn validate(
        &self,
        providers: &std::collections::BTreeMap<String, pushgate_providers::ProviderConfig>,
    ) -> Result<(), ConfigError> {
        for (app_id, app) in &self.apps {
            if app_id.is_empty() || app_id.len() > 256 || app_id.chars().any(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    format!("matrix.apps.{app_id}"),
                    "an app id is non-empty, at most 256 bytes and without spaces",
                ));
            }
            if !providers.contains_key(&app.provider) {
                return Err(ConfigError::invalid(
                    format!("matrix.apps.{app_id}.provider"),
                    format!("no [providers.{}] section", app.provider),
                ));
            }
            let max = MAX_DEFAULT_PAYLOAD_BYTES;
            if serde_json::to_vec(&app.default_payload).map_or(usize::MAX, |b| b.len()) > max {
                return Err(ConfigError::invalid(
                    format!("matrix.apps.{app_id}.default_payload"),
                    format!("at most {max} bytes as JSON"),
                ));
            }
        }
        Ok(())
    }
}

/// `[unifiedpush]`: pushgate as the push provider for UnifiedPush distributors that live in an
/// XMPP account (`fronts/xmpp/unifiedpush`), on the component and the HTTP listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedPushConfig {
    /// Off by default: with it on, every XMPP user reaching the component can get endpoints.
    #[serde(default)]
    pub enabled: bool,
    /// The public URL of pushgate's HTTP listener (behind its TLS proxy), e.g.
    /// `https://up.example.org`: endpoints are `<endpoint_base_url>/up/<token>`.
    #[serde(default)]
    pub endpoint_base_url: Option<String>,
    /// How long an endpoint lives without the distributor registering it again.
    #[serde(default = "default_up_expiration_days")]
    pub expiration_days: u32,
    /// Endpoints one XMPP account may hold.
    #[serde(default = "default_up_max_per_account")]
    pub max_endpoints_per_account: u32,
    /// How long a distributor has to answer a push (Conversations dialect) before the app
    /// server is told to try again.
    #[serde(default = "default_up_answer_timeout")]
    pub answer_timeout_secs: u64,
    /// Pushes kept for a distributor that is away, per endpoint and in all.
    #[serde(default = "default_up_max_kept_per_endpoint")]
    pub max_kept_per_endpoint: u32,
    #[serde(default = "default_up_max_kept")]
    pub max_kept: u32,
    /// The longest an app server's `TTL` is honoured; longer ones are cut (and the answer's
    /// `TTL` says so).
    #[serde(default = "default_up_max_ttl")]
    pub max_ttl_secs: u32,
    /// Pushes one endpoint takes per minute (burst = this); beyond, 429 with `Retry-After`.
    #[serde(default = "default_up_per_endpoint")]
    pub pushes_per_minute_per_endpoint: u32,
    /// Pushes one source IP (an IPv6 /64) sends per minute, over every endpoint.
    #[serde(default = "default_up_per_ip")]
    pub pushes_per_minute_per_ip: u32,
}

fn default_up_expiration_days() -> u32 {
    30
}
fn default_up_max_per_account() -> u32 {
    100
}
fn default_up_answer_timeout() -> u64 {
    10
}
fn default_up_max_kept_per_endpoint() -> u32 {
    100
}
fn default_up_max_kept() -> u32 {
    100_000
}
fn default_up_max_ttl() -> u32 {
    7 * 86_400
}
fn default_up_per_endpoint() -> u32 {
    60
}
fn default_up_per_ip() -> u32 {
    600
}

impl Default for UnifiedPushConfig {
    fn default() -> Self {
        UnifiedPushConfig {
            enabled: false,
            endpoint_base_url: None,
            expiration_days: default_up_expiration_days(),
            max_endpoints_per_account: default_up_max_per_account(),
            answer_timeout_secs: default_up_answer_timeout(),
            max_kept_per_endpoint: default_up_max_kept_per_endpoint(),
            max_kept: default_up_max_kept(),
            max_ttl_secs: default_up_max_ttl(),
            pushes_per_minute_per_endpoint: default_up_per_endpoint(),
            pushes_per_minute_per_ip: default_up_per_ip(),
        }
    }
}

impl UnifiedPushConfig {
    pub(super) fn validate(&self, http: &HttpConfig) -> Result<(), ConfigError> {
        in_range("unifiedpush.expiration_days", self.expiration_days, 1..=365)?;
        in_range(
            "unifiedpush.max_endpoints_per_account",
            self.max_endpoints_per_account,
            1..=10_000,
        )?;
        in_range(
            "unifiedpush.answer_timeout_secs",
            self.answer_timeout_secs,
            1..=30,
        )?;
        in_range(
            "unifiedpush.max_kept_per_endpoint",
            self.max_kept_per_endpoint,
            0..=10_000,
        )?;
        in_range("unifiedpush.max_kept", self.max_kept, 0..=10_000_000)?;
        in_range(
            "unifiedpush.max_ttl_secs",
            self.max_ttl_secs,
            0..=30 * 86_400,
        )?;
        for (key, value) in [
            (
                "unifiedpush.pushes_per_minute_per_endpoint",
                self.pushes_per_minute_per_endpoint,
            ),
            (
                "unifiedpush.pushes_per_minute_per_ip",
                self.pushes_per_minute_per_ip,
            ),
        ] {
            in_range(key, value, 1..=1_000_000_000)?;
        }
        if !self.enabled {
            return Ok(());
        }
        let base = self.endpoint_base_url.as_deref().unwrap_or_default();
        let parsed = base.parse::<axum::http::Uri>().ok();
        let ok = parsed.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("https" | "http"))
                && u.authority().is_some()
                && u.query().is_none()
        });
        if !ok {
            return Err(ConfigError::invalid(
                "unifiedpush.endpoint_base_url",
                "the public http(s):// URL of the HTTP listener, e.g. https://up.example.org",
            ));
        }
        if http.listen.is_none() {
            return Err(ConfigError::invalid(
                "unifiedpush.enabled",
                "UnifiedPush needs the HTTP listener: set http.listen",
            ));
        }
        Ok(())
    }

    /// The endpoint base without a trailing slash.
    pub fn base_url(&self) -> String {
        self.endpoint_base_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    }
}
