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
//! * The VAPID (RFC 8292) token is signed here rather than by web-push-native: its `aud` claim
//!   drops the port of the push resource's origin, and it ties the JWT's `exp` to the `TTL`
//!   header, while `exp` must stay within 24 h and `TTL` defaults to a day.
//! * The endpoint URL is a capability: it is never logged whole, only its host.
//! * A push service's 429 or 5xx concerns that service, i.e. the endpoint's origin (one origin
//!   serves all of a distributor's subscriptions, and pushgate is one sender to it): with a
//!   `Retry-After` (at most an hour) sends to that origin are held back for as long, while other
//!   push services' sends go on. Without one nothing is held: the publishing server's retry is
//!   the backoff.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePrivateKey as _;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use url::{Host, Url};

use crate::host::HostPattern;
use crate::transport::Backoff;
use crate::{
    ConfigError, Device, Kind, Notification, Provider, RegistrationError, Verdict, WebPushKeys,
};

/// UnifiedPush (AND_3) caps endpoint URLs at 1000 bytes; longer ones are not real endpoints.
pub const MAX_ENDPOINT_BYTES: usize = 1000;

/// Longest subscription key accepted for decoding: base64 of the 65-byte `p256dh` is 88
/// characters with padding, so anything longer is not a key and is not worth decoding.
const MAX_ENCODED_KEY_BYTES: usize = 128;

/// How long a registration waits for the endpoint's host name to resolve.
const ADMIT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest plaintext that still fits the 4096 bytes a push service must accept once RFC 8291
/// adds its 86-byte header, the padding delimiter and the 16-byte tag.
pub const MAX_PLAINTEXT_BYTES: usize = 3993;

/// Calls are useless once the caller has given up, so they must not linger in a queue.
const VOIP_TTL_SECS: u32 = 60;
/// Idle connections kept per push service host, and for how long.
const MAX_IDLE_PER_HOST: usize = 16;
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Lifetime of a VAPID token; RFC 8292 allows at most 24 h, half of that leaves room for clock skew.
const VAPID_VALIDITY: Duration = Duration::from_secs(12 * 60 * 60);
/// A signed VAPID header is reused this long, well inside its validity.
const VAPID_REUSE: Duration = Duration::from_secs(60 * 60);
/// Distinct push services whose VAPID headers are kept; beyond it the cache starts over.
const VAPID_CACHED_ORIGINS: usize = 1024;

/// How much of an error response is kept for the verdict's reason.
const MAX_RESPONSE_EXCERPT_CHARS: usize = 200;

/// How much of a response body is read at all (so the connection can be reused).
const MAX_RESPONSE_READ_BYTES: usize = 8 * 1024;

/// Subscription keys are base64url, but padded and unpadded forms both circulate.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Some client libraries hand out standard base64; accepting it costs nothing.
const BASE64STD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// JWS header of every VAPID token, base64url of `{"typ":"JWT","alg":"ES256"}`.
const VAPID_JWT_HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9";

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
        let err = |field: &str, message: String| ConfigError {
            key: format!("{key}.{field}"),
            message,
        };
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

        // reqwest is built without a rustls provider of its own; whoever installs first wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!config.allow_http)
            .dns_resolver(PublicResolver {
                allow_private_addresses: config.allow_private_addresses,
            })
            .connect_timeout(request_timeout)
            // Connections a slow or stalled push service leaves behind are not kept forever:
            // at most a few idle ones per host, closed after a minute.
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("pushgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError {
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

    /// One delivery, run inside the delivery span.
    async fn deliver(&self, endpoint: Endpoint, device: &Device, n: &Notification) -> Verdict {
        let payload = match build_payload(n, self.max_body_chars) {
            Ok(p) => p,
            Err(reason) => return Verdict::OurFault { reason },
        };
        let ttl = if n.kind == Kind::Voip {
            self.ttl_secs.min(VOIP_TTL_SECS)
        } else {
            self.ttl_secs
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

        match request.send().await {
            Ok(response) => {
                let status = response.status();
                tracing::Span::current().record("status", status.as_u16());
                let retry_after = crate::transport::retry_after(response.headers());
                let excerpt = excerpt_of(
                    &crate::transport::read_capped(response, MAX_RESPONSE_READ_BYTES).await,
                );
                classify_status(status, retry_after, &excerpt)
            }
            Err(e) => classify_error(e, self.request_timeout),
        }
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
        let span = tracing::info_span!(
            "webpush_delivery",
            provider = %self.key,
            host = %endpoint.host,
            kind = notification.kind.label(),
            status = tracing::field::Empty,
        );
        async {
            let origin = endpoint.origin.clone();
            if let Some(left) = self.services.blocked(&origin, Instant::now()) {
                let service = format!("the push service at {origin}");
                let verdict = crate::transport::held_back(&service, left);
                crate::transport::log_verdict("webpush delivery", &verdict);
                return verdict;
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
            crate::transport::log_verdict("webpush delivery", &verdict);
            verdict
        }
        .instrument(span)
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoint policy

#[derive(Debug)]
struct EndpointPolicy {
    allow_http: bool,
    allow_private_addresses: bool,
    allowed_hosts: Vec<HostPattern>,
    denied_hosts: Vec<HostPattern>,
}

/// An endpoint that passed the policy.
struct Endpoint {
    url: Url,
    /// Normalized host, the only part of the URL that may be logged.
    host: String,
    /// `scheme://host[:port]`, the VAPID audience.
    origin: String,
}

impl EndpointPolicy {
    fn check(&self, token: &str) -> Result<Endpoint, RegistrationError> {
        if token.len() > MAX_ENDPOINT_BYTES {
            return Err(RegistrationError::InvalidToken(format!(
                "endpoint URL is {} bytes, more than {MAX_ENDPOINT_BYTES}",
                token.len()
            )));
        }
        let url = Url::parse(token)
            .map_err(|e| RegistrationError::InvalidToken(format!("endpoint is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(RegistrationError::Refused(
                    "plain http:// endpoints are not allowed".to_owned(),
                ));
            }
            other => {
                return Err(RegistrationError::InvalidToken(format!(
                    "endpoint scheme must be https, not {other}"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RegistrationError::InvalidToken(
                "endpoint URL must not carry credentials".to_owned(),
            ));
        }
        let (host, ip) = match url.host() {
            Some(Host::Domain(d)) => (d.trim_end_matches('.').to_ascii_lowercase(), None),
            Some(Host::Ipv4(a)) => (a.to_string(), Some(IpAddr::V4(a))),
            Some(Host::Ipv6(a)) => (a.to_string(), Some(IpAddr::V6(a))),
            None => {
                return Err(RegistrationError::InvalidToken(
                    "endpoint URL has no host".to_owned(),
                ));
            }
        };
        if host.is_empty() {
            return Err(RegistrationError::InvalidToken(
                "endpoint URL has no host".to_owned(),
            ));
        }
        if self.denied_hosts.iter().any(|p| p.matches(&host)) {
            return Err(RegistrationError::Refused(format!(
                "endpoint host {host} is denied"
            )));
        }
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|p| p.matches(&host)) {
            return Err(RegistrationError::Refused(format!(
                "endpoint host {host} is not among the allowed hosts"
            )));
        }
        if let Some(ip) = ip
            && !self.allow_private_addresses
            && !is_public_ip(ip)
        {
            return Err(RegistrationError::Refused(format!(
                "endpoint address {ip} is not a public address"
            )));
        }
        Ok(Endpoint {
            origin: url.origin().ascii_serialization(),
            host,
            url,
        })
    }

    /// The endpoint and, if the device has them, its subscription keys.
    fn check_device(&self, device: &Device) -> Result<Endpoint, RegistrationError> {
        let endpoint = self.check(device.token.as_str())?;
        if let Some(keys) = &device.webpush_keys {
            decode_keys(keys)?;
        }
        Ok(endpoint)
    }

    /// Resolves a host name endpoint the way deliveries will, within
    /// [`ADMIT_RESOLVE_TIMEOUT`]. A name with only non-public addresses is refused for good; a
    /// failed or slow lookup may be passing trouble, so the client is told to try again later
    /// (nothing is stored either way). IP literals were checked by [`EndpointPolicy::check`].
    async fn check_resolves(&self, endpoint: &Endpoint) -> Result<(), RegistrationError> {
        if self.allow_private_addresses || endpoint.url.domain().is_none() {
            return Ok(());
        }
        let host = endpoint.host.as_str();
        match tokio::time::timeout(ADMIT_RESOLVE_TIMEOUT, resolve_public(host, false)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e @ ResolveError::NonPublic { .. })) => {
                Err(RegistrationError::NotPublic(e.to_string()))
            }
            Ok(Err(e)) => Err(RegistrationError::CheckFailed(e.to_string())),
            Err(_) => Err(RegistrationError::CheckFailed(format!(
                "endpoint host {host} did not resolve within {} s",
                ADMIT_RESOLVE_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Whether `ip` is an ordinary globally routed unicast address, the only kind an endpoint may
/// use unless `allow_private_addresses` is set.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", includes the unspecified address
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 well-known prefix: as public as the IPv4 address it carries.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    // 6to4 embeds an IPv4 address too.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    !(s[0..6] == [0, 0, 0, 0, 0, 0] // unspecified, loopback, IPv4-compatible
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00) // multicast
}

/// Resolves endpoint host names, keeping only the addresses the policy allows, so a name that
/// points at an internal service cannot be used to reach it.
struct PublicResolver {
    allow_private_addresses: bool,
}

/// Why the resolver refused a name.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error(
        "endpoint host {host} resolves only to non-public addresses (allow_private_addresses is off)"
    )]
    NonPublic { host: String },
    #[error("endpoint host {host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot resolve endpoint host {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
}

/// The addresses of `host` that the policy allows: the one resolution rule for registrations
/// and deliveries alike.
async fn resolve_public(host: &str, allow_private: bool) -> Result<Vec<SocketAddr>, ResolveError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|source| ResolveError::Lookup {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if found.is_empty() {
        return Err(ResolveError::NoAddress {
            host: host.to_owned(),
        });
    }
    let kept: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| allow_private || is_public_ip(a.ip()))
        .collect();
    if kept.is_empty() {
        tracing::debug!(%host, addresses = ?found, "refusing non-public endpoint addresses");
        return Err(ResolveError::NonPublic {
            host: host.to_owned(),
        });
    }
    Ok(kept)
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private_addresses;
        Box::pin(async move {
            let kept = resolve_public(&host, allow_private).await?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Subscription keys

/// Decoded RFC 8291 subscription keys.
struct UaKeys {
    public: p256::PublicKey,
    auth: [u8; 16],
}

fn decode_b64(value: &str) -> Option<Vec<u8>> {
    let value = value.trim();
    BASE64URL
        .decode(value)
        .or_else(|_| BASE64STD.decode(value))
        .ok()
}

fn decode_keys(keys: &WebPushKeys) -> Result<UaKeys, RegistrationError> {
    let invalid = |m: String| RegistrationError::InvalidKeys(m);
    for (name, value) in [("p256dh", &keys.p256dh), ("auth", &keys.auth)] {
        if value.len() > MAX_ENCODED_KEY_BYTES {
            return Err(invalid(format!(
                "{name} is {} bytes, more than {MAX_ENCODED_KEY_BYTES}",
                value.len()
            )));
        }
    }
    let p256dh =
        decode_b64(&keys.p256dh).ok_or_else(|| invalid("p256dh is not base64url".to_owned()))?;
    if p256dh.len() != 65 || p256dh[0] != 0x04 {
        return Err(invalid(format!(
            "p256dh must be a 65-byte uncompressed P-256 point, got {} bytes",
            p256dh.len()
        )));
    }
    let public = p256::PublicKey::from_sec1_bytes(&p256dh)
        .map_err(|_| invalid("p256dh is not a point on P-256".to_owned()))?;
    let auth = decode_b64(&keys.auth).ok_or_else(|| invalid("auth is not base64url".to_owned()))?;
    let auth: [u8; 16] = auth
        .as_slice()
        .try_into()
        .map_err(|_| invalid(format!("auth must be 16 bytes, got {}", auth.len())))?;
    Ok(UaKeys { public, auth })
}

// ---------------------------------------------------------------------------------------------
// VAPID

/// Why the VAPID key file was refused.
#[derive(Debug, thiserror::Error)]
enum VapidKeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} holds no P-256 private key in PKCS#8 (PRIVATE KEY) or SEC1 (EC PRIVATE KEY) PEM"
    )]
    NotAKey { path: String },
}

/// The VAPID signing key and its public half as it goes into the `k=` parameter.
struct VapidKey {
    signing: p256::ecdsa::SigningKey,
    public_b64: String,
    /// Signed headers by origin with when they were signed: an ES256 signature costs more CPU
    /// than the rest of a delivery, and a token is valid for `VAPID_VALIDITY`, so one per
    /// origin is reused for `VAPID_REUSE`.
    signed: std::sync::Mutex<HashMap<String, (String, SystemTime)>>,
}

impl VapidKey {
    fn load(path: &Path) -> Result<Self, VapidKeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| VapidKeyError::Read {
            path: shown.clone(),
            source,
        })?;
        // `openssl ecparam -genkey` writes an EC PARAMETERS block first: pick the key block.
        let secret = pem_block(&pem, "PRIVATE KEY")
            .and_then(|b| p256::SecretKey::from_pkcs8_pem(&b).ok())
            .or_else(|| {
                pem_block(&pem, "EC PRIVATE KEY")
                    .and_then(|b| p256::SecretKey::from_sec1_pem(&b).ok())
            })
            .ok_or(VapidKeyError::NotAKey { path: shown })?;
        let public = secret.public_key().to_encoded_point(false);
        Ok(Self {
            signing: p256::ecdsa::SigningKey::from(&secret),
            public_b64: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes()),
            signed: std::sync::Mutex::default(),
        })
    }

    /// The `Authorization` value for a request to `origin`: a recent one if there is one.
    fn authorization_for(
        &self,
        origin: &str,
        subject: &str,
        now: SystemTime,
    ) -> Result<String, String> {
        let lock = || {
            self.signed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((header, at)) = lock().get(origin)
            && now.duration_since(*at).is_ok_and(|age| age < VAPID_REUSE)
        {
            return Ok(header.clone());
        }
        let header = self.authorization(origin, subject, now)?;
        let mut signed = lock();
        if signed.len() >= VAPID_CACHED_ORIGINS {
            signed.clear();
        }
        signed.insert(origin.to_owned(), (header.clone(), now));
        Ok(header)
    }

    /// The `Authorization` value for one request to `origin`.
    fn authorization(
        &self,
        origin: &str,
        subject: &str,
        now: SystemTime,
    ) -> Result<String, String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            exp: u64,
            sub: &'a str,
        }
        let exp = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "system clock is before 1970".to_owned())?
            .saturating_add(VAPID_VALIDITY)
            .as_secs();
        let claims = serde_json::to_vec(&Claims {
            aud: origin,
            exp,
            sub: subject,
        })
        .map_err(|e| format!("cannot encode VAPID claims: {e}"))?;
        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!("{VAPID_JWT_HEADER}.{}", b64.encode(claims));
        let signature: p256::ecdsa::Signature = self.signing.sign(signing_input.as_bytes());
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            b64.encode(signature.to_bytes()),
            self.public_b64
        ))
    }
}

/// The first `-----BEGIN {label}-----` … `-----END {label}-----` block of `pem`, markers included.
fn pem_block(pem: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    Some(format!("{}\n", &pem[start..stop]))
}

// ---------------------------------------------------------------------------------------------
// Payload

/// RFC 8030 §5.4: a `Topic` is at most 32 characters of the base64url alphabet.
fn is_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 8030 `Urgency`: calls always wake the device.
fn urgency(n: &Notification) -> &'static str {
    if n.kind == Kind::Voip {
        "high"
    } else {
        n.priority.label()
    }
}

#[derive(Serialize)]
struct PlainPayload<'a> {
    kind: &'static str,
    priority: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(rename = "message-count", skip_serializing_if = "Option::is_none")]
    message_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nickname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

#[derive(Serialize)]
struct EncryptedPayload<'a> {
    encrypted: &'a str,
    iv: &'a str,
    kind: &'static str,
}

/// Cuts `text` to `max_chars` characters plus "…" if it is longer.
fn cut_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}{ELLIPSIS}", &text[..at]),
        None => text.to_owned(),
    }
}

/// The JSON that goes to the device: the end-to-end encrypted payload untouched, or the summary
/// with its body cut to `max_body_chars` and, if need be, further until it fits
/// [`MAX_PLAINTEXT_BYTES`].
fn build_payload(n: &Notification, max_body_chars: usize) -> Result<Vec<u8>, String> {
    let too_large = |len: usize| {
        format!(
            "payload is {len} bytes, more than the {MAX_PLAINTEXT_BYTES} a push message can carry"
        )
    };

    if let Some(enc) = &n.encrypted {
        let json = encode(&EncryptedPayload {
            encrypted: &enc.payload,
            iv: &enc.iv,
            kind: n.kind.label(),
        })?;
        return if json.len() <= MAX_PLAINTEXT_BYTES {
            Ok(json)
        } else {
            Err(too_large(json.len()))
        };
    }

    let c = &n.content;
    let mut payload = PlainPayload {
        kind: n.kind.label(),
        priority: n.priority.label(),
        account: c.account.as_deref(),
        sender: c.sender.as_deref(),
        body: c.body.as_deref().map(|b| cut_chars(b, max_body_chars)),
        message_count: c.message_count,
        nickname: c.nickname.as_deref(),
        channel: c.channel.as_deref(),
    };
    loop {
        let json = encode(&payload)?;
        if json.len() <= MAX_PLAINTEXT_BYTES {
            return Ok(json);
        }
        let excess = json.len() - MAX_PLAINTEXT_BYTES;
        let Some(body) = payload.body.as_mut() else {
            return Err(too_large(json.len()));
        };
        // Room left for the body inside its JSON string, then the longest prefix (in escaped
        // bytes) that fits there together with the ellipsis.
        let room = json_escaped_len(body).checked_sub(excess + ELLIPSIS.len());
        let text = body.strip_suffix(ELLIPSIS).unwrap_or(body);
        let Some(room) = room.filter(|_| !text.is_empty()) else {
            return Err(too_large(json.len()));
        };
        let mut used = 0;
        let mut keep = 0;
        for (at, c) in text.char_indices() {
            used += json_escaped_len_char(c);
            if used > room {
                break;
            }
            keep = at + c.len_utf8();
        }
        *body = format!("{}{ELLIPSIS}", &text[..keep]);
    }
}

const ELLIPSIS: &str = "…";

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_escaped_len_char(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn json_escaped_len(s: &str) -> usize {
    s.chars().map(json_escaped_len_char).sum()
}

fn encode<T: Serialize>(payload: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(payload).map_err(|e| format!("cannot encode payload: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Maps a push service's answer onto a verdict (RFC 8030, UnifiedPush SERV_1.2.0).
pub(crate) fn classify_status(
    status: StatusCode,
    retry_after: Option<Duration>,
    excerpt: &str,
) -> Verdict {
    let code = status.as_u16();
    let detail = if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    };
    match code {
        200..=299 => Verdict::Sent,
        404 | 410 => Verdict::DeadToken {
            reason: format!("push service answered {code}: subscription is gone"),
        },
        429 => Verdict::Transient {
            retry_after,
            reason: format!("push service answered 429 (too many requests){detail}"),
        },
        500..=599 => Verdict::Transient {
            retry_after,
            reason: format!("push service answered {code}{detail}"),
        },
        300..=399 => Verdict::OurFault {
            reason: format!("push service answered {code} (redirects are not followed)"),
        },
        401 | 403 => Verdict::OurFault {
            reason: format!("push service answered {code}: VAPID authorization refused{detail}"),
        },
        413 => Verdict::OurFault {
            reason: format!("push service answered 413: payload too large{detail}"),
        },
        _ => Verdict::OurFault {
            reason: format!("push service answered {code}{detail}"),
        },
    }
}

/// Maps a failed request onto a verdict. reqwest errors carry the URL, which is stripped.
fn classify_error(err: reqwest::Error, timeout: Duration) -> Verdict {
    let err = err.without_url();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(resolve) = e.downcast_ref::<ResolveError>() {
            // A name that leads only inside is as dead as a 410: the registration goes, and the
            // server is told so, instead of a `wait` for every publish forever. Lookup trouble
            // may pass.
            return match resolve {
                ResolveError::NonPublic { .. } => Verdict::DeadToken {
                    reason: resolve.to_string(),
                },
                ResolveError::NoAddress { .. } | ResolveError::Lookup { .. } => {
                    Verdict::Transient {
                        retry_after: None,
                        reason: resolve.to_string(),
                    }
                }
            };
        }
        source = e.source();
    }
    crate::transport::classify_request_error(err, timeout, "the push service")
}

/// A short, printable start of the response body, for the verdict's reason; reading it also lets
/// the connection be reused.
pub(crate) fn excerpt_of(body: &[u8]) -> String {
    crate::transport::printable(&String::from_utf8_lossy(body), MAX_RESPONSE_EXCERPT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Content, Encrypted, Priority};

    #[test]
    fn vapid_headers_are_reused_per_origin_then_renewed() {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let key = VapidKey {
            signing: p256::ecdsa::SigningKey::from(&secret),
            public_b64: "k".into(),
            signed: std::sync::Mutex::default(),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let sub = "mailto:ops@example.org";
        let a = key
            .authorization_for("https://push.example", sub, t0)
            .unwrap();
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            key.authorization_for("https://push.example", sub, later)
                .unwrap(),
            a
        );
        let other = key
            .authorization_for("https://other.example", sub, later)
            .unwrap();
        assert_ne!(other, a, "each origin has its own audience");
        let renewed = key
            .authorization_for("https://push.example", sub, t0 + VAPID_REUSE)
            .unwrap();
        assert_ne!(renewed, a, "renewed after VAPID_REUSE");
    }

    #[test]
    fn address_classes() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2001:db8::1",
        ] {
            assert!(!is_public_ip(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public_ip(public.parse().unwrap()), "{public}");
        }
    }

    fn note(body: Option<String>, encrypted: Option<Encrypted>) -> Notification {
        Notification {
            kind: Kind::Alert,
            priority: Priority::High,
            content: Content {
                account: Some("user@example.org".into()),
                sender: Some("friend@example.org".into()),
                body,
                message_count: Some(3),
                nickname: None,
                channel: None,
            },
            encrypted,
            collapse_key: None,
        }
    }

    #[test]
    fn payload_cuts_body_and_fits_the_limit() {
        let json = build_payload(&note(Some("é".repeat(600)), None), 500).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let body = v["body"].as_str().unwrap();
        assert_eq!(body.chars().count(), 501);
        assert!(body.ends_with("é…"));
        assert_eq!(v["message-count"], 3);
        assert!(v.get("nickname").is_none());

        // A configured limit above what fits is cut further, down to the byte budget.
        let json = build_payload(&note(Some("\"ab".repeat(3000)), None), 100_000).unwrap();
        assert!(json.len() <= MAX_PLAINTEXT_BYTES);
        assert!(json.len() > MAX_PLAINTEXT_BYTES - 10, "{}", json.len());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(v["body"].as_str().unwrap().ends_with('…'));

        let huge = Encrypted {
            payload: "A".repeat(5000),
            iv: "iv".into(),
        };
        let err = build_payload(&note(None, Some(huge)), 500).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
