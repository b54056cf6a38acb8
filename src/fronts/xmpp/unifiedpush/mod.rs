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
use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::metrics::METRICS;
use crate::storage::{Store, StoreError, UpEndpoint, UpSaved};
use register::{Dialect, Instance, Request};

/// Largest push body RFC 8030 makes a push service accept, and all UnifiedPush promises.
pub const MAX_BODY_BYTES: usize = 4096;
/// An endpoint token: 32 bytes, base64url.
const TOKEN_CHARS: usize = 43;

/// The front's settings and key; one per process, on the [`Component`].
pub struct UnifiedPush {
    key: Vec<u8>,
    base_url: String,
    expiration: Duration,
    max_per_account: u32,
    answer_timeout: Duration,
}

/// What an app server's push came to; `fronts/http` turns it into the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Passed to the distributor (and, for Conversations, acknowledged by it).
    Delivered,
    /// No such endpoint (never was, unregistered, or revoked): the app server must stop.
    Gone,
    /// The distributor did not take it now; the app server may try again later.
    Unavailable,
}

impl PushOutcome {
    pub fn label(self) -> &'static str {
        match self {
            PushOutcome::Delivered => "delivered",
            PushOutcome::Gone => "gone",
            PushOutcome::Unavailable => "unavailable",
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The SHA-256 of a token, hex: how the store finds its endpoint.
fn token_hash(token: &str) -> String {
    crate::ids::hex(&Sha256::digest(token.as_bytes()))
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
            expiration: Duration::from_secs(u64::from(config.expiration_days) * 86_400),
            max_per_account: config.max_endpoints_per_account,
            answer_timeout: Duration::from_secs(config.answer_timeout_secs),
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
            Request::Register(instance) => {
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
                    jid: from.to_string(),
                    account: bare,
                    dialect: instance.dialect().as_str().to_owned(),
                    application,
                    instance: instance_name,
                    public_token,
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

    /// An app server's push of `body` to the endpoint with `token`.
    pub async fn push(
        &self,
        component: &Component,
        token: &str,
        body: &[u8],
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
                self.push_iq(component, from, to, &endpoint, body, &hash)
                    .await
            }
            None => return Err(Fault::Transient("stored dialect is unknown".into())),
        };
        METRICS
            .unifiedpush_pushes
            .with_label_values(&[endpoint.dialect.as_str(), outcome.label()])
            .inc();
        Ok(outcome)
    }

    /// Conversations' dialect: an IQ to the distributor, whose answer decides.
    async fn push_iq(
        &self,
        component: &Component,
        from: Jid,
        to: Jid,
        endpoint: &UpEndpoint,
        body: &[u8],
        hash: &str,
    ) -> PushOutcome {
        let id = crate::ids::random_b64(12);
        let Some(mut waiting) = component.pending.wait(id.clone(), to.clone()) else {
            return PushOutcome::Unavailable;
        };
        let push = Element::builder("push", register::NS_CONVERSATIONS)
            .attr(
                xml_ncname!("application").into(),
                endpoint.application.clone().unwrap_or_default(),
            )
            .attr(
                xml_ncname!("instance").into(),
                endpoint.instance.clone().unwrap_or_default(),
            )
            .append(STANDARD.encode(body))
            .build();
        let iq = Iq::Set {
            from: Some(from),
            to: Some(to),
            id,
            payload: push,
        };
        if component.outbox.try_send(iq.into()).is_err() {
            return PushOutcome::Unavailable;
        }
        match tokio::time::timeout(self.answer_timeout, &mut waiting.answer).await {
            Ok(Ok(Ok(()))) => PushOutcome::Delivered,
            Ok(Ok(Err(
                DefinedCondition::ItemNotFound | DefinedCondition::FeatureNotImplemented,
            ))) => {
                // The app is gone from the distributor: the endpoint goes too.
                if let Err(e) = component.core.store.remove_up_endpoint(hash).await {
                    tracing::warn!(error = %e, "cannot revoke a UnifiedPush endpoint");
                }
                PushOutcome::Gone
            }
            _ => PushOutcome::Unavailable,
        }
    }
}
