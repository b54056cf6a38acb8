//! Token-addressed publishes (monal-im/fpush's scheme, what current Monal uses): the client
//! enables push with the node set to its raw APNs token and the publish-option `pushModule`
//! naming the app (`monalProdiOS`, `…-sandbox` for the sandbox environment); no registration
//! with pushgate precedes it. Each configured module (`[fpush.modules]`) maps onto a provider.
//!
//! Because any server can then address any token of the app, this path is fenced: the
//! publishing server must be in `fpush.allowed_domains` (when set) and within its per-minute
//! budget (else a `wait` error), each token gets at most `pushes_per_minute_per_token` pushes
//! (beyond, the publish is answered and dropped, as a coalesced push is), a node that cannot be a
//! token of the provider is `item-not-found`, and so is a token a provider called dead within
//! the last day, without asking the provider again. Forms with fields other than `pushModule` are
//! `bad-request`; an unknown module `item-not-found`.
//!
//! What the device gets is fpush's: an alert with `mutable-content` at high priority (Monal's
//! notification extension fetches the messages itself), a high-priority data message on FCM.

use std::collections::HashMap;

use pushgate_providers::host::{HostPattern, listed};
use pushgate_providers::{Device, DeviceToken, Kind, Notification, Priority, ProviderId};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::Instrument;

use super::PublishRequest;
use crate::config::FpushConfig;
use crate::core::Core;
use crate::core::delivery::{self, Outcome};
use crate::core::limits::{self, MAX_TOKEN_BYTES};
use crate::core::rate_limit::RateLimiter;
use crate::core::target::Target;
use crate::error::Fault;
use crate::metrics::METRICS;

const SANDBOX: &str = "-sandbox";

struct Module {
    provider: ProviderId,
    sandbox_provider: Option<ProviderId>,
}

pub struct Fpush {
    modules: HashMap<String, Module>,
    default: Option<String>,
    allowed: Vec<HostPattern>,
    per_token: RateLimiter<[u8; 16]>,
    per_domain: RateLimiter<String>,
}

impl Fpush {
    /// `None` unless a module is configured: then token-addressed publishes are unknown nodes.
    pub fn from_config(config: &FpushConfig) -> Option<Self> {
        if config.modules.is_empty() {
            return None;
        }
        let modules = config
            .modules
            .iter()
            .map(|(name, m)| {
                let module = Module {
                    provider: ProviderId::new(m.provider.clone()),
                    sandbox_provider: m.sandbox_provider.clone().map(ProviderId::new),
                };
                (name.clone(), module)
            })
            .collect();
        Some(Fpush {
            modules,
            default: config
                .modules
                .iter()
                .find(|(_, m)| m.default)
                .map(|(name, _)| name.clone()),
            allowed: config.domain_patterns(),
            per_token: RateLimiter::new(config.pushes_per_minute_per_token),
            per_domain: RateLimiter::new(config.pushes_per_minute_per_domain),
        })
    }

    /// Whether `req` names a module: it is token-addressed, whatever its node.
    pub fn named(&self, req: &PublishRequest) -> bool {
        req.push_module.is_some()
    }

    /// Whether `req`, for a node no registration has, may be for the default module: it
    /// carries no publish-options at all, as Monal's enable without a module sends none.
    pub fn may_default(&self, req: &PublishRequest) -> bool {
        self.default.is_some() && req.secret.is_none() && !req.other_options
    }

    /// Delivers a token-addressed publish from `domain` by `deadline`.
    pub async fn handle(
        &self,
        core: &Core,
        domain: &str,
        req: &PublishRequest,
        deadline: Instant,
    ) -> Result<Outcome, Fault> {
        let name = req
            .push_module
            .as_deref()
            .or(self.default.as_deref())
            .unwrap_or_default();
        let result = self.push(core, domain, name, req, deadline).await;
        let label = match &result {
            Ok(outcome) => outcome.label(),
            Err(fault) => fault.label(),
        };
        let module = if self.module(name).is_some() {
            name
        } else {
            "unknown"
        };
        METRICS
            .fpush_publishes
            .with_label_values(&[module, label])
            .inc();
        result
    }

    /// The provider `name` (`<module>` or `<module>-sandbox`) delivers through.
    fn module(&self, name: &str) -> Option<&ProviderId> {
        match name.strip_suffix(SANDBOX) {
            Some(base) => self.modules.get(base)?.sandbox_provider.as_ref(),
            None => Some(&self.modules.get(name)?.provider),
        }
    }

    async fn push(
        &self,
        core: &Core,
        domain: &str,
        name: &str,
        req: &PublishRequest,
        deadline: Instant,
    ) -> Result<Outcome, Fault> {
        const UNKNOWN: Fault = Fault::NotFound("no such node");
        if !self.allowed.is_empty() && !listed(&self.allowed, domain) {
            tracing::info!(
                reason = "domain_not_allowed",
                "token-addressed publish refused"
            );
            return Err(UNKNOWN);
        }
        if req.other_options {
            return Err(Fault::BadRequest(
                "publish-options may carry only pushModule".into(),
            ));
        }
        let Some(provider_id) = self.module(name) else {
            tracing::info!(reason = "unknown_module", "token-addressed publish refused");
            return Err(Fault::NotFound("unknown pushModule"));
        };
        let token = limits::within("node", req.node.as_deref().ok_or(UNKNOWN)?, MAX_TOKEN_BYTES)?;
        let Some((provider_id, provider)) = core.providers.get(provider_id.as_str()) else {
            return Err(Fault::Transient(format!(
                "provider {provider_id} not configured"
            )));
        };
        let device = Device {
            provider: provider_id.clone(),
            token: DeviceToken::new(token),
            second_token: None,
            webpush_keys: None,
        };
        if provider.validate(&device).is_err() {
            tracing::info!(reason = "not_a_token", "token-addressed publish refused");
            return Err(UNKNOWN);
        }
        if core.dead_tokens.contains(&[provider_id.as_str(), token]) {
            tracing::info!(reason = "dead_token", "token-addressed publish refused");
            return Err(Fault::NotFound("device token is no longer valid"));
        }
        if self.per_domain.check(domain.to_owned()).is_err() {
            tracing::warn!(
                "a server's token-addressed publishes are over fpush.pushes_per_minute_per_domain"
            );
            return Err(Fault::Transient(
                "too many publishes from this server".into(),
            ));
        }
        if self.per_token.check(token_key(provider_id, token)).is_err() {
            tracing::debug!("a token's pushes are over fpush.pushes_per_minute_per_token: dropped");
            return Ok(Outcome::Coalesced);
        }
        let notification = Notification::new(Kind::Alert, Priority::High);
        let span = tracing::info_span!("deliver", provider = %provider_id);
        delivery::deliver(core, Target::Named(&device), notification, deadline)
            .instrument(span)
            .await
    }
}

/// A fixed-size key for a token's budget: tokens are up to 4 KiB and come from anybody.
fn token_key(provider: &ProviderId, token: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(provider.as_str().as_bytes())
        .chain_update([0u8])
        .chain_update(token.as_bytes())
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}
