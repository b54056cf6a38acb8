//! pushgate's configuration: one TOML file (etc/pushgate.toml documents every key), overridable
//! from the environment as `PUSHGATE_<SECTION>__<KEY>`.
//!
//! A gateway that starts with a typo in its config silently loses pushes, so unknown keys and
//! bad values are errors that name the key, and everything is checked before anything starts.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Dict;
use serde::Deserialize;

use pushgate_providers::host::HostPattern;
use pushgate_providers::{ProviderConfig, SectionSource};

use crate::ids::BareJid;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("config file {0}: not found")]
    Missing(PathBuf),
}

impl From<figment::Error> for ConfigError {
    /// Names the key as an operator writes it (`component.secret`), not figment's profile path.
    fn from(e: figment::Error) -> Self {
        let key = e.path.join(".");
        let source = e
            .metadata
            .as_ref()
            .map(|m| m.name.to_string())
            .unwrap_or_default();
        ConfigError::Invalid {
            key: if key.is_empty() {
                "(top level)".into()
            } else {
                key
            },
            message: if source.is_empty() {
                e.kind.to_string()
            } else {
                format!("{} (from {source})", e.kind)
            },
        }
    }
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `value` of `key` must lie in `range`: every number in the file is bounded, so none can
/// overflow a duration or a size later.
fn in_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        key,
        format!("must be between {} and {}", range.start(), range.end()),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub component: ComponentConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Provider sections as written; typed into `providers` section by section, so that errors
    /// name `providers.<id>.<key>`.
    #[serde(default, rename = "providers")]
    raw_providers: BTreeMap<String, Dict>,
    #[serde(skip)]
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// One provider section without its `kind`, as a figment of its own.
struct Section(Figment);

impl SectionSource for Section {
    type Error = figment::Error;
    fn extract<T: serde::de::DeserializeOwned>(&self) -> Result<T, figment::Error> {
        self.0.extract()
    }
    fn invalid(&self, key: &str, message: String) -> figment::Error {
        let mut e = figment::Error::from(message);
        e.path = vec![key.to_owned()];
        e
    }
}

/// Types each `[providers.<id>]` section by its `kind`.
fn typed_providers(
    raw: &BTreeMap<String, Dict>,
) -> Result<BTreeMap<String, ProviderConfig>, ConfigError> {
    let mut typed = BTreeMap::new();
    for (id, section) in raw {
        let mut keys = section.clone();
        let kind = match keys.remove("kind") {
            Some(v) => v.into_string().ok_or_else(|| {
                ConfigError::invalid(format!("providers.{id}.kind"), "must be a string")
            })?,
            None => {
                return Err(ConfigError::invalid(
                    format!("providers.{id}.kind"),
                    "missing (webpush, apns, fcm or fcm-xmpp)",
                ));
            }
        };
        let source = Section(Figment::from(Serialized::defaults(keys)));
        let config = ProviderConfig::from_section(&kind, &source)
            .map_err(|e| {
                let inner = ConfigError::from(e);
                match inner {
                    ConfigError::Invalid { key, message } => ConfigError::Invalid {
                        key: format!("providers.{id}.{key}"),
                        message: message
                            .split(" (from ")
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    },
                    other => other,
                }
            })?
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("providers.{id}.kind"),
                    format!("unknown provider kind '{kind}' (webpush, apns, fcm or fcm-xmpp)"),
                )
            })?;
        typed.insert(id.clone(), config);
    }
    Ok(typed)
}

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
            cache_ttl_secs: default_cache_ttl(),
        }
    }
}

fn default_cache_capacity() -> usize {
    10_000
}
fn default_cache_ttl() -> u64 {
    30
}

impl StorageConfig {
    /// The database to open: `url`, or the embedded SQLite file under `data_dir` (created if
    /// missing).
    pub fn database_url(&self) -> Result<String, crate::storage::StoreError> {
        match &self.url {
            Some(url) => Ok(url.clone()),
            None => crate::storage::Store::sqlite_url_in(&self.data_dir),
        }
    }
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
    /// `allow_domains` or `deny_domains`, parsed (validate() has checked them).
    pub fn domain_patterns(list: &[String]) -> Vec<HostPattern> {
        list.iter()
            .filter_map(|p| HostPattern::parse(p).ok())
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
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

    fn validate(&self) -> Result<(), ConfigError> {
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

    fn validate(&self) -> Result<(), ConfigError> {
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

impl Config {
    /// Reads `path` (which must exist) and the environment, then checks the values.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        Self::from_figment(Figment::from(Toml::file_exact(path)))
    }

    /// Parses a TOML document (plus the environment): for tests and `check-config` alike.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    fn from_figment(base: Figment) -> Result<Self, ConfigError> {
        // Only PUSHGATE_SECTION__KEY variables are config; PUSHGATE_CONFIG and friends are not.
        let env = Env::prefixed("PUSHGATE_")
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        let mut config: Config = base.merge(env).extract()?;
        config.providers = typed_providers(&config.raw_providers)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.component;
        let jid = BareJid::from_str(&c.jid)
            .map_err(|e| ConfigError::invalid("component.jid", format!("not a JID: {e}")))?;
        if jid.node().is_some() {
            return Err(ConfigError::invalid(
                "component.jid",
                "a component JID is a bare domain, e.g. push.example.org",
            ));
        }
        if c.secret.is_empty() {
            return Err(ConfigError::invalid(
                "component.secret",
                "must not be empty",
            ));
        }
        if !c
            .server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err(ConfigError::invalid(
                "component.server",
                "expected host:port",
            ));
        }
        self.check_ranges()?;
        if !(1..=30).contains(&c.publish_timeout_secs) {
            return Err(ConfigError::invalid(
                "component.publish_timeout_secs",
                "must be between 1 and 30 (ejabberd gives up on a publish after 32 s)",
            ));
        }
        for (i, jid) in self.admin.jids.iter().enumerate() {
            let parsed = BareJid::from_str(jid).map_err(|e| {
                ConfigError::invalid(format!("admin.jids[{i}]"), format!("not a JID: {e}"))
            })?;
            if parsed.node().is_none() {
                return Err(ConfigError::invalid(
                    format!("admin.jids[{i}]"),
                    "an admin is a user account (user@example.org)",
                ));
            }
        }
        self.http.validate()?;
        self.limits.validate()?;
        self.registration.validate()?;
        for (id, section) in &self.providers {
            if id.is_empty()
                || id.len() > crate::commands::limits::MAX_PROVIDER_ID_BYTES
                || id.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            {
                return Err(ConfigError::invalid(
                    format!("providers.{id}"),
                    format!(
                        "a provider id must be non-empty, at most {} bytes and without spaces",
                        crate::commands::limits::MAX_PROVIDER_ID_BYTES
                    ),
                ));
            }
            section
                .check_ranges(&format!("providers.{id}"))
                .map_err(|e| ConfigError::invalid(e.key, e.message))?;
        }
        Ok(())
    }

    /// The ranges of the numeric keys outside `[http]` and the provider sections (which check
    /// their own).
    fn check_ranges(&self) -> Result<(), ConfigError> {
        let (c, s, r, a) = (
            &self.component,
            &self.storage,
            &self.registration,
            &self.admin,
        );
        in_range(
            "component.max_reconnect_delay_secs",
            c.max_reconnect_delay_secs,
            1..=3600,
        )?;
        in_range("component.idle_ping_secs", c.idle_ping_secs, 5..=3600)?;
        in_range("storage.cache_capacity", s.cache_capacity, 0..=10_000_000)?;
        // 0 turns the cache off (storage/cache.rs).
        in_range("storage.cache_ttl_secs", s.cache_ttl_secs, 0..=3600)?;
        // What a client may put in an encrypted push: no provider carries more than 4096 bytes.
        in_range(
            "registration.max_payload_size",
            r.max_payload_size,
            256..=4096,
        )?;
        in_range(
            "registration.low_priority_interval_secs",
            r.low_priority_interval_secs,
            0..=3600,
        )?;
        in_range(
            "admin.cert_expiry_warning_days",
            a.cert_expiry_warning_days,
            1..=365,
        )?;
        in_range(
            "admin.cert_check_interval_secs",
            a.cert_check_interval_secs,
            1..=86_400,
        )
    }

    pub fn component_jid(&self) -> BareJid {
        // validate() has parsed it already; a failure here would be a bug, not bad input.
        BareJid::from_str(&self.component.jid).unwrap_or_else(|e| panic!("validated JID: {e}"))
    }

    /// The admin JIDs, parsed (validate() has checked them).
    pub fn admins(&self) -> Vec<BareJid> {
        self.admin
            .jids
            .iter()
            .filter_map(|j| BareJid::from_str(j).ok())
            .collect()
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_secs(self.component.publish_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[component]\njid = \"push.example.org\"\nsecret = \"s\"\n";

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../etc/pushgate.toml");
        let c = Config::from_toml_str(text).unwrap();
        assert_eq!(c.component.jid, "push.localhost");
        assert!(c.providers.contains_key("webpush"));
    }

    #[test]
    fn defaults_fill_in() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.component.server, "127.0.0.1:5347");
        assert_eq!(c.registration.max_payload_size, 3000);
        assert_eq!(c.publish_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml_str(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Config::from_toml_str("[component]\njid=\"p.x\"\nsecret=\"s\"\nsecert=\"t\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("secert"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::from_toml_str(
            "[component]\njid=\"p.x\"\nsecret=\"s\"\nidle_ping_secs=\"soon\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("idle_ping_secs"), "{e}");
        let e = Config::from_toml_str("[component]\njid=\"user@p.x\"\nsecret=\"s\"\n").unwrap_err();
        assert!(e.to_string().contains("component.jid"), "{e}");
        let e =
            Config::from_toml_str("[component]\njid=\"p.x\"\nsecret=\"s\"\nserver=\"nowhere\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("component.server"), "{e}");
        let e = Config::from_toml_str(
            "[component]\njid=\"p.x\"\nsecret=\"s\"\npublish_timeout_secs=40\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("publish_timeout_secs"), "{e}");
        let e = Config::from_toml_str("[component]\njid=\"p.x\"\n").unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn admins_must_be_user_jids() {
        let c = Config::from_toml_str(&format!(
            "{MINIMAL}[admin]\njids = [\"root@example.org\"]\n"
        ))
        .unwrap();
        assert_eq!(c.admins().len(), 1);
        assert_eq!(c.admin.cert_expiry_warning_days, 30);
        let e = Config::from_toml_str(&format!("{MINIMAL}[admin]\njids = [\"example.org\"]\n"))
            .unwrap_err();
        assert!(e.to_string().contains("admin.jids[0]"), "{e}");
    }

    #[test]
    fn bad_values_inside_provider_sections_name_the_key() {
        let e = Config::from_toml_str(&format!(
            "{MINIMAL}[providers.\"tigase:messenger:apns:1\"]\nkind = \"apns\"\ntopic = \"a.b\"\nenvironment = \"staging\"\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("providers.tigase:messenger:apns:1.environment"),
            "{e}"
        );
        let e = Config::from_toml_str(&format!(
            "{MINIMAL}[providers.up]\nkind = \"webpush\"\nttl_secs = \"long\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("providers.up.ttl_secs"), "{e}");
        let e = Config::from_toml_str(&format!(
            "{MINIMAL}[providers.up]\nkind = \"webpush\"\nttl = 3\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("providers.up") && e.to_string().contains("ttl"),
            "{e}"
        );
        let e =
            Config::from_toml_str(&format!("{MINIMAL}[providers.up]\nttl_secs = 3\n")).unwrap_err();
        assert!(e.to_string().contains("providers.up.kind"), "{e}");
    }

    #[test]
    fn http_section_defaults_and_errors_name_the_key() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.http.listen, None);
        assert_eq!(c.http.max_body_bytes, 4096);
        assert_eq!(c.http.rate_limit_per_minute, 60);
        assert!(!c.http.trust_forwarded_for);
        let c = Config::from_toml_str(&format!(
            "{MINIMAL}[http]\nlisten = \"[::1]:5281\"\ntrust_forwarded_for = true\n"
        ))
        .unwrap();
        assert_eq!(c.http.listen_addr().unwrap().port(), 5281);
        assert!(c.http.trust_forwarded_for);
        let e = Config::from_toml_str(&format!("{MINIMAL}[http]\nlisten = \"localhost\"\n"))
            .unwrap_err();
        assert!(e.to_string().contains("http.listen"), "{e}");
        let e = Config::from_toml_str(&format!("{MINIMAL}[http]\nrate_limit_per_minute = 0\n"))
            .unwrap_err();
        assert!(e.to_string().contains("http.rate_limit_per_minute"), "{e}");
        let e =
            Config::from_toml_str(&format!("{MINIMAL}[http]\nmax_body_bytes = 1\n")).unwrap_err();
        assert!(e.to_string().contains("http.max_body_bytes"), "{e}");
        let e =
            Config::from_toml_str(&format!("{MINIMAL}[http]\nlisten_on = \"x\"\n")).unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
    }

    /// Every numeric key, fed values just outside its range and i64::MAX (the largest TOML
    /// integer: `cache_ttl_secs = 9223372036854775807` once passed and made every publish
    /// panic), is refused with an error naming it. Lower bounds of 0 get -1.
    #[test]
    fn every_number_has_a_range_and_the_error_names_the_key() {
        let cases: &[(&str, &str, &[i64])] = &[
            ("component", "max_reconnect_delay_secs", &[0, 3601]),
            ("component", "idle_ping_secs", &[4, 3601]),
            ("component", "publish_timeout_secs", &[0, 31]),
            ("storage", "cache_capacity", &[-1, 10_000_001]),
            ("storage", "cache_ttl_secs", &[-1, 3601]),
            ("registration", "max_payload_size", &[255, 4097]),
            ("registration", "low_priority_interval_secs", &[-1, 3601]),
            ("admin", "cert_expiry_warning_days", &[0, 366]),
            ("admin", "cert_check_interval_secs", &[0, 86_401]),
            ("http", "max_body_bytes", &[63, 1_048_577]),
            ("http", "rate_limit_per_minute", &[0, 60_001]),
            ("registration", "max_per_account", &[0, 10_001]),
            (
                "registration",
                "rate_per_domain_per_minute",
                &[-1, 1_000_001],
            ),
            ("limits", "max_stanza_bytes", &[4095, 16 * 1024 * 1024 + 1]),
            ("limits", "max_depth", &[7, 257]),
            ("limits", "max_name_bytes", &[31, 1025]),
            ("limits", "max_attribute_bytes", &[3071, 8001]),
            ("limits", "max_attributes", &[3, 257]),
            ("limits", "max_elements", &[15, 65_537]),
            ("limits", "max_in_flight", &[15, 65_537]),
            ("limits", "max_in_flight_bytes", &[1_048_575, 4_294_967_297]),
            ("limits", "provider_concurrency", &[0, 10_001]),
            ("limits", "provider_queue", &[-1, 100_001]),
            ("limits", "host_concurrency", &[0, 1001]),
            ("limits", "host_queue", &[-1, 100_001]),
            ("limits", "shutdown_timeout_secs", &[0, 301]),
            ("http", "header_timeout_secs", &[0, 301]),
            ("http", "body_timeout_secs", &[0, 301]),
            ("http", "idle_timeout_secs", &[0, 3601]),
            ("http", "max_connections", &[7, 65_537]),
        ];
        for (section, key, bad) in cases {
            for value in bad.iter().chain([&i64::MAX]) {
                let text = if *section == "component" {
                    format!("{MINIMAL}{key} = {value}\n")
                } else {
                    format!("{MINIMAL}[{section}]\n{key} = {value}\n")
                };
                let e = Config::from_toml_str(&text).unwrap_err();
                assert!(
                    e.to_string().starts_with(&format!("{section}.{key}:")),
                    "{section}.{key} = {value}: {e}"
                );
            }
        }
    }

    /// The same for every numeric key of every provider kind, as `providers.<id>.<key>`; files
    /// are not read for it, so the paths need not exist.
    #[test]
    fn every_provider_number_has_a_range_and_the_error_names_the_key() {
        /// Each key with its out-of-range values.
        type Keys = &'static [(&'static str, &'static [i64])];
        let kinds: &[(&str, &str, Keys)] = &[
            (
                "webpush",
                "",
                &[
                    ("ttl_secs", &[2_419_201]),
                    ("max_body_chars", &[0, 4097]),
                    ("request_timeout_secs", &[0, 61]),
                ],
            ),
            (
                "apns",
                "topic = \"a.b\"\nenvironment = \"sandbox\"\n",
                &[
                    ("pool_size", &[0, 65]),
                    ("ping_interval_secs", &[3601]),
                    ("request_timeout_secs", &[0, 61]),
                    ("expiration_secs", &[2_419_201]),
                    ("voip_expiration_secs", &[3601]),
                    ("max_body_chars", &[0, 4097]),
                ],
            ),
            (
                "fcm",
                "service_account_file = \"/nonexistent/sa.json\"\n",
                &[
                    ("ttl_secs", &[2_419_201]),
                    ("max_body_chars", &[0, 4097]),
                    ("request_timeout_secs", &[0, 61]),
                ],
            ),
            #[cfg(feature = "fcm-xmpp")]
            (
                "fcm-xmpp",
                "sender_id = \"1\"\nserver_key = \"k\"\n",
                &[
                    ("pool_size", &[0, 17]),
                    ("ttl_secs", &[2_419_201]),
                    ("max_body_chars", &[0, 4097]),
                    ("request_timeout_secs", &[0, 61]),
                ],
            ),
        ];
        for (kind, required, keys) in kinds {
            let section = format!("{MINIMAL}[providers.p]\nkind = \"{kind}\"\n{required}");
            Config::from_toml_str(&section).unwrap_or_else(|e| panic!("{kind} with defaults: {e}"));
            for (key, bad) in *keys {
                for value in bad.iter().chain([&i64::MAX]) {
                    let e =
                        Config::from_toml_str(&format!("{section}{key} = {value}\n")).unwrap_err();
                    assert!(
                        e.to_string().starts_with(&format!("providers.p.{key}:")),
                        "{kind} {key} = {value}: {e}"
                    );
                }
            }
        }
    }

    #[cfg(not(feature = "fcm-xmpp"))]
    #[test]
    fn fcm_xmpp_needs_its_feature() {
        let e = Config::from_toml_str(&format!(
            "{MINIMAL}[providers.ccs]\nkind = \"fcm-xmpp\"\nsender_id = \"1\"\nserver_key = \"k\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("providers.ccs.kind: "), "{e}");
        assert!(e.contains("`fcm-xmpp` feature"), "{e}");
    }

    #[test]
    fn the_in_flight_budget_holds_at_least_one_stanza() {
        let e = Config::from_toml_str(&format!(
            "{MINIMAL}[limits]\nmax_stanza_bytes = 4194304\nmax_in_flight_bytes = 2097152\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().starts_with("limits.max_in_flight_bytes:"),
            "{e}"
        );
    }

    #[test]
    fn limits_have_defaults() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.limits.max_stanza_bytes, 256 * 1024);
        assert_eq!(c.limits.stanza_limits().max_depth, 64);
        assert_eq!(c.limits.max_in_flight, 4096);
        let e = Config::from_toml_str(&format!("{MINIMAL}[limits]\nmax_depht = 3\n")).unwrap_err();
        assert!(e.to_string().contains("max_depht"), "{e}");
    }

    #[test]
    fn registration_limits_default_and_errors_name_the_key() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.registration.max_per_account, 20);
        assert_eq!(c.registration.rate_per_domain_per_minute, 600);
        assert!(c.registration.allow_domains.is_empty() && c.registration.deny_domains.is_empty());
        let c = Config::from_toml_str(&format!(
            "{MINIMAL}[registration]\nrate_per_domain_per_minute = 0\n\
             allow_domains = [\"example.org\", \"*.example.net\"]\n"
        ))
        .unwrap();
        assert_eq!(c.registration.rate_per_domain_per_minute, 0);
        assert_eq!(
            RegistrationConfig::domain_patterns(&c.registration.allow_domains).len(),
            2
        );
        for (toml, key) in [
            ("max_per_account = 0", "registration.max_per_account"),
            ("max_per_account = 10001", "registration.max_per_account"),
            (
                "rate_per_domain_per_minute = 1000001",
                "registration.rate_per_domain_per_minute",
            ),
            (
                "allow_domains = [\"a.*.org\"]",
                "registration.allow_domains[0]",
            ),
            (
                "deny_domains = [\"ok.org\", \"bad domain\"]",
                "registration.deny_domains[1]",
            ),
        ] {
            let e =
                Config::from_toml_str(&format!("{MINIMAL}[registration]\n{toml}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
        let long_id = "p".repeat(300);
        let e = Config::from_toml_str(&format!(
            "{MINIMAL}[providers.{long_id}]\nkind = \"webpush\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("at most 256 bytes"), "{e}");
    }

    #[test]
    fn unknown_provider_kind_is_named() {
        let e = Config::from_toml_str(&format!(
            "{MINIMAL}[providers.x]\nkind = \"carrier-pigeon\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("providers.x"), "{e}");
    }
}
