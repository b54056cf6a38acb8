//! The `[providers.<id>]` section of `kind = "webpush"`: its keys, their defaults and ranges.

use std::path::PathBuf;

use serde::Deserialize;

use crate::ConfigError;

/// `[providers.<id>]` with `kind = "webpush"`; the keys are documented in `etc/pushgate.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebPushConfig {
    /// PEM file with the P-256 VAPID signing key (PKCS#8 or SEC1). Without it no VAPID header is
    /// sent.
    pub vapid_private_key_file: Option<PathBuf>,
    /// The VAPID `sub` claim: a `mailto:` or `https:` contact for the push service's operator.
    pub vapid_subject: String,
    /// `TTL` header for everything but calls.
    pub ttl_secs: u32,
    /// Bodies longer than this many characters are cut and end in "…".
    pub max_body_chars: usize,
    /// Bound on one delivery, connection to last response byte.
    pub request_timeout_secs: u64,
    /// Accept `http://` endpoints (test setups only).
    pub allow_http: bool,
    /// Accept loopback, private, link-local and other non-public addresses (test setups only).
    pub allow_private_addresses: bool,
    /// If non-empty, the only hosts accepted: exact names or `*.suffix`.
    pub allowed_hosts: Vec<String>,
    /// Hosts always refused: exact names or `*.suffix`.
    pub denied_hosts: Vec<String>,
}

impl Default for WebPushConfig {
    fn default() -> Self {
        Self {
            vapid_private_key_file: None,
            // A placeholder that is at least well-formed; operators are expected to set their
            // own contact (some services, Apple's among them, reject `localhost` addresses).
            vapid_subject: "mailto:admin@localhost".to_owned(),
            ttl_secs: 86_400,
            max_body_chars: 500,
            request_timeout_secs: 8,
            allow_http: false,
            allow_private_addresses: false,
            allowed_hosts: Vec::new(),
            denied_hosts: Vec::new(),
        }
    }
}

impl WebPushConfig {
    /// Every numeric key in its range (`section` is the section's dotted path).
    pub fn check_ranges(&self, section: &str) -> Result<(), ConfigError> {
        crate::check_common_ranges(
            section,
            ("ttl_secs", u64::from(self.ttl_secs)),
            self.max_body_chars,
            self.request_timeout_secs,
        )
    }
}
