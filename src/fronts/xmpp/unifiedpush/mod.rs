//! UnifiedPush over XMPP, the component's side: distributors' registrations in both dialects
//! (`register.rs` reads them and writes the replies), and each push carried to the distributor
//! as its dialect says, with its answer read back. Which endpoint, whether a push is let in and
//! what becomes of it are the core's (`core/unifiedpush`).
//!
//! Conversations' dialect gets `<iq type='set'><push application=… instance=…>BASE64</push>
//! </iq>` to the distributor's full JID: `result` is taken, `item-not-found` /
//! `feature-not-implemented` mean the app is gone, anything else (its server's
//! `service-unavailable` for a distributor that is away, no answer in time) is "not now".
//! genofire's dialect gets a `<message>` with the public token as subject and the body as text
//! (base64 when it is not UTF-8): taken once it is on the stream.

pub mod register;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use minidom::Element;
use minidom::rxml::xml_ncname;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::core::unifiedpush::{Answered, Dialect, Distributors};
pub use crate::core::unifiedpush::{MAX_BODY_BYTES, PushOptions, PushOutcome, endpoint_hash};
use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::storage::UpEndpoint;
use register::Request;

/// A registration or unregistration from `from`; the reply's payload.
pub async fn handle(
    component: &Component,
    from: &Jid,
    request: Request,
) -> Result<Option<Element>, Fault> {
    let Some(up) = component.core.unifiedpush.get() else {
        return Err(Fault::ServiceUnavailable);
    };
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
            let (endpoint, expires) = up
                .register(store, &bare, &from.to_string(), &instance, vapid_key)
                .await?;
            Ok(Some(register::registered(
                instance.dialect(),
                &endpoint,
                expires,
            )))
        }
        Request::Unregister(instance) => {
            up.unregister(store, &bare, &instance).await?;
            Ok(None)
        }
    }
}

/// The component as the core's way to distributors.
pub struct Stream<'a>(pub &'a Component);

impl Distributors for Stream<'_> {
    async fn deliver(&self, endpoint: &UpEndpoint, body: &[u8]) -> Answered {
        let component = self.0;
        let Ok(to) = endpoint.jid.parse::<Jid>() else {
            tracing::warn!("stored distributor JID is invalid");
            return Answered::NotNow;
        };
        let from = Jid::from(component.jid.clone());
        match Dialect::parse(&endpoint.dialect) {
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
                    Ok(()) => Answered::Took,
                    Err(_) => Answered::NotNow,
                }
            }
            Some(Dialect::Conversations) => self.push_iq(from, to, endpoint, body).await,
            None => {
                tracing::warn!("stored UnifiedPush dialect is unknown");
                Answered::NotNow
            }
        }
    }
}

impl Stream<'_> {
    /// Conversations' dialect: an IQ to the distributor, whose answer decides.
    async fn push_iq(&self, from: Jid, to: Jid, endpoint: &UpEndpoint, body: &[u8]) -> Answered {
        let component = self.0;
        let Some(up) = component.core.unifiedpush.get() else {
            return Answered::NotNow;
        };
        let id = crate::ids::random_b64(12);
        let Some(mut waiting) = component.pending.wait(id.clone(), to.clone()) else {
            return Answered::NotNow;
        };
        let payload = Element::builder("push", register::NS_CONVERSATIONS)
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
            payload,
        };
        if component.outbox.try_send(iq.into()).is_err() {
            return Answered::NotNow;
        }
        match tokio::time::timeout(up.answer_timeout, &mut waiting.answer).await {
            Ok(Ok(Ok(()))) => Answered::Took,
            Ok(Ok(Err(
                DefinedCondition::ItemNotFound | DefinedCondition::FeatureNotImplemented,
            ))) => Answered::AppGone,
            _ => Answered::NotNow,
        }
    }
}
