//! XEP-0357 publish handling: a server's publish in, the reply that makes it keep or drop the
//! registration out. Finding the registration and delivering are the core's
//! (`core::registry::for_publish`, `core::delivery`); this module checks who publishes, turns the
//! publish-options summary into a notification (`request.rs`) and the outcome into a reply.
//!
//! The reply mapping: `result` on success (also when a low-priority push was coalesced, and when
//! a failed delivery was queued for retry: pushgate answers for it from then on),
//! `item-not-found` for an unknown node or a dead token (and the registration is deleted), a
//! `wait` error for anything transient that could not be queued, always within
//! `publish_timeout`. Only `wait` keeps the
//! registration on Prosody, ejabberd and Tigase alike (see `fronts/xmpp/error.rs`).

pub mod fpush;
pub mod iq;
pub mod request;

use tracing::Instrument;
use xmpp_parsers::jid::Jid;

pub use iq::PublishIq;
pub use request::{PublishRequest, WithoutSummary};

use pushgate_providers::host::listed;

use tokio::time::Instant;

use super::Component;
use crate::core::delivery::{self, Outcome};
use crate::core::registry;
use crate::core::target::Target;
use crate::error::Fault;

/// Handles one publish from `from`, to be answered by `deadline`: `Err` is a refusal, `Ok` what
/// the provider made of it.
pub async fn handle(
    c: &Component,
    from: &Jid,
    req: &PublishRequest,
    deadline: Instant,
) -> Result<Outcome, Fault> {
    // Publishes come from the user's server, which is a bare domain JID.
    if from.node().is_some() || from.resource().is_some() {
        return Err(Fault::Forbidden("publishes come from servers"));
    }
    let domain = from.domain().as_str();
    if let Some(fpush) = c.fpush.as_ref().filter(|f| f.named(req)) {
        return fpush.handle(&c.core, domain, req, deadline).await;
    }
    let reg =
        match registry::for_publish(&c.core, domain, req.node.as_deref(), req.secret.as_deref())
            .await
        {
            Ok(reg) => reg,
            // No registration: perhaps a token for the default module (Monal without options).
            Err(Fault::NotFound(why)) => match c.fpush.as_ref().filter(|f| f.may_default(req)) {
                Some(fpush) => return fpush.handle(&c.core, domain, req, deadline).await,
                None => return Err(Fault::NotFound(why)),
            },
            Err(e) => return Err(e),
        };
    // A debug span: at the default level, a span per publish costs more than its lines (the
    // iq span above it names the stanza; failures name the provider themselves).
    let span = tracing::debug_span!("deliver", registration = reg.id, provider = %reg.provider);
    let notification = req.notification(reg.account.as_str(), without_summary(c, from));
    delivery::deliver(&c.core, Target::Registered(&reg), notification, deadline)
        .instrument(span)
        .await
}

/// What a notification without a summary form from `from` means: a message, unless the
/// server is listed in `registration.background_without_summary`.
fn without_summary(c: &Component, from: &Jid) -> WithoutSummary {
    if listed(&c.background_without_summary, from.domain().as_str()) {
        WithoutSummary::Background
    } else {
        WithoutSummary::Message
    }
}

/// The reply the publishing server gets.
pub fn reply(outcome: Outcome) -> Result<(), Fault> {
    match outcome {
        Outcome::Delivered | Outcome::Coalesced | Outcome::Queued => Ok(()),
        Outcome::DeadToken => Err(Fault::NotFound("device token is no longer valid")),
        Outcome::Transient => Err(Fault::Transient("provider unavailable".into())),
        Outcome::OurFault => Err(Fault::Transient("delivery failed".into())),
    }
}
