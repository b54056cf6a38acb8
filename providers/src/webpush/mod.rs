//! The WebPush / UnifiedPush provider: delivers a [`Notification`] to an RFC 8030 push resource.
//!
//! Why it looks the way it does:
//! * The endpoint URL comes from a registering client, so pushgate would otherwise POST to any
//!   address it is told to. Every endpoint passes a host policy (scheme, allow/deny lists,
//!   non-public IP literals) at registration *and* again at send time, and the HTTP client
//!   resolves names through a resolver that drops non-public addresses. Registration resolves
//!   the name too, so an endpoint that leads only inside is refused before it is stored, and one
//!   whose name later turns inward is a dead token. Redirects are never followed and no proxy
//!   from the environment is used, so none of this can be sidestepped.
//! * With subscription keys the body is RFC 8291 `aes128gcm` ciphertext (web-push-native does the
//!   encryption); without keys it is the same small JSON in the clear.
//! * The VAPID (RFC 8292) token is signed by pushgate itself (vapid.rs), not by web-push-native.
//! * The endpoint URL is a capability: it is never logged whole, only its host.
//! * A push service's 429 or 5xx concerns that service, i.e. the endpoint's origin (one origin
//!   serves all of a distributor's subscriptions, and pushgate is one sender to it): with a
//!   `Retry-After` (at most an hour) sends to that origin are held back for as long, while other
//!   push services' sends go on. Without one nothing is held: the publishing server's retry is
//!   the backoff.

mod client;
mod config;
mod keys;
mod payload;
mod policy;
mod vapid;

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

pub(crate) use client::{Form, classify_status, excerpt_of};
pub use config::WebPushConfig;
pub use payload::MAX_PLAINTEXT_BYTES;
pub use policy::{MAX_ENDPOINT_BYTES, is_public_ip};

use crate::host::HostPattern;
use crate::transport::Backoff;
use crate::{ConfigError, Device, Kind, Notification, Provider, RegistrationError, Verdict};
use keys::decode_keys;
use payload::{build_payload, is_topic, urgency};
use policy::{Endpoint, EndpointPolicy};
use vapid::VapidKey;

/// Calls are useless once the caller has given up, so they must not linger in a queue.
const VOIP_TTL_SECS: u32 = 60;

/// The WebPush provider: one HTTP client, the endpoint policy and the VAPID key.
pub struct WebPush {
    /// The configuration section's dotted path, for logs.
    key: String,
    policy: EndpointPolicy,
    vapid: Option<VapidKey>,
    vapid_subject: String,
    ttl_secs: u32,
    max_body_chars: usize,
    request_timeout: Duration,
    client: reqwest::Client,
    /// Push services (by origin) that asked to wait (`Retry-After` on a 429 or 5xx).
    services: Backoff<String>,
}

impl fmt::Debug for WebPush {
    /// Shows the settings but never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPush")
            .field("key", &self.key)
            .field("vapid", &self.vapid.as_ref().map(|v| &v.public_b64))
            .field("vapid_subject", &self.vapid_subject)
            .field("ttl_secs", &self.ttl_secs)
            .field("max_body_chars", &self.max_body_chars)
            .field("request_timeout", &self.request_timeout)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl WebPush {
    /// Builds the provider for the section at `key`; every error names the offending key below it.
    pub fn new(key: &str, config: &WebPushConfig) -> Result<Self, ConfigError> {
        let err = |field: &str, message: String| ConfigError::in_section(key, field, message);
        config.check_ranges(key)?;

        let vapid = match &config.vapid_private_key_file {
            Some(path) => Some(
                VapidKey::load(path).map_err(|e| err("vapid_private_key_file", e.to_string()))?,
            ),
            None => None,
        };
        if !(config.vapid_subject.starts_with("mailto:")
            || config.vapid_subject.starts_with("https:"))
        {
            return Err(err(
                "vapid_subject",
                "must be a mailto: or https: URI".to_owned(),
            ));
        }
        let parse_patterns = |field: &str, list: &[String]| {
            list.iter()
                .map(|p| HostPattern::parse(p).map_err(|m| err(field, m)))
                .collect::<Result<Vec<_>, _>>()
        };
        let policy = EndpointPolicy {
            allow_http: config.allow_http,
            allow_private_addresses: config.allow_private_addresses,
            allowed_hosts: parse_patterns("allowed_hosts", &config.allowed_hosts)?,
            denied_hosts: parse_patterns("denied_hosts", &config.denied_hosts)?,
        };
        let request_timeout = Duration::from_secs(config.request_timeout_secs);

        let client = client::build(config, request_timeout).map_err(|e| ConfigError {
            key: key.to_owned(),
            message: format!("cannot build the HTTP client: {e}"),
        })?;

        match &vapid {
            Some(v) => {
                tracing::info!(provider = key, vapid_public_key = %v.public_b64, "WebPush provider ready")
            }
            None => tracing::warn!(
                provider = key,
                "WebPush provider has no VAPID key; services that require VAPID will refuse deliveries"
            ),
        }

        Ok(Self {
            key: key.to_owned(),
            policy,
            vapid,
            vapid_subject: config.vapid_subject.clone(),
            ttl_secs: config.ttl_secs,
            max_body_chars: config.max_body_chars,
            request_timeout,
            client,
            services: Backoff::as_asked(),
        })
    }

    /// The VAPID public key (base64url, uncompressed point) that clients pass to their push
    /// service as the application server key; `None` without a configured key.
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.vapid.as_ref().map(|v| v.public_b64.as_str())
    }

    /// One delivery unless its push service asked to wait; records what its answer asks for.
    async fn send_held_back(
        &self,
        endpoint: Endpoint,
        device: &Device,
        notification: &Notification,
    ) -> Verdict {
        let origin = endpoint.origin.clone();
        if let Some(left) = self.services.blocked(&origin, Instant::now()) {
            let service = format!("the push service at {origin}");
            return crate::transport::held_back(&service, left);
        }
        let verdict = self.deliver(endpoint, device, notification).await;
        match &verdict {
            Verdict::Sent => self.services.succeeded(&origin),
            // Only a 429 or 5xx with a Retry-After carries one (classify_status).
            Verdict::Transient {
                retry_after: Some(asked),
                ..
            } => {
                self.services.failed(origin, Some(*asked), Instant::now());
            }
            _ => {}
        }
        verdict
    }

    /// One delivery, run inside the delivery span.
    async fn deliver(&self, endpoint: Endpoint, device: &Device, n: &Notification) -> Verdict {
        let payload = match build_payload(n, self.max_body_chars) {
            Ok(p) => p,
            Err(reason) => return Verdict::OurFault { reason },
        };
        // The notification's own time to live where it has one; a call rings for a minute at
        // most otherwise.
        let ttl = match (n.ttl_secs, n.kind) {
            (Some(own), _) => self.ttl_secs.min(own),
            (None, Kind::Voip) => self.ttl_secs.min(VOIP_TTL_SECS),
            (None, _) => self.ttl_secs,
        };

        let mut request = self
            .client
            .post(endpoint.url.clone())
            .timeout(self.request_timeout)
            .header("ttl", ttl)
            .header("urgency", urgency(n));
        if let Some(topic) = n.collapse_key.as_deref().filter(|t| is_topic(t)) {
            request = request.header("topic", topic);
        }

        let form = if device.webpush_keys.is_some() {
            Form::Encrypted
        } else {
            Form::Plain
        };
        request = match &device.webpush_keys {
            Some(keys) => {
                let keys = match decode_keys(keys) {
                    Ok(k) => k,
                    Err(e) => {
                        return Verdict::OurFault {
                            reason: format!("stored subscription keys are unusable: {e}"),
                        };
                    }
                };
                let auth = web_push_native::Auth::clone_from_slice(&keys.auth);
                match web_push_native::encrypt(payload, &keys.public, &auth) {
                    Ok(body) => request
                        .header(http::header::CONTENT_ENCODING, "aes128gcm")
                        .header(http::header::CONTENT_TYPE, "application/octet-stream")
                        .body(body),
                    Err(e) => {
                        return Verdict::OurFault {
                            reason: format!("RFC 8291 encryption failed: {e}"),
                        };
                    }
                }
            }
            None => request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(payload),
        };

        if let Some(vapid) = &self.vapid {
            match vapid.authorization_for(&endpoint.origin, &self.vapid_subject, SystemTime::now())
            {
                Ok(value) => request = request.header(http::header::AUTHORIZATION, value),
                Err(reason) => return Verdict::OurFault { reason },
            }
        }

        client::send(request, form, self.request_timeout).await
    }
}

#[async_trait::async_trait]
impl Provider for WebPush {
    fn validate(&self, device: &Device) -> Result<(), RegistrationError> {
        self.policy.check_device(device).map(|_| ())
    }

    /// Also resolves the endpoint's host now, so that a name pointing only at internal
    /// addresses is refused here instead of failing every delivery.
    async fn admit(&self, device: &Device) -> Result<(), RegistrationError> {
        let endpoint = self.policy.check_device(device)?;
        self.policy.check_resolves(&endpoint).await
    }

    fn destination_host(&self, device: &Device) -> Option<String> {
        self.policy
            .check(device.token.as_str())
            .ok()
            .map(|e| e.origin)
    }

    async fn send(&self, device: &Device, notification: &Notification) -> Verdict {
        // The policy may have tightened since the device registered.
        let endpoint = match self.policy.check(device.token.as_str()) {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("endpoint no longer passes the endpoint policy: {e}");
                tracing::warn!(provider = %self.key, verdict = "our_fault", reason, "webpush delivery refused");
                return Verdict::OurFault { reason };
            }
        };
        let span = tracing::debug_span!(
            "webpush_delivery",
            provider = %self.key,
            host = %endpoint.host,
            kind = notification.kind.label(),
            status = tracing::field::Empty,
            verdict = tracing::field::Empty,
        );
        let delivery = self.send_held_back(endpoint, device, notification);
        crate::transport::in_delivery_span(span, "webpush delivery", delivery).await
    }
}
