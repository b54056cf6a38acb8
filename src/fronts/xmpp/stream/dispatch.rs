//! One stanza from its bytes to its reply: parsed on a worker, bounded by the request deadline,
//! and answered from its start tag alone when it broke a limit, cannot be parsed, finds every
//! slot taken, or runs out of time.
//!
//! The stream loop only frames bytes and hands them here, so it never waits on a handler: a slow
//! provider, a slow database or an expensive stanza delays that stanza's own reply, nobody
//! else's. The deadline runs from the stanza's arrival, so time spent waiting for a delivery slot
//! or the database counts, and a request that cannot be served in time gets a `wait` error (the
//! one error Prosody, ejabberd and Tigase all treat as transient; see `fronts/xmpp/error.rs`)
//! instead of no answer.

use std::sync::Arc;
use std::time::Duration;

use pushgate_providers::framing::{Head, Limit};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Message};
use xmpp_parsers::stanza::Stanza;

use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::fronts::xmpp::publish::PublishIq;
use crate::fronts::xmpp::router;
use crate::metrics::METRICS;

/// Kept between a request's deadline and `publish_timeout_secs` for the reply's way out.
const REPLY_MARGIN: Duration = Duration::from_millis(250);

/// Hands framed stanzas to workers: at most `max_in_flight` at once, holding at most
/// `max_in_flight_bytes` of stanza between them.
pub struct Dispatcher {
    component: Arc<Component>,
    permits: Arc<Semaphore>,
    max_in_flight: u32,
    /// The byte budget, in KiB.
    kib: Arc<Semaphore>,
    timeout: Duration,
}

impl Dispatcher {
    pub fn new(
        component: Arc<Component>,
        max_in_flight: usize,
        max_in_flight_bytes: usize,
        timeout: Duration,
    ) -> Self {
        Dispatcher {
            component,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight: u32::try_from(max_in_flight).unwrap_or(u32::MAX),
            kib: Arc::new(Semaphore::new(max_in_flight_bytes / 1024)),
            timeout,
        }
    }

    /// Waits until every stanza taken on has been handled (each is bounded by its deadline), or
    /// `within` has passed; returns how many were still in flight then.
    pub async fn drain(&self, within: Duration) -> usize {
        let all = self.permits.acquire_many(self.max_in_flight);
        match tokio::time::timeout(within, all).await {
            Ok(_) => 0,
            Err(_) => {
                (self.max_in_flight as usize).saturating_sub(self.permits.available_permits())
            }
        }
    }

    /// Stanzas taken on and not yet answered.
    pub fn in_flight(&self) -> usize {
        (self.max_in_flight as usize).saturating_sub(self.permits.available_permits())
    }

    /// Starts handling one stanza; returns an immediate answer when it cannot be taken on.
    pub fn admit(&self, head: Head, xml: Vec<u8>, arrived: Instant) -> Option<Stanza> {
        // A stanza of n bytes holds ⌈n / 1 KiB⌉ of the budget (the limits keep n small).
        let kib = u32::try_from(xml.len().div_ceil(1024)).unwrap_or(u32::MAX);
        let (Ok(permit), Ok(budget)) = (
            self.permits.clone().try_acquire_owned(),
            self.kib.clone().try_acquire_many_owned(kib),
        ) else {
            // Every slot (or the memory for this stanza) is taken by slower requests: say
            // "later" now rather than make everybody behind this one wait.
            METRICS
                .stanzas_refused
                .with_label_values(&["in_flight"])
                .inc();
            tracing::warn!(stanza = %head.name, "too many stanzas in flight: answered 'wait'");
            return answer(
                &head,
                Fault::Transient("too many requests in flight".into()),
            );
        };
        let component = self.component.clone();
        // The reply must be at the server by the timeout: leave time for writing it.
        let deadline = arrived + self.timeout - (self.timeout / 20).min(REPLY_MARGIN);
        // Boxed: the handler's future is large, and building it on the worker that runs it
        // keeps that cost off the stream loop (docs/performance.md).
        tokio::spawn(Box::pin(async move {
            let reply = match tokio::time::timeout_at(
                deadline,
                handle(&component, &head, xml, deadline),
            )
            .await
            {
                Ok(reply) => reply,
                Err(_) => {
                    METRICS
                        .stanzas_refused
                        .with_label_values(&["deadline"])
                        .inc();
                    tracing::warn!(stanza = %head.name, id = head.attr("id"), "request not served in time: answered 'wait'");
                    answer(&head, Fault::Transient("request timed out".into()))
                }
            };
            if let Some(reply) = reply {
                let _ = component.outbox.send(reply).await;
            }
            drop((permit, budget));
        }));
        None
    }
}

/// A stanza the framer skipped because it broke `limit`: an error to its sender, if it can be
/// addressed.
pub fn refuse(head: Option<&Head>, limit: Limit) -> Option<Stanza> {
    METRICS
        .stanzas_refused
        .with_label_values(&[limit.label()])
        .inc();
    let head = head?;
    tracing::warn!(
        stanza = %head.name,
        id = head.attr("id"),
        from = head.attr("from"),
        limit = limit.label(),
        "stanza refused: {limit}"
    );
    answer(head, Fault::PolicyViolation(format!("{limit}")))
}

async fn handle(
    component: &Component,
    head: &Head,
    xml: Vec<u8>,
    deadline: Instant,
) -> Option<Stanza> {
    // Publishes, the volume, are read without a minidom tree when they have the plain shape.
    if head.name == "iq"
        && let Some(publish) = PublishIq::read(&xml)
    {
        drop(xml);
        return router::handle_publish(component, publish, deadline).await;
    }
    let parsed = xso::from_bytes::<Stanza>(&xml);
    drop(xml);
    match parsed {
        Ok(stanza) => router::handle(component, stanza, deadline).await,
        Err(e) => {
            METRICS
                .stanzas_refused
                .with_label_values(&["unparsable"])
                .inc();
            tracing::warn!(stanza = %head.name, id = head.attr("id"), "invalid stanza: {e}");
            // Only requests are answered: an error to a result or an error could loop.
            if head.name == "iq" {
                answer(head, Fault::BadRequest(format!("malformed request: {e}")))
            } else {
                None
            }
        }
    }
}

/// The error reply to a request or message, built from its start tag alone; `None` when it has
/// no id or sender, or is itself an answer.
fn answer(head: &Head, fault: Fault) -> Option<Stanza> {
    let id = head.attr("id")?.to_owned();
    let requester: Jid = head.attr("from")?.parse().ok()?;
    let us: Option<Jid> = head.attr("to").and_then(|t| t.parse().ok());
    match (head.name.as_str(), head.attr("type")) {
        ("iq", Some("get" | "set")) => Some(router::reply(us, requester, id, Err(fault)).into()),
        ("message", kind) if kind != Some("error") => {
            let mut message = Message::error(Some(requester));
            message.from = us;
            message.id = Some(Id(id));
            message
                .payloads
                .push(crate::fronts::xmpp::error::stanza_error(&fault).into());
            Some(message.into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(name: &str, attrs: &[(&str, &str)]) -> Head {
        Head {
            name: name.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn requests_and_messages_with_id_and_sender_are_answered() {
        let fault = || Fault::PolicyViolation("stanza too large".into());
        let iq = head(
            "iq",
            &[
                ("type", "set"),
                ("id", "1"),
                ("from", "u@example.org/r"),
                ("to", "push.example.org"),
            ],
        );
        let Some(Stanza::Iq(xmpp_parsers::iq::Iq::Error {
            id, error, from, ..
        })) = answer(&iq, fault())
        else {
            panic!()
        };
        assert_eq!(id, "1");
        assert_eq!(
            from.map(|f| f.to_string()).as_deref(),
            Some("push.example.org")
        );
        assert_eq!(
            error.defined_condition,
            xmpp_parsers::stanza_error::DefinedCondition::PolicyViolation
        );
        let msg = head("message", &[("id", "m"), ("from", "u@example.org/r")]);
        assert!(matches!(answer(&msg, fault()), Some(Stanza::Message(_))));
    }

    #[test]
    fn answers_errors_and_anonymous_stanzas_never() {
        let fault = || Fault::PolicyViolation("x".into());
        for h in [
            head("iq", &[("type", "result"), ("id", "1"), ("from", "a@b")]),
            head("iq", &[("type", "error"), ("id", "1"), ("from", "a@b")]),
            head(
                "message",
                &[("type", "error"), ("id", "1"), ("from", "a@b")],
            ),
            head("iq", &[("type", "get"), ("from", "a@b")]),
            head("iq", &[("type", "get"), ("id", "1")]),
            head(
                "iq",
                &[("type", "get"), ("id", "1"), ("from", "not a jid@")],
            ),
            head("presence", &[("id", "1"), ("from", "a@b")]),
        ] {
            assert!(answer(&h, fault()).is_none(), "{h:?}");
        }
    }

    #[test]
    fn long_text_within_the_stanza_limit_parses() {
        // A certificate upload carries kilobytes of text in one value: the parser's token limit
        // (8192) applies to names and attribute values, not to text.
        let body = "A".repeat(200 * 1024);
        let xml = format!(
            "<message xmlns='jabber:component:accept' from='a@b/c' to='push.example.org'><body>{body}</body></message>"
        );
        let Stanza::Message(m) = xso::from_bytes::<Stanza>(xml.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(m.bodies.values().next().map(String::len), Some(body.len()));
    }
}
