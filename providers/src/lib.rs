//! pushgate's provider layer: a typed notification goes in, a typed verdict comes out.
//!
//! Providers know nothing of XMPP (or of any other front): the XEP-0357 front, and later the
//! Matrix and Sylk fronts, translate their requests into a [`Notification`] for a [`Device`] and
//! map the [`Verdict`] back onto their own protocol. That is why priority, kind (alert,
//! background, VoIP, clear) and the content travel through the seam, not only a token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod apns;
pub mod fcm;
#[cfg(feature = "fcm-xmpp")]
pub mod fcm_xmpp;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
mod transport;
pub use transport::fd_exhausted_total;

/// An HTTP client builder with the providers' rules (no redirects, no proxy from the
/// environment, `connect_timeout`, pushgate's user agent), for pushgate's other outgoing posts.
pub fn http_client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    transport::client_builder(connect_timeout, &[])
}
pub mod webpush;

/// An operator-chosen provider name, mapped to one provider configuration
/// (e.g. `tigase:messenger:apns:1`, `fcm-http-v1`, `webpush`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub struct ProviderId(String);

impl ProviderId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A device token as its provider knows it: APNs hex token, FCM registration token, WebPush
/// endpoint URL. Tokens are capabilities, so `Debug` shows only a short prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceToken(String);

impl DeviceToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(8).collect();
        write!(f, "DeviceToken({prefix}…)")
    }
}

/// RFC 8291 subscription keys of a WebPush registration (base64url, as browsers and
/// UnifiedPush distributors hand them out). `auth` is a secret, so `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebPushKeys {
    /// The user agent's P-256 public key, 65 bytes uncompressed.
    pub p256dh: String,
    /// The 16-byte authentication secret.
    pub auth: String,
}

impl fmt::Debug for WebPushKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPushKeys")
            .field("p256dh", &self.p256dh)
            .field("auth", &"…")
            .finish()
    }
}

/// What a provider needs to know about one registered device.
#[derive(Clone, Debug)]
pub struct Device {
    pub provider: ProviderId,
    pub token: DeviceToken,
    /// Siskin's PushKit (VoIP) token, used for call notifications.
    pub second_token: Option<DeviceToken>,
    pub webpush_keys: Option<WebPushKeys>,
}

/// How the device should treat a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Something the user should see (a message with a body, a high-priority event).
    Alert,
    /// Wake the app so it can sync; nothing to show.
    Background,
    /// An incoming call (PushKit on iOS).
    Voip,
    /// Everything was read elsewhere: clear shown notifications and badges.
    Clear,
}

impl Kind {
    /// The name used in payloads, logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Alert => "alert",
            Kind::Background => "background",
            Kind::Voip => "voip",
            Kind::Clear => "clear",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    /// The name used in payloads and logs.
    pub fn label(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// The summary a front could extract; every part is optional because servers send as little
/// as a bare `<notification/>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Whom the notification is for (a bare JID for XMPP, or a hash of it).
    pub account: Option<String>,
    pub sender: Option<String>,
    pub body: Option<String>,
    pub message_count: Option<u32>,
    /// Sender's nickname in a group chat.
    pub nickname: Option<String>,
    /// Which group chat a per-room registration is for (p2 registrations: a hash of it).
    pub channel: Option<String>,
}

/// An end-to-end encrypted payload (Tigase `tigase:push:encrypt:0`): passed through untouched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encrypted {
    /// Base64 ciphertext, as received.
    pub payload: String,
    /// Base64 initialisation vector, as received.
    pub iv: String,
}

/// Serialisable because pushgate's retry queue keeps notifications in its database; fields added
/// later default when absent so rows queued by an older pushgate still read, and are left out
/// when empty so an older pushgate can still read rows queued without them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub kind: Kind,
    pub priority: Priority,
    pub content: Content,
    pub encrypted: Option<Encrypted>,
    /// Notifications with the same key replace each other where the provider can do that
    /// (FCM `collapse_key`, APNs `apns-collapse-id`, WebPush `Topic`).
    pub collapse_key: Option<String>,
    /// App data the front promised its apps (a Matrix pusher's `default_payload`, the event's
    /// ids): the base of every provider's payload. pushgate's own keys are added only where it
    /// lacks them, so an app always gets what it asked for; providers hold no protocol knowledge
    /// of what is in it.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The number for the app icon's badge (APNs `aps.badge`; a `badge` data key elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<u32>,
    /// How long the notification is worth delivering, where the front knows better than the
    /// provider's and the retry queue's defaults for its kind (a SIP call rings for about 30 s,
    /// and so does its cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u32>,
}

impl Notification {
    /// A notification with no content, app data or badge: fronts fill in what they have.
    pub fn new(kind: Kind, priority: Priority) -> Self {
        Notification {
            kind,
            priority,
            content: Content::default(),
            encrypted: None,
            collapse_key: None,
            data: serde_json::Map::new(),
            badge: None,
            ttl_secs: None,
        }
    }
}

/// What became of one delivery attempt. Fronts map this onto their protocol in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The provider accepted the notification.
    Sent,
    /// The provider says the token will never work again: delete the registration.
    DeadToken { reason: String },
    /// Try again later; the registration stays.
    Transient {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// pushgate (its configuration or the request it built) is at fault, not the device: keep
    /// the registration, log and count.
    OurFault { reason: String },
}

impl Verdict {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Sent => "sent",
            Verdict::DeadToken { .. } => "dead_token",
            Verdict::Transient { .. } => "transient",
            Verdict::OurFault { .. } => "our_fault",
        }
    }
}

/// Why a device cannot be registered with a provider; shown to the registering client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrationError {
    #[error("invalid device token: {0}")]
    InvalidToken(String),
    #[error("invalid WebPush keys: {0}")]
    InvalidKeys(String),
    #[error("refused by policy: {0}")]
    Refused(String),
    /// The device's address leads only where deliveries may not go (WebPush: an endpoint host
    /// that resolves only to non-public addresses).
    #[error("refused by policy: {0}")]
    NotPublic(String),
    /// The device could not be checked now (its endpoint's name did not resolve, or not in
    /// time); it may pass later.
    #[error("cannot check the device now: {0}")]
    CheckFailed(String),
}

/// A provider configuration problem, found when pushgate starts.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `providers.webpush.vapid_private_key_file`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// An error about `field` of the section at `section` (`providers.<id>`).
    pub(crate) fn in_section(section: &str, field: &str, message: String) -> Self {
        ConfigError {
            key: format!("{section}.{field}"),
            message,
        }
    }

    /// `Ok` when `value` of the key at `key` lies in `range`; an error naming the key otherwise.
    pub fn check_range<T: PartialOrd + fmt::Display>(
        key: &str,
        value: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<(), ConfigError> {
        if range.contains(&value) {
            return Ok(());
        }
        Err(ConfigError {
            key: key.to_owned(),
            message: format!("must be between {} and {}", range.start(), range.end()),
        })
    }
}

/// The ranges every provider section shares: its time-to-live key (`ttl_key`: `ttl_secs`,
/// `expiration_secs`), `max_body_chars` and `request_timeout_secs`.
fn check_common_ranges(
    section: &str,
    (ttl_key, ttl_secs): (&str, u64),
    max_body_chars: usize,
    request_timeout_secs: u64,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("{section}.{field}");
    // FCM's and CCS's maximum time to live, 28 days.
    ConfigError::check_range(&key(ttl_key), ttl_secs, 0..=28 * 86_400)?;
    // No provider carries more than 4096 bytes anyway.
    ConfigError::check_range(&key("max_body_chars"), max_body_chars, 1..=4096)?;
    // A delivery never waits longer than a minute.
    ConfigError::check_range(&key("request_timeout_secs"), request_timeout_secs, 1..=60)
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Checks a device's form and the provider's policy without any I/O, so a bad token is
    /// refused at registration time rather than discovered at the first push.
    fn validate(&self, device: &Device) -> Result<(), RegistrationError>;

    /// Everything a device must pass before it is stored: [`Provider::validate`] plus checks
    /// that need the network (WebPush resolves the endpoint's host). Fronts call this at
    /// registration; it answers within a few seconds.
    async fn admit(&self, device: &Device) -> Result<(), RegistrationError> {
        self.validate(device)
    }

    /// Delivers one notification. Never panics and never hangs past the provider's own timeout.
    async fn send(&self, device: &Device, notification: &Notification) -> Verdict;

    /// The host this device's deliveries go to, when the provider talks to many (WebPush: the
    /// push service of the endpoint) rather than to one service of its own. The core gives each
    /// such host its own delivery slots, so one slow host cannot hold everybody's.
    fn destination_host(&self, _device: &Device) -> Option<String> {
        None
    }

    /// The APNs provider behind this trait object, for APNs-only operations (credential upload).
    fn as_apns(&self) -> Option<&apns::Apns> {
        None
    }
}

/// One `[providers.<id>]` section of the configuration, tagged by `kind`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    Webpush(webpush::WebPushConfig),
    Apns(apns::ApnsConfig),
    Fcm(fcm::FcmConfig),
    /// LEGACY FCM XMPP (CCS); Google shut it down in 2024. Only with the `fcm-xmpp` feature.
    #[cfg(feature = "fcm-xmpp")]
    #[serde(rename = "fcm-xmpp")]
    FcmXmpp(fcm_xmpp::FcmXmppConfig),
}

/// Where the keys of one provider section come from. The configuration loader implements it, so
/// a bad value is reported as `providers.<id>.<key>`: deserialising through the tagged enum would
/// buffer the section and lose the key's name.
pub trait SectionSource {
    type Error;
    fn extract<T: serde::de::DeserializeOwned>(&self) -> Result<T, Self::Error>;
    /// An error about the section's own `key` (e.g. `kind`), reported as the loader reports a bad
    /// value of it.
    fn invalid(&self, key: &str, message: String) -> Self::Error;
}

/// The `kind` of the CCS provider, known also to builds without it so they can say why they
/// refuse it.
const FCM_XMPP_KIND: &str = "fcm-xmpp";

impl ProviderConfig {
    /// The section's configuration for its `kind`, read from `section` (which holds every key but
    /// `kind`); `None` for a kind no provider has. A kind this build left out (`fcm-xmpp` without
    /// its feature) is an error about `kind` that says so.
    pub fn from_section<S: SectionSource>(
        kind: &str,
        section: &S,
    ) -> Result<Option<Self>, S::Error> {
        Ok(Some(match kind {
            "webpush" => ProviderConfig::Webpush(section.extract()?),
            "apns" => ProviderConfig::Apns(section.extract()?),
            "fcm" => ProviderConfig::Fcm(section.extract()?),
            #[cfg(feature = "fcm-xmpp")]
            FCM_XMPP_KIND => ProviderConfig::FcmXmpp(section.extract()?),
            #[cfg(not(feature = "fcm-xmpp"))]
            FCM_XMPP_KIND => {
                return Err(section.invalid(
                    "kind",
                    format!(
                        "`{FCM_XMPP_KIND}` (the legacy FCM XMPP provider) is not available: \
                         pushgate was built without the `fcm-xmpp` feature \
                         (cargo build --features fcm-xmpp)"
                    ),
                ));
            }
            _ => return Ok(None),
        }))
    }

    /// Checks every numeric key of the section at `key` against its range, so a configuration
    /// check finds an out-of-range value without building the provider.
    pub fn check_ranges(&self, key: &str) -> Result<(), ConfigError> {
        match self {
            ProviderConfig::Webpush(c) => c.check_ranges(key),
            ProviderConfig::Apns(c) => c.check_ranges(key),
            ProviderConfig::Fcm(c) => c.check_ranges(key),
            #[cfg(feature = "fcm-xmpp")]
            ProviderConfig::FcmXmpp(c) => c.check_ranges(key),
        }
    }
}

/// Builds the provider for one configuration section. `key` is that section's dotted path, so
/// errors name the offending key.
pub fn build(key: &str, config: &ProviderConfig) -> Result<Arc<dyn Provider>, ConfigError> {
    match config {
        ProviderConfig::Webpush(c) => Ok(Arc::new(webpush::WebPush::new(key, c)?)),
        ProviderConfig::Apns(c) => Ok(Arc::new(apns::Apns::new(key, c)?)),
        ProviderConfig::Fcm(c) => Ok(Arc::new(fcm::Fcm::new(key, c)?)),
        #[cfg(feature = "fcm-xmpp")]
        ProviderConfig::FcmXmpp(c) => Ok(Arc::new(fcm_xmpp::FcmXmpp::new(key, c)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_queued_before_app_data_still_read() {
        let old = r#"{"kind":"alert","priority":"high","content":{"account":"a@example.org","sender":null,"body":"hi","message_count":2,"nickname":null,"channel":null},"encrypted":null,"collapse_key":null}"#;
        let n: Notification = serde_json::from_str(old).unwrap();
        assert!(n.data.is_empty());
        assert_eq!(n.badge, None);
        assert_eq!(n.content.body.as_deref(), Some("hi"));
        // Without app data a notification is written as before.
        assert_eq!(serde_json::to_string(&n).unwrap(), old);

        let mut n = n;
        n.data.insert("room_id".into(), "!r:hs".into());
        n.badge = Some(3);
        let back: Notification = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    /// A `[providers.<id>]` section as the configuration loader hands it over: every key but
    /// `kind`, errors naming `providers.<id>.<key>`.
    struct Section {
        id: &'static str,
        keys: toml::Table,
    }

    impl Section {
        fn new(id: &'static str, keys: &str) -> Self {
            Section {
                id,
                keys: keys.parse().unwrap(),
            }
        }
    }

    impl SectionSource for Section {
        type Error = String;
        fn extract<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
            toml::Value::Table(self.keys.clone())
                .try_into()
                .map_err(|e| format!("providers.{}: {e}", self.id))
        }
        fn invalid(&self, key: &str, message: String) -> String {
            format!("providers.{}.{key}: {message}", self.id)
        }
    }

    #[test]
    fn sections_are_typed_by_kind() {
        let webpush = ProviderConfig::from_section("webpush", &Section::new("wp", "ttl_secs = 60"));
        assert!(matches!(webpush, Ok(Some(ProviderConfig::Webpush(c))) if c.ttl_secs == 60));
        let err =
            ProviderConfig::from_section("webpush", &Section::new("wp", "ttl = 60")).unwrap_err();
        assert!(
            err.starts_with("providers.wp:") && err.contains("ttl"),
            "{err}"
        );
        assert!(matches!(
            ProviderConfig::from_section("gcm", &Section::new("old", "")),
            Ok(None)
        ));
    }

    #[cfg(feature = "fcm-xmpp")]
    #[test]
    fn fcm_xmpp_sections_are_read_with_its_feature() {
        let section = Section::new("ccs", "sender_id = \"1\"\nserver_key = \"k\"");
        assert!(matches!(
            ProviderConfig::from_section("fcm-xmpp", &section),
            Ok(Some(ProviderConfig::FcmXmpp(c))) if c.sender_id == "1"
        ));
    }

    #[cfg(not(feature = "fcm-xmpp"))]
    #[test]
    fn fcm_xmpp_without_its_feature_is_refused_at_its_kind() {
        let section = Section::new("ccs", "sender_id = \"1\"\nserver_key = \"k\"");
        let Err(err) = ProviderConfig::from_section("fcm-xmpp", &section) else {
            panic!("fcm-xmpp was accepted by a build without the feature");
        };
        assert!(err.starts_with("providers.ccs.kind: "), "{err}");
        assert!(
            err.contains("built without the `fcm-xmpp` feature"),
            "{err}"
        );
    }
}
