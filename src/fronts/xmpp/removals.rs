//! XEP-0357 remote disabling: when a registration is removed, its account gets the PubSub
//! affiliation-`none` notification from the component, so a server (or client) that honours it
//! drops the push registration at once instead of waiting for the next publish to fail.
//!
//! Tigase XMPP Server and Tigase's clients act on it; Prosody 0.12 and ejabberd 23.01 route it
//! to the account's online resources and keep their registration until the next publish is
//! answered `item-not-found` (measured in tests/e2e/test_remote_disable.py; docs/architecture.md,
//! "Remote disabling"). It is a `headline` message: servers store no headline for an account
//! that is offline (RFC 6121 §8.5.2.1.1), so a removal does not make them push the account's
//! other devices for a message nobody will read (as a stored normal message did: an empty alert
//! on every other device on ejabberd).
//!
//! ```xml
//! <message type='headline' from='push.example.net' to='user@example.org'>
//!   <pubsub xmlns='http://jabber.org/protocol/pubsub' node='NODE'>
//!     <affiliation jid='user@example.org' affiliation='none'/>
//!   </pubsub>
//! </message>
//! ```

use std::sync::Arc;

use minidom::Element;
use minidom::rxml::xml_ncname;
use tokio::sync::broadcast::error::RecvError;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom;
use xmpp_parsers::stanza::Stanza;

use super::Component;
use super::publish::request::NS_PUBSUB;
use crate::core::removals::Removed;
use crate::metrics::METRICS;

/// The notification for `removed`, from the component.
pub fn notification(c: &Component, removed: &Removed) -> Stanza {
    let account = removed.account.to_string();
    let pubsub = Element::builder("pubsub", NS_PUBSUB)
        .attr(xml_ncname!("node").into(), removed.node.as_str())
        .append(
            Element::builder("affiliation", NS_PUBSUB)
                .attr(xml_ncname!("jid").into(), account.as_str())
                .attr(xml_ncname!("affiliation").into(), "none")
                .build(),
        )
        .build();
    let mut message = Message::new(Some(Jid::from(removed.account.clone())));
    message.from = Some(Jid::from(c.jid.clone()));
    message.type_ = MessageType::Headline;
    message.payloads.push(pubsub);
    message.into()
}

/// Sends the notification for every removal the core announces, until the stream's outbox
/// closes. Never waits on a full outbox: a notification that does not fit is skipped (the
/// server learns it at the next publish).
pub fn forward(c: Arc<Component>) {
    let mut removals = c.core.removals.subscribe();
    tokio::spawn(async move {
        loop {
            let removed = match removals.recv().await {
                Ok(r) => r,
                Err(RecvError::Lagged(n)) => {
                    METRICS
                        .removal_notifications
                        .with_label_values(&["skipped"])
                        .inc_by(n);
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let outcome = match c.outbox.try_send(notification(&c, &removed)) {
                Ok(()) => "sent",
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => "skipped",
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            };
            METRICS
                .removal_notifications
                .with_label_values(&[outcome])
                .inc();
        }
    });
}
