//! UnifiedPush over XMPP: pushgate as the push provider of distributors that live in an XMPP
//! account (Conversations, and genofire's dialect), so an app server's pushes reach a phone over
//! the XMPP connection it keeps anyway.
//!
//! A distributor registers an app instance with an IQ to the component (`register.rs`) and gets
//! an endpoint URL, `<endpoint_base_url>/up/<token>`; app servers POST to it (the HTTP side is
//! `fronts/http/unifiedpush.rs`), and pushgate passes the body on to the distributor's full JID:
//! a `<message>` for genofire's dialect, an `<iq><push/></iq>` for Conversations', whose answer
//! decides what the app server is told.
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

pub mod register;
pub mod vapid;

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use minidom::Element;
use minidom::rxml::xml_ncname;
use sha2::{Digest, Sha256};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::config::UnifiedPushConfig;
use crate::core::rate_limit::RateLimiter;
use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::metrics::METRICS;
use crate::storage::{NewUpMessage, Store, StoreError, UpEndpoint, UpKept, UpSaved};
use register::{Dialect, Instance, Request};

/// Largest push body RFC 8030 makes a push service accept, and all UnifiedPush promises.
pub const MAX_BODY_BYTES: usize = 4096;
/// An endpoint token: 32 bytes, base64url.
const TOKEN_CHARS: usize = 43;

/// The front's settings and key; one per process, on the [`Component`].
pub struct UnifiedPush {
    key: Vec<u8>,
    base_url: String,
    /// `scheme://host[:port]` of `base_url`: the `aud` of VAPID tokens.
    origin: String,
    expiration: Duration,
    max_per_account: u32,
    answer_timeout: Duration,
    max_kept_per_endpoint: u32,
    max_kept: u32,
    max_ttl_secs: u32,
    /// Distributors whose kept pushes are being flushed: one flush each at a time.
    flushing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Pushes per endpoint token and per source IP.
    per_endpoint: RateLimiter<String>,
    per_ip: RateLimiter<IpAddr>,
}

/// Distributors flushed at once, at most. A flush waits for the distributor's answers, which
/// take stanza slots of their own: a flood of presences must leave most slots to them.
const MAX_FLUSHING: usize = 64;
/// Kept pushes read per round of a flush.
const FLUSH_BATCH: u32 = 50;

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

/// What the distributor did with one push IQ.
enum Answered {
    Took,
    /// `item-not-found` / `feature-not-implemented`: the app is gone; the endpoint goes too.
    AppGone,
    NotNow,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
    /// The front as configured, its key made or read from the store; `None` when disabled.
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

    fn endpoint_url(&self, token: &str) -> String {
        format!("{}/up/{token}", self.base_url)
    }

    /// A registration or unregistration from `from`; the reply's payload.
    pub async fn handle(
        &self,
        component: &Component,
        from: &Jid,
        request: Request,
    ) -> Result<Option<Element>, Fault> {
        if from.resource().is_none() {
            // Pushes go to the distributor's connection: a bare JID cannot take them.
            return Err(Fault::BadRequest(
                "register from the distributor's full JID".into(),
            ));
        }
        let bare = from.to_bare().to_string();
        let store = &component.core.store;
        match request {
            Request::Register(instance, vapid_key) => {
                let token = self.token(&bare, &instance);
                let expires = chrono::Utc::now()
                    + chrono::Duration::from_std(self.expiration).unwrap_or_default();
                let (application, instance_name, public_token) = match &instance {
                    Instance::Genofire { token } => (None, None, Some(token.clone())),
                    Instance::Conversations {
                        application,
                        instance,
                    } => (Some(application.clone()), Some(instance.clone()), None),
                };
                let endpoint = UpEndpoint {
                    id: 0,
                    jid: from.to_string(),
                    account: bare,
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
                Ok(Some(register::registered(
                    instance.dialect(),
                    &self.endpoint_url(&token),
                    expires,
                )))
            }
            Request::Unregister(instance) => {
                let token = self.token(&bare, &instance);
                store
                    .remove_up_endpoint(&token_hash(&token))
                    .await
                    .map_err(|e| Fault::Transient(e.to_string()))?;
                METRICS
                    .unifiedpush_registrations
                    .with_label_values(&[instance.dialect().as_str(), "unregistered"])
                    .inc();
                Ok(None)
            }
        }
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
        component: &Component,
        token: &str,
        body: &[u8],
        options: &PushOptions,
    ) -> Result<PushOutcome, Fault> {
        if token.len() != TOKEN_CHARS {
            return Ok(PushOutcome::Gone);
        }
        let hash = token_hash(token);
        let store = &component.core.store;
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
        let Ok(to) = endpoint.jid.parse::<Jid>() else {
            return Err(Fault::Transient("stored distributor JID is invalid".into()));
        };
        let from = Jid::from(component.jid.clone());
        let outcome = match Dialect::parse(&endpoint.dialect) {
            Some(Dialect::Genofire) => {
                let mut message = Message::new(Some(to));
                message.from = Some(from);
                message.type_ = MessageType::Normal;
                message.subjects.insert(
                    Lang(String::new()),
                    endpoint.public_token.clone().unwrap_or_default(),
                );
                let text = match std::str::from_utf8(body) {
                    Ok(text) => text.to_owned(),
                    // genofire's dialect carries text; a binary body (an RFC 8291 ciphertext)
                    // goes as base64, which its distributors must decode.
                    Err(_) => STANDARD.encode(body),
                };
                message.bodies.insert(Lang(String::new()), text);
                match component.outbox.try_send(message.into()) {
                    Ok(()) => PushOutcome::Delivered,
                    Err(_) => PushOutcome::Unavailable,
                }
            }
            Some(Dialect::Conversations) => {
                let push = Pending {
                    application: endpoint.application.clone().unwrap_or_default(),
                    instance: endpoint.instance.clone().unwrap_or_default(),
                    body: STANDARD.encode(body),
                };
                match self.push_iq(component, from, to, &push).await {
                    Answered::Took => PushOutcome::Delivered,
                    Answered::AppGone => {
                        self.revoke(component, &hash).await;
                        PushOutcome::Gone
                    }
                    Answered::NotNow => self.keep(component, &endpoint, push.body, options).await?,
                }
            }
            None => return Err(Fault::Transient("stored dialect is unknown".into())),
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
        component: &Component,
        endpoint: &UpEndpoint,
        body: String,
        options: &PushOptions,
    ) -> Result<PushOutcome, Fault> {
        let ttl = options.ttl_secs.min(self.max_ttl_secs);
        if ttl == 0 {
            return Ok(PushOutcome::Unavailable);
        }
        let now = now_ms();
        drop_expired(component, now).await;
        let kept = component
            .core
            .store
            .keep_up_message(
                NewUpMessage {
                    endpoint_id: endpoint.id,
                    topic: options.topic.clone(),
                    urgency: options.urgency.clone(),
                    body,
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

    async fn revoke(&self, component: &Component, hash: &str) {
        if let Err(e) = component.core.store.remove_up_endpoint(hash).await {
            tracing::warn!(error = %e, "cannot revoke a UnifiedPush endpoint");
        }
    }

    /// Conversations' dialect: an IQ to the distributor, whose answer decides.
    async fn push_iq(&self, component: &Component, from: Jid, to: Jid, push: &Pending) -> Answered {
        let id = crate::ids::random_b64(12);
        let Some(mut waiting) = component.pending.wait(id.clone(), to.clone()) else {
            return Answered::NotNow;
        };
        let payload = Element::builder("push", register::NS_CONVERSATIONS)
            .attr(xml_ncname!("application").into(), push.application.clone())
            .attr(xml_ncname!("instance").into(), push.instance.clone())
            .append(push.body.clone())
            .build();
        let iq = Iq::Set {
            from: Some(from),
            to: Some(to),
            id,
            payload,
        };
        if component.outbox.try_send(iq.into()).is_err() {
            return Answered::NotNow;
        }
        match tokio::time::timeout(self.answer_timeout, &mut waiting.answer).await {
            Ok(Ok(Ok(()))) => Answered::Took,
            Ok(Ok(Err(
                DefinedCondition::ItemNotFound | DefinedCondition::FeatureNotImplemented,
            ))) => Answered::AppGone,
            _ => Answered::NotNow,
        }
    }

    /// The distributor at `jid` is back (its directed presence to the component, the draft's
    /// signal): the pushes kept for it go out, oldest first, until it stops taking them or the
    /// caller's deadline ends the flush (what is left is kept for the next presence).
    pub async fn flush(&self, component: &Component, jid: &Jid) {
        let key = jid.to_string();
        {
            let mut flushing = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
            if flushing.len() >= MAX_FLUSHING || !flushing.insert(key.clone()) {
                return;
            }
        }
        let store = &component.core.store;
        let from = Jid::from(component.jid.clone());
        drop_expired(component, now_ms()).await;
        'rounds: loop {
            let kept = match store.up_messages_for(&key, now_ms(), FLUSH_BATCH).await {
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
                let push = Pending {
                    application: message.application.unwrap_or_default(),
                    instance: message.instance.unwrap_or_default(),
                    body: message.body,
                };
                let answered = self
                    .push_iq(component, from.clone(), jid.clone(), &push)
                    .await;
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
                    .with_label_values(&["conversations", outcome])
                    .inc();
            }
        }
        self.flushing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// Drops kept pushes whose time to live ran out, and counts them.
async fn drop_expired(component: &Component, now: i64) {
    match component.core.store.drop_expired_up_messages(now).await {
        Ok(n) => METRICS.unifiedpush_expired.inc_by(n),
        Err(e) => tracing::warn!(error = %e, "cannot drop expired UnifiedPush pushes"),
    }
}

/// One push IQ's content.
struct Pending {
    application: String,
    instance: String,
    /// The body, base64.
    body: String,
}
