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

use pushgate_providers::{ProviderConfig, SectionSource};

use crate::ids::BareJid;

mod fpush;
mod sections;
mod sip;
#[cfg(test)]
mod tests;

pub use fpush::{FpushConfig, FpushModule};
pub use sections::{
    AdminConfig, ComponentConfig, HttpConfig, LimitsConfig, MAX_DEFAULT_PAYLOAD_BYTES,
    MatrixAppConfig, MatrixConfig, PushkeyEncoding, RegistrationConfig, RetryConfig, StorageConfig,
    UnifiedPushConfig, WhenReplaced,
};
pub use sip::{IpNetwork, SipAppConfig, SipAppPlatforms, SipAppType, SipConfig};

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
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub matrix: MatrixConfig,
    #[serde(default)]
    pub unifiedpush: UnifiedPushConfig,
    #[serde(default)]
    pub sip: SipConfig,
    #[serde(default)]
    pub fpush: FpushConfig,
    /// Legacy provider names clients and servers may still use, each naming a provider id
    /// (`"fcm-xmpp-api" = "fcm"`).
    #[serde(default)]
    pub provider_aliases: BTreeMap<String, String>,
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
        self.retry.validate()?;
        self.matrix.validate(&self.providers)?;
        self.unifiedpush.validate(&self.http)?;
        self.sip.validate(&self.providers, &self.http)?;
        self.validate_aliases()?;
        self.fpush.validate(&self.providers)?;
        for (id, section) in &self.providers {
            if id.is_empty()
                || id.len() > crate::ids::MAX_PROVIDER_ID_BYTES
                || id.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            {
                return Err(ConfigError::invalid(
                    format!("providers.{id}"),
                    format!(
                        "a provider id must be non-empty, at most {} bytes and without spaces",
                        crate::ids::MAX_PROVIDER_ID_BYTES
                    ),
                ));
            }
            section
                .check_ranges(&format!("providers.{id}"))
                .map_err(|e| ConfigError::invalid(e.key, e.message))?;
        }
        Ok(())
    }

    /// Each alias is a name no provider has, as a provider id is written, for a provider that
    /// exists.
    fn validate_aliases(&self) -> Result<(), ConfigError> {
        if self.provider_aliases.len() > 100 {
            return Err(ConfigError::invalid(
                "provider_aliases",
                "at most 100 aliases",
            ));
        }
        for (alias, id) in &self.provider_aliases {
            let key = format!("provider_aliases.{alias}");
            if alias.is_empty()
                || alias.len() > crate::ids::MAX_PROVIDER_ID_BYTES
                || alias
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control())
            {
                return Err(ConfigError::invalid(
                    key,
                    "an alias is written as a provider id: non-empty, short, without spaces",
                ));
            }
            if self.providers.contains_key(alias) {
                return Err(ConfigError::invalid(key, "a provider has this id already"));
            }
            if !self.providers.contains_key(id) {
                return Err(ConfigError::invalid(
                    key,
                    format!("no [providers.{id}] section"),
                ));
            }
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
        in_range("storage.cache_max_bytes", s.cache_max_bytes, 0..=1 << 30)?;
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
