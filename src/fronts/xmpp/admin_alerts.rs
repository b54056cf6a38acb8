//! The core's warnings for admins (an APNs certificate about to expire), as chat messages from
//! the component to each admin JID.

use std::sync::Arc;

use tokio::sync::mpsc;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message};
use xmpp_parsers::stanza::Stanza;

use super::Component;
use crate::core::apns_credential_sync::ExpiryWarning;

/// One chat message per admin for `warning`.
pub fn messages(c: &Component, warning: &ExpiryWarning) -> Vec<Stanza> {
    c.admins
        .iter()
        .map(|admin| {
            let mut m = Message::chat(Some(Jid::from(admin.clone())))
                .with_body(Lang(String::new()), warning.text.clone());
            m.from = Some(Jid::from(c.jid.clone()));
            m.into()
        })
        .collect()
}

/// Sends every warning that arrives on `warnings` to the admins, until either side closes.
pub fn forward(c: Arc<Component>, mut warnings: mpsc::Receiver<ExpiryWarning>) {
    tokio::spawn(async move {
        while let Some(warning) = warnings.recv().await {
            for m in messages(&c, &warning) {
                if c.outbox.send(m).await.is_err() {
                    return;
                }
            }
        }
    });
}
