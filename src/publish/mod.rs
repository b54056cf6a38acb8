//! XEP-0357 publish handling: from a server's publish to a provider delivery and back to the
//! reply that makes the server keep or drop the registration.
//!
//! The reply mapping follows ../shared/reference/xep0357-interop.md §4.3: `result` on success,
//! `item-not-found` for an unknown node or a dead token (and the registration is deleted), a
//! `wait` error for anything transient, always within `publish_timeout`.

pub mod coalesce;
pub mod request;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use pushgate_providers::{Content, Notification, Priority, Verdict};
use tokio::time::Instant;
use tracing::Instrument;
use xmpp_parsers::jid::Jid;

pub use request::PublishRequest;

use crate::error::Fault;
use crate::gateway::Gateway;
use crate::ids::Dialect;
use crate::metrics::METRICS;
use crate::storage::Registration;

/// How a publish ended, for logs and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A low-priority push held back because the device got one moments ago.
    Coalesced,
    DeadToken,
    Transient,
    OurFault,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Coalesced => "coalesced",
            Outcome::DeadToken => "dead_token",
            Outcome::Transient => "transient",
            Outcome::OurFault => "our_fault",
        }
    }

    /// The reply the publishing server gets.
    pub fn reply(self) -> Result<(), Fault> {
        match self {
            Outcome::Delivered | Outcome::Coalesced => Ok(()),
            Outcome::DeadToken => Err(Fault::NotFound("device token is no longer valid")),
            Outcome::Transient => Err(Fault::Transient("provider unavailable".into())),
            Outcome::OurFault => Err(Fault::Transient("delivery failed".into())),
        }
    }
}

/// Time kept between the end of a delivery attempt and the request's deadline, for recording
/// the verdict and answering.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// Handles one publish from `from`, to be answered by `deadline`: `Err` is a refusal, `Ok` what
/// the provider made of it.
pub async fn handle(
    gw: &Gateway,
    from: &Jid,
    req: &PublishRequest,
    deadline: Instant,
) -> Result<Outcome, Fault> {
    // Publishes come from the user's server, which is a bare domain JID.
    if from.node().is_some() || from.resource().is_some() {
        return Err(Fault::Forbidden("publishes come from servers"));
    }
    let reg = authorise(gw, from.domain().as_str(), req).await?;
    let span = tracing::info_span!("deliver", registration = reg.id, provider = %reg.provider);
    deliver(gw, req, &reg, deadline).instrument(span).await
}

async fn deliver(
    gw: &Gateway,
    req: &PublishRequest,
    reg: &Registration,
    deadline: Instant,
) -> Result<Outcome, Fault> {
    let Some((_, provider)) = gw.providers.get(reg.provider.as_str()) else {
        // The operator removed this provider. Not the device's fault: keep the registration.
        tracing::warn!("registration refers to a provider that is no longer configured");
        return Err(Fault::Transient(format!(
            "provider {} not configured",
            reg.provider
        )));
    };
    let notification = notification_for(req, reg);
    if notification.priority == Priority::Low
        && !gw.coalescer.admit(reg.id, std::time::Instant::now())
    {
        return Ok(Outcome::Coalesced);
    }
    let device = reg.device();
    let provider_id = reg.provider.as_str();
    let host = provider.destination_host(&device);
    let send_by = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
    let started = Instant::now();
    let attempt = tokio::time::timeout_at(send_by, async {
        let _pass = gw.slots.enter(&reg.provider, host.as_deref()).await?;
        Ok::<_, crate::slots::Full>(provider.send(&device, &notification).await)
    })
    .await;
    let verdict = match attempt {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(full)) => {
            METRICS
                .delivery_slots_full
                .with_label_values(&[provider_id, full.label()])
                .inc();
            tracing::warn!(
                scope = full.label(),
                "every delivery slot taken: answered 'wait'"
            );
            return Ok(Outcome::Transient);
        }
        Err(_) => Verdict::Transient {
            retry_after: None,
            reason: "no answer in time (waiting for a slot or the provider)".into(),
        },
    };
    METRICS
        .delivery_seconds
        .with_label_values(&[provider_id])
        .observe(started.elapsed().as_secs_f64());
    METRICS
        .deliveries
        .with_label_values(&[provider_id, notification.kind.label(), verdict.label()])
        .inc();
    apply(gw, reg, verdict).await
}

/// The notification as the registration's dialect promised it to the app. Tigase-dialect apps
/// get the summary. p2 (Conversations) registrations get no content at all, only
/// `account` = SHA-1 hex of (account bare JID, NUL, device id), `channel` likewise for a
/// per-room registration, and a collapse key from the first six hex digits of the channel hash,
/// else of the account hash: the app recomputes the hashes to find what to sync, and the
/// provider (Google, Apple) learns nothing about who talks to whom.
fn notification_for(req: &PublishRequest, reg: &Registration) -> Notification {
    let mut n = req.notification(reg.account.as_str());
    if reg.dialect == Dialect::P2 {
        let device_id = reg.device_id.as_deref().unwrap_or_default();
        let account = p2_hash(reg.account.as_str(), device_id);
        let channel = reg.muc.as_ref().map(|m| p2_hash(m.as_str(), device_id));
        n.collapse_key = Some(channel.as_deref().unwrap_or(&account)[..6].to_owned());
        n.content = Content {
            account: Some(account),
            channel,
            ..Content::default()
        };
    }
    n
}

/// p2's device hash: SHA-1 hex of `jid ‖ 0x00 ‖ device_id`.
fn p2_hash(jid: &str, device_id: &str) -> String {
    use sha1::{Digest, Sha1};
    use std::fmt::Write;
    let digest = Sha1::new()
        .chain_update(jid.as_bytes())
        .chain_update([0u8])
        .chain_update(device_id.as_bytes())
        .finalize();
    digest.iter().fold(String::with_capacity(40), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Finds the registration behind a publish and checks that this server may publish to it.
/// Unknown node, foreign domain and wrong secret look the same from outside, so a prober
/// learns nothing about which nodes exist.
async fn authorise(
    gw: &Gateway,
    from_domain: &str,
    req: &PublishRequest,
) -> Result<Arc<Registration>, Fault> {
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
            // Written behind the reply: the server waits for nothing it does not need.
            gw.successes.record(reg.id);
            Ok(Outcome::Delivered)
        }
        Verdict::DeadToken { reason } => {
            if !gw.store.delete_if_token(reg).await? {
                // Re-registered (new token) or removed while we delivered: nothing to delete,
                // and the server must not drop a registration that may be fresh.
                tracing::info!(%reason, "token is dead but the registration changed meanwhile: kept");
                return Ok(Outcome::Transient);
            }
            tracing::info!(%reason, "token is dead: registration removed");
            METRICS
                .dead_tokens_removed
                .with_label_values(&[reg.provider.as_str()])
                .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2_hash_is_sha1_of_jid_nul_device() {
        // sha1("alice@example.org\0phone1"), computed independently
        assert_eq!(
            p2_hash("alice@example.org", "phone1"),
            "61fb5afaec5f6273a3ce61cc75b311549ba60846"
        );
    }
}
