//! Routes each stanza the server hands us to its handler and builds the reply.
//!
//! Every stanza gets its own tracing span; every request IQ gets exactly one answer, errors
//! included, because an unanswered IQ leaves the server guessing.

use minidom::Element;
use tokio::time::Instant;
use tracing::Instrument;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::{minidom, ns};

use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::fronts::xmpp::adhoc::{self, CommandRequest};
use crate::fronts::xmpp::disco;
use crate::fronts::xmpp::publish::{self, PublishIq, PublishRequest, request::PublishError};
use crate::fronts::xmpp::unifiedpush::{
    self,
    register::{NS_CONVERSATIONS, NS_GENOFIRE},
};
use crate::log_limit::LOG_LIMIT;
use crate::metrics::METRICS;

/// Handles one stanza, to be answered by `deadline`; returns the reply to send, if any.
pub async fn handle(component: &Component, stanza: Stanza, deadline: Instant) -> Option<Stanza> {
    let iq = match stanza {
        Stanza::Iq(iq) => iq,
        Stanza::Presence(presence) => {
            // A UnifiedPush distributor's directed presence: it is back, and what was kept for
            // it goes out now, within this stanza's deadline (what is left waits for the next).
            let from = presence.from.filter(|f| f.resource().is_some());
            if let (Some(from), xmpp_parsers::presence::Type::None, Some(up)) =
                (from, presence.type_, component.core.unifiedpush.get())
            {
                let stream = unifiedpush::Stream(component);
                up.flush(&component.core.store, &stream, &from.to_string())
                    .await;
            }
            return None;
        }
        // Messages to the component carry nothing for us.
        Stanza::Message(_) => return None,
    };
    let (from, to, id, payload, is_set) = match iq {
        Iq::Get {
            from,
            to,
            id,
            payload,
        } => (from, to, id, payload, false),
        Iq::Set {
            from,
            to,
            id,
            payload,
        } => (from, to, id, payload, true),
        // Answers to our own requests: UnifiedPush pushes wait for theirs; pings need none.
        Iq::Result { from, id, .. } => {
            component.pending.answer(&id, from.as_ref(), Ok(()));
            return None;
        }
        Iq::Error {
            from, id, error, ..
        } => {
            component
                .pending
                .answer(&id, from.as_ref(), Err(error.defined_condition));
            return None;
        }
    };
    let Some(from) = from else {
        tracing::warn!(%id, "request without a sender: cannot answer");
        return None;
    };
    // Publishes are the volume (thousands a second): their span is a debug span, since at the
    // default level an info span per publish costs a quarter of pushgate's CPU (entered on every
    // poll, its fields formatted); their refusals are logged with the publishing server.
    let span = if is_set && payload.is("pubsub", publish::request::NS_PUBSUB) {
        tracing::debug_span!("iq", %id, %from, kind = payload.name(), ns = %payload.ns())
    } else {
        tracing::info_span!("iq", %id, %from, kind = payload.name(), ns = %payload.ns())
    };
    let result = dispatch(component, &from, &payload, is_set, deadline)
        .instrument(span)
        .await;
    let mut answer = reply(to, from, id, result);
    if let Iq::Error {
        error, payload: p, ..
    } = &mut answer
        && payload.ns() == unifiedpush::register::NS_GENOFIRE
    {
        // genofire's distributors show the text of their own error element.
        let text = error.texts.values().next().cloned().unwrap_or_default();
        *p = Some(unifiedpush::register::genofire_error(&text));
    }
    Some(answer.into())
}

/// Builds the answer to a request; `to` of the request becomes `from` of the answer.
pub fn reply(
    our_jid: Option<Jid>,
    requester: Jid,
    id: String,
    result: Result<Option<Element>, Fault>,
) -> Iq {
    match result {
        Ok(payload) => Iq::Result {
            from: our_jid,
            to: Some(requester),
            id,
            payload,
        },
        Err(fault) => Iq::Error {
            from: our_jid,
            to: Some(requester),
            id,
            error: super::error::stanza_error(&fault),
            payload: None,
        },
    }
}

async fn dispatch(
    component: &Component,
    from: &Jid,
    payload: &Element,
    is_set: bool,
    deadline: Instant,
) -> Result<Option<Element>, Fault> {
    let node = payload.attr("node");
    match (is_set, payload.name(), payload.ns().as_str()) {
        (false, "query", ns::DISCO_INFO) => disco::info(component, from, node).map(Some),
        (false, "query", ns::DISCO_ITEMS) => disco::items(component, from, node).map(Some),
        (false, "ping", ns::PING) => Ok(None),
        (true, "command", adhoc::NS) => {
            let req = CommandRequest::try_from(payload)?;
            // Only our own command names become metric labels; anything else is "other".
            let command = if crate::fronts::xmpp::commands::exists(component, from, &req.node) {
                req.node.clone()
            } else {
                "other".to_owned()
            };
            let outcome = crate::fronts::xmpp::commands::execute(component, from, req).await;
            let label = match &outcome {
                Ok(_) => "ok",
                Err(f) => {
                    tracing::info!(reason = %f.label(), "command refused: {f}");
                    f.label()
                }
            };
            METRICS
                .commands
                .with_label_values(&[command.as_str(), label])
                .inc();
            outcome.map(|r| Some(r.into()))
        }
        (true, "pubsub", publish::request::NS_PUBSUB) => {
            let request = PublishRequest::try_from(payload);
            answer_publish(component, from, request, deadline, "tree").await
        }
        (true, "register" | "unregister", NS_GENOFIRE | NS_CONVERSATIONS) => {
            let request = unifiedpush::register::Request::try_from(payload)
                .map_err(|e| Fault::BadRequest(e.to_string()))?;
            unifiedpush::handle(component, from, request).await
        }
        _ => Err(Fault::ServiceUnavailable),
    }
}

/// A publish read straight from its bytes (`PublishIq::read`), answered as [`handle`] answers
/// one read the full way.
pub async fn handle_publish(
    component: &Component,
    iq: PublishIq,
    deadline: Instant,
) -> Option<Stanza> {
    let PublishIq {
        from,
        to,
        id,
        request,
    } = iq;
    let span =
        tracing::debug_span!("iq", %id, %from, kind = "pubsub", ns = publish::request::NS_PUBSUB);
    let result = answer_publish(component, &from, request, deadline, "bytes")
        .instrument(span)
        .await;
    Some(reply(to, from, id, result).into())
}

/// The outcome of a publish, counted, and logged only when refused or failed; `read` says
/// whether it was read from its bytes or from a minidom tree (the debug line shows which way real
/// servers' publishes take).
async fn answer_publish(
    component: &Component,
    from: &Jid,
    request: Result<PublishRequest, PublishError>,
    deadline: Instant,
    read: &'static str,
) -> Result<Option<Element>, Fault> {
    let (label, result) = match request {
        Err(PublishError::NoPublish) => ("not_implemented", Err(Fault::NotImplemented)),
        Err(e) => ("malformed", Err(Fault::BadRequest(e.to_string()))),
        Ok(req) => match publish::handle(component, from, &req, deadline).await {
            Ok(outcome) => (outcome.label(), publish::reply(outcome)),
            Err(fault) => (fault.label(), Err(fault)),
        },
    };
    // One line per publish would be most of the log (and a fifth of the CPU) at volume:
    // every publish is a debug line of its own target (`pushgate::publish`, which the
    // e2e suite turns on), refusals and failures also a rate-limited info line.
    tracing::debug!(target: "pushgate::publish", outcome = %label, read = %read, "publish answered");
    if result.is_err()
        && let Some(held_back) = LOG_LIMIT.allow(label)
    {
        tracing::info!(%from, reason = %label, held_back, "publish refused or failed");
    }
    METRICS.publishes.with_label_values(&[label]).inc();
    result.map(|()| None)
}
