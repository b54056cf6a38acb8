//! `[sip]`: the Sylk-Pushserver-style HTTP API for SIP and WebRTC servers (`fronts/sip`): who
//! may call it, and one section per (app id, platform) saying how that app's pushes are made.

use std::collections::BTreeMap;
use std::net::IpAddr;

use pushgate_providers::ProviderConfig;
use serde::Deserialize;

use super::{ConfigError, HttpConfig, in_range};

/// `[sip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// Callers outside these networks get 403: SIP servers are few and known, and the API
    /// pushes to any token it is given.
    #[serde(default = "default_allowed")]
    pub allowed_networks: Vec<IpNetwork>,
    /// Devices one account may have stored through the v2 routes.
    #[serde(default = "default_max_devices")]
    pub max_devices_per_account: u32,
    /// The longest a caller waits for a provider's answer; a push not delivered by then is
    /// answered 202 and stays in the retry queue for as long as it can matter.
    #[serde(default = "default_answer_timeout")]
    pub answer_timeout_secs: u64,
    /// `[sip.apps."<app-id>".apple]` and `[sip.apps."<app-id>".firebase]`.
    #[serde(default)]
    pub apps: BTreeMap<String, SipAppPlatforms>,
}

fn default_allowed() -> Vec<IpNetwork> {
    vec![
        IpNetwork {
            addr: IpAddr::from([127, 0, 0, 0]),
            prefix: 8,
        },
        IpNetwork {
            addr: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}
fn default_max_devices() -> u32 {
    20
}
fn default_answer_timeout() -> u64 {
    5
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            allowed_networks: default_allowed(),
            max_devices_per_account: default_max_devices(),
            answer_timeout_secs: default_answer_timeout(),
            apps: BTreeMap::new(),
        }
    }
}

/// The platforms one app id is configured for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipAppPlatforms {
    pub apple: Option<SipAppConfig>,
    pub firebase: Option<SipAppConfig>,
}

/// One (app id, platform).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipAppConfig {
    /// Which payloads the app expects (Sylk Pushserver's app types).
    #[serde(rename = "type")]
    pub app_type: SipAppType,
    /// A provider id of `[providers.*]`: an APNs one for `apple`, an FCM one for `firebase`.
    pub provider: String,
    /// `false`: answer 202 at once and deliver behind the answer (Sylk's `return_async =
    /// false`); `true`: answer with the provider's verdict.
    #[serde(default = "yes")]
    pub wait_for_delivery: bool,
    /// Pushes of the app in flight at once; beyond, 503.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// How long a call or cancel push is worth delivering (APNs expiration, FCM TTL and the
    /// retry window): a call rings for about this long.
    #[serde(default = "default_call_ttl")]
    pub call_ttl_secs: u32,
    /// Each push's `{request, response}` is POSTed to these (Sylk's `log_remote_urls`).
    #[serde(default)]
    pub log_remote_urls: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_max_concurrent() -> u32 {
    200
}
fn default_call_ttl() -> u32 {
    30
}

/// Sylk Pushserver's app types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SipAppType {
    /// Sylk: calls as PushKit pushes, cancels as background pushes, messages as alerts.
    Sylk,
    /// Linphone: calls only, always on the VoIP topic.
    Linphone,
    /// Any other app: the same event mapping as Sylk's.
    Generic,
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a network such as 10.0.0.0/8 or 2001:db8::/32");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNetwork { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for IpNetwork {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl SipConfig {
    /// Whether `ip` may call the API.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed_networks.iter().any(|n| n.contains(ip))
    }

    pub(super) fn validate(
        &self,
        providers: &BTreeMap<String, ProviderConfig>,
        http: &HttpConfig,
    ) -> Result<(), ConfigError> {
        in_range(
            "sip.max_devices_per_account",
            self.max_devices_per_account,
            1..=1000,
        )?;
        in_range("sip.answer_timeout_secs", self.answer_timeout_secs, 1..=30)?;
        if !self.apps.is_empty() && http.listen.is_none() {
            return Err(ConfigError::invalid(
                "sip.apps",
                "the SIP API needs the HTTP listener: set http.listen",
            ));
        }
        for (app_id, platforms) in &self.apps {
            let section = format!("sip.apps.{app_id}");
            if app_id.is_empty() || app_id.len() > 256 || app_id.chars().any(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    section,
                    "an app id is non-empty, at most 256 bytes and without spaces",
                ));
            }
            if platforms.apple.is_none() && platforms.firebase.is_none() {
                return Err(ConfigError::invalid(
                    section,
                    "configure the app for `apple`, `firebase` or both",
                ));
            }
            for (platform, app) in [
                ("apple", &platforms.apple),
                ("firebase", &platforms.firebase),
            ] {
                if let Some(app) = app {
                    app.validate(&format!("{section}.{platform}"), platform, providers)?;
                }
            }
        }
        Ok(())
    }
}

impl SipAppConfig {
    fn validate(
        &self,
        section: &str,
        platform: &str,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{section}.{field}");
        let fits = match providers.get(&self.provider) {
            None => {
                return Err(ConfigError::invalid(
                    key("provider"),
                    format!("no [providers.{}] section", self.provider),
                ));
            }
            Some(ProviderConfig::Apns(_)) => platform == "apple",
            Some(ProviderConfig::Fcm(_)) => platform == "firebase",
            Some(_) => false,
        };
        if !fits {
            let kind = if platform == "apple" { "apns" } else { "fcm" };
            return Err(ConfigError::invalid(
                key("provider"),
                format!("a {platform} app needs a provider of kind \"{kind}\""),
            ));
        }
        in_range(&key("max_concurrent"), self.max_concurrent, 1..=100_000)?;
        in_range(&key("call_ttl_secs"), self.call_ttl_secs, 1..=600)?;
        if self.log_remote_urls.len() > 8 {
            return Err(ConfigError::invalid(
                key("log_remote_urls"),
                "at most 8 URLs",
            ));
        }
        for url in &self.log_remote_urls {
            let ok = url.parse::<axum::http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some()
            });
            if !ok {
                return Err(ConfigError::invalid(
                    key("log_remote_urls"),
                    format!("'{url}' is not an http(s):// URL"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let n: IpNetwork = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host: IpNetwork = "2001:db8::1".parse().unwrap();
        assert!(host.contains("2001:db8::1".parse().unwrap()));
        assert!(!host.contains("2001:db8::2".parse().unwrap()));
        let v6: IpNetwork = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::9".parse().unwrap()));
        // An IPv4 peer seen through an IPv6 socket is still the IPv4 address.
        let lo: IpNetwork = "127.0.0.0/8".parse().unwrap();
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "",
            "/8",
            "10.0.0.0/-1",
            "x",
        ] {
            assert!(bad.parse::<IpNetwork>().is_err(), "{bad}");
        }
    }
}
