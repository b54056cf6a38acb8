//! `[fpush]`: publishes addressed to a raw device token, as current Monal enables push
//! (monal-im/fpush's scheme: the node is the APNs token, the publish-option `pushModule` names
//! the app). Off unless a module is configured: with it on, any server can address any token of
//! the module's app, so this path has its own limits.

use std::collections::BTreeMap;

use pushgate_providers::ProviderConfig;
use pushgate_providers::host::HostPattern;
use serde::Deserialize;

use super::{ConfigError, in_range};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FpushConfig {
    /// Only these publishing servers (exact or `*.suffix`) may use token-addressed publishes;
    /// empty: any.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Pushes one token gets per minute (burst = this); beyond, publishes are answered and
    /// dropped, as a coalesced push is.
    #[serde(default = "default_per_token")]
    pub pushes_per_minute_per_token: u32,
    /// Token-addressed publishes one server sends per minute; beyond, a `wait` error.
    #[serde(default = "default_per_domain")]
    pub pushes_per_minute_per_domain: u32,
    /// `[fpush.modules.<pushModule>]`, e.g. `monalProdiOS`.
    #[serde(default)]
    pub modules: BTreeMap<String, FpushModule>,
}

fn default_per_token() -> u32 {
    30
}
fn default_per_domain() -> u32 {
    6000
}

impl Default for FpushConfig {
    fn default() -> Self {
        FpushConfig {
            allowed_domains: Vec::new(),
            pushes_per_minute_per_token: default_per_token(),
            pushes_per_minute_per_domain: default_per_domain(),
            modules: BTreeMap::new(),
        }
    }
}

/// One app, as a `pushModule` names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FpushModule {
    /// The provider (APNs or FCM) that delivers `<module>`.
    pub provider: String,
    /// The provider for `<module>-sandbox` (an APNs provider for the sandbox environment);
    /// without it, `-sandbox` publishes are unknown.
    #[serde(default)]
    pub sandbox_provider: Option<String>,
    /// The module for publishes without `pushModule` (Monal's enable without publish-options).
    #[serde(default)]
    pub default: bool,
}

impl FpushConfig {
    pub(super) fn validate(
        &self,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Result<(), ConfigError> {
        in_range(
            "fpush.pushes_per_minute_per_token",
            self.pushes_per_minute_per_token,
            1..=1_000_000,
        )?;
        in_range(
            "fpush.pushes_per_minute_per_domain",
            self.pushes_per_minute_per_domain,
            1..=1_000_000_000,
        )?;
        for (i, pattern) in self.allowed_domains.iter().enumerate() {
            HostPattern::parse(pattern)
                .map_err(|m| ConfigError::invalid(format!("fpush.allowed_domains[{i}]"), m))?;
        }
        if self.modules.values().filter(|m| m.default).count() > 1 {
            return Err(ConfigError::invalid(
                "fpush.modules",
                "at most one module may be the default",
            ));
        }
        for (name, module) in &self.modules {
            let section = format!("fpush.modules.{name}");
            if name.is_empty()
                || name.len() > 64
                || name.ends_with("-sandbox")
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::invalid(
                    section,
                    "a module name is 1 to 64 bytes, without spaces, and does not end in -sandbox",
                ));
            }
            for (key, id) in [
                ("provider", Some(&module.provider)),
                ("sandbox_provider", module.sandbox_provider.as_ref()),
            ] {
                let Some(id) = id else { continue };
                match providers.get(id) {
                    Some(ProviderConfig::Apns(_) | ProviderConfig::Fcm(_)) => {}
                    Some(_) => {
                        return Err(ConfigError::invalid(
                            format!("{section}.{key}"),
                            "token-addressed publishes go to an apns or fcm provider",
                        ));
                    }
                    None => {
                        return Err(ConfigError::invalid(
                            format!("{section}.{key}"),
                            format!("no [providers.{id}] section"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `allowed_domains`, parsed (validate() has checked them).
    pub fn domain_patterns(&self) -> Vec<HostPattern> {
        self.allowed_domains
            .iter()
            .filter_map(|p| HostPattern::parse(p).ok())
            .collect()
    }
}
