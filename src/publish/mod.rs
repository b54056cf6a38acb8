//! XEP-0357 publish handling: from a server's publish to a provider delivery and back to the
//! reply that makes the server keep or drop the registration.
//!
//! The reply mapping follows ../shared/reference/xep0357-interop.md §4.3: `result` on success,
//! `item-not-found` for an unknown node or a dead token (and the registration is deleted), a
//! `wait` error for anything transient, always within `publish_timeout`.

pub mod request;

use std::str::FromStr;

use pushgate_providers::Verdict;
use tracing::Instrument;
use xmpp_parsers::jid::Jid;

pub use request::PublishRequest;

use crate::error::Fault;
use crate::gateway::Gateway;
use crate::storage::Registration;

/// How a publish ended, for logs and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    DeadToken,
    Transient,
    OurFault,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::DeadToken => "dead_token",
            Outcome::Transient => "transient",
            Outcome::OurFault => "our_fault",
        }
    }

    /// The reply the publishing server gets.
    pub fn reply(self) -> Result<(), Fault> {
        match self {
            Outcome::Delivered => Ok(()),
            Outcome::DeadToken => Err(Fault::NotFound("device token is no longer valid")),
            Outcome::Transient => Err(Fault::Transient("provider unavailable".into())),
            Outcome::OurFault => Err(Fault::Transient("delivery failed".into())),
        }
    }
}

/// Handles one publish from `from`: `Err` is a refusal, `Ok` what the provider made of it.
pub async fn handle(gw: &Gateway, from: &Jid, req: &PublishRequest) -> Result<Outcome, Fault> {
    // Publishes come from the user's server, which is a bare domain JID.
    if from.node().is_some() || from.resource().is_some() {
        return Err(Fault::Forbidden("publishes come from servers"));
    }
    let reg = authorise(gw, from.domain().as_str(), req).await?;
    let span = tracing::info_span!("deliver", registration = reg.id, provider = %reg.provider);
    deliver(gw, req, reg).instrument(span).await
}

async fn deliver(gw: &Gateway, req: &PublishRequest, reg: Registration) -> Result<Outcome, Fault> {
    let Some((_, provider)) = gw.providers.get(reg.provider.as_str()) else {
        // The operator removed this provider. Not the device's fault: keep the registration.
        tracing::warn!("registration refers to a provider that is no longer configured");
        return Err(Fault::Transient(format!(
            "provider {} not configured",
            reg.provider
        )));
    };
    let notification = req.notification(reg.account.as_str());
    let device = reg.device();
    let verdict =
        match tokio::time::timeout(gw.publish_timeout, provider.send(&device, &notification)).await
        {
            Ok(v) => v,
            Err(_) => Verdict::Transient {
                retry_after: None,
                reason: "provider did not answer in time".into(),
            },
        };
    apply(gw, &reg, verdict).await
}

/// Finds the registration behind a publish and checks that this server may publish to it.
/// Unknown node, foreign domain and wrong secret look the same from outside, so a prober
/// learns nothing about which nodes exist.
async fn authorise(
    gw: &Gateway,
    from_domain: &str,
    req: &PublishRequest,
) -> Result<Registration, Fault> {
    const NOT_FOUND: Fault = Fault::NotFound("no such node");
    let node = req.node.as_deref().ok_or(NOT_FOUND)?;
    let Some(reg) = gw.store.find_by_node(node).await? else {
        tracing::info!(reason = "unknown_node", "publish refused");
        return Err(NOT_FOUND);
    };
    let same_domain = Jid::from_str(from_domain)
        .map(|d| d.domain().as_str() == reg.domain)
        .unwrap_or(false);
    if !same_domain {
        tracing::info!(
            registration = reg.id,
            reason = "foreign_domain",
            "publish refused"
        );
        return Err(NOT_FOUND);
    }
    if let Some(secret) = &reg.secret
        && !req.secret.as_deref().is_some_and(|s| secret.matches(s))
    {
        tracing::info!(
            registration = reg.id,
            reason = "wrong_secret",
            "publish refused"
        );
        return Err(NOT_FOUND);
    }
    Ok(reg)
}

/// Records what the provider said in the store.
async fn apply(gw: &Gateway, reg: &Registration, verdict: Verdict) -> Result<Outcome, Fault> {
    match verdict {
        Verdict::Sent => {
            gw.store.record_success(reg.id).await?;
            Ok(Outcome::Delivered)
        }
        Verdict::DeadToken { reason } => {
            tracing::info!(%reason, "token is dead: registration removed");
            gw.store.delete(reg.id).await?;
            Ok(Outcome::DeadToken)
        }
        Verdict::Transient {
            retry_after,
            reason,
        } => {
            tracing::warn!(%reason, retry_after_secs = retry_after.map(|d| d.as_secs()), "delivery failed for now");
            gw.store.record_error(reg.id, &reason).await?;
            Ok(Outcome::Transient)
        }
        Verdict::OurFault { reason } => {
            tracing::error!(%reason, "delivery failed through pushgate's own fault");
            gw.store.record_error(reg.id, &reason).await?;
            Ok(Outcome::OurFault)
        }
    }
}
