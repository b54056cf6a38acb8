//! UnifiedPush endpoints, protocol-free: what an app instance's endpoint is, who may hold how
//! many, whether an app server's push is let in (rate limits, VAPID), and what becomes of it
//! (delivered, kept for a distributor that is away, flushed when it is back, revoked when its
//! app is gone). The XMPP front (`fronts/xmpp/unifiedpush`) parses the distributors'
//! registrations and formats their replies, and carries each push to the distributor as its
//! dialect says ([`Distributors`]); the HTTP front parses the app servers' requests.
//!
//! Endpoint tokens: an opaque token into the store, derived as HMAC-SHA-256 (key shared by every
//! instance through the database) of the dialect, the bare JID and the app instance's names.
//! Why not a sealed (encrypted) token carrying the JID: revocation and the per-account limit need
//! a row anyway, the row holds the full JID a push goes to (which changes when the distributor
//! reconnects from another resource), and a token that reveals nothing needs no key rotation
//! story for the data it would carry. Why derived rather than random: a distributor that
//! registers the same app instance again (Conversations does before `expiration`) gets the same
//! endpoint from any instance, so its app server need not be told a new one. Only the token's
//! SHA-256 is stored.

pub mod vapid;

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::now_ms;
use super::rate_limit::RateLimiter;
use crate::config::UnifiedPushConfig;
use crate::error::Fault;
use crate::metrics::METRICS;
use crate::storage::{NewUpMessage, Store, StoreError, UpEndpoint, UpKept, UpSaved};

/// Largest push body RFC 8030 makes a push service accept, and all UnifiedPush promises.
pub const MAX_BODY_BYTES: usize = 4096;
/// An endpoint token: 32 bytes, base64url.
const TOKEN_CHARS: usize = 43;
/// Distributors flushed at once, at most. A flush waits for the distributor's answers, which
/// take stanza slots of their own: a flood of presences must leave most slots to them.
const MAX_FLUSHING: usize = 64;
/// Kept pushes read per round of a flush.
const FLUSH_BATCH: u32 = 50;

/// Which dialect a registration came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Genofire,
    Conversations,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Genofire => "genofire",
            Dialect::Conversations => "conversations",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "genofire" => Some(Dialect::Genofire),
            "conversations" => Some(Dialect::Conversations),
            _ => None,
        }
    }
}

/// What names an app instance on the distributor: genofire's public token, or Conversations'
/// application and instance (salted hashes of the app id and of the app's token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instance {
    Genofire {
        token: String,
    },
    Conversations {
        application: String,
        instance: String,
    },
}

impl Instance {
    pub fn dialect(&self) -> Dialect {
        match self {
            Instance::Genofire { .. } => Dialect::Genofire,
            Instance::Conversations { .. } => Dialect::Conversations,
        }
    }
}

/// What the distributor did with one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Took,
    /// The app is gone from the distributor: the endpoint goes too.
    AppGone,
    /// Not now (away, busy, no answer in time).
    NotNow,
}

/// How pushes reach distributors: the XMPP front, in each endpoint's dialect.
pub trait Distributors: Sync {
    fn deliver(&self, endpoint: &UpEndpoint, body: &[u8]) -> impl Future<Output = Answered> + Send;
}

/// The settings and key; one per process, on the [`super::Core`] (set once the key is loaded).
pub struct UnifiedPush {
    key: Vec<u8>,
    base_url: String,
    /// `scheme://host[:port]` of `base_url`: the `aud` of VAPID tokens.
    origin: String,
    expiration: Duration,
    max_per_account: u32,
    /// How long a distributor has to answer a push.
    pub answer_timeout: Duration,
    max_kept_per_endpoint: u32,
    max_kept: u32,
    max_ttl_secs: u32,
    /// Distributors whose kept pushes are being flushed: one flush each at a time.
    flushing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Pushes per endpoint token and per source IP.
    per_endpoint: RateLimiter<String>,
    per_ip: RateLimiter<IpAddr>,
}

/// What an app server asked of a push besides its body (RFC 8030 §5.2–5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOptions {
    /// Seconds the push may be kept for a distributor that is away; 0: now or never.
    pub ttl_secs: u32,
    /// The `Authorization` header (VAPID), if any.
    pub authorization: Option<String>,
    /// `very-low`, `low`, `normal` or `high`.
    pub urgency: String,
    /// A newer push with the same topic replaces a kept one.
    pub topic: Option<String>,
}

/// What an app server's push came to; `fronts/http` turns it into the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Passed to the distributor (and, for Conversations, acknowledged by it).
    Delivered,
    /// The distributor is away; kept for it for this many seconds (the `TTL` answered).
    Kept(u32),
    /// No such endpoint (never was, unregistered, or revoked): the app server must stop.
    Gone,
    /// The distributor did not take it now and it was not kept; the app server may try again.
    Unavailable,
    /// The endpoint has the most pushes kept that it may: the app server should slow down.
    EndpointFull,
    /// VAPID missing, invalid, or not the key the registration pinned (RFC 8292 §4.2).
    Unauthorized(vapid::VapidError),
}

impl PushOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Unauthorized(_) => "unauthorized",
            PushOutcome::Delivered => "delivered",
            PushOutcome::Kept(_) => "kept",
            PushOutcome::Gone => "gone",
            PushOutcome::Unavailable => "unavailable",
            PushOutcome::EndpointFull => "endpoint_full",
        }
    }
}

/// `scheme://authority` of a URL (the configuration has checked it is one).
fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            format!("{scheme}://{authority}")
        }
        None => url.to_owned(),
    }
}

/// The SHA-256 of a token, hex: how the store finds its endpoint.
fn token_hash(token: &str) -> String {
    crate::ids::hex(&Sha256::digest(token.as_bytes()))
}

/// The store key of an endpoint given as its URL or its bare token; `None` when it cannot be
/// one of ours.
pub fn endpoint_hash(endpoint: &str) -> Option<String> {
    let token = endpoint
        .trim()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let ours = token.len() == TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ours.then(|| token_hash(token))
}

impl UnifiedPush {
    /// The endpoints as configured, the key made or read from the store; `None` when disabled.
    pub async fn load(
        config: &UnifiedPushConfig,
        store: &Store,
    ) -> Result<Option<Self>, StoreError> {
        if !config.enabled {
            return Ok(None);
        }
        let fresh = crate::ids::random_b64(32);
        let key = store.unifiedpush_key(&fresh).await?;
        Ok(Some(UnifiedPush {
            key: key.into_bytes(),
            base_url: config.base_url(),
            origin: origin_of(&config.base_url()),
            expiration: Duration::from_secs(u64::from(config.expiration_days) * 86_400),
            max_per_account: config.max_endpoints_per_account,
            answer_timeout: Duration::from_secs(config.answer_timeout_secs),
            max_kept_per_endpoint: config.max_kept_per_endpoint,
            max_kept: config.max_kept,
            max_ttl_secs: config.max_ttl_secs,
            flushing: std::sync::Mutex::default(),
            per_endpoint: RateLimiter::new(config.pushes_per_minute_per_endpoint),
            per_ip: RateLimiter::new(config.pushes_per_minute_per_ip),
        }))
    }

    /// The endpoint token of `instance` registered by the account `bare`.
    fn token(&self, bare: &str, instance: &Instance) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC takes keys of any length.
            unreachable!("HMAC-SHA-256 refused a key")
        };
        let parts: [&str; 3] = match instance {
            Instance::Genofire { token } => ["genofire", bare, token],
            Instance::Conversations { application, .. } => ["conversations", bare, application],
        };
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        if let Instance::Conversations { instance, .. } = instance {
            mac.update(instance.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Registers `instance` for the distributor at the full JID `jid` of the account `bare`
    /// (again: same endpoint, pushes to `jid` from now on, expiry moved on); the endpoint URL
    /// and when it expires.
    pub async fn register(
        &self,
        store: &Store,
        bare: &str,
        jid: &str,
        instance: &Instance,
        vapid_key: Option<String>,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>), Fault> {
        let token = self.token(bare, instance);
        let expires =
            chrono::Utc::now() + chrono::Duration::from_std(self.expiration).unwrap_or_default();
        let (application, instance_name, public_token) = match instance {
            Instance::Genofire { token } => (None, None, Some(token.clone())),
            Instance::Conversations {
                application,
                instance,
            } => (Some(application.clone()), Some(instance.clone()), None),
        };
        let endpoint = UpEndpoint {
            id: 0,
            jid: jid.to_owned(),
            account: bare.to_owned(),
            dialect: instance.dialect().as_str().to_owned(),
            application,
            instance: instance_name,
            public_token,
            vapid_key,
            expires_at_ms: expires.timestamp_millis(),
        };
        let saved = store
            .save_up_endpoint(
                &token_hash(&token),
                &endpoint,
                now_ms(),
                self.max_per_account,
            )
            .await
            .map_err(|e| Fault::Transient(e.to_string()))?;
        if saved == UpSaved::AccountFull {
            return Err(Fault::PolicyViolation(format!(
                "an account may hold {} endpoints",
                self.max_per_account
            )));
        }
        METRICS
            .unifiedpush_registrations
            .with_label_values(&[instance.dialect().as_str(), "registered"])
            .inc();
        Ok((format!("{}/up/{token}", self.base_url), expires))
    }

    /// Removes the endpoint of `instance` of the account `bare`, if there is one.
    pub async fn unregister(
        &self,
        store: &Store,
        bare: &str,
        instance: &Instance,
    ) -> Result<(), Fault> {
        let token = self.token(bare, instance);
        store
            .remove_up_endpoint(&token_hash(&token))
            .await
            .map_err(|e| Fault::Transient(e.to_string()))?;
        METRICS
            .unifiedpush_registrations
            .with_label_values(&[instance.dialect().as_str(), "unregistered"])
            .inc();
        Ok(())
    }

    /// Whether a push from `ip` (its rate-limit key) to `token` may be tried now; `Err(wait)`
    /// when either has pushed its share. Checked before anything is looked up.
    pub fn admit(&self, ip: IpAddr, token: &str) -> Result<(), Duration> {
        self.per_ip.check(ip)?;
        self.per_endpoint.check(token.to_owned()).inspect_err(|_| {
            // The endpoint's share is spent, not the sender's.
            self.per_ip.refund(&ip);
        })
    }

    /// An app server's push of `body` to the endpoint with `token`.
    pub async fn push(
        &self,
        store: &Store,
        distributors: &impl Distributors,
        token: &str,
        body: &[u8],
        options: &PushOptions,
    ) -> Result<PushOutcome, Fault> {
        if token.len() != TOKEN_CHARS {
            return Ok(PushOutcome::Gone);
        }
        let hash = token_hash(token);
        let endpoint = store
            .up_endpoint(&hash)
            .await
            .map_err(|e| Fault::Transient(e.to_string()))?;
        let Some(endpoint) = endpoint else {
            return Ok(PushOutcome::Gone);
        };
        if endpoint.expires_at_ms <= now_ms() {
            let _ = store.remove_up_endpoint(&hash).await;
            return Ok(PushOutcome::Gone);
        }
        if let Err(refused) = vapid::check(
            options.authorization.as_deref(),
            &self.origin,
            endpoint.vapid_key.as_deref(),
            now_ms() / 1000,
        ) {
            return Ok(PushOutcome::Unauthorized(refused));
        }
        let outcome = match distributors.deliver(&endpoint, body).await {
            Answered::Took => PushOutcome::Delivered,
            Answered::AppGone => {
                if let Err(e) = store.remove_up_endpoint(&hash).await {
                    tracing::warn!(error = %e, "cannot revoke a UnifiedPush endpoint");
                }
                PushOutcome::Gone
            }
            Answered::NotNow => self.keep(store, &endpoint, body, options).await?,
        };
        METRICS
            .unifiedpush_pushes
            .with_label_values(&[endpoint.dialect.as_str(), outcome.label()])
            .inc();
        Ok(outcome)
    }

    /// Keeps a push the distributor did not take now, if the app server allows (`TTL`).
    async fn keep(
        &self,
        store: &Store,
        endpoint: &UpEndpoint,
        body: &[u8],
        options: &PushOptions,
    ) -> Result<PushOutcome, Fault> {
        let ttl = options.ttl_secs.min(self.max_ttl_secs);
        if ttl == 0 {
            return Ok(PushOutcome::Unavailable);
        }
        let now = now_ms();
        drop_expired(store, now).await;
        let kept = store
            .keep_up_message(
                NewUpMessage {
                    endpoint_id: endpoint.id,
                    topic: options.topic.clone(),
                    urgency: options.urgency.clone(),
                    body: STANDARD.encode(body),
                    now_ms: now,
                    expires_at_ms: now.saturating_add(i64::from(ttl) * 1000),
                },
                self.max_kept_per_endpoint,
                self.max_kept,
            )
            .await
            .map_err(|e| Fault::Transient(e.to_string()))?;
        Ok(match kept {
            UpKept::Kept => PushOutcome::Kept(ttl),
            UpKept::EndpointFull => PushOutcome::EndpointFull,
            UpKept::Full => PushOutcome::Unavailable,
        })
    }

    /// The distributor at the full JID `jid` is back (its directed presence, the draft's
    /// signal): the pushes kept for it go out, oldest first, until it stops taking them or the
    /// caller's deadline ends the flush (what is left is kept for the next presence).
    pub async fn flush(&self, store: &Store, distributors: &impl Distributors, jid: &str) {
        {
            let mut flushing = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
            if flushing.len() >= MAX_FLUSHING || !flushing.insert(jid.to_owned()) {
                return;
            }
        }
        drop_expired(store, now_ms()).await;
        'rounds: loop {
            let kept = match store.up_messages_for(jid, now_ms(), FLUSH_BATCH).await {
                Ok(kept) => kept,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read kept UnifiedPush pushes");
                    break;
                }
            };
            if kept.is_empty() {
                break;
            }
            for message in kept {
                let Ok(body) = STANDARD.decode(&message.body) else {
                    // Written by this module as base64: unreadable means edited by hand.
                    let _ = store.remove_up_message(message.id).await;
                    continue;
                };
                let endpoint = UpEndpoint {
                    id: message.endpoint_id,
                    jid: jid.to_owned(),
                    account: String::new(),
                    dialect: message.dialect.clone(),
                    application: message.application,
                    instance: message.instance,
                    public_token: message.public_token,
                    vapid_key: None,
                    expires_at_ms: 0,
                };
                let answered = distributors.deliver(&endpoint, &body).await;
                let (done, outcome) = match answered {
                    Answered::Took => (store.remove_up_message(message.id).await, "flushed"),
                    // The app is gone: its endpoint goes, and what was kept for it.
                    Answered::AppGone => (
                        store
                            .remove_up_endpoint_id(message.endpoint_id)
                            .await
                            .map(drop),
                        "gone",
                    ),
                    Answered::NotNow => break 'rounds,
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "cannot update kept UnifiedPush pushes");
                    break 'rounds;
                }
                METRICS
                    .unifiedpush_pushes
                    .with_label_values(&[message.dialect.as_str(), outcome])
                    .inc();
            }
        }
        self.flushing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(jid);
    }
}

/// Drops kept pushes whose time to live ran out, and counts them.
async fn drop_expired(store: &Store, now: i64) {
    match store.drop_expired_up_messages(now).await {
        Ok(n) => METRICS.unifiedpush_expired.inc_by(n),
        Err(e) => tracing::warn!(error = %e, "cannot drop expired UnifiedPush pushes"),
    }
}
