//! LEGACY: the FCM XMPP connection server (CCS) provider, kind `fcm-xmpp` (Tigase's provider id
//! `fcm-xmpp-api`).
//!
//! Google deprecated CCS on 2023-06-20 and began shutting it down on 2024-07-22 with the other
//! legacy FCM APIs (<https://firebase.google.com/docs/cloud-messaging/migrate-v1>): against
//! Google this provider no longer delivers anything; real deliveries for `fcm-xmpp-api`
//! registrations go through FCM HTTP v1 (the tokens are the same). It exists, opt-in (cargo
//! feature `fcm-xmpp`), for deployments that run a CCS-compatible server and for
//! interoperability with Tigase's configuration.
//!
//! Why it looks the way it does:
//! * The data mapping is the FCM v1 provider's (fcm/message.rs), so clients see the same keys
//!   whichever FCM transport delivered them.
//! * Its own small `jabber:client` over tokio-rustls (conn.rs, xml.rs): the workspace's
//!   `component` feature rules out tokio-xmpp's client and xmpp-parsers' stanza types.
//! * A lazily filled pool of `pool_size` connections with CCS's 100-unacknowledged-messages flow
//!   control; a draining connection gets no new sends and a replacement is opened.
//! * The server key, device tokens (beyond a prefix) and message content are never logged.

mod conn;
mod xml;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use crate::fcm::message::{self, MappingSettings};
use crate::{ConfigError, Device, Notification, Provider, RegistrationError, Verdict};
use conn::{Conn, ConnectError, Outcome, Target};

/// Google's (shut down) production endpoint.
pub const DEFAULT_SERVER: &str = "fcm-xmpp.googleapis.com:5235";
/// The stream's `to` and the realm of the SASL identity `<sender_id>@<domain>`.
pub const DEFAULT_DOMAIN: &str = "fcm.googleapis.com";

const MAX_POOL_SIZE: usize = 16;
/// How often one delivery is moved to another connection after `CONNECTION_DRAINING`.
const MAX_DRAIN_RETRIES: usize = 3;
const MAX_REASON_CHARS: usize = 300;
/// A connection silent this many request timeouts with a message unanswered is replaced.
const STALL_FACTOR: u32 = 2;

/// `[providers.<id>]` with `kind = "fcm-xmpp"`; the keys are documented in `etc/pushgate.toml`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmXmppConfig {
    /// The Firebase project's sender id (project number).
    pub sender_id: String,
    /// The legacy server key, the SASL password. Secret.
    pub server_key: String,
    /// `host:port` of the connection server (direct TLS).
    #[serde(default = "defaults::server")]
    pub server: String,
    /// The stream's `to` and the SASL identity's domain.
    #[serde(default = "defaults::domain")]
    pub domain: String,
    /// Extra trusted CA (PEM), added to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connections kept open (1–16).
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// `time_to_live` of every message, in seconds.
    #[serde(default = "defaults::ttl_secs")]
    pub ttl_secs: u64,
    /// Bodies longer than this many characters are cut and end in "…".
    #[serde(default = "defaults::max_body_chars")]
    pub max_body_chars: usize,
    /// Bound on one delivery: connecting, waiting for capacity and for the ack.
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,
}

impl fmt::Debug for FcmXmppConfig {
    /// Everything but the server key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmXmppConfig")
            .field("sender_id", &self.sender_id)
            .field("server_key", &"…")
            .field("server", &self.server)
            .field("domain", &self.domain)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("ttl_secs", &self.ttl_secs)
            .field("max_body_chars", &self.max_body_chars)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .finish()
    }
}

mod defaults {
    pub fn server() -> String {
        super::DEFAULT_SERVER.to_owned()
    }
    pub fn domain() -> String {
        super::DEFAULT_DOMAIN.to_owned()
    }
    pub fn pool_size() -> usize {
        2
    }
    pub fn ttl_secs() -> u64 {
        86_400
    }
    pub fn max_body_chars() -> usize {
        500
    }
    pub fn request_timeout_secs() -> u64 {
        8
    }
}

impl FcmXmppConfig {
    /// A configuration with every optional key at its default.
    pub fn new(sender_id: impl Into<String>, server_key: impl Into<String>) -> Self {
        Self {
            sender_id: sender_id.into(),
            server_key: server_key.into(),
            server: defaults::server(),
            domain: defaults::domain(),
            ca_file: None,
            pool_size: defaults::pool_size(),
            ttl_secs: defaults::ttl_secs(),
            max_body_chars: defaults::max_body_chars(),
            request_timeout_secs: defaults::request_timeout_secs(),
        }
    }

    /// Every numeric key in its range (`section` is the section's dotted path).
    pub fn check_ranges(&self, section: &str) -> Result<(), ConfigError> {
        ConfigError::check_range(
            &format!("{section}.pool_size"),
            self.pool_size,
            1..=MAX_POOL_SIZE,
        )?;
        crate::check_common_ranges(
            section,
            ("ttl_secs", self.ttl_secs),
            self.max_body_chars,
            self.request_timeout_secs,
        )
    }
}

/// The CCS provider for one sender id.
pub struct FcmXmpp {
    /// The configuration section's dotted path, for logs.
    key: String,
    target: Target,
    pool_size: usize,
    request_timeout: Duration,
    mapping: MappingSettings,
    ttl_secs: u64,
    /// Open connections, draining ones removed.
    pool: tokio::sync::Mutex<Vec<Arc<Conn>>>,
    next_conn: AtomicU64,
    next_message: AtomicU64,
    /// Makes message ids unique across restarts of pushgate.
    id_prefix: String,
}

impl fmt::Debug for FcmXmpp {
    /// Shows the settings but never the server key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmXmpp")
            .field("key", &self.key)
            .field("sender_id", &self.target.sender_id)
            .field(
                "server",
                &format_args!("{}:{}", self.target.host, self.target.port),
            )
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl FcmXmpp {
    /// Builds the provider for the section at `key`; every error names the offending key below
    /// it. No connection is opened until the first send.
    pub fn new(key: &str, config: &FcmXmppConfig) -> Result<Self, ConfigError> {
        let err = |field: &str, message: String| ConfigError::in_section(key, field, message);
        config.check_ranges(key)?;
        let sender_id = config.sender_id.trim();
        if sender_id.is_empty() || !sender_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(err(
                "sender_id",
                "must be the project's sender id (letters and digits)".to_owned(),
            ));
        }
        if config.server_key.trim().is_empty() || config.server_key.chars().any(|c| c.is_control())
        {
            return Err(err(
                "server_key",
                "must be a non-empty key without control characters".to_owned(),
            ));
        }
        let (host, port) = split_server(&config.server).map_err(|m| err("server", m))?;
        let domain = config.domain.trim();
        if domain.is_empty()
            || domain
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "@/<>&'\"".contains(c))
        {
            return Err(err("domain", "must be a domain name".to_owned()));
        }
        let tls = tls_connector(config.ca_file.as_deref()).map_err(|m| err("ca_file", m))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let provider = Self {
            key: key.to_owned(),
            target: Target {
                host,
                port,
                domain: domain.to_owned(),
                sender_id: sender_id.to_owned(),
                server_key: config.server_key.clone(),
                tls,
            },
            pool_size: config.pool_size,
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            mapping: MappingSettings {
                max_body_chars: config.max_body_chars,
                ttl_secs: config.ttl_secs,
                options: serde_json::Map::new(),
            },
            ttl_secs: config.ttl_secs,
            pool: tokio::sync::Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
            id_prefix: format!("pg{:x}", nanos & 0xffff_ffff_ffff),
        };
        tracing::warn!(
            provider = key,
            sender_id,
            server = %config.server,
            "LEGACY FCM XMPP (CCS) provider ready; Google shut CCS down in 2024"
        );
        Ok(provider)
    }

    /// A connection with a free flow-control slot: the least loaded usable one, else a new one
    /// while the pool has room, else waiting on the least loaded one. Bounded by `deadline`.
    async fn slot(&self, deadline: Instant) -> Result<(Arc<Conn>, OwnedSemaphorePermit), Verdict> {
        loop {
            let waiting_on = {
                let mut pool = tokio::time::timeout_at(deadline.into(), self.pool.lock())
                    .await
                    .map_err(|_| self.timed_out())?;
                let stall_after = self.request_timeout.saturating_mul(STALL_FACTOR);
                pool.retain(|c| {
                    if c.usable() && c.stalled(stall_after) {
                        tracing::warn!(provider = %self.key, connection = c.id, "CCS connection silent with messages unanswered; replacing it");
                        c.shut();
                    }
                    c.usable()
                });
                let best = pool.iter().max_by_key(|c| c.free_slots()).cloned();
                match best {
                    Some(c) if c.free_slots() > 0 => {
                        if let Ok(permit) = c.slots().try_acquire_owned() {
                            return Ok((c, permit));
                        }
                        c
                    }
                    _ if pool.len() < self.pool_size => {
                        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
                        let opened =
                            tokio::time::timeout_at(deadline.into(), Conn::open(id, &self.target))
                                .await;
                        match opened {
                            Ok(Ok(c)) => {
                                tracing::info!(provider = %self.key, connection = id, "CCS connection open");
                                pool.push(Arc::clone(&c));
                                continue;
                            }
                            Ok(Err(e)) => return Err(self.connect_failed(&e)),
                            Err(_) => return Err(self.timed_out()),
                        }
                    }
                    Some(c) => c,
                    None => return Err(self.timed_out()),
                }
            };
            match tokio::time::timeout_at(deadline.into(), waiting_on.slots().acquire_owned()).await
            {
                Err(_) => return Err(self.timed_out()),
                Ok(Ok(permit)) if waiting_on.usable() => return Ok((waiting_on, permit)),
                // Closed or draining meanwhile: choose again.
                Ok(_) => continue,
            }
        }
    }

    fn timed_out(&self) -> Verdict {
        Verdict::Transient {
            retry_after: None,
            reason: format!(
                "no answer from CCS within {} s",
                self.request_timeout.as_secs()
            ),
        }
    }

    fn connect_failed(&self, e: &ConnectError) -> Verdict {
        match e {
            ConnectError::Auth(_) => {
                tracing::error!(provider = %self.key, error = %e, "CCS login failed: check the credentials")
            }
            _ => tracing::warn!(provider = %self.key, error = %e, "cannot open a CCS connection"),
        }
        Verdict::Transient {
            retry_after: None,
            reason: format!("CCS connection failed: {e}"),
        }
    }

    /// The downstream JSON for `token`: the FCM v1 mapping's data and priority, CCS's fields.
    fn downstream(
        &self,
        token: &str,
        n: &Notification,
        message_id: &str,
    ) -> Result<(String, &'static str), String> {
        let planned = message::plan(token, n, &self.mapping)?;
        let v1: Value = serde_json::from_slice(&planned.body)
            .map_err(|e| format!("cannot read the mapped message: {e}"))?;
        let data = v1
            .pointer("/message/data")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let mut json = serde_json::json!({
            "to": token,
            "message_id": message_id,
            "priority": planned.priority,
            "time_to_live": self.ttl_secs,
            "data": data,
        });
        if let Some(key) = &n.collapse_key {
            json["collapse_key"] = Value::String(key.clone());
        }
        Ok((json.to_string(), planned.priority))
    }

    async fn send_inner(&self, device: &Device, notification: &Notification) -> Verdict {
        if let Err(m) = crate::fcm::check_token(device.token.as_str()) {
            return Verdict::DeadToken {
                reason: format!("stored token is unusable: {m}"),
            };
        }
        let deadline = crate::transport::deadline_after(self.request_timeout);
        for _ in 0..=MAX_DRAIN_RETRIES {
            let message_id = format!(
                "{}-{}",
                self.id_prefix,
                self.next_message.fetch_add(1, Ordering::Relaxed)
            );
            let (json, priority) =
                match self.downstream(device.token.as_str(), notification, &message_id) {
                    Ok(m) => m,
                    Err(reason) => return Verdict::OurFault { reason },
                };
            tracing::Span::current().record("priority", priority);
            let (conn, permit) = match self.slot(deadline).await {
                Ok(s) => s,
                Err(v) => return v,
            };
            tracing::Span::current().record("connection", conn.id);
            let answer = conn.submit(&message_id, &json, permit);
            let outcome = match tokio::time::timeout_at(deadline.into(), answer).await {
                Err(_) => return self.timed_out(),
                Ok(Err(_)) => {
                    return Verdict::Transient {
                        retry_after: None,
                        reason: "the CCS connection was lost before an answer".to_owned(),
                    };
                }
                Ok(Ok(o)) => o,
            };
            match classify(outcome) {
                Classified::Done(v) => return v,
                Classified::Draining => {
                    conn.set_draining();
                    tracing::debug!(
                        connection = conn.id,
                        "CONNECTION_DRAINING nack; resending on another connection"
                    );
                }
            }
        }
        Verdict::Transient {
            retry_after: None,
            reason: "CCS kept answering CONNECTION_DRAINING".to_owned(),
        }
    }
}

impl Drop for FcmXmpp {
    /// Closes the connections; nothing else would (their tasks hold them).
    fn drop(&mut self) {
        for conn in self.pool.get_mut().drain(..) {
            conn.shut();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Classified {
    Done(Verdict),
    /// Resend at once on another connection.
    Draining,
}

/// CCS's answer → verdict. The nack codes as Google documented them: `BAD_REGISTRATION` and
/// `DEVICE_UNREGISTERED` mean the token is gone, `CONNECTION_DRAINING` asks to resend on another
/// connection, `INVALID_JSON` and `BAD_ACK` are the sender's bug, and the rest (rate limits,
/// unavailability, internal errors, codes added later) may pass.
fn classify(outcome: Outcome) -> Classified {
    match outcome {
        Outcome::Ack => Classified::Done(Verdict::Sent),
        Outcome::Nack { error, description } => {
            let reason = reason("CCS nack", &error, &description);
            Classified::Done(match error.as_str() {
                "CONNECTION_DRAINING" => return Classified::Draining,
                "BAD_REGISTRATION" | "DEVICE_UNREGISTERED" => Verdict::DeadToken { reason },
                "INVALID_JSON" | "BAD_ACK" => Verdict::OurFault { reason },
                // Rate limits, unavailability, internal errors and codes added later.
                _ => Verdict::Transient {
                    retry_after: None,
                    reason,
                },
            })
        }
        Outcome::StanzaError { condition, text } => {
            let reason = reason("CCS stanza error", &condition, &text);
            Classified::Done(if condition == "bad-request" {
                Verdict::OurFault { reason }
            } else {
                Verdict::Transient {
                    retry_after: None,
                    reason,
                }
            })
        }
    }
}

/// `what code: text` for a verdict's reason, printable and bounded; without a text, `what code`.
fn reason(what: &str, code: &str, text: &str) -> String {
    format!(
        "{what} {}: {}",
        crate::transport::printable(code, 64),
        crate::transport::printable(text, MAX_REASON_CHARS)
    )
    .trim_end_matches([':', ' '])
    .to_owned()
}

#[async_trait::async_trait]
impl Provider for FcmXmpp {
    fn validate(&self, device: &Device) -> Result<(), RegistrationError> {
        crate::fcm::check_token(device.token.as_str()).map_err(RegistrationError::InvalidToken)
    }

    async fn send(&self, device: &Device, notification: &Notification) -> Verdict {
        let span = crate::transport::delivery_span!(
            "fcm_xmpp_delivery",
            self.key,
            device,
            notification,
            priority,
            connection
        );
        let delivery = self.send_inner(device, notification);
        crate::transport::in_delivery_span(span, "fcm-xmpp delivery", delivery).await
    }
}

/// `host:port` (IPv6 literals in brackets).
fn split_server(server: &str) -> Result<(String, u16), String> {
    let (host, port) = server
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| "must be host:port".to_owned())?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err("must be host:port".to_owned());
    }
    Ok((host.to_owned(), port))
}

/// TLS to CCS: the platform's roots plus `ca_file`; no ALPN.
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        for cert in crate::transport::load_ca_file(path).map_err(|e| e.to_string())? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
        }
    } else if added == 0 {
        tracing::warn!("no system CA certificates found for CCS");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nack(code: &str) -> Classified {
        classify(Outcome::Nack {
            error: code.to_owned(),
            description: "d".to_owned(),
        })
    }

    #[test]
    fn answers_map_onto_verdicts() {
        assert_eq!(classify(Outcome::Ack), Classified::Done(Verdict::Sent));
        for code in ["BAD_REGISTRATION", "DEVICE_UNREGISTERED"] {
            assert!(
                matches!(nack(code), Classified::Done(Verdict::DeadToken { .. })),
                "{code}"
            );
        }
        for code in [
            "DEVICE_MESSAGE_RATE_EXCEEDED",
            "TOPICS_MESSAGE_RATE_EXCEEDED",
            "SERVICE_UNAVAILABLE",
            "INTERNAL_SERVER_ERROR",
            "SOMETHING_NEW",
        ] {
            assert!(
                matches!(nack(code), Classified::Done(Verdict::Transient { .. })),
                "{code}"
            );
        }
        for code in ["INVALID_JSON", "BAD_ACK"] {
            assert!(
                matches!(nack(code), Classified::Done(Verdict::OurFault { .. })),
                "{code}"
            );
        }
        assert_eq!(nack("CONNECTION_DRAINING"), Classified::Draining);
        let err = |c: &str| {
            classify(Outcome::StanzaError {
                condition: c.to_owned(),
                text: String::new(),
            })
        };
        assert!(matches!(
            err("bad-request"),
            Classified::Done(Verdict::OurFault { .. })
        ));
        assert!(matches!(
            err("service-unavailable"),
            Classified::Done(Verdict::Transient { .. })
        ));
    }

    #[test]
    fn servers_are_host_and_port() {
        assert_eq!(
            split_server("fcm-xmpp.googleapis.com:5235").unwrap(),
            ("fcm-xmpp.googleapis.com".into(), 5235)
        );
        assert_eq!(split_server("[::1]:5236").unwrap(), ("::1".into(), 5236));
        assert!(split_server("fcm-xmpp.googleapis.com").is_err());
        assert!(split_server("host:0").is_err());
        assert!(split_server(":5235").is_err());
    }
}
