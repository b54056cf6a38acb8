//! Delivering one notification to one registration, and acting on the verdict: the part of a
//! push every front shares.
//!
//! The front has found the registration (`registry`) and built the notification from its
//! protocol; here the notification is shaped as the registration's dialect promised the app,
//! held back if it is low priority and the device just got one (`coalesce.rs`; a push that is
//! not delivered does not count), sent through
//! the provider within a delivery slot (`slots.rs`) and by the caller's deadline, counted, and
//! the verdict applied: a dead token removes the registration, other failures are recorded.

use std::time::Duration;

use pushgate_providers::{Content, Notification, Priority, Verdict};
use tokio::time::Instant;

use super::Core;
use crate::error::Fault;
use crate::ids::{Dialect, hex};
use crate::metrics::METRICS;
use crate::storage::Registration;

/// How a delivery ended: what the front answers and counts.
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
}

/// Time kept between the end of a delivery attempt and the request's deadline, for recording
/// the verdict and answering.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// Delivers `notification` to `reg` by `deadline`. `Err` (always transient) when the store
/// failed or the registration's provider is no longer configured.
pub async fn deliver(
    core: &Core,
    reg: &Registration,
    notification: Notification,
    deadline: Instant,
) -> Result<Outcome, Fault> {
    let Some((_, provider)) = core.providers.get(reg.provider.as_str()) else {
        // The operator removed this provider. Not the device's fault: keep the registration.
        tracing::warn!("registration refers to a provider that is no longer configured");
        return Err(Fault::Transient(format!(
            "provider {} not configured",
            reg.provider
        )));
    };
    let notification = as_promised(notification, reg);
    // A low-priority push takes the device's coalescing interval now, so that a concurrent one
    // is held back; it gives the interval back unless the provider took it.
    let coalesced_at = if notification.priority == Priority::Low {
        let now = std::time::Instant::now();
        if !core.coalescer.admit(reg.id, now) {
            return Ok(Outcome::Coalesced);
        }
        Some(now)
    } else {
        None
    };
    let give_back = || {
        if let Some(at) = coalesced_at {
            core.coalescer.undo(reg.id, at);
        }
    };
    let device = reg.device();
    let provider_id = reg.provider.as_str();
    let host = provider.destination_host(&device);
    let send_by = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
    let started = Instant::now();
    let attempt = tokio::time::timeout_at(send_by, async {
        let _pass = core.slots.enter(&reg.provider, host.as_deref()).await?;
        Ok::<_, super::slots::Full>(provider.send(&device, &notification).await)
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
            give_back();
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
    if verdict != Verdict::Sent {
        give_back();
    }
    apply(core, reg, verdict).await
}

/// The notification as the registration's dialect promised it to the app. Tigase-dialect apps
/// get the summary. p2 (Conversations) registrations get no content at all, only
/// `account` = SHA-1 hex of (account bare JID, NUL, device id), `channel` likewise for a
/// per-room registration, and a collapse key from the first six hex digits of the channel hash,
/// else of the account hash: the app recomputes the hashes to find what to sync, and the
/// provider (Google, Apple) learns nothing about who talks to whom.
fn as_promised(mut n: Notification, reg: &Registration) -> Notification {
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
    let digest = Sha1::new()
        .chain_update(jid.as_bytes())
        .chain_update([0u8])
        .chain_update(device_id.as_bytes())
        .finalize();
    hex(&digest)
}

/// Records what the provider said in the store.
async fn apply(core: &Core, reg: &Registration, verdict: Verdict) -> Result<Outcome, Fault> {
    match verdict {
        Verdict::Sent => {
            // Written behind the reply: the server waits for nothing it does not need.
            core.successes.record(reg.id);
            Ok(Outcome::Delivered)
        }
        Verdict::DeadToken { reason } => {
            if !core.store.delete_if_token(reg).await? {
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
            core.store.record_error(reg.id, &reason).await?;
            Ok(Outcome::Transient)
        }
        Verdict::OurFault { reason } => {
            tracing::error!(%reason, "delivery failed through pushgate's own fault");
            core.store.record_error(reg.id, &reason).await?;
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
